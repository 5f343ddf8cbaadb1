/* What crosses between gil_wait.bpf.c and the agent, besides gil_shared.h.
 *
 * Rust mirror: agent/src/probes/layout/gil_wait.rs.
 */
#ifndef GILSCOPE_GIL_WAIT_H
#define GILSCOPE_GIL_WAIT_H

#include "gil_shared.h"

/* Where the GILs of one process live and how to read them (key: tgid).
 * Offsets are relative to a GIL's address and come from the agent's version table. */
struct gil_target {
	__u64 gil_addrs[GILSCOPE_MAX_GILS];  /* 0: unused slot */
	__u32 gil_size;         /* bytes of struct _gil_runtime_state */
	__u32 cond_off;         /* take side: waiters sleep on cond ... */
	__u32 mutex_off;        /* ... and contend on mutex */
	__u32 switch_cond_off;  /* drop side (FORCE_SWITCHING): switch_cond + switch_mutex up to gil_size */
	__u32 last_holder_off;  /* PyThreadState* of the thread that took the GIL last */
	__u32 locked_off;       /* int, 1 while held */
	__u32 thread_limit;     /* threads of this process thread_waits may hold (admit_one) */
	__u32 episode_limit;    /* episode records it may have sent so far (admit_one) */
};

/* Cumulative blocking counters of one thread (key: tid): GIL waits, other
 * futex waits, and every other voluntary sleep by the syscall it sleeps in. */
struct thread_waits {
	__u32 tgid;
	__u32 blocked_pairs;  /* blocked_by entries this thread made (GILSCOPE_HOLDERS_PER_WAITER) */
	__u64 take_wait_ns;   /* blocked on gil->cond, timed-out retries merged into one wait */
	__u64 take_waits;     /* merged waits */
	__u64 take_futex_calls;
	__u64 mutex_wait_ns;  /* blocked on gil->mutex */
	__u64 mutex_waits;
	__u64 drop_wait_ns;   /* blocked on switch_cond/switch_mutex inside drop_gil */
	__u64 drop_waits;
	__u64 other_wait_ns;  /* any other futex wait of the process */
	__u64 other_waits;
	__u64 take_hist[GILSCOPE_HIST_SLOTS];
	/* Sleeps outside futex(), by syscall family (see block_kind in gil_wait.bpf.c). */
	__u64 poll_wait_ns;   /* epoll_wait/epoll_pwait(2)/poll/ppoll/select/pselect6 */
	__u64 poll_waits;
	__u64 read_wait_ns;   /* read/readv/pread64/recvfrom/recvmsg/accept/accept4 */
	__u64 read_waits;
	__u64 sleep_wait_ns;  /* nanosleep/clock_nanosleep */
	__u64 sleep_waits;
	__u64 block_other_ns; /* any other syscall, or no syscall (page fault, ...) */
	__u64 block_others;
	/* GIL residual latency: after waking from a non-GIL sleep a thread retakes the
	 * GIL; a take wait that begins within retake_window_ns of that wake, before any
	 * other block, is a retake wait. Returns that found the GIL free never block. */
	__u64 block_returns;  /* wakes from non-GIL sleeps (other futex and the families above) */
	__u64 retake_armed_ns; /* state, not a counter: time of the last such wake; 0 = none pending */
	__u64 retake_waits;
	__u64 retake_wait_ns;
	__u64 retake_hist[GILSCOPE_HIST_SLOTS];
};

/* What a thread is blocked on right now (key: tid); kind is enum wait_kind. */
struct futex_inflight {
	__u64 wait_start_ns;     /* start of the (merged) wait */
	__u64 segment_start_ns;  /* start of the current futex call */
	__u64 last_exit_ns;      /* end of the last timed-out take segment */
	__u64 holder_tstate;     /* gil->last_holder when this segment began */
	__u64 deadline_ns;       /* CLOCK_MONOTONIC timeout of this futex call; 0 = none/unknown */
	__u64 gil_addr;          /* the GIL this wait is on (0: not a GIL wait) */
	__u32 kind;              /* enum wait_kind */
	__u32 continuing;        /* 1: a timed-out take wait that will retry */
	__u32 retake;            /* 1: a take wait right after a wake from a non-GIL sleep */
	__u32 slices;            /* take futex calls merged into this wait so far */
	/* Distinct holders (gil->last_holder) seen at the start of the wait's slices,
	 * in order of appearance, for the episode record; 0 = unused slot. */
	__u64 holders[GILSCOPE_EPISODE_HOLDERS];
	__u64 holder_stack;      /* id of the holder's stack when this segment began (STACK_NONE: not captured) */
};

#endif
