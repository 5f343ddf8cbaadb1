// SPDX-License-Identifier: GPL-2.0
/* GIL waits on musl, where futex addresses say nothing about the GIL.
 *
 * musl's condvar waiters sleep on a node on their own stack, so the futex word
 * of a GIL wait is not inside the GIL struct and gil_wait.bpf.c cannot tell it
 * from any other wait. Here the libc condvar wait itself is probed instead:
 * uprobe + uretprobe on musl's __pthread_cond_timedwait (pthread_cond_wait is
 * a tail call into it), scoped to one process by the agent.
 *
 * take_gil only calls the condvar wait while the GIL is held by another
 * thread, and drop_gil only for a forced switch, so a thread that takes a free
 * GIL never reaches these probes. Calls whose arg0 is neither a watched GIL's
 * cond (take side) nor its switch_cond (drop side) return at once.
 *
 * take_gil waits in slices of the switch interval: a slice that returns
 * ETIMEDOUT is merged with the retry that follows, as gil_wait.bpf.c does, so
 * one wait is one acquisition. gil->last_holder is read at the start of every
 * take slice: that is "blocked by", and with a frame walk the holder's Python
 * stack is captured there too (holder_stack.bpf.h). The counters have the shape the agent
 * merges into the futex probe's per-thread figures. A merged take wait of at
 * least episode_threshold_ns also leaves one struct gil_episode in the
 * `cond_episodes` ring buffer, as in gil_wait.bpf.c (retake is always 0 here:
 * this probe does not see the blocking calls).
 */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include "gil_condwait.h"
#include "gil_shared.bpf.h"
#include "holder_stack.bpf.h"

#define ETIMEDOUT 110

/* A take slice that starts this long after the previous one timed out is a new wait. */
const volatile __u64 continuation_gap_ns = 1000000;
/* A merged take wait at least this long is sent as an episode record; 0 = none. */
const volatile __u64 episode_threshold_ns = 0;

/* Episode records of this process for the agent (no wakeup: it drains on its poll). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} cond_episodes SEC(".maps");

/* Episodes that found the ring buffer full. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cond_episodes_lost SEC(".maps");

/* Episode records each process was given (key: tgid), against its share
 * (condwait_target.episode_limit); written only by admit_one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} cond_episodes_made SEC(".maps");

/* Failed inserts into cond_waits, cond_blocked_by, cond_inflight,
 * cond_gil_waits, cond_holder_stacks and cond_holder_waits, one slot each
 * (enum map_full_slot, same slots as map_full). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FULL_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} cond_map_full SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct condwait_target);
} cond_targets SEC(".maps");

/* Entries of cond_waits given to each process (key: tgid), against its share
 * (condwait_target.thread_limit); written only by admit_one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} cond_thread_made SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct condwait_waits);
} cond_waits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct blocked_key);
	__type(value, struct blocked_val);
} cond_blocked_by SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct condwait_inflight);
} cond_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096 * GILSCOPE_MAX_GILS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct gil_key);
	__type(value, struct gil_val);
} cond_gil_waits SEC(".maps");

/* The holder-stack maps of gil_wait.bpf.c, for this process (holder_stack.bpf.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frame_walk);
} cond_holder_walks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct holder_key);
	__type(value, struct holder_stack);
} cond_holder_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct holder_key);
	__type(value, struct holder_wait);
} cond_holder_waits SEC(".maps");

static struct condwait_waits zero_waits;

/* A long take wait ended at `end`: one record for user space. */
static __always_inline void emit_episode(__u32 tgid, __u32 tid,
					 const struct condwait_inflight *cur, __u64 end)
{
	struct episode_wait w = {
		.start_ns = cur->wait_start_ns,
		.gil_addr = cur->gil_addr,
		.holders = cur->holders,
		.slices = cur->slices,
		.retake = 0,
		.holder_stack = cur->holder_stack,
	};
	const struct condwait_target *t = bpf_map_lookup_elem(&cond_targets, &tgid);
	if (t)
		emit_episode_to(&cond_episodes, &cond_episodes_lost, &cond_episodes_made,
				t->episode_limit, tgid, tid, &w, end);
}

/* The counters of `tid` in process `tgid` (thread_counters: within the
 * process's share, a full map counted); NULL once the process is unwatched. */
static __always_inline struct condwait_waits *cond_thread_counters(__u32 tid, __u32 tgid)
{
	const struct condwait_target *t = bpf_map_lookup_elem(&cond_targets, &tgid);
	if (!t)
		return 0;
	return thread_counters(&cond_waits, &tid, tgid, &zero_waits, &cond_thread_made,
			       t->thread_limit, &cond_map_full);
}

static __always_inline void close_take_wait(__u32 tid, __u32 tgid,
					    const struct condwait_inflight *cur, __u64 end)
{
	__u64 gil = cur->gil_addr, d = end - cur->wait_start_ns;
	if (episode_threshold_ns && d >= episode_threshold_ns)
		emit_episode(tgid, tid, cur, end);
	struct condwait_waits *w = cond_thread_counters(tid, tgid);
	if (w) {
		w->take_wait_ns += d;
		w->take_waits++;
		w->take_hist[log2_slot(d)]++;
	}
	struct gil_key key = { .tgid = tgid, .gil_addr = gil };
	struct gil_val zero = {};
	struct gil_val *g = lookup_or_count(&cond_gil_waits, &key, &zero, &cond_map_full,
						FULL_GIL_WAITS);
	if (g) {
		/* One entry per GIL, closed by threads on every CPU at once: atomic,
		 * or concurrent waits are lost (this is the slow path, after a block). */
		__sync_fetch_and_add(&g->take_wait_ns, d);
		__sync_fetch_and_add(&g->take_waits, 1);
	}
}

SEC("uprobe")
int cond_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	const struct condwait_target *t = bpf_map_lookup_elem(&cond_targets, &tgid);
	if (!t)
		return 0;
	__u64 cond = ctx->rdi, gil = 0;
	__u32 kind = WAIT_OTHER;
#pragma unroll
	for (int i = 0; i < GILSCOPE_MAX_GILS; i++) {
		__u64 base = t->gil_addrs[i];
		if (!base)
			continue;
		if (cond == base + t->cond_off) {
			gil = base;
			kind = WAIT_TAKE;
		} else if (cond == base + t->switch_cond_off) {
			gil = base;
			kind = WAIT_DROP;
		}
	}
	if (kind == WAIT_OTHER)
		return 0;

	__u64 now = bpf_ktime_get_ns(), holder = 0, stack = STACK_NONE;
	if (kind == WAIT_TAKE) {
		bpf_probe_read_user(&holder, sizeof(holder), (const void *)(gil + t->last_holder_off));
		stack = capture_holder(&cond_holder_walks, &cond_holder_stacks, &cond_map_full, tgid,
				       holder);
	}

	struct condwait_inflight *cur = bpf_map_lookup_elem(&cond_inflight, &tid);
	if (cur && cur->continuing && kind == WAIT_TAKE && cur->gil_addr == gil &&
	    now - cur->last_exit_ns < continuation_gap_ns) {
		cur->slice_start_ns = now;
		cur->holder_tstate = holder;
		cur->holder_stack = stack;
		cur->continuing = 0;
		cur->slices++;
		note_holder(cur->holders, holder);
		return 0;
	}
	if (cur && cur->continuing)
		/* The retry never came: the thread got the GIL after its last slice. */
		close_take_wait(tid, tgid, cur, cur->last_exit_ns);
	struct condwait_inflight fresh = {
		.wait_start_ns = now,
		.slice_start_ns = now,
		.holder_tstate = holder,
		.gil_addr = gil,
		.kind = kind,
		.slices = 1,
		.holders = { holder },
		.holder_stack = stack,
	};
	if (bpf_map_update_elem(&cond_inflight, &tid, &fresh, BPF_ANY))
		count_full(&cond_map_full, FULL_INFLIGHT);
	return 0;
}

SEC("uretprobe")
int cond_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	struct condwait_inflight *cur = bpf_map_lookup_elem(&cond_inflight, &tid);
	if (!cur || cur->continuing)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 slice = now - cur->slice_start_ns;

	if (cur->kind == WAIT_DROP) {
		struct condwait_waits *w = cond_thread_counters(tid, tgid);
		if (w) {
			w->drop_wait_ns += slice;
			w->drop_waits++;
		}
		bpf_map_delete_elem(&cond_inflight, &tid);
		return 0;
	}
	struct condwait_waits *w = cond_thread_counters(tid, tgid);
	if (w) {
		struct blocked_key bk = {
			.waiter_tid = tid, .waiter_tgid = tgid, .holder_tstate = cur->holder_tstate
		};
		struct blocked_val *b =
			blocked_entry(&cond_blocked_by, &cond_map_full, &w->blocked_pairs, &bk);
		if (b) {
			b->wait_ns += slice;
			b->segments++;
		}
		w->take_slices++;
	}
	count_holder_wait(&cond_holder_waits, &cond_map_full, tgid, cur->holder_stack, slice);
	if ((int)ctx->rax == ETIMEDOUT) {
		/* take_gil asks the holder to drop and waits again. */
		cur->continuing = 1;
		cur->last_exit_ns = now;
		return 0;
	}
	close_take_wait(tid, tgid, cur, now);
	bpf_map_delete_elem(&cond_inflight, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
