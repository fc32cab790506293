/* The event record shared by the BPF program and its Python reader
 * (decoded on the Python side with bcc's table.event(), so this struct is
 * the single definition). */
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

#endif
