// SPDX-License-Identifier: GPL-2.0
/* GIL waits and every other sleep of a watched thread, observed only where a
 * thread actually blocks.
 *
 * Hooked on sched_switch (BTF tracepoint), not on syscalls: a thread that takes
 * a free GIL never leaves the CPU and pays nothing, and syscalls that do not
 * sleep are not slowed either (a syscall tracepoint would tax them all).
 *
 * When a thread of a watched process goes to sleep, its saved syscall
 * registers say where. In futex() the word it sleeps on decides: inside the GIL
 * struct that is a take-side wait (cond), a GIL mutex wait, or a drop-side
 * forced-switch wait (switch_cond/switch_mutex); anything else is a non-GIL
 * futex wait. Other syscalls are classed by number (poll family, read family,
 * sleep, other: block_kind below). The wait ends when the thread is
 * switched back in. take_gil waits in timed slices (the switch interval); a
 * slice that ran into its deadline is merged with the retry that follows. The
 * holder (gil->last_holder) is read at the start of every take slice, so wait
 * time is attributed to the thread that blocked it, and, for a process with a
 * frame walk, to the Python stack it was running (holder_stack.bpf.h). A take wait that starts
 * right after a wake from a non-GIL sleep is also counted as a retake wait
 * (the GIL residual latency of a blocking call). Counters leave the kernel,
 * plus one small record per contention episode: a merged take wait of at least
 * episode_threshold_ns (ring buffer `episodes`; long waits only, never the
 * fast path).
 */
#include <linux/bpf.h>
#include <linux/futex.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "gil_wait.h"
#include "gil_shared.bpf.h"
#include "holder_stack.bpf.h"

/* Only the members used here; CO-RE relocates them against the kernel's BTF. */
struct task_struct {
	int pid;
	int tgid;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long r10;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

struct user_timespec {
	__s64 tv_sec;
	__s64 tv_nsec;
};

/* include/linux/sched.h: the state of a task switching out for the last time. */
#define TASK_DEAD 0x80

/* A take slice that starts this long after the previous one timed out is a new wait. */
const volatile __u64 continuation_gap_ns = 1000000;
/* A take wait that starts this long after a wake from a non-GIL sleep is not a retake:
 * the thread got the GIL free and ran in between. */
const volatile __u64 retake_window_ns = 1000000;
/* A merged take wait at least this long is sent as an episode record; 0 = none. */
const volatile __u64 episode_threshold_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct gil_target);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct thread_waits);
} thread_waits SEC(".maps");

/* Entries of thread_waits given to each process (key: tgid), against its
 * share (gil_target.thread_limit); written only by admit_one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} thread_made SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct blocked_key);
	__type(value, struct blocked_val);
} blocked_by SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct futex_inflight);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096 * GILSCOPE_MAX_GILS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct gil_key);
	__type(value, struct gil_val);
} gil_waits SEC(".maps");

/* Episode records for user space (struct gil_episode). Reserved without wakeup:
 * the agent drains it on its own poll, so no reader is woken per record. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} episodes SEC(".maps");

/* Puts struct gil_episode into the object's BTF (ring buffers name no value
 * type), so the layout test can check the Rust mirror against it. */
const struct gil_episode *gil_episode_btf __attribute__((unused));

/* Episodes that found the ring buffer full (the agent fell behind). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} episodes_lost SEC(".maps");

/* Episode records each process was given (key: tgid), against its share
 * (gil_target.episode_limit); written only by admit_one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} episodes_made SEC(".maps");

/* Failed inserts into thread_waits, blocked_by, inflight, gil_waits,
 * holder_stacks and holder_waits, one slot each (enum map_full_slot): waits
 * lost, or not attributed, because a map was full. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FULL_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} map_full SEC(".maps");

/* How to walk the Python frames of each process whose GIL holders' stacks are
 * captured (key: tgid; holder_stack.bpf.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct frame_walk);
} holder_walks SEC(".maps");

/* Distinct holder stacks per process, stored once by hash (key: tgid, id). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct holder_key);
	__type(value, struct holder_stack);
} holder_stacks SEC(".maps");

/* GIL wait behind each holder stack (key: tgid, id). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct holder_key);
	__type(value, struct holder_wait);
} holder_waits SEC(".maps");

/* Puts enum map_full_slot into the object's BTF, for the layout test. */
const enum map_full_slot *map_full_slot_btf __attribute__((unused));

/* Too large for the BPF stack: the zero value new entries start from. */
static struct thread_waits zero_waits;

/* x86-64 syscall numbers of the sleeps told apart (arch/x86/entry/syscalls/syscall_64.tbl). */
#define NR_READ 0
#define NR_POLL 7
#define NR_PREAD64 17
#define NR_READV 19
#define NR_SELECT 23
#define NR_NANOSLEEP 35
#define NR_ACCEPT 43
#define NR_RECVFROM 45
#define NR_RECVMSG 47
#define NR_FUTEX 202
#define NR_CLOCK_NANOSLEEP 230
#define NR_EPOLL_WAIT 232
#define NR_PSELECT6 270
#define NR_PPOLL 271
#define NR_EPOLL_PWAIT 281
#define NR_ACCEPT4 288
#define NR_EPOLL_PWAIT2 441

/* enum wait_kind of a sleep in syscall nr (not futex: that one is classified by address). */
static __always_inline __u32 block_kind(long nr)
{
	switch (nr) {
	case NR_EPOLL_WAIT: case NR_EPOLL_PWAIT: case NR_EPOLL_PWAIT2:
	case NR_POLL: case NR_PPOLL: case NR_SELECT: case NR_PSELECT6:
		return BLOCK_POLL;
	case NR_READ: case NR_READV: case NR_PREAD64:
	case NR_RECVFROM: case NR_RECVMSG: case NR_ACCEPT: case NR_ACCEPT4:
		return BLOCK_READ;
	case NR_NANOSLEEP: case NR_CLOCK_NANOSLEEP:
		return BLOCK_SLEEP;
	}
	return BLOCK_OTHER;
}

static __always_inline int is_wait_op(__u32 op)
{
	switch (op & FUTEX_CMD_MASK) {
	case FUTEX_WAIT:
	case FUTEX_WAIT_BITSET:
	case FUTEX_LOCK_PI:
	case FUTEX_LOCK_PI2:
	case FUTEX_WAIT_REQUEUE_PI:
		return 1;
	}
	return 0;
}

/* Which part of which GIL a futex word is in; *gil is set for GIL waits. */
static __always_inline __u32 classify(const struct gil_target *t, __u64 uaddr, __u64 *gil)
{
#pragma unroll
	for (int i = 0; i < GILSCOPE_MAX_GILS; i++) {
		__u64 base = t->gil_addrs[i];
		if (!base || uaddr < base || uaddr >= base + t->gil_size)
			continue;
		__u64 off = uaddr - base;
		*gil = base;
		if (off >= t->switch_cond_off)
			return WAIT_DROP;
		if (off >= t->mutex_off)
			return WAIT_MUTEX;
		if (off >= t->cond_off)
			return WAIT_TAKE;
		*gil = 0;
		return WAIT_OTHER;
	}
	return WAIT_OTHER;
}

static __always_inline __u64 read_user_u64(__u64 addr)
{
	__u64 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (const void *)addr))
		return 0;
	return v;
}

/* CLOCK_MONOTONIC deadline of a futex wait, 0 when there is none or it is on CLOCK_REALTIME. */
static __always_inline __u64 futex_deadline(__u32 op, __u64 timeout, __u64 now)
{
	struct user_timespec ts;
	if (!timeout || (op & FUTEX_CLOCK_REALTIME))
		return 0;
	if (bpf_probe_read_user(&ts, sizeof(ts), (const void *)timeout))
		return 0;
	__u64 ns = (__u64)ts.tv_sec * 1000000000ULL + (__u64)ts.tv_nsec;
	/* FUTEX_WAIT takes a relative timeout, the others an absolute one. */
	return (op & FUTEX_CMD_MASK) == FUTEX_WAIT ? now + ns : ns;
}

/* What the sleeping thread waits in; for futex waits on a GIL, *gil is set. */
static __always_inline __u32 sleep_kind(const struct gil_target *t, struct pt_regs *regs, __u64 *gil)
{
	long nr = BPF_CORE_READ(regs, orig_ax);
	if (nr != NR_FUTEX)
		return block_kind(nr);
	if (!is_wait_op((__u32)BPF_CORE_READ(regs, si)))
		return BLOCK_OTHER;
	return classify(t, BPF_CORE_READ(regs, di), gil);
}

/* Whether a wait of `kind` starting now is a retake wait. Any block but a GIL
 * mutex wait (part of taking the GIL) ends the window opened by the last wake. */
static __always_inline __u32 is_retake(__u32 tgid, __u32 tid, __u32 kind, __u64 now)
{
	struct thread_waits *w = bpf_map_lookup_elem(&thread_waits, &tid);
	if (!w || w->tgid != tgid || !w->retake_armed_ns || kind == WAIT_MUTEX)
		return 0;
	__u32 retake = kind == WAIT_TAKE && now - w->retake_armed_ns < retake_window_ns;
	w->retake_armed_ns = 0;
	return retake;
}

/* A long take wait ended at `end`: one record for user space. */
static __always_inline void emit_episode(__u32 tgid, __u32 tid,
					 const struct futex_inflight *cur, __u64 end)
{
	struct episode_wait w = {
		.start_ns = cur->wait_start_ns,
		.gil_addr = cur->gil_addr,
		.holders = cur->holders,
		.slices = cur->slices,
		.retake = cur->retake,
		.holder_stack = cur->holder_stack,
	};
	const struct gil_target *t = bpf_map_lookup_elem(&targets, &tgid);
	if (t)
		emit_episode_to(&episodes, &episodes_lost, &episodes_made, t->episode_limit, tgid,
				tid, &w, end);
}

/* A merged take wait of `tid` ended at `end` after `d` ns. */
static __always_inline void close_take_wait(struct thread_waits *w, __u32 tgid, __u32 tid,
					    const struct futex_inflight *cur, __u64 d, __u64 end)
{
	if (episode_threshold_ns && d >= episode_threshold_ns)
		emit_episode(tgid, tid, cur, end);
	w->take_wait_ns += d;
	w->take_waits++;
	w->take_hist[log2_slot(d)]++;
	if (cur->retake) {
		w->retake_wait_ns += d;
		w->retake_waits++;
		w->retake_hist[log2_slot(d)]++;
	}
	struct gil_key key = { .tgid = tgid, .gil_addr = cur->gil_addr };
	struct gil_val zero = {};
	struct gil_val *g = lookup_or_count(&gil_waits, &key, &zero, &map_full, FULL_GIL_WAITS);
	if (g) {
		/* One entry per GIL, closed by threads on every CPU at once: atomic,
		 * or concurrent waits are lost (this is the slow path, after a block). */
		__sync_fetch_and_add(&g->take_wait_ns, d);
		__sync_fetch_and_add(&g->take_waits, 1);
	}
}

/* The current task (prev) is going to sleep. */
static __always_inline void on_block(struct task_struct *prev, __u64 now)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	const struct gil_target *t = bpf_map_lookup_elem(&targets, &tgid);
	if (!t)
		return;
	/* The thread's entry first: a thread over its process's share of
	 * thread_waits (or with the map full) leaves nothing in flight either. */
	struct thread_waits *w = thread_counters(&thread_waits, &tid, tgid, &zero_waits,
						 &thread_made, t->thread_limit, &map_full);
	if (!w)
		return;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(prev);
	if (!regs)
		return;
	__u64 gil = 0, holder = 0, deadline = 0, stack = STACK_NONE;
	__u32 kind = sleep_kind(t, regs, &gil);
	if (kind == WAIT_TAKE) {
		holder = read_user_u64(gil + t->last_holder_off);
		deadline = futex_deadline((__u32)BPF_CORE_READ(regs, si), BPF_CORE_READ(regs, r10), now);
		stack = capture_holder(&holder_walks, &holder_stacks, &map_full, tgid, holder);
	}
	__u32 retake = is_retake(tgid, tid, kind, now);

	struct futex_inflight *cur = bpf_map_lookup_elem(&inflight, &tid);
	if (cur && cur->continuing && kind == WAIT_TAKE &&
	    now - cur->last_exit_ns < continuation_gap_ns) {
		cur->segment_start_ns = now;
		cur->holder_tstate = holder;
		cur->holder_stack = stack;
		cur->deadline_ns = deadline;
		cur->continuing = 0;
		cur->slices++;
		note_holder(cur->holders, holder);
		return;
	}
	if (cur && cur->continuing)
		/* The retry never came: the thread got the GIL after its last slice. */
		close_take_wait(w, tgid, tid, cur, cur->last_exit_ns - cur->wait_start_ns,
				cur->last_exit_ns);
	struct futex_inflight fresh = {
		.wait_start_ns = now,
		.segment_start_ns = now,
		.holder_tstate = holder,
		.deadline_ns = deadline,
		.gil_addr = gil,
		.kind = kind,
		.retake = retake,
		.slices = 1,
		.holders = { holder },
		.holder_stack = stack,
	};
	if (bpf_map_update_elem(&inflight, &tid, &fresh, BPF_ANY))
		count_full(&map_full, FULL_INFLIGHT);
}

/* Adds a finished non-GIL sleep to its family's counters. */
static __always_inline void count_sleep(struct thread_waits *w, __u32 kind, __u64 d)
{
	switch (kind) {
	case BLOCK_POLL:
		w->poll_wait_ns += d;
		w->poll_waits++;
		break;
	case BLOCK_READ:
		w->read_wait_ns += d;
		w->read_waits++;
		break;
	case BLOCK_SLEEP:
		w->sleep_wait_ns += d;
		w->sleep_waits++;
		break;
	case BLOCK_OTHER:
		w->block_other_ns += d;
		w->block_others++;
		break;
	default:
		w->other_wait_ns += d;
		w->other_waits++;
	}
}

/* `next` is about to run again: if it slept in a watched process, the wait is over. */
static __always_inline void on_run(struct task_struct *next, __u64 now)
{
	__u32 tid = BPF_CORE_READ(next, pid);
	struct futex_inflight *cur = bpf_map_lookup_elem(&inflight, &tid);
	if (!cur || cur->continuing)
		return;
	__u32 tgid = BPF_CORE_READ(next, tgid);
	const struct gil_target *t = bpf_map_lookup_elem(&targets, &tgid);
	if (!t) {
		/* Unwatched while it slept: count nothing, leave nothing behind. */
		bpf_map_delete_elem(&inflight, &tid);
		return;
	}
	__u64 segment = now - cur->segment_start_ns;

	struct thread_waits *w = thread_counters(&thread_waits, &tid, tgid, &zero_waits,
						 &thread_made, t->thread_limit, &map_full);
	if (!w) {
		/* The entry is gone (taken since the wait began) and cannot be made
		 * again: this wait is lost, counted, and the in-flight entry goes
		 * too, or every later switch-in would retry. */
		bpf_map_delete_elem(&inflight, &tid);
		return;
	}

	switch (cur->kind) {
	case WAIT_TAKE: {
		struct blocked_key bk = {
			.waiter_tid = tid, .waiter_tgid = tgid, .holder_tstate = cur->holder_tstate
		};
		struct blocked_val *b = blocked_entry(&blocked_by, &map_full, &w->blocked_pairs, &bk);
		if (b) {
			b->wait_ns += segment;
			b->segments++;
		}
		count_holder_wait(&holder_waits, &map_full, tgid, cur->holder_stack, segment);
		w->take_futex_calls++;
		if (cur->deadline_ns && now >= cur->deadline_ns) {
			/* Timed out: take_gil asks the holder to drop and waits again. */
			cur->continuing = 1;
			cur->last_exit_ns = now;
			return;
		}
		close_take_wait(w, tgid, tid, cur, now - cur->wait_start_ns, now);
		break;
	}
	case WAIT_MUTEX:
		w->mutex_wait_ns += segment;
		w->mutex_waits++;
		if (w->retake_armed_ns)
			w->retake_armed_ns = now; /* the take wait that follows is still the retake */
		break;
	case WAIT_DROP:
		w->drop_wait_ns += segment;
		w->drop_waits++;
		break;
	default:
		/* Back from a non-GIL sleep: it must retake the GIL now. */
		count_sleep(w, cur->kind, segment);
		w->block_returns++;
		w->retake_armed_ns = now;
	}
	bpf_map_delete_elem(&inflight, &tid);
}

SEC("tp_btf/sched_switch")
int sched_switch(__u64 *ctx)
{
	/* (bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state) */
	int preempt = (int)ctx[0];
	struct task_struct *prev = (struct task_struct *)ctx[1];
	struct task_struct *next = (struct task_struct *)ctx[2];
	__u32 prev_state = (__u32)ctx[3];
	__u64 now = bpf_ktime_get_ns();

	/* A voluntary sleep; an exiting thread's last switch (TASK_DEAD) never wakes. */
	if (!preempt && prev_state != 0 && !(prev_state & TASK_DEAD))
		on_block(prev, now);
	on_run(next, now);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
