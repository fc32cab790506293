/* resreap: stream TCP transitions into and out of CLOSE_WAIT.
 *
 * One source, two builds:
 * - CO-RE (RESREAP_CORE, the default): compiled once at build time with
 *   `clang -target bpf -g` (scripts/build-bpf) into resreap.bpf.o, which
 *   libbpf loads against the running kernel's BTF: a host needs no
 *   compiler and no headers.
 * - bcc: compiled at start where the object cannot load (no BTF, no
 *   libbpf), from this same file, with the settings as -D defines.
 *
 * Reads only the tracepoint's own fields: under bcc the kernel headers may
 * belong to another kernel version, so struct sock layouts are not to be
 * trusted (and CO-RE relocates the tracepoint's fields by name).
 *
 * The first pass (watch): a socket entering CLOSE_WAIT is only put in the
 * pending map, which user space takes in batches; one that leaves before
 * it is taken (churn: nearly all) costs no event at all.  The exits of
 * taken sockets, and of sockets never seen entering, go through the ring.
 * Without it (trace) every transition goes through the ring.  With credit
 * (top), one that leaves in its owner's close() is counted for that
 * process in the closers map (its tgid: the owner, in process context),
 * which user space reads once a turn: per-process rates, no event.
 */
#ifdef RESREAP_CORE
#include "core.h"
#else
#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>
#include <net/tcp_states.h>
#endif
#include "resreap.h"

#ifdef RESREAP_CORE
/* Sizes and settings are set by the loader before the load (libbpf:
 * bpf_map__set_max_entries, the .rodata initial value). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, struct event);
} pending SEC(".maps");

/* tgid -> pending sockets it closed before user space took them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, u32);
	__type(value, u64);
} closers SEC(".maps");

/* [0]: 1 while the first pass applies (with config.switchable). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} pass_now SEC(".maps");

/* Per-CPU counters, one slot per enum resreap_counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_SLOTS);
	__type(key, u32);
	__type(value, u64);
} counts SEC(".maps");

/* Read-only once loaded: the verifier drops the code a setting turns off. */
const volatile struct resreap_config config = { .first_pass = 0, .wakeup_every = 256,
						  .credit = 0, .switchable = 0 };

static __always_inline int first_pass_on(void)
{
	if (!config.first_pass)
		return 0;
	if (!config.switchable)
		return 1;
	u32 zero = 0;
	u32 *on = bpf_map_lookup_elem(&pass_now, &zero);
	return on && *on;
}
#define FIRST_PASS_ON first_pass_on()
#define CREDIT_ON (config.credit)
#define WAKEUP (config.wakeup_every)
#define PROBE SEC("tracepoint/sock/inet_sock_set_state") \
	int resreap_set_state(struct trace_event_raw_inet_sock_set_state *args)

static __always_inline u64 *counter(enum resreap_counter c)
{
	u32 slot = c;
	return bpf_map_lookup_elem(&counts, &slot);
}
static __always_inline int pending_take(u64 *key) { return bpf_map_delete_elem(&pending, key); }
static __always_inline int pending_put(u64 *key, struct event *e)
{
	return bpf_map_update_elem(&pending, key, e, BPF_NOEXIST);
}
static __always_inline u64 *closer_count(u32 *tgid) { return bpf_map_lookup_elem(&closers, tgid); }
static __always_inline int closer_add(u32 *tgid, u64 *n)
{
	return bpf_map_update_elem(&closers, tgid, n, BPF_NOEXIST);
}
static __always_inline struct event *ring_reserve(void)
{
	return bpf_ringbuf_reserve(&events, sizeof(struct event), 0);
}
static __always_inline void ring_submit(struct event *e, u64 flags) { bpf_ringbuf_submit(e, flags); }
/* An array field: through the helper, which may read from any address
 * (CO-RE computes the field's address, which direct ctx access forbids). */
#define COPY_FIELD(dst, src, n) bpf_probe_read_kernel(dst, n, &(src))

char LICENSE[] SEC("license") = "GPL";

#else /* bcc */

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
#ifdef SWITCHABLE
BPF_ARRAY(pass_now, u32, 1);
static __always_inline int first_pass_on(void)
{
	u32 zero = 0;
	u32 *on = pass_now.lookup(&zero);
	return on && *on;
}
#define FIRST_PASS_ON first_pass_on()
#else
#define FIRST_PASS_ON 1
#endif
#else
#define FIRST_PASS_ON 0
#endif
#ifdef CREDIT
BPF_HASH(closers, u32, u64, 8192);
#define CREDIT_ON 1
#else
#define CREDIT_ON 0
#endif
BPF_PERCPU_ARRAY(counts, u64, COUNTER_SLOTS);

#define WAKEUP WAKEUP_EVERY
#define PROBE TRACEPOINT_PROBE(sock, inet_sock_set_state)

static __always_inline u64 *counter(enum resreap_counter c)
{
	u32 slot = c;
	return counts.lookup(&slot);
}
#ifdef FIRST_PASS
static __always_inline int pending_take(u64 *key) { return pending.delete(key); }
static __always_inline int pending_put(u64 *key, struct event *e) { return pending.insert(key, e); }
#else
static __always_inline int pending_take(u64 *key) { return -1; }
static __always_inline int pending_put(u64 *key, struct event *e) { return -1; }
#endif
#ifdef CREDIT
static __always_inline u64 *closer_count(u32 *tgid) { return closers.lookup(tgid); }
static __always_inline int closer_add(u32 *tgid, u64 *n) { return closers.insert(tgid, n); }
#else
static __always_inline u64 *closer_count(u32 *tgid) { return 0; }
static __always_inline int closer_add(u32 *tgid, u64 *n) { return -1; }
#endif
static __always_inline struct event *ring_reserve(void)
{
	return events.ringbuf_reserve(sizeof(struct event));
}
static __always_inline void ring_submit(struct event *e, u64 flags) { events.ringbuf_submit(e, flags); }
#define COPY_FIELD(dst, src, n) __builtin_memcpy(dst, src, n)

#endif

/* One more socket its owner closed unseen (a second CPU may insert the
 * same process first: then add to its entry).  The counts only grow: user
 * space reads them and keeps the differences (an entry deleted under an
 * increment would lose it).  A full map is a lost event, as a full ring. */
static __always_inline void credit_closer(void)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	u64 one = 1;
	u64 *n = closer_count(&tgid);
	if (!n && closer_add(&tgid, &one) == 0)
		return;
	if (!n)
		n = closer_count(&tgid);
	if (n) {
		__sync_fetch_and_add(n, 1);
		return;
	}
	u64 *lost = counter(COUNTER_LOST);
	if (lost)
		(*lost)++;
}

/* When and on which CPU's task: the only fields not from the tracepoint. */
static __always_inline void stamp(struct event *e)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->cpu_pid = bpf_get_current_pid_tgid() >> 32;
}

PROBE
{
	if (args->protocol != IPPROTO_TCP)
		return 0;
	int oldstate = args->oldstate, newstate = args->newstate;
	if (newstate != TCP_CLOSE_WAIT && oldstate != TCP_CLOSE_WAIT)
		return 0;
	u16 family = args->family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	/* The record is read from the tracepoint's fields once, into a local:
	 * a field read again through a computed ctx pointer is refused by the
	 * verifier, and both destinations (the pending map, the ring) take a
	 * copy of it. */
	int first_pass = FIRST_PASS_ON;
	struct event rec = {};
	rec.skaddr = (u64)args->skaddr;
	if (first_pass && oldstate == TCP_CLOSE_WAIT && pending_take(&rec.skaddr) == 0) {
		/* left before user space took it: only counted, in its owner's
		 * close() (any other way out runs on whatever task is there) */
		if (CREDIT_ON && newstate == TCP_LAST_ACK)
			credit_closer();
		return 0;
	}
	rec.family = family;
	rec.sport = args->sport;
	rec.dport = args->dport;
	rec.oldstate = oldstate;
	rec.newstate = newstate;
	if (family == AF_INET) {
		COPY_FIELD(rec.saddr, args->saddr, 4);
		COPY_FIELD(rec.daddr, args->daddr, 4);
	} else {
		COPY_FIELD(rec.saddr, args->saddr_v6, 16);
		COPY_FIELD(rec.daddr, args->daddr_v6, 16);
	}
	stamp(&rec);
	if (first_pass && newstate == TCP_CLOSE_WAIT && pending_put(&rec.skaddr, &rec) == 0)
		return 0;	/* full: through the ring, as without the first pass */

	struct event *e = ring_reserve();
	if (!e) {
		u64 *lost = counter(COUNTER_LOST);
		if (lost)
			(*lost)++;
		return 0;
	}
	__builtin_memcpy(e, &rec, sizeof(rec));
	/* Wake the reader once per batch, not per event: it also drains on its
	 * own short timer, so a trickle waits at most that long and a burst
	 * costs one wakeup per WAKEUP events (bcc 0.26 has no ringbuf_query to
	 * wake on fill level instead). */
	u64 flags = BPF_RB_NO_WAKEUP;
	u64 *sent = counter(COUNTER_SENT);
	if (sent && ((*sent)++ % WAKEUP) == WAKEUP - 1)
		flags = BPF_RB_FORCE_WAKEUP;
	ring_submit(e, flags);
	return 0;
}
