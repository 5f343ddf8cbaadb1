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
	FULL_HOLDER_STACKS = 4, /* holder_stacks, cond_holder_stacks: the wait went to STACK_UNKNOWN */
	FULL_HOLDER_WAITS = 5,  /* holder_waits, cond_holder_waits */
	FULL_SLOTS = 6,
};

/* The most (waiter, holder) pairs one waiting thread creates in blocked_by /
 * cond_blocked_by. The holder is read from the target's own memory, so a
 * process that churns it (or a huge one) could otherwise fill the map shared by
 * every watched process; past this, its waits go to holder 0 (unknown). A real
 * waiter waits behind at most as many holders as its process has threads. */
#define GILSCOPE_HOLDERS_PER_WAITER 256

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
	__u64 holder_stack;      /* the holder's stack id when the last slice began
				  * (holder_stack.bpf.h; STACK_NONE: not captured) */
};

/* GIL wait of one thread while a given thread state held the GIL. */
struct blocked_key {
	__u32 waiter_tid;
	__u32 waiter_tgid;    /* the waiter's process: a reused tid is another key */
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

/* How to walk the Python frames of a thread state in one process (maps
 * holder_walks, cond_holder_walks; key: tgid): the agent's FrameWalk
 * (agent/src/cpython/layout/frames.rs) of its CPython build. A process without
 * one has no holder stacks captured. Offsets are from the start of the struct
 * they name. */
struct frame_walk {
	__u64 code_tag_mask;    /* bits of the frame's code pointer to clear (3.14's tagged _PyStackRef) */
	__u32 tstate_frame;     /* innermost frame: *(tstate + tstate_frame) ... */
	__u32 cframe_frame;     /* ... then *(that + cframe_frame) when two_loads (3.11, 3.12) */
	__u32 frame_previous;   /* the caller's frame */
	__u32 frame_code;       /* the code object */
	__u32 frame_instr;      /* the position: an int (f_lasti) or a pointer into the code */
	__u32 frame_owner;      /* char owner, when has_owner */
	__u8 two_loads;
	__u8 instr_is_int;      /* 1: position is a 4-byte int (3.8-3.10), 0: an 8-byte pointer */
	__u8 has_owner;
	__u8 owner_skip_from;   /* frames whose owner is >= this are not Python code: skipped */
	__u32 _pad;
};

/* One captured frame: the code object's address and the raw position, as read
 * (pointer, or the int sign-extended), for user space to symbolize. */
struct raw_frame {
	__u64 code;
	__u64 instr;
};

/* flags of a holder_stack: why it ends before the root. */
enum stack_flag {
	STACK_TRUNCATED = 1,  /* deeper than GILSCOPE_STACK_DEPTH: the outer frames are missing */
	STACK_BROKEN = 2,     /* a read failed mid-chain (frames changing under the walk) */
};

/* A GIL holder's Python stack as captured when a take wait began behind it
 * (maps holder_stacks, cond_holder_stacks; key: struct holder_key). Stored
 * once per distinct stack, by its hash. */
struct holder_stack {
	__u32 depth;   /* frames used, innermost (leaf) first */
	__u32 flags;   /* STACK_TRUNCATED | STACK_BROKEN */
	struct raw_frame frames[GILSCOPE_STACK_DEPTH];
};

/* Stack ids with a meaning; every other id is a stack's hash. */
enum stack_id_special {
	STACK_NONE = 0,     /* not captured: the process has no frame_walk (never a map key) */
	STACK_UNKNOWN = 1,  /* captured nothing: holder unreadable, no Python frame, or stacks map full */
};

/* A process's stack (holder_stacks), or the GIL wait behind it (holder_waits). */
struct holder_key {
	__u32 tgid;
	__u32 _pad;
	__u64 stack_id;
};

/* GIL wait of all waiters of a process behind a holder running one stack:
 * each take segment (slice) counts behind the stack captured at its start. */
struct holder_wait {
	__u64 wait_ns;
	__u64 segments;
};

#endif
