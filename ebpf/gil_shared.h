/* What the two GIL wait probes (gil_wait.bpf.c: futex waits seen from
 * sched_switch; gil_condwait.bpf.c: musl's condvar waits) hand to the agent in
 * the same shape, so it reads and merges them with one code path.
 *
 * Rust mirror: agent/src/probes/layout/gil_shared.rs.
 */
#ifndef GILSCOPE_GIL_SHARED_H
#define GILSCOPE_GIL_SHARED_H

#include "gilscope.h"

/* Slots of the map-full counters (u64 array `map_full` of gil_wait.bpf.c,
 * `cond_map_full` of gil_condwait.bpf.c): inserts into a per-thread map that
 * failed because the map was full (or no entry could be allocated), so the
 * wait was not counted. Counted only on the failure branch. The musl probe's
 * maps use the same slot as their futex-probe counterparts. */
enum map_full_slot {
	FULL_THREAD_WAITS = 0,  /* thread_waits, cond_waits */
	FULL_BLOCKED_BY = 1,    /* blocked_by, cond_blocked_by */
	FULL_INFLIGHT = 2,      /* inflight, cond_inflight */
	FULL_GIL_WAITS = 3,     /* gil_waits, cond_gil_waits */
	FULL_SLOTS = 4,
};

/* The `kind` of a wait in progress (futex_inflight, condwait_inflight). The
 * first four are futex waits (the condvar probe uses OTHER, TAKE and DROP); the
 * BLOCK_* kinds are sleeps in other syscalls (gil_wait.bpf.c only). */
enum wait_kind {
	WAIT_OTHER = 0, WAIT_TAKE = 1, WAIT_MUTEX = 2, WAIT_DROP = 3,
	BLOCK_POLL = 4, BLOCK_READ = 5, BLOCK_SLEEP = 6, BLOCK_OTHER = 7,
};

/* One GIL contention episode: a merged take wait that lasted at least
 * episode_threshold_ns, sent through the `episodes` ring buffer (musl:
 * `cond_episodes`) when it ends.
 * The only per-event record the kernel emits, and only for long waits. */
struct gil_episode {
	__u32 tgid;
	__u32 tid;               /* the waiter */
	__u64 start_ns;          /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 end_ns;
	__u64 gil_addr;
	__u64 holders[GILSCOPE_EPISODE_HOLDERS]; /* PyThreadState*, 0 = unused */
	__u32 slices;            /* take futex calls (timed-out slices + the last) */
	__u32 retake;            /* 1: began right after a wake from a non-GIL sleep */
};

/* GIL wait of one thread while a given thread state held the GIL. */
struct blocked_key {
	__u32 waiter_tid;
	__u32 _pad;
	__u64 holder_tstate;  /* gil->last_holder read when the wait (segment) began; 0 = unreadable */
};

struct blocked_val {
	__u64 wait_ns;
	__u64 segments;
};

/* Take-side GIL wait per GIL, so waits land on the right interpreter's GIL. */
struct gil_key {
	__u32 tgid;
	__u32 _pad;
	__u64 gil_addr;
};

struct gil_val {
	__u64 take_wait_ns;
	__u64 take_waits;
};

#endif
