/* Structs shared by the BPF programs and the agent.
 *
 * The Rust side mirrors every struct here in agent/src/probes/layout.rs, with a
 * test that checks sizes and offsets; change both together.
 */
#ifndef GILSCOPE_H
#define GILSCOPE_H

#include <linux/types.h>

/* log2(ns) buckets: slot i counts waits in [2^i, 2^(i+1)) ns, the same
 * boundaries as an OpenTelemetry exponential histogram at scale 0. */
#define GILSCOPE_HIST_SLOTS 64

/* GILs watched per process: the main interpreter's, plus those of
 * subinterpreters with their own GIL (3.12+). */
#define GILSCOPE_MAX_GILS 8

/* Distinct GIL holders remembered per wait for its episode record: a wait of
 * many slices behind many threads names the first four. */
#define GILSCOPE_EPISODE_HOLDERS 4

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
};

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

/* Cumulative blocking counters of one thread (key: tid): GIL waits, other
 * futex waits, and every other voluntary sleep by the syscall it sleeps in. */
struct thread_waits {
	__u32 tgid;
	__u32 _pad;
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
	/* Sleeps outside futex(), by syscall family (see block_kind in bits.bpf.h). */
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

/* What a thread is blocked on right now (key: tid). The first four are futex
 * waits; the BLOCK_* kinds are sleeps in other syscalls. */
enum wait_kind {
	WAIT_OTHER = 0, WAIT_TAKE = 1, WAIT_MUTEX = 2, WAIT_DROP = 3,
	BLOCK_POLL = 4, BLOCK_READ = 5, BLOCK_SLEEP = 6, BLOCK_OTHER = 7,
};

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
};

/* One GIL contention episode: a merged take wait that lasted at least
 * episode_threshold_ns, sent through the `episodes` ring buffer when it ends.
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

/* Exact take_gil/drop_gil timing from uprobes (--precise; key: tid). */
struct precise_gil {
	__u32 tgid;
	__u32 _pad;
	__u64 take_calls;     /* every take_gil, including the uncontended ones */
	__u64 take_ns;        /* entry to return of take_gil */
	__u64 hold_ns;        /* take_gil return to the next drop_gil entry */
	__u64 holds;
	__u64 take_hist[GILSCOPE_HIST_SLOTS];
};

/* Free-threaded builds: PyMutex contention through the parking-lot slow path
 * (_PyParkingLot_Park, uprobes; key: tid). */
struct lock_waits {
	__u32 tgid;
	__u32 _pad;
	__u64 park_ns;        /* entry to return of _PyParkingLot_Park, lock waits */
	__u64 parks;
	__u64 event_ns;       /* parks called from PyEvent_WaitTimed (join, thread start): not contention */
	__u64 events;
	__u64 park_hist[GILSCOPE_HIST_SLOTS];
};

/* Park time per lock address, to rank hot locks. */
struct lock_key {
	__u32 tgid;
	__u32 _pad;
	__u64 address;        /* the PyMutex (or other parking-lot word) waited on */
};

struct lock_val {
	__u64 park_ns;
	__u64 parks;
};

/* A park in progress (key: tid). */
struct park_inflight {
	__u64 start_ns;
	__u64 address;
	__u64 caller;         /* return address of the _PyParkingLot_Park call */
};

/* musl: GIL waits from uprobes on the libc condvar wait (gil_condwait.bpf.c),
 * filtered on the condvar address (arg 0) because musl's futex words are on
 * the waiter's stack. Where the GILs of one process are (key: tgid). */
struct condwait_target {
	__u64 gil_addrs[GILSCOPE_MAX_GILS];  /* 0: unused slot */
	__u32 cond_off;         /* take side: take_gil waits on &gil->cond */
	__u32 switch_cond_off;  /* drop side: drop_gil's forced-switch wait on &gil->switch_cond */
	__u32 last_holder_off;  /* PyThreadState* of the thread that took the GIL last */
	__u32 _pad;
};

/* Cumulative condvar-wait counters of one thread (key: tid). */
struct condwait_waits {
	__u32 tgid;
	__u32 _pad;
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
};

#endif
