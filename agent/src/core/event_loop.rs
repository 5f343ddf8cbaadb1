//! Event-loop lag: which threads run an event loop, and how long their loop
//! kept every other callback waiting.
//!
//! The kernel counts, per thread, the iterations between two poll-family
//! calls ([`LoopIterations`]). An asyncio or uvloop loop asks epoll for ready
//! I/O once per iteration, so its thread shows many iterations, nearly all
//! ending in an epoll call, whether or not it ever sleeps there (a loop kept
//! busy calls epoll_wait with a zero timeout). A thread that polls one socket
//! with a timeout (`socket.settimeout`, `subprocess.communicate`,
//! `multiprocessing`'s handler threads) uses poll() or select() and is not a
//! loop. An iteration's length is the loop's lag: no other coroutine, timer or
//! I/O callback of that loop ran meanwhile.

use crate::core::analyse::percentile_us;
use crate::core::counters::{LoopCounters, LoopIterations, LoopThread};
use std::collections::{BTreeMap, HashMap};

use crate::core::report::{EventLoopReport, LoopFunction};
use crate::core::stacks::Frame;

/// An iteration at least this long blocked its loop: its time counts in
/// `blocked_s`. The kernel is given it at load. 20 ms is ten times the p99 of
/// the healthy loops measured (asyncio and uvloop servers under load, see the
/// README's Diagnoses table) and under the 30-40 ms of a handler that runs
/// CPU work inline, the case to catch.
pub const LONG_ITERATION_NS: u64 = 20_000_000;

/// Functions named per loop at most (the rest are left out, not summed: the
/// shares are of the samples, so what is left out is 1 − their sum).
pub const LOOP_FUNCTIONS: usize = 10;

/// Iterations a thread must finish while measured to be judged a loop: a
/// thread that ran `asyncio.run()` once, briefly, is not.
pub const LOOP_MIN_ITERATIONS: u64 = 20;

const NS_PER_S: f64 = 1e9;
const NS_PER_MS: f64 = 1e6;

/// Whether these iterations are an event loop's: enough of them, and at least
/// half of the thread's poll-family calls were epoll calls.
pub fn is_event_loop(c: &LoopIterations) -> bool {
    c.iterations >= LOOP_MIN_ITERATIONS && c.epolls.saturating_mul(2) >= c.polls
}

/// The lag of one loop thread's iterations.
pub fn loop_report(tid: u32, t: &LoopThread) -> EventLoopReport {
    let c = &t.counted;
    let max_ms = t.max_ns as f64 / NS_PER_MS;
    // Interpolating inside a log2 bucket can overshoot the longest iteration.
    let lag = |q: f64| (percentile_us(&c.hist, q) / 1e3).min(max_ms);
    EventLoopReport {
        tid,
        iterations: c.iterations,
        lag_p50_ms: lag(0.5),
        lag_p99_ms: lag(0.99),
        lag_max_ms: max_ms,
        blocked_s: c.long_ns as f64 / NS_PER_S,
        functions: Vec::new(),
    }
}

/// The event loops among the threads of one measurement, most blocked first
/// (then most iterations, then by tid).
pub fn event_loops(loops: &LoopCounters) -> Vec<EventLoopReport> {
    let mut out: Vec<EventLoopReport> = loops
        .threads
        .iter()
        .filter(|(_, t)| is_event_loop(&t.counted))
        .map(|(tid, t)| {
            let mut report = loop_report(*tid, t);
            if let Some(frames) = loops.code.threads.get(tid) {
                report.functions = loop_functions(frames);
            }
            report
        })
        .collect();
    out.sort_by(|a, b| {
        b.blocked_s
            .total_cmp(&a.blocked_s)
            .then(b.iterations.cmp(&a.iterations))
            .then(a.tid.cmp(&b.tid))
    });
    out
}

/// The functions a loop thread ran during its long iterations, from the
/// running frames sampled then: per function (qualified name and file) its
/// share of the samples, at the line sampled most; most first, at most
/// [`LOOP_FUNCTIONS`]. The share of the samples estimates the share of the
/// blocked time (each sample stands for the same slice of a long iteration).
pub fn loop_functions(frames: &BTreeMap<Frame, u64>) -> Vec<LoopFunction> {
    let total: u64 = frames.values().sum();
    if total == 0 {
        return Vec::new();
    }
    /// One function's samples, and its busiest line with that line's samples.
    #[derive(Default)]
    struct Tally {
        samples: u64,
        busiest: (u64, Option<u32>),
    }
    let mut by_function: HashMap<(&str, &str), Tally> = HashMap::new();
    for (frame, n) in frames {
        let e = by_function
            .entry((frame.function.as_str(), frame.file.as_str()))
            .or_default();
        e.samples += n;
        if (*n, frame.line) > e.busiest {
            e.busiest = (*n, frame.line);
        }
    }
    let mut out: Vec<(u64, LoopFunction)> = by_function
        .into_iter()
        .map(|((function, file), t)| {
            let f = LoopFunction {
                function: function.to_string(),
                file: file.to_string(),
                line: t.busiest.1,
                share: t.samples as f64 / total as f64,
            };
            (t.samples, f)
        })
        .collect();
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.function.cmp(&b.1.function))
            .then_with(|| a.1.file.cmp(&b.1.file))
    });
    out.into_iter()
        .take(LOOP_FUNCTIONS)
        .map(|(_, f)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::HIST_SLOTS;

    /// `n` iterations of `ms` each, of which `epolls` ended in epoll.
    fn iterations(n: u64, ms: u64, polls: u64, epolls: u64) -> LoopThread {
        let ns = ms * 1_000_000;
        let mut hist = [0; HIST_SLOTS];
        hist[ns.ilog2() as usize] = n;
        let long = ns >= LONG_ITERATION_NS;
        LoopThread {
            counted: LoopIterations {
                iterations: n,
                busy_ns: n * ns,
                long_iterations: if long { n } else { 0 },
                long_ns: if long { n * ns } else { 0 },
                polls,
                epolls,
                hist,
            },
            max_ns: ns,
            running_since_ns: None,
        }
    }

    fn counters(threads: &[(u32, LoopThread)]) -> LoopCounters {
        LoopCounters {
            at_ns: 0,
            threads: threads.iter().copied().collect(),
            code: Default::default(),
        }
    }

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: "/srv/app.py".into(),
            line: Some(line),
        }
    }

    #[test]
    fn loop_functions_are_the_sampled_frames_by_function_most_first() {
        let frames = BTreeMap::from([
            (frame("crunch", 10), 6),
            (frame("crunch", 11), 2),
            (frame("handler", 30), 2),
        ]);
        let f = loop_functions(&frames);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].function.as_str(), f[0].line), ("crunch", Some(10)));
        assert!((f[0].share - 0.8).abs() < 1e-9);
        assert_eq!(f[1].function, "handler");
        assert!((f[1].share - 0.2).abs() < 1e-9);
        assert!(loop_functions(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_loop_report_names_the_code_sampled_on_its_thread() {
        let mut c = counters(&[(7, iterations(100, 30, 100, 100))]);
        c.code.add(7, frame("crunch", 10));
        c.code.add(8, frame("elsewhere", 1));
        let loops = event_loops(&c);
        assert_eq!(loops.len(), 1);
        assert_eq!(loops[0].functions.len(), 1);
        assert_eq!(loops[0].functions[0].function, "crunch");
        assert!((loops[0].functions[0].share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_thread_iterating_on_epoll_is_a_loop_and_one_polling_a_socket_is_not() {
        let loops = event_loops(&counters(&[
            (10, iterations(100, 1, 101, 101)),
            (11, iterations(100, 30, 101, 0)),
            (12, iterations(LOOP_MIN_ITERATIONS - 1, 30, 20, 20)),
        ]));
        let tids: Vec<u32> = loops.iter().map(|l| l.tid).collect();
        assert_eq!(tids, [10]);
    }

    #[test]
    fn lag_percentiles_stay_in_the_bucket_of_the_iterations_and_under_the_longest() {
        let mut t = iterations(99, 1, 100, 100);
        // One 30 ms iteration among 100: p99 reaches into it, p50 does not.
        t.counted.hist[(30_000_000u64).ilog2() as usize] += 1;
        t.counted.iterations += 1;
        t.counted.long_iterations = 1;
        t.counted.long_ns = 30_000_000;
        t.max_ns = 30_000_000;
        let r = loop_report(7, &t);
        assert!((0.5..=1.05).contains(&r.lag_p50_ms), "{r:?}");
        assert!(r.lag_p99_ms <= 30.0, "{r:?}");
        assert_eq!(r.lag_max_ms, 30.0);
        assert!((r.blocked_s - 0.03).abs() < 1e-9);
    }

    #[test]
    fn the_most_blocked_loop_comes_first() {
        let loops = event_loops(&counters(&[
            (20, iterations(500, 1, 500, 500)),
            (21, iterations(50, 40, 50, 50)),
        ]));
        assert_eq!(loops[0].tid, 21);
        assert!((loops[0].blocked_s - 2.0).abs() < 1e-9);
        assert_eq!(loops[1].blocked_s, 0.0);
    }
}
