// SPDX-License-Identifier: GPL-2.0
/* Event-loop lag: how long a watched thread runs between two poll-family calls.
 *
 * An asyncio or uvloop loop asks the kernel for ready I/O once per iteration
 * (epoll_wait, or poll/select for other selectors) and then runs every ready
 * callback; until it asks again, nothing else on the loop runs. So the time
 * from a poll-family return to the thread's next poll-family call is one
 * iteration, whether or not the thread ever sleeps in the kernel (a loop kept
 * busy by CPU work calls epoll_wait with a zero timeout and never blocks).
 *
 * Uprobes on the libc functions of the poll family (epoll_wait, epoll_pwait,
 * epoll_pwait2, poll, ppoll, select, pselect), attached per watched process:
 * the breakpoints exist only in the memory of the processes the agent
 * watches, so every other process on the node, however often it polls, runs
 * no BPF at all (no filter to pay either). Syscall tracepoints would tax every
 * syscall of every process, and fentry/fexit are not available everywhere
 * (see BENCHMARKS.md). The kernel only counts (struct loop_thread); the agent
 * finds the loop threads and judges.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "event_loop.h"
#include "bits.bpf.h"

/* An iteration at least this long blocked its loop: counted in long_ns. */
const volatile __u64 long_iteration_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct loop_thread);
} loop_threads SEC(".maps");

/* Failed inserts into loop_threads (slot 0): threads whose iterations went
 * uncounted because the map was full. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} loop_map_full SEC(".maps");

/* Long iterations for user space (spans), and how many found no room. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} long_iterations SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} long_iterations_lost SEC(".maps");

/* Put the record's struct into the object's BTF, for the layout test. */
const struct long_iteration *long_iteration_btf __attribute__((unused));

/* An iteration of `tid` from `start` to `end` blocked its loop: one record. */
static __always_inline void emit_long(__u32 tgid, __u32 tid, __u64 start, __u64 end)
{
	struct long_iteration *e = bpf_ringbuf_reserve(&long_iterations, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&long_iterations_lost, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
		return;
	}
	e->tgid = tgid;
	e->tid = tid;
	e->start_ns = start;
	e->end_ns = end;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Too large for the BPF stack: the zero value new entries start from. */
static struct loop_thread zero_thread;

/* A poll-family call begins: the iteration running since the last return ends. */
SEC("uprobe")
int poll_enter(void *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct loop_thread *t = bpf_map_lookup_elem(&loop_threads, &tid);
	if (!t || !t->iteration_start_ns)
		return 0;
	__u64 now = bpf_ktime_get_ns(), start = t->iteration_start_ns;
	__u64 d = now - start;
	t->iteration_start_ns = 0;
	t->iterations++;
	t->busy_ns += d;
	t->hist[log2_slot(d)]++;
	if (d > t->max_ns)
		t->max_ns = d;
	if (long_iteration_ns && d >= long_iteration_ns) {
		t->long_iterations++;
		t->long_ns += d;
		emit_long(t->tgid, tid, start, now);
	}
	return 0;
}

/* A poll-family call returned: an iteration begins. The attach cookie is 1
 * on the epoll functions, 0 on the others. Only the calling thread touches
 * its entry, so plain increments are exact. */
SEC("uretprobe")
int poll_return(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)pid_tgid;
	struct loop_thread *t = bpf_map_lookup_elem(&loop_threads, &tid);
	if (!t) {
		bpf_map_update_elem(&loop_threads, &tid, &zero_thread, BPF_NOEXIST);
		t = bpf_map_lookup_elem(&loop_threads, &tid);
		if (!t) {
			__u32 slot = 0;
			__u64 *n = bpf_map_lookup_elem(&loop_map_full, &slot);
			if (n)
				__sync_fetch_and_add(n, 1);
			return 0;
		}
		t->tgid = pid_tgid >> 32;
	}
	t->polls++;
	t->epolls += bpf_get_attach_cookie(ctx) == 1;
	t->iteration_start_ns = bpf_ktime_get_ns();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
