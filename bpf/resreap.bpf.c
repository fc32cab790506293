/* resreap: stream TCP transitions into and out of CLOSE_WAIT.
 *
 * Reads only the tracepoint's own fields: the kernel headers bcc compiles
 * against may belong to another kernel version, so struct sock layouts are
 * not to be trusted.  Settings arrive as -D defines from the loader.
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>
#include <net/tcp_states.h>
#include "resreap.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 256
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* Per-CPU counters, slot 0: events dropped because the ring was full (ring
 * buffers have no lost callback), slot 1: events submitted. */
BPF_PERCPU_ARRAY(counts, u64, 2);

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP)
		return 0;
	if (args->newstate != TCP_CLOSE_WAIT && args->oldstate != TCP_CLOSE_WAIT)
		return 0;
	if (args->family != AF_INET && args->family != AF_INET6)
		return 0;

	int slot = 0;
	struct event *e = events.ringbuf_reserve(sizeof(struct event));
	if (!e) {
		u64 *lost = counts.lookup(&slot);
		if (lost)
			(*lost)++;
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = (u64)args->skaddr;
	e->cpu_pid = bpf_get_current_pid_tgid() >> 32;
	e->family = args->family;
	e->sport = args->sport;
	e->dport = args->dport;
	e->oldstate = args->oldstate;
	e->newstate = args->newstate;
	if (args->family == AF_INET) {
		__builtin_memset(e->saddr, 0, sizeof(e->saddr));
		__builtin_memset(e->daddr, 0, sizeof(e->daddr));
		__builtin_memcpy(e->saddr, args->saddr, 4);
		__builtin_memcpy(e->daddr, args->daddr, 4);
	} else {
		__builtin_memcpy(e->saddr, args->saddr_v6, 16);
		__builtin_memcpy(e->daddr, args->daddr_v6, 16);
	}
	/* Wake the reader once per batch, not per event: it also drains on its
	 * own short timer, so a trickle waits at most that long and a burst
	 * costs one wakeup per WAKEUP_EVERY events (bcc 0.26 has no
	 * ringbuf_query to wake on fill level instead). */
	u64 flags = BPF_RB_NO_WAKEUP;
	slot = 1;
	u64 *sent = counts.lookup(&slot);
	if (sent && ((*sent)++ % WAKEUP_EVERY) == WAKEUP_EVERY - 1)
		flags = BPF_RB_FORCE_WAKEUP;
	events.ringbuf_submit(e, flags);
	return 0;
}
