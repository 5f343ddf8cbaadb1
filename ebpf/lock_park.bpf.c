// SPDX-License-Identifier: GPL-2.0
/* PyMutex contention in free-threaded CPython (3.13t+), where the GIL is off.
 *
 * A PyMutex that is free, or frees up while the thread spins, is taken without
 * any call; only a thread that must sleep calls the exported
 * _PyParkingLot_Park(address, ...). Uprobes on its entry and return therefore
 * fire on the slow path only, where a thread is about to block anyway. The
 * lock address (arg 0) is kept so the agent can rank the hottest locks. Parks
 * called from PyEvent_WaitTimed (thread join, start-up handshakes) are waits for
 * an event, not for a lock, and are counted apart.
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include "lock_park.h"
#include "bits.bpf.h"

/* A park in progress (map `parking`, key: tid): the probe's own state, never
 * read by the agent. */
struct park_inflight {
	__u64 start_ns;
	__u64 address;
	__u64 caller;         /* return address of the _PyParkingLot_Park call */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lock_waits);
} lock_waits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lock_key);
	__type(value, struct lock_val);
} lock_by_address SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct park_inflight);
} parking SEC(".maps");

/* Runtime address range of PyEvent_WaitTimed in the watched process. */
const volatile __u64 event_wait_lo = 0;
const volatile __u64 event_wait_hi = 0;

static struct lock_waits zero_lock_waits;

SEC("uprobe")
int park_enter(struct pt_regs *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct park_inflight p = {
		.start_ns = bpf_ktime_get_ns(),
		.address = ctx->rdi,
	};
	bpf_probe_read_user(&p.caller, sizeof(p.caller), (const void *)ctx->rsp);
	bpf_map_update_elem(&parking, &tid, &p, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int park_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid, tgid = pid_tgid >> 32;
	struct park_inflight *p = bpf_map_lookup_elem(&parking, &tid);
	if (!p)
		return 0;
	__u64 d = bpf_ktime_get_ns() - p->start_ns;
	struct lock_key key = { .tgid = tgid, .address = p->address };
	int event = p->caller >= event_wait_lo && p->caller < event_wait_hi;
	bpf_map_delete_elem(&parking, &tid);

	struct lock_waits *w = lookup_or_init(&lock_waits, &tid, &zero_lock_waits);
	if (!w)
		return 0;
	w->tgid = tgid;
	if (event) {
		w->event_ns += d;
		w->events++;
		return 0;
	}
	w->park_ns += d;
	w->parks++;
	w->park_hist[log2_slot(d)]++;
	struct lock_val zero = {};
	struct lock_val *v = lookup_or_init(&lock_by_address, &key, &zero);
	if (v) {
		v->park_ns += d;
		v->parks++;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
