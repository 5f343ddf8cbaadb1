//! Reads a process report and says, in one line and one paragraph, what it means.
//!
//! Rules are thresholds on the measured ratios, most severe first. Each
//! diagnosis quotes the numbers it rests on so the user can check the claim.

use crate::report::{Diagnosis, LockContention, ProcessReport, Severity, ThreadReport};

/// GIL queue length (Σ GIL wait / wall) from which threads are called serialized.
pub const SERIALIZED_QUEUE_LENGTH: f64 = 0.25;
/// A thread "wants CPU" when it runs or waits for the GIL at least this share of the wall time.
const CPU_DEMAND_SHARE: f64 = 0.5;

/// Threads that spend most of the time running or waiting for the GIL.
fn cpu_hungry(threads: &[ThreadReport], wall_s: f64) -> usize {
    threads
        .iter()
        .filter(|t| wall_s > 0.0 && (t.cpu_s + t.gil_wait_s) / wall_s >= CPU_DEMAND_SHARE)
        .count()
}

/// Σ lock park time / wall from which PyMutex contention is reported.
pub const LOCK_QUEUE_LENGTH: f64 = 0.25;

/// The diagnoses of one process, most severe first (never empty).
pub fn diagnose(
    process: &ProcessReport,
    threads: &[ThreadReport],
    locks: Option<&LockContention>,
) -> Vec<Diagnosis> {
    let hungry = cpu_hungry(threads, process.wall_s);
    let mut out = Vec::new();
    if let Some(locks) = locks {
        let queue = if process.wall_s > 0.0 {
            locks.wait_s / process.wall_s
        } else {
            0.0
        };
        if queue >= LOCK_QUEUE_LENGTH {
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
            out.push(Diagnosis {
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
            });
        }
    }
    if process.gil_queue_length >= SERIALIZED_QUEUE_LENGTH && hungry >= 2 {
        // n fully serialized threads keep n-1 of them waiting: near that, it is critical.
        let severity = if process.gil_queue_length >= 0.75 * (hungry as f64 - 1.0) {
            Severity::Critical
        } else {
            Severity::Warning
        };
        out.push(Diagnosis {
            kind: "gil_serialized_threads".into(),
            severity,
            summary: format!(
                "{hungry} threads, effective parallelism {:.2}: the GIL serializes them \
                 (GIL held {:.0}% of the time, {:.2} threads waiting for it on average)",
                process.effective_parallelism,
                process.gil_utilization * 100.0,
                process.gil_queue_length
            ),
            advice: "These threads want CPU at the same time but only one can run Python \
                     at once. Move the CPU-bound work to processes (multiprocessing, \
                     ProcessPoolExecutor), run it on a free-threaded build (3.13t+), or move \
                     the hot loop into code that releases the GIL (NumPy, hashlib, zlib, a \
                     C/Rust extension that drops it). More threads will not help."
                .into(),
        });
    } else {
        out.push(Diagnosis {
            kind: "no_contention".into(),
            severity: Severity::Info,
            summary: format!(
                "no GIL contention: effective parallelism {:.2}, GIL held {:.0}% of the time, \
                 {:.2} threads waiting for it on average",
                process.effective_parallelism,
                process.gil_utilization * 100.0,
                process.gil_queue_length
            ),
            advice: "The threads are not held back by the GIL; the concurrency is real as far \
                     as the GIL is concerned."
                .into(),
        });
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(cpu_s: f64, gil_wait_s: f64) -> ThreadReport {
        ThreadReport {
            tid: 1,
            name: "t".into(),
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
        diagnose(process, threads, None)
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
        let d = diagnose(&process(0.0, 3.0), &threads, Some(&locks));
        assert_eq!(d[0].kind, "lock_contention");
        assert_eq!(d[1].kind, "no_contention");
    }

    #[test]
    fn one_busy_thread_alone_is_not_serialization() {
        let threads = vec![thread(4.0, 0.0), thread(0.0, 1.2)];
        let d = diagnose_(&process(0.3, 1.0), &threads);
        assert_eq!(d[0].kind, "no_contention");
    }
}
