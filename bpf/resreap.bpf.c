/* resreap: stream TCP transitions into and out of CLOSE_WAIT.
 *
 * Reads only the tracepoint's own fields: the kernel headers bcc compiles
 * against may belong to another kernel version, so struct sock layouts are
 * not to be trusted.  Settings arrive as -D defines from the loader.
 *
 * FIRST_PASS (watch): a socket entering CLOSE_WAIT is only put in the
 * pending map, which user space takes in batches; one that leaves before
 * it is taken (churn: nearly all) costs no event at all.  The exits of
 * taken sockets, and of sockets never seen entering, go through the ring.
 * Without it (trace) every transition goes through the ring.
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

#ifndef PENDING_MAX
#define PENDING_MAX 65536
#endif

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
#ifdef FIRST_PASS
BPF_HASH(pending, u64, struct event, PENDING_MAX);
#endif
/* Per-CPU counters, slot 0: events dropped because the ring was full (ring
 * buffers have no lost callback), slot 1: events submitted. */
BPF_PERCPU_ARRAY(counts, u64, 2);

/* One record from the tracepoint's own fields. */
#define FILL(e) do {								\
	(e)->ts_ns = bpf_ktime_get_ns();					\
	(e)->skaddr = skaddr;							\
	(e)->cpu_pid = bpf_get_current_pid_tgid() >> 32;			\
	(e)->family = args->family;						\
	(e)->sport = args->sport;						\
	(e)->dport = args->dport;						\
	(e)->oldstate = args->oldstate;						\
	(e)->newstate = args->newstate;						\
	if (args->family == AF_INET) {						\
		__builtin_memset((e)->saddr, 0, sizeof((e)->saddr));		\
		__builtin_memset((e)->daddr, 0, sizeof((e)->daddr));		\
		__builtin_memcpy((e)->saddr, args->saddr, 4);			\
		__builtin_memcpy((e)->daddr, args->daddr, 4);			\
	} else {								\
		__builtin_memcpy((e)->saddr, args->saddr_v6, 16);		\
		__builtin_memcpy((e)->daddr, args->daddr_v6, 16);		\
	}									\
} while (0)

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
	if (args->protocol != IPPROTO_TCP)
		return 0;
	if (args->newstate != TCP_CLOSE_WAIT && args->oldstate != TCP_CLOSE_WAIT)
		return 0;
	if (args->family != AF_INET && args->family != AF_INET6)
		return 0;

	u64 skaddr = (u64)args->skaddr;
#ifdef FIRST_PASS
	if (args->oldstate == TCP_CLOSE_WAIT && pending.delete(&skaddr) == 0)
		return 0;	/* left before user space took it */
	if (args->newstate == TCP_CLOSE_WAIT) {
		struct event p = {};
		FILL(&p);
		if (pending.insert(&skaddr, &p) == 0)
			return 0;
		/* full: through the ring, as without FIRST_PASS */
	}
#endif
	int slot = 0;
	struct event *e = events.ringbuf_reserve(sizeof(struct event));
	if (!e) {
		u64 *lost = counts.lookup(&slot);
		if (lost)
			(*lost)++;
		return 0;
	}
	FILL(e);
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
