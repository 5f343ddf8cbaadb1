/* What crosses between gil_condwait.bpf.c (musl) and the agent, besides
 * gil_shared.h.
 *
 * Rust mirror: agent/src/probes/layout/gil_condwait.rs.
 */
#ifndef GILSCOPE_GIL_CONDWAIT_H
#define GILSCOPE_GIL_CONDWAIT_H

#include "gil_shared.h"

/* musl: GIL waits from uprobes on the libc condvar wait (gil_condwait.bpf.c),
 * filtered on the condvar address (arg 0) because musl's futex words are on
 * the waiter's stack. Where the GILs of one process are (key: tgid). */
struct condwait_target {
	__u64 gil_addrs[GILSCOPE_MAX_GILS];  /* 0: unused slot */
	__u32 cond_off;         /* take side: take_gil waits on &gil->cond */
	__u32 switch_cond_off;  /* drop side: drop_gil's forced-switch wait on &gil->switch_cond */
	__u32 last_holder_off;  /* PyThreadState* of the thread that took the GIL last */
	__u32 thread_limit;     /* threads of this process cond_waits may hold (admit_one) */
	__u32 episode_limit;    /* episode records it may have sent so far (admit_one) */
	__u32 _pad;
};

/* Cumulative condvar-wait counters of one thread (key: tid). */
struct condwait_waits {
	__u32 tgid;
	__u32 blocked_pairs;  /* cond_blocked_by entries this thread made (GILSCOPE_HOLDERS_PER_WAITER) */
	__u64 take_wait_ns;   /* in the condvar wait on gil->cond, timed-out slices merged */
	__u64 take_waits;     /* merged waits */
	__u64 take_slices;    /* condvar wait calls on gil->cond */
	__u64 drop_wait_ns;   /* in the condvar wait on gil->switch_cond */
	__u64 drop_waits;
	__u64 take_hist[GILSCOPE_HIST_SLOTS];
};

/* A condvar wait in progress (key: tid); kind is enum wait_kind (TAKE or DROP). */
struct condwait_inflight {
	__u64 wait_start_ns;     /* start of the (merged) wait */
	__u64 slice_start_ns;    /* start of the current condvar wait call */
	__u64 last_exit_ns;      /* end of the last timed-out take slice */
	__u64 holder_tstate;     /* gil->last_holder when this slice began */
	__u64 gil_addr;
	__u32 kind;
	__u32 continuing;        /* 1: a timed-out take wait that will retry */
	__u32 slices;            /* take slices merged into this wait so far */
	__u32 _pad;
	__u64 holders[GILSCOPE_EPISODE_HOLDERS]; /* distinct holders seen, 0 = unused */
	__u64 holder_stack;      /* id of the holder's stack when this slice began (STACK_NONE: not captured) */
};

#endif
