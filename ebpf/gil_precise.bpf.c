// SPDX-License-Identifier: GPL-2.0
/* Exact GIL take/hold timing from uprobes on take_gil and drop_gil (--precise).
 *
 * Every GIL acquisition pays for these probes (~1-2 us a hit), so this is an
 * opt-in cross-check for low switch rates, never the default. The agent
 * attaches them to one process; drop_gil may be inlined in stripped LTO
 * builds, in which case only take_gil is attached and hold_ns stays 0.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "gil_precise.h"
#include "bits.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct precise_gil);
} precise_gil SEC(".maps");

/* tid -> ktime of the take_gil entry, then of the acquisition. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
} take_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, __u64);
} hold_start SEC(".maps");

static struct precise_gil zero_precise;

SEC("uprobe")
int take_gil_enter(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&take_start, &tid, &now, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int take_gil_return(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	__u64 *start = bpf_map_lookup_elem(&take_start, &tid);
	if (!start)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 d = now - *start;
	bpf_map_delete_elem(&take_start, &tid);
	struct precise_gil *p = lookup_or_init(&precise_gil, &tid, &zero_precise);
	if (!p)
		return 0;
	p->tgid = pid_tgid >> 32;
	p->take_calls++;
	p->take_ns += d;
	p->take_hist[log2_slot(d)]++;
	bpf_map_update_elem(&hold_start, &tid, &now, BPF_ANY);
	return 0;
}

SEC("uprobe")
int drop_gil_enter(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&hold_start, &tid);
	if (!start)
		return 0;
	__u64 d = bpf_ktime_get_ns() - *start;
	bpf_map_delete_elem(&hold_start, &tid);
	struct precise_gil *p = bpf_map_lookup_elem(&precise_gil, &tid);
	if (!p)
		return 0;
	p->hold_ns += d;
	p->holds++;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
