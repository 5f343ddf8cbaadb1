/* What crosses between event_loop.bpf.c and the agent.
 *
 * Rust mirror: agent/src/probes/layout/event_loop.rs.
 */
#ifndef GILSCOPE_EVENT_LOOP_H
#define GILSCOPE_EVENT_LOOP_H

#include "gilscope.h"

/* Event-loop iterations of one thread (map `loop_threads`, key: tid). An
 * iteration runs from the return of a poll-family call (epoll_wait,
 * epoll_pwait, epoll_pwait2, poll, ppoll, select, pselect6) to the thread's
 * next such call: the time the loop ran callbacks and no I/O of it was seen.
 * Created at a watched thread's first poll-family return. */
struct loop_thread {
	__u32 tgid;
	__u32 _pad;
	__u64 iterations;       /* finished iterations */
	__u64 busy_ns;          /* their total length */
	__u64 long_iterations;  /* iterations of at least long_iteration_ns ... */
	__u64 long_ns;          /* ... and their total length */
	__u64 max_ns;           /* the longest iteration */
	__u64 polls;            /* poll-family calls returned */
	__u64 epolls;           /* of which epoll_wait/epoll_pwait/epoll_pwait2 */
	/* State, not a counter: CLOCK_MONOTONIC ns of the return that began the
	 * iteration running now; 0 while the thread is inside a poll-family call. */
	__u64 iteration_start_ns;
	__u64 hist[GILSCOPE_HIST_SLOTS]; /* iterations by log2(ns) of their length */
};

/* One long iteration (at least long_iteration_ns), sent through the
 * `long_iterations` ring buffer when it ends: the only per-event record of
 * this probe, and only for iterations that blocked their loop. */
struct long_iteration {
	__u32 tgid;
	__u32 tid;
	__u64 start_ns;  /* CLOCK_MONOTONIC (bpf_ktime_get_ns): the poll return */
	__u64 end_ns;    /* the next poll-family call */
};

#endif
