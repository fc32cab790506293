/* The records shared by the BPF program and its Python reader: this header
 * is their single definition (resreap/sources/program.py reads it to decode
 * the events, whichever build loaded the program). */
#ifndef RESREAP_H
#define RESREAP_H

struct event {
	u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	u64 skaddr;       /* kernel socket address: identity while it lives */
	u32 cpu_pid;      /* on-CPU task; a hint only, never the owner */
	u16 family;       /* AF_INET or AF_INET6 */
	u16 sport;        /* host byte order, as the tracepoint stores it */
	u16 dport;
	u8 oldstate;
	u8 newstate;
	u8 saddr[16];     /* IPv4 in the first 4 bytes */
	u8 daddr[16];
};

/* The slots of the per-CPU counter map ("counts"), summed over CPUs by the
 * reader (resreap/sources/program.py reads their numbers from here). */
enum resreap_counter {
	COUNTER_LOST = 0, /* events dropped: the ring was full (no lost callback) */
	COUNTER_SENT = 1, /* events submitted: paces the reader's wakeups */
	COUNTER_SLOTS = 2,
};

/* The CO-RE build's settings (its .rodata), written by the loader before
 * the load; the bcc build gets them as -D defines. */
struct resreap_config {
	u32 first_pass;   /* 1: new CLOSE_WAIT sockets wait in the pending map */
	u32 wakeup_every; /* wake the reader once per this many ring events */
	u32 credit;       /* 1: count, per closing process, the pending sockets
			   * that left before user space took them (top's rates) */
	u32 switchable;   /* 1: the first pass applies only while the pass_now
			   * map says so (trace turns it on above a rate) */
};

#endif
