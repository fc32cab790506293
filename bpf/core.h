/* What the CO-RE build of resreap.bpf.c needs, declared here so that
 * building it takes clang alone (no kernel headers, no libbpf-dev, no
 * vmlinux.h).  The numbers are the kernel's stable ABI (uapi/linux/bpf.h):
 * helper ids, map types and flags never change meaning.
 *
 * The tracepoint's record is declared with preserve_access_index: clang
 * emits a relocation for each field it reads, and libbpf moves each one to
 * where the running kernel's BTF (/sys/kernel/btf/vmlinux) says it is.
 */
#ifndef RESREAP_CORE_H
#define RESREAP_CORE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
/* Map definitions as libbpf reads them from BTF. */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_RINGBUF 27
#define BPF_NOEXIST 1
#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
				   u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *src) = (void *)113;

/* The fields of sock:inet_sock_set_state that resreap reads (the kernel's
 * own record has more, and may order them otherwise: the relocations find
 * them by name). */
struct trace_event_raw_inet_sock_set_state {
	const void *skaddr;
	int oldstate;
	int newstate;
	u16 sport;
	u16 dport;
	u16 family;
	u16 protocol;
	u8 saddr[4];
	u8 daddr[4];
	u8 saddr_v6[16];
	u8 daddr_v6[16];
} __attribute__((preserve_access_index));

#endif
