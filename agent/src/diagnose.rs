//! Reads a process report and says, in one line and one paragraph, what it means.
//!
//! Each rule is a function over [`Facts`] that returns a finding or nothing;
//! rules are thresholds on measured ratios, and each finding quotes the numbers
//! it rests on (`evidence`) so the user can check the claim. `no_contention` is
//! said only when no rule found a problem.

use std::collections::BTreeMap;

use crate::report::{Diagnosis, LockContention, ProcessReport, Severity, ThreadReport};

/// GIL queue length (Σ GIL wait / wall) from which threads are called serialized.
pub const SERIALIZED_QUEUE_LENGTH: f64 = 0.25;
/// A thread "wants CPU" when it runs or waits for the GIL at least this share of the wall time.
const CPU_DEMAND_SHARE: f64 = 0.5;
/// Σ lock park time / wall from which PyMutex contention is reported.
pub const LOCK_QUEUE_LENGTH: f64 = 0.25;

/// Everything the rules may look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub process: &'a ProcessReport,
    pub threads: &'a [ThreadReport],
    pub locks: Option<&'a LockContention>,
}

/// A rule: a finding, or `None` when its pattern is absent.
type Rule = fn(&Facts) -> Option<Diagnosis>;

/// Every rule, in no particular order (findings are sorted by severity).
const RULES: &[Rule] = &[lock_contention, serialized_threads];

/// The diagnoses of one process, most severe first (never empty).
pub fn diagnose(facts: &Facts) -> Vec<Diagnosis> {
    let mut out: Vec<Diagnosis> = RULES.iter().filter_map(|rule| rule(facts)).collect();
    if out.is_empty() {
        out.push(no_contention(facts));
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.severity));
    out
}

fn evidence<const N: usize>(pairs: [(&str, f64); N]) -> BTreeMap<String, f64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Threads that spend most of the time running or waiting for the GIL.
fn cpu_hungry(threads: &[ThreadReport], wall_s: f64) -> usize {
    threads
        .iter()
        .filter(|t| wall_s > 0.0 && (t.cpu_s + t.gil_wait_s) / wall_s >= CPU_DEMAND_SHARE)
        .count()
}

fn lock_contention(f: &Facts) -> Option<Diagnosis> {
    let locks = f.locks?;
    let queue = ratio(locks.wait_s, f.process.wall_s);
    if queue < LOCK_QUEUE_LENGTH {
        return None;
    }
    let hottest = locks
        .top_locks
        .first()
        .map(|l| {
            format!(
                "; the hottest lock ({}) accounts for {:.2} s",
                l.address, l.wait_s
            )
        })
        .unwrap_or_default();
    Some(Diagnosis {
        kind: "lock_contention".into(),
        severity: Severity::Warning,
        summary: format!(
            "lock contention: threads parked on PyMutexes {:.2} s in {} waits \
             ({queue:.2} threads waiting on average){hottest}",
            locks.wait_s, locks.waits
        ),
        advice: "Without the GIL, threads now contend on the per-object locks that \
                 replace it: several threads mutate the same list, dict or object. \
                 Give each thread its own data and merge at the end, or use a \
                 queue.Queue to hand work over."
            .into(),
        evidence: evidence([
            ("lock_wait_s", locks.wait_s),
            ("lock_waits", locks.waits as f64),
            ("lock_queue_length", queue),
        ]),
    })
}

fn serialized_threads(f: &Facts) -> Option<Diagnosis> {
    let p = f.process;
    let hungry = cpu_hungry(f.threads, p.wall_s);
    if p.gil_queue_length < SERIALIZED_QUEUE_LENGTH || hungry < 2 {
        return None;
    }
    // n fully serialized threads keep n-1 of them waiting: near that, it is critical.
    let severity = if p.gil_queue_length >= 0.75 * (hungry as f64 - 1.0) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Diagnosis {
        kind: "gil_serialized_threads".into(),
        severity,
        summary: format!(
            "{hungry} threads, effective parallelism {:.2}: the GIL serializes them \
             (GIL held {:.0}% of the time, {:.2} threads waiting for it on average)",
            p.effective_parallelism,
            p.gil_utilization * 100.0,
            p.gil_queue_length
        ),
        advice: "These threads want CPU at the same time but only one can run Python \
                 at once. Move the CPU-bound work to processes (multiprocessing, \
                 ProcessPoolExecutor), run it on a free-threaded build (3.13t+), or move \
                 the hot loop into code that releases the GIL (NumPy, hashlib, zlib, a \
                 C/Rust extension that drops it). More threads will not help."
            .into(),
        evidence: evidence([
            ("threads_wanting_cpu", hungry as f64),
            ("gil_queue_length", p.gil_queue_length),
            ("gil_utilization", p.gil_utilization),
            ("effective_parallelism", p.effective_parallelism),
        ]),
    })
}

fn no_contention(f: &Facts) -> Diagnosis {
    let p = f.process;
    Diagnosis {
        kind: "no_contention".into(),
        severity: Severity::Info,
        summary: format!(
            "no GIL contention: effective parallelism {:.2}, GIL held {:.0}% of the time, \
             {:.2} threads waiting for it on average",
            p.effective_parallelism,
            p.gil_utilization * 100.0,
            p.gil_queue_length
        ),
        advice: "The threads are not held back by the GIL; the concurrency is real as far \
                 as the GIL is concerned."
            .into(),
        evidence: evidence([
            ("effective_parallelism", p.effective_parallelism),
            ("gil_utilization", p.gil_utilization),
            ("gil_queue_length", p.gil_queue_length),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(cpu_s: f64, gil_wait_s: f64) -> ThreadReport {
        ThreadReport {
            tid: 1,
            name: "t".into(),
            python_name: None,
            os_name: "t".into(),
            cpu_s,
            runqueue_wait_s: 0.0,
            gil_wait_s,
            gil_waits: 0,
            gil_wait_p50_us: 0.0,
            gil_wait_p99_us: 0.0,
            gil_hold_s: None,
            gil_hold_share: 0.0,
            drop_wait_s: 0.0,
            futex_wait_s: 0.0,
            lock_wait_s: 0.0,
            lock_waits: 0,
            blocked_by: vec![],
        }
    }

    fn diagnose_(process: &ProcessReport, threads: &[ThreadReport]) -> Vec<Diagnosis> {
        diagnose(&Facts {
            process,
            threads,
            locks: None,
        })
    }

    fn process(queue: f64, parallelism: f64) -> ProcessReport {
        ProcessReport {
            wall_s: 4.0,
            cpu_s: parallelism * 4.0,
            runqueue_wait_s: 0.0,
            gil_wait_s: queue * 4.0,
            gil_waits: 0,
            gil_wait_p50_us: 0.0,
            gil_wait_p99_us: 0.0,
            gil_hold_s: None,
            gil_utilization: 0.99,
            gil_queue_length: queue,
            effective_parallelism: parallelism,
            gil_switches_per_s: 200.0,
            futex_wait_s: 0.0,
        }
    }

    #[test]
    fn four_waiting_threads_are_serialized() {
        let threads = vec![thread(1.0, 3.0); 4];
        let d = diagnose_(&process(3.0, 1.01), &threads);
        assert_eq!(d[0].kind, "gil_serialized_threads");
        assert_eq!(d[0].severity, Severity::Critical);
        assert!(
            d[0].summary
                .starts_with("4 threads, effective parallelism 1.01"),
            "{}",
            d[0].summary
        );
    }

    #[test]
    fn two_threads_taking_turns_are_critical_but_mild_contention_is_a_warning() {
        let threads = vec![thread(2.0, 1.8); 2];
        let d = diagnose_(&process(0.9, 0.98), &threads);
        assert_eq!(d[0].severity, Severity::Critical);
        let threads = vec![thread(3.0, 0.6); 4];
        let d = diagnose_(&process(0.6, 3.0), &threads);
        assert_eq!(d[0].kind, "gil_serialized_threads");
        assert_eq!(d[0].severity, Severity::Warning);
    }

    #[test]
    fn parallel_threads_are_not_contended() {
        let threads = vec![thread(3.8, 0.05); 2];
        let d = diagnose_(&process(0.03, 1.9), &threads);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "no_contention");
    }

    #[test]
    fn heavy_lock_parking_is_reported_first() {
        let locks = LockContention {
            wait_s: 3.0,
            waits: 900,
            wait_p50_us: 50.0,
            wait_p99_us: 900.0,
            top_locks: vec![],
        };
        let threads = vec![thread(3.0, 0.0); 4];
        let d = diagnose(&Facts {
            process: &process(0.0, 3.0),
            threads: &threads,
            locks: Some(&locks),
        });
        assert_eq!(d[0].kind, "lock_contention");
        assert_eq!(
            d.len(),
            1,
            "no_contention only when nothing was found: {d:?}"
        );
    }

    #[test]
    fn one_busy_thread_alone_is_not_serialization() {
        let threads = vec![thread(4.0, 0.0), thread(0.0, 1.2)];
        let d = diagnose_(&process(0.3, 1.0), &threads);
        assert_eq!(d[0].kind, "no_contention");
    }
}
