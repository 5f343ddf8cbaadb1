//! Rust mirror of `ebpf/event_loop.h` (event-loop iterations per thread).

use crate::core::counters::{self, LoopIterations, HIST_SLOTS};

/// Event-loop iterations of one thread (map `loop_threads`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopThread {
    pub tgid: u32,
    pub _pad: u32,
    pub iterations: u64,
    pub busy_ns: u64,
    pub long_iterations: u64,
    pub long_ns: u64,
    pub max_ns: u64,
    pub polls: u64,
    pub epolls: u64,
    /// Kernel-side state: the return that began the iteration running now (0: in a call).
    pub iteration_start_ns: u64,
    pub hist: [u64; HIST_SLOTS],
}

impl From<LoopThread> for counters::LoopThread {
    /// The counters, the longest iteration and the one running now; not the
    /// key-like `tgid` or the padding.
    fn from(t: LoopThread) -> Self {
        Self {
            counted: LoopIterations {
                iterations: t.iterations,
                busy_ns: t.busy_ns,
                long_iterations: t.long_iterations,
                long_ns: t.long_ns,
                polls: t.polls,
                epolls: t.epolls,
                hist: t.hist,
            },
            max_ns: t.max_ns,
            running_since_ns: (t.iteration_start_ns != 0).then_some(t.iteration_start_ns),
        }
    }
}

/// One long iteration (ring buffer `long_iterations`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongIterationRecord {
    pub tgid: u32,
    pub tid: u32,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl From<LongIterationRecord> for counters::LongIteration {
    fn from(r: LongIterationRecord) -> Self {
        Self {
            tgid: r.tgid,
            tid: r.tid,
            start_ns: r.start_ns,
            end_ns: r.end_ns,
        }
    }
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for LoopThread {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn rust_mirror_matches_the_btf_of_the_event_loop_probe() {
        let s = btf::structs("event_loop.bpf.o");
        assert_layout!(
            s,
            "loop_thread",
            LoopThread,
            [
                tgid,
                _pad,
                iterations,
                busy_ns,
                long_iterations,
                long_ns,
                max_ns,
                polls,
                epolls,
                iteration_start_ns,
                hist
            ]
        );
        assert_layout!(
            s,
            "long_iteration",
            LongIterationRecord,
            [tgid, tid, start_ns, end_ns]
        );
    }

    #[test]
    fn an_iteration_start_of_zero_means_inside_a_poll_call() {
        let mut t = LoopThread {
            tgid: 1,
            _pad: 0,
            iterations: 3,
            busy_ns: 30,
            long_iterations: 0,
            long_ns: 0,
            max_ns: 20,
            polls: 4,
            epolls: 4,
            iteration_start_ns: 0,
            hist: [0; HIST_SLOTS],
        };
        let inside: counters::LoopThread = t.into();
        assert_eq!(inside.running_since_ns, None);
        assert_eq!((inside.counted.iterations, inside.max_ns), (3, 20));
        t.iteration_start_ns = 77;
        assert_eq!(counters::LoopThread::from(t).running_since_ns, Some(77));
    }
}
