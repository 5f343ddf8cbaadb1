//! Reads a process report and says, in one line and one paragraph, what it means.
//!
//! Each rule is a function over [`Facts`] that returns a finding or nothing;
//! rules are thresholds on measured ratios, and each finding quotes the numbers
//! it rests on (`evidence`) so the user can check the claim. `no_contention` is
//! said only when no rule found a problem.

use std::collections::BTreeMap;

use crate::core::event_loop::LONG_ITERATION_NS;
use crate::core::profile::ContentionProfile;
use crate::core::report::{
    ChildReport, Diagnosis, DiagnosisKind, EventLoopReport, LockContention, ProcessReport,
    Severity, ThreadReport,
};
use crate::core::retire::EXITED_TID;

/// GIL queue length (Σ GIL wait / wall) from which threads are called serialized.
pub const SERIALIZED_QUEUE_LENGTH: f64 = 0.25;
/// A thread "wants CPU" when it runs or waits for the GIL at least this share of the wall time.
const CPU_DEMAND_SHARE: f64 = 0.5;
/// Σ lock park time / wall from which PyMutex contention is reported.
pub const LOCK_QUEUE_LENGTH: f64 = 0.25;

/// Returns from blocking calls a thread needs before its retake latency is judged:
/// fewer are too few for a median.
pub const RETAKE_MIN_RETURNS: u64 = 20;
/// Share of the wall time a thread's retake waits must add up to before its
/// residual latency is worth a finding: a thread that only joins (the demo's
/// `MainThread`: 5 of 106 retakes waited, p99 16 ms) has a long tail and
/// nothing to gain; below 1 % a fix would save the program under 1 %.
pub const RETAKE_MIN_WALL_SHARE: f64 = 0.01;
/// Median retake latency (µs) from which every blocking call of a thread pays for
/// the GIL. A free GIL is retaken without blocking (0); a holder that runs Python
/// keeps it until asked to drop it, one switch interval (5 ms) later. Retakes behind
/// short holders (I/O threads) stay in the tens of µs, so 1 ms is far from both.
pub const RETAKE_P50_US: f64 = 1_000.0;
/// p99 retake latency (µs) that alone makes a warning: at least one return in a
/// hundred waits two switch intervals.
pub const RETAKE_P99_US: f64 = 10_000.0;
/// p99 lag (iteration length, ms) of an event loop from which it is blocked:
/// one callback in a hundred keeps every other one of the loop waiting this
/// long. Healthy loops measured here stay under 2 ms (README, Diagnoses).
pub const LOOP_LAG_P99_MS: f64 = 20.0;
/// Share of the wall time a loop spends in iterations of at least
/// [`LONG_ITERATION_NS`](crate::core::event_loop::LONG_ITERATION_NS) from
/// which it is blocked (critical from [`LOOP_BLOCKED_CRITICAL`] on): a single
/// slow start-up callback or a garbage collection is not.
pub const LOOP_BLOCKED_SHARE: f64 = 0.1;
/// Blocked share of the wall from which a blocked loop is critical.
pub const LOOP_BLOCKED_CRITICAL: f64 = 0.5;

/// Everything the rules may look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub process: &'a ProcessReport,
    pub threads: &'a [ThreadReport],
    pub locks: Option<&'a LockContention>,
    /// CPython child processes (pool workers).
    pub children: &'a [ChildReport],
    /// The code holding the GIL while others waited, where it was captured.
    pub profile: Option<&'a ContentionProfile>,
    /// The event loops found (empty where the event-loop probe is not loaded).
    pub loops: &'a [EventLoopReport],
}

/// A rule: a finding, or `None` when its pattern is absent.
type Rule = fn(&Facts) -> Option<Diagnosis>;

/// Every rule, in no particular order (findings are sorted by severity).
const RULES: &[Rule] = &[
    lock_contention,
    serialized_threads,
    event_loop_blocked,
    gil_residual_latency,
    cpu_throttled,
    cpu_starved,
    process_pool_overhead,
];

/// Share of the wall time a cgroup must be throttled to report it.
pub const THROTTLED_SHARE: f64 = 0.1;
/// Threads waiting for a CPU on average (beyond throttling) to call the process starved.
pub const STARVED_QUEUE: f64 = 0.25;
/// A parent that spends at least this share of its workers' total CPU on
/// feeding them (pickling, pipes) is the pool's bottleneck: in a pool that pays
/// off, the workers' compute dwarfs what the parent spends sending them work.
pub const POOL_FEED_RATIO: f64 = 0.25;
/// ... and the parent must be busy doing it (share of one core).
const POOL_PARENT_BUSY: f64 = 0.25;
/// Workers watched less than this are too short-lived to judge.
const MIN_WORKER_WATCH_S: f64 = 1.0;

/// The diagnoses of one process, most severe first (never empty).
pub fn diagnose(facts: &Facts) -> Vec<Diagnosis> {
    // The exited-threads row sums many threads: no rule may take it for one.
    let threads: Vec<ThreadReport>;
    let without_row: Facts;
    let facts = if facts.threads.iter().any(|t| t.tid == EXITED_TID) {
        threads = facts
            .threads
            .iter()
            .filter(|t| t.tid != EXITED_TID)
            .cloned()
            .collect();
        without_row = Facts {
            threads: &threads,
            ..*facts
        };
        &without_row
    } else {
        facts
    };
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

/// Threads that spend most of the time running or waiting for the GIL to run.
/// Waits to retake the GIL right after a blocking call are latency of a thread
/// that mostly sleeps (gil_residual_latency), not demand for CPU.
fn cpu_hungry(threads: &[ThreadReport], wall_s: f64) -> usize {
    threads
        .iter()
        .filter(|t| {
            let demand = t.cpu_s + (t.gil_wait_s - t.retake_wait_s).max(0.0);
            wall_s > 0.0 && demand / wall_s >= CPU_DEMAND_SHARE
        })
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
        kind: DiagnosisKind::LockContention,
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
    let mut ev = evidence([
        ("threads_wanting_cpu", hungry as f64),
        ("gil_queue_length", p.gil_queue_length),
        ("gil_utilization", p.gil_utilization),
        ("effective_parallelism", p.effective_parallelism),
    ]);
    holder_evidence(f, &mut ev);
    Some(Diagnosis {
        kind: DiagnosisKind::GilSerializedThreads,
        severity,
        summary: format!(
            "{hungry} threads, effective parallelism {:.2}: the GIL serializes them \
             (GIL held {:.0}% of the time, {:.2} threads waiting for it on average){}",
            p.effective_parallelism,
            p.gil_utilization * 100.0,
            p.gil_queue_length,
            holder_code(f)
        ),
        advice: "These threads want CPU at the same time but only one can run Python \
                 at once. Move the CPU-bound work to processes (multiprocessing, \
                 ProcessPoolExecutor), run it on a free-threaded build (3.13t+), or move \
                 the hot loop into code that releases the GIL (NumPy, hashlib, zlib, a \
                 C/Rust extension that drops it). More threads will not help."
            .into(),
        evidence: ev,
    })
}

/// Holder functions a diagnosis names at most.
const NAMED_HOLDERS: usize = 3;

/// "; while others waited the GIL was held by f (file:line, 52% of the
/// wait), g (…)" from the contention profile's top functions; empty without a
/// profile.
fn holder_code(f: &Facts) -> String {
    let top = f
        .profile
        .into_iter()
        .flat_map(|p| p.top_functions(NAMED_HOLDERS))
        .map(|h| (h.function.as_str(), h.file.as_str(), h.line, h.share));
    named_code(
        "; while others waited the GIL was held by",
        top,
        "of the wait",
    )
}

/// `lead` and "f (file:line, 52% `of`), g (…)" for code rows (function,
/// file, line, share), the file by its last component; empty without rows.
fn named_code<'a>(
    lead: &str,
    rows: impl Iterator<Item = (&'a str, &'a str, Option<u32>, f64)>,
    of: &str,
) -> String {
    let named: Vec<String> = rows
        .map(|(function, file, line, share)| {
            let line = line.map(|l| format!(":{l}")).unwrap_or_default();
            let file = file.rsplit('/').next().unwrap_or(file);
            format!("{function} ({file}{line}, {:.0}% {of})", share * 100.0)
        })
        .collect();
    if named.is_empty() {
        String::new()
    } else {
        format!("{lead} {}", named.join(", "))
    }
}

/// The top holder functions' shares of the GIL wait as evidence
/// (`holder_1_share`, …: the summary names them in the same order).
fn holder_evidence(f: &Facts, ev: &mut BTreeMap<String, f64>) {
    for (i, h) in f
        .profile
        .into_iter()
        .flat_map(|p| p.top_functions(NAMED_HOLDERS))
        .enumerate()
    {
        ev.insert(format!("holder_{}_share", i + 1), h.share);
    }
}

/// "tid (name)" as the report lists the thread.
fn who(t: &ThreadReport) -> String {
    if t.name.is_empty() {
        t.tid.to_string()
    } else {
        format!("{} ({})", t.tid, t.name)
    }
}

fn thread_by_tid(threads: &[ThreadReport], tid: u32) -> Option<&ThreadReport> {
    threads.iter().find(|t| t.tid == tid)
}

/// GIL wait of the other threads behind `tid`: (threads, seconds).
fn waits_behind(threads: &[ThreadReport], tid: u32) -> (usize, f64) {
    let behind: Vec<f64> = threads
        .iter()
        .filter(|t| t.tid != tid)
        .filter_map(|t| t.blocked_by.iter().find(|b| b.tid == tid))
        .map(|b| b.gil_wait_s)
        .filter(|s| *s > 0.0)
        .collect();
    (behind.len(), behind.iter().fold(0.0, |a, b| a + b))
}

/// An event loop whose iterations are long enough, often enough, that its
/// other callbacks wait: whatever the loop thread did meanwhile (CPU work,
/// waiting for the GIL) and whether or not other threads exist.
fn event_loop_blocked(f: &Facts) -> Option<Diagnosis> {
    let wall = f.process.wall_s;
    let lp = f
        .loops
        .iter()
        .filter(|l| l.tid != EXITED_TID)
        .filter(|l| l.lag_p99_ms >= LOOP_LAG_P99_MS)
        .filter(|l| ratio(l.blocked_s, wall) >= LOOP_BLOCKED_SHARE)
        .max_by(|a, b| a.blocked_s.total_cmp(&b.blocked_s).then(b.tid.cmp(&a.tid)))?;
    let share = ratio(lp.blocked_s, wall);
    let thread = thread_by_tid(f.threads, lp.tid);
    let name = thread.map_or(lp.tid.to_string(), who);
    let (cpu_s, gil_wait_s) = thread.map_or((0.0, 0.0), |t| (t.cpu_s, t.gil_wait_s));
    let (victims, behind_s) = waits_behind(f.threads, lp.tid);
    let others = match victims {
        0 => String::new(),
        n => format!("; {n} other threads waited {behind_s:.2} s for the GIL behind it"),
    };
    let code = loop_code(lp);
    Some(Diagnosis {
        kind: DiagnosisKind::EventLoopBlocked,
        severity: if share >= LOOP_BLOCKED_CRITICAL {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: format!(
            "event loop thread {name} is blocked {:.0}% of the time: {:.2} s in iterations of \
             {} ms or more (lag p99 {:.0} ms, longest {:.0} ms, {} iterations), during which no \
             other coroutine, timer or I/O callback of the loop ran (its thread was on a CPU \
             {cpu_s:.2} s and waited {gil_wait_s:.2} s for the GIL){others}{code}",
            share * 100.0,
            lp.blocked_s,
            LONG_ITERATION_NS / 1_000_000,
            lp.lag_p99_ms,
            lp.lag_max_ms,
            lp.iterations
        ),
        advice: "A coroutine or callback runs long code on the loop thread: until it returns or \
                 awaits, every other request on the loop waits. Move CPU-bound work off the loop \
                 (loop.run_in_executor with a ProcessPoolExecutor; asyncio.to_thread or a thread \
                 pool only if the work releases the GIL, such as hashing, compression or NumPy), \
                 replace blocking calls by their async versions, or cut the work into pieces \
                 with `await asyncio.sleep(0)` between them. asyncio's debug mode \
                 (PYTHONASYNCIODEBUG=1) logs the slow callbacks by name."
            .into(),
        evidence: evidence([
            ("loop_tid", f64::from(lp.tid)),
            ("loop_iterations", lp.iterations as f64),
            ("lag_p50_ms", lp.lag_p50_ms),
            ("lag_p99_ms", lp.lag_p99_ms),
            ("lag_max_ms", lp.lag_max_ms),
            ("blocked_s", lp.blocked_s),
            ("blocked_share", share),
            ("loop_cpu_s", cpu_s),
            ("loop_gil_wait_s", gil_wait_s),
            ("gil_wait_behind_loop_s", behind_s),
            ("threads_waiting_behind_loop", victims as f64),
        ]),
    })
}

/// "; during long iterations it ran f (file:line, 80% of the samples), g
/// (…)": the code the loop thread ran during its long iterations, where it
/// was sampled.
fn loop_code(lp: &EventLoopReport) -> String {
    let top = lp
        .functions
        .iter()
        .take(NAMED_HOLDERS)
        .map(|f| (f.function.as_str(), f.file.as_str(), f.line, f.share));
    named_code("; during long iterations it ran", top, "of the samples")
}

fn cpu_throttled(f: &Facts) -> Option<Diagnosis> {
    let p = f.process;
    let share = ratio(p.throttled_s, p.wall_s);
    if share < THROTTLED_SHARE {
        return None;
    }
    let limit = p
        .cpu_limit_cores
        .map(|c| format!("CPU limit {c:.2} cores: "))
        .unwrap_or_default();
    Some(Diagnosis {
        kind: DiagnosisKind::CpuThrottled,
        severity: if share >= 0.5 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        summary: format!(
            "{limit}the cgroup was throttled {:.2} s of {:.2} s ({:.0}% of CFS periods): \
             the time is lost to the CPU quota, not to the GIL",
            p.throttled_s,
            p.wall_s,
            p.throttled_period_share * 100.0
        ),
        advice: "The process uses its CPU quota up early in each period and is then stopped \
                 until the next one; threads queue up and latency looks like lock contention. \
                 Raise or remove the CPU limit (Kubernetes: resources.limits.cpu), or lower the \
                 work per process (fewer threads or workers)."
            .into(),
        evidence: evidence([
            ("throttled_s", p.throttled_s),
            ("throttled_share_of_wall", share),
            ("throttled_period_share", p.throttled_period_share),
            ("cpu_limit_cores", p.cpu_limit_cores.unwrap_or(0.0)),
            ("effective_parallelism", p.effective_parallelism),
        ]),
    })
}

fn gil_residual_latency(f: &Facts) -> Option<Diagnosis> {
    let worst = f
        .threads
        .iter()
        .filter(|t| t.block_returns >= RETAKE_MIN_RETURNS)
        .filter(|t| t.retake_wait_s >= RETAKE_MIN_WALL_SHARE * f.process.wall_s)
        .filter(|t| t.retake_p50_us >= RETAKE_P50_US || t.retake_p99_us >= RETAKE_P99_US)
        .max_by(|a, b| {
            a.retake_p50_us
                .total_cmp(&b.retake_p50_us)
                .then(a.retake_p99_us.total_cmp(&b.retake_p99_us))
        })?;
    let severity = if worst.retake_p50_us >= RETAKE_P50_US {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let holder = worst.blocked_by.first().filter(|b| b.tid != 0);
    let behind = holder
        .map(|b| {
            let name = thread_by_tid(f.threads, b.tid).map_or(b.tid.to_string(), who);
            format!(
                ", mostly behind thread {name} ({:.2} s of its GIL wait)",
                b.gil_wait_s
            )
        })
        .unwrap_or_default();
    let mut ev = evidence([
        ("tid", f64::from(worst.tid)),
        ("block_returns", worst.block_returns as f64),
        ("retake_waits", worst.retake_waits as f64),
        ("retake_p50_us", worst.retake_p50_us),
        ("retake_p99_us", worst.retake_p99_us),
    ]);
    if let Some(b) = holder {
        ev.insert("holder_tid".into(), f64::from(b.tid));
        ev.insert("gil_wait_behind_holder_s".into(), b.gil_wait_s);
    }
    holder_evidence(f, &mut ev);
    Some(Diagnosis {
        kind: DiagnosisKind::GilResidualLatency,
        severity,
        summary: format!(
            "thread {} waits for the GIL after its blocking calls return: retake p50 {:.1} ms, \
             p99 {:.1} ms over {} returns ({} had to wait){behind}{}",
            who(worst),
            worst.retake_p50_us / 1e3,
            worst.retake_p99_us / 1e3,
            worst.block_returns,
            worst.retake_waits,
            holder_code(f)
        ),
        advice: "Each time this thread comes back from I/O, a sleep or a lock, another thread \
                 is running Python and keeps the GIL until the switch interval (5 ms, \
                 sys.setswitchinterval) forces it out, so every blocking call costs that much \
                 extra latency. Move the CPU-bound thread to a process, or make it release \
                 the GIL (NumPy, hashlib, an extension that drops it); a shorter switch \
                 interval trades throughput for latency."
            .into(),
        evidence: ev,
    })
}

fn cpu_starved(f: &Facts) -> Option<Diagnosis> {
    let p = f.process;
    // A throttled thread is runnable but not run, so throttling shows up as run-queue
    // delay too, and per thread more than the cgroup's own throttled time says:
    // under a quota, the delay is the quota's (cpu_throttled), not the machine's.
    if ratio(p.throttled_s, p.wall_s) >= THROTTLED_SHARE {
        return None;
    }
    let queue = ratio(p.runqueue_wait_s, p.wall_s);
    if queue < STARVED_QUEUE {
        return None;
    }
    Some(Diagnosis {
        kind: DiagnosisKind::CpuStarved,
        severity: Severity::Warning,
        summary: format!(
            "{queue:.2} threads on average were runnable but waited for a CPU \
             (run-queue delay {:.2} s over {:.2} s): the machine is short of cores, not the GIL",
            p.runqueue_wait_s, p.wall_s
        ),
        advice: "Other processes (or too many threads or worker processes of this one) compete \
                 for the CPUs. \
                 Give the process more cores or fewer neighbours; GIL changes will not help \
                 until it gets the CPU it asks for."
            .into(),
        evidence: evidence([
            ("runqueue_wait_s", p.runqueue_wait_s),
            ("runqueue_queue_length", queue),
            ("cores_available", p.cores_available),
        ]),
    })
}

fn process_pool_overhead(f: &Facts) -> Option<Diagnosis> {
    let p = f.process;
    let workers: Vec<&ChildReport> = f
        .children
        .iter()
        .filter(|c| c.watched_s >= MIN_WORKER_WATCH_S)
        .collect();
    if workers.is_empty() {
        return None;
    }
    let busy = workers.iter().map(|c| c.busy_share).sum::<f64>() / workers.len() as f64;
    let children_cpu: f64 = f.children.iter().map(|c| c.cpu_s).sum();
    let tree_cores = ratio(p.cpu_s + children_cpu, p.wall_s);
    let parent_busy = ratio(p.cpu_s, p.wall_s);
    let feed_ratio = ratio(p.cpu_s, children_cpu);
    if parent_busy < POOL_PARENT_BUSY || children_cpu <= 0.0 || feed_ratio < POOL_FEED_RATIO {
        return None;
    }
    let waiting = workers
        .iter()
        .map(|c| ratio(c.futex_wait_s, c.watched_s))
        .sum::<f64>()
        / workers.len() as f64;
    Some(Diagnosis {
        kind: DiagnosisKind::ProcessPoolOverhead,
        severity: Severity::Warning,
        summary: format!(
            "the parent spent {:.2} s of CPU feeding {} worker processes that ran {:.2} s in all \
             ({:.0}% of their work again), and the workers were busy {:.0}% of the time (at most \
             that share is useful work): the pool's time goes to moving tasks and results between \
             processes (pickling, pipes), not to the work",
            p.cpu_s,
            workers.len(),
            children_cpu,
            feed_ratio * 100.0,
            busy * 100.0
        ),
        advice: "Each task's arguments are pickled by the parent, pushed through a pipe and \
                 unpickled by a worker; with big arguments or tiny tasks that costs more than \
                 the work. Send less per task (file paths, multiprocessing.shared_memory, \
                 numpy memmaps), batch small tasks (chunksize, or more work per call), and keep \
                 the workers' state in an initializer. If the work releases the GIL, threads \
                 avoid the copying altogether."
            .into(),
        evidence: evidence([
            ("workers", workers.len() as f64),
            ("worker_busy_share", busy),
            ("worker_queue_wait_share", waiting),
            ("parent_cpu_share", parent_busy),
            ("parent_to_worker_cpu", feed_ratio),
            ("tree_cores_used", tree_cores),
            ("cores_available", p.cores_available),
        ]),
    })
}

fn no_contention(f: &Facts) -> Diagnosis {
    let p = f.process;
    Diagnosis {
        kind: DiagnosisKind::NoContention,
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
    use crate::core::report::BlockedBy;

    fn thread(cpu_s: f64, gil_wait_s: f64) -> ThreadReport {
        ThreadReport {
            tid: 1,
            name: "t".into(),
            os_name: "t".into(),
            cpu_s,
            gil_wait_s,
            ..ThreadReport::default()
        }
    }

    fn diagnose_(process: &ProcessReport, threads: &[ThreadReport]) -> Vec<Diagnosis> {
        diagnose_loops(process, threads, &[])
    }

    fn process(queue: f64, parallelism: f64) -> ProcessReport {
        // Unthrottled, without a CPU limit, nothing but GIL waits.
        ProcessReport {
            wall_s: 4.0,
            cpu_s: parallelism * 4.0,
            gil_wait_s: queue * 4.0,
            gil_utilization: 0.99,
            gil_queue_length: queue,
            effective_parallelism: parallelism,
            gil_switches_per_s: 200.0,
            cores_available: 2.0,
            ..ProcessReport::default()
        }
    }

    fn worker(cpu_s: f64) -> ChildReport {
        ChildReport {
            pid: 9,
            command: "python3 -c worker".into(),
            version: "3.11.7".into(),
            started_after_s: 0.1,
            watched_s: 4.0,
            exited: false,
            threads: 1,
            cpu_s,
            busy_share: cpu_s / 4.0,
            gil_wait_s: 0.0,
            futex_wait_s: 2.0,
        }
    }

    #[test]
    fn a_throttled_cgroup_is_named_and_not_the_gil() {
        let mut p = process(0.0, 0.2);
        p.throttled_s = 3.2;
        p.runqueue_wait_s = 3.3;
        p.throttled_period_share = 1.0;
        p.cpu_limit_cores = Some(0.2);
        let threads = vec![thread(0.8, 0.0)];
        let d = diagnose_(&p, &threads);
        let kinds: Vec<DiagnosisKind> = d.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DiagnosisKind::CpuThrottled], "{d:?}");
        assert_eq!(d[0].severity, Severity::Critical);
        assert!(
            d[0].summary.contains("CPU limit 0.20 cores"),
            "{}",
            d[0].summary
        );
    }

    #[test]
    fn run_queue_delay_beyond_throttling_is_starvation() {
        let mut p = process(0.0, 1.0);
        p.runqueue_wait_s = 2.0;
        let d = diagnose_(&p, &[thread(2.0, 0.0), thread(2.0, 0.0)]);
        assert_eq!(d[0].kind, DiagnosisKind::CpuStarved);
        assert!((d[0].evidence["runqueue_queue_length"] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn idle_workers_and_a_busy_parent_mean_ipc_overhead() {
        let p = process(0.0, 0.3);
        let children = vec![worker(0.8); 4];
        let d = diagnose(&Facts {
            process: &p,
            threads: &[thread(1.2, 0.0)],
            locks: None,
            children: &children,
            profile: None,
            loops: &[],
        });
        assert_eq!(d[0].kind, DiagnosisKind::ProcessPoolOverhead, "{d:?}");
        assert!((d[0].evidence["worker_busy_share"] - 0.2).abs() < 1e-9);
        // Busy workers that fill the cores are a pool doing its job.
        let children = vec![worker(2.0); 4];
        let d = diagnose(&Facts {
            process: &p,
            threads: &[thread(1.2, 0.0)],
            locks: None,
            children: &children,
            profile: None,
            loops: &[],
        });
        assert_eq!(d[0].kind, DiagnosisKind::NoContention, "{d:?}");
    }

    #[test]
    fn serialized_threads_and_residual_latency_name_the_top_holder_functions() {
        use crate::core::counters::HolderWait;
        use crate::core::holders::{HolderWaits, NamedHolderWait};
        use crate::core::stacks::{Frame, Stack};
        let spin = |function: &str, wait_ns| NamedHolderWait {
            stack: Some(Stack {
                frames: vec![Frame {
                    function: function.into(),
                    file: "/srv/app/work.py".into(),
                    line: Some(12),
                }],
                truncated: false,
            }),
            wait: HolderWait {
                wait_ns,
                segments: 1,
            },
        };
        let profile = ContentionProfile::of(&HolderWaits {
            stacks: vec![spin("spin_alpha", 600), spin("spin_beta", 400)],
            frames_unnamed: 0,
        });
        let named = |process: &ProcessReport, threads: &[ThreadReport], kind| {
            let d = diagnose(&Facts {
                process,
                threads,
                locks: None,
                children: &[],
                profile: Some(&profile),
                loops: &[],
            });
            d.into_iter()
                .find(|d| d.kind == kind)
                .unwrap_or_else(|| panic!("{kind:?}"))
        };
        let d = named(
            &process(3.0, 1.01),
            &vec![thread(1.0, 3.0); 4],
            DiagnosisKind::GilSerializedThreads,
        );
        assert!(
            d.summary.ends_with(
                "held by spin_alpha (work.py:12, 60% of the wait), \
                 spin_beta (work.py:12, 40% of the wait)"
            ),
            "{}",
            d.summary
        );
        assert_eq!(d.evidence["holder_1_share"], 0.6);
        assert_eq!(d.evidence["holder_2_share"], 0.4);
        let d = named(
            &process(0.6, 0.75),
            &sleeper_next_to_spinner(6_000.0, 8_300.0, 480),
            DiagnosisKind::GilResidualLatency,
        );
        assert!(
            d.summary.contains("held by spin_alpha (work.py:12"),
            "{}",
            d.summary
        );
        assert_eq!(d.evidence["holder_1_share"], 0.6);
    }

    #[test]
    fn four_waiting_threads_are_serialized() {
        let threads = vec![thread(1.0, 3.0); 4];
        let d = diagnose_(&process(3.0, 1.01), &threads);
        assert_eq!(d[0].kind, DiagnosisKind::GilSerializedThreads);
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
        assert_eq!(d[0].kind, DiagnosisKind::GilSerializedThreads);
        assert_eq!(d[0].severity, Severity::Warning);
    }

    #[test]
    fn parallel_threads_are_not_contended() {
        let threads = vec![thread(3.8, 0.05); 2];
        let d = diagnose_(&process(0.03, 1.9), &threads);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, DiagnosisKind::NoContention);
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
            children: &[],
            profile: None,
            loops: &[],
        });
        assert_eq!(d[0].kind, DiagnosisKind::LockContention);
        assert_eq!(
            d.len(),
            1,
            "no_contention only when nothing was found: {d:?}"
        );
    }

    fn with_tid(mut t: ThreadReport, tid: u32) -> ThreadReport {
        t.tid = tid;
        t
    }

    /// residual.py: a spinner and a thread sleeping 1 ms, retaking the GIL after ~5 ms.
    fn sleeper_next_to_spinner(p50_us: f64, p99_us: f64, returns: u64) -> Vec<ThreadReport> {
        let spinner = with_tid(thread(3.0, 0.0), 11);
        let mut sleeper = with_tid(thread(0.02, 2.4), 12);
        sleeper.name = "sleeper".into();
        sleeper.sleep_waits = returns;
        sleeper.block_returns = returns;
        sleeper.retake_waits = returns;
        sleeper.retake_p50_us = p50_us;
        sleeper.retake_p99_us = p99_us;
        // Every return at the median, the slowest 1 % at the p99.
        sleeper.retake_wait_s = (returns as f64 * p50_us + returns as f64 / 100.0 * p99_us) / 1e6;
        sleeper.blocked_by = vec![BlockedBy {
            tid: 11,
            gil_wait_s: 2.4,
        }];
        vec![spinner, sleeper]
    }

    #[test]
    fn a_thread_that_waits_ms_to_retake_the_gil_after_each_sleep_has_residual_latency() {
        let threads = sleeper_next_to_spinner(6_000.0, 8_300.0, 480);
        let d = diagnose_(&process(0.6, 0.75), &threads);
        let r = d
            .iter()
            .find(|d| d.kind == DiagnosisKind::GilResidualLatency)
            .expect("residual latency found");
        assert_eq!(r.severity, Severity::Critical);
        assert!(
            r.summary.starts_with("thread 12 (sleeper)"),
            "{}",
            r.summary
        );
        assert!(r.summary.contains("behind thread 11"), "{}", r.summary);
        assert_eq!(r.evidence["retake_p50_us"], 6_000.0);
        assert_eq!(r.evidence["holder_tid"], 11.0);
        assert!(
            d.iter().all(|d| d.kind != DiagnosisKind::EventLoopBlocked),
            "{d:?}"
        );
    }

    #[test]
    fn residual_latency_needs_enough_returns_and_a_long_tail_alone_is_a_warning() {
        let few = sleeper_next_to_spinner(6_000.0, 8_300.0, RETAKE_MIN_RETURNS - 1);
        let d = diagnose_(&process(0.6, 0.75), &few);
        assert!(
            d.iter()
                .all(|d| d.kind != DiagnosisKind::GilResidualLatency),
            "{d:?}"
        );
        let tail = sleeper_next_to_spinner(40.0, 12_000.0, 300);
        let d = diagnose_(&process(0.6, 0.75), &tail);
        let r = d
            .iter()
            .find(|d| d.kind == DiagnosisKind::GilResidualLatency);
        assert_eq!(r.map(|r| r.severity), Some(Severity::Warning), "{d:?}");
        // A thread that only joins: a long tail, but under 1 % of the wall in all.
        let mut joiner = sleeper_next_to_spinner(40.0, 16_000.0, 106);
        joiner[1].retake_wait_s = 0.03;
        let d = diagnose_(&process(0.6, 0.75), &joiner);
        assert!(
            d.iter()
                .all(|d| d.kind != DiagnosisKind::GilResidualLatency),
            "{d:?}"
        );
        // I/O threads retaking behind short holders: tens of µs.
        let io = sleeper_next_to_spinner(0.0, 70.0, 300);
        let d = diagnose_(&process(0.01, 0.03), &io);
        assert!(
            d.iter()
                .all(|d| d.kind != DiagnosisKind::GilResidualLatency),
            "{d:?}"
        );
    }

    fn diagnose_loops(
        process: &ProcessReport,
        threads: &[ThreadReport],
        loops: &[EventLoopReport],
    ) -> Vec<Diagnosis> {
        diagnose(&Facts {
            process,
            threads,
            locks: None,
            children: &[],
            profile: None,
            loops,
        })
    }

    /// A loop over 4 s with `blocked_s` of it in iterations of `p99_ms`.
    fn lagging_loop(tid: u32, p99_ms: f64, blocked_s: f64) -> EventLoopReport {
        EventLoopReport {
            tid,
            iterations: 400,
            lag_p50_ms: 0.3,
            lag_p99_ms: p99_ms,
            lag_max_ms: p99_ms * 1.2,
            blocked_s,
            ..EventLoopReport::default()
        }
    }

    /// single-threaded asyncio, each task running 30 ms of CPU inline.
    fn lone_loop_thread() -> ThreadReport {
        let mut lp = with_tid(thread(3.9, 0.0), 100);
        lp.name = "python3.11".into();
        lp
    }

    #[test]
    fn a_lone_loop_thread_running_cpu_work_inline_is_a_blocked_event_loop() {
        let threads = vec![lone_loop_thread()];
        let loops = [lagging_loop(100, 33.0, 3.6)];
        let d = diagnose_loops(&process(0.0, 0.98), &threads, &loops);
        assert_eq!(d[0].kind, DiagnosisKind::EventLoopBlocked, "{d:?}");
        assert_eq!(d[0].severity, Severity::Critical);
        assert!(
            d[0].summary
                .starts_with("event loop thread 100 (python3.11) is blocked 90% of the time"),
            "{}",
            d[0].summary
        );
        assert_eq!(d[0].evidence["loop_tid"], 100.0);
        assert_eq!(d[0].evidence["lag_p99_ms"], 33.0);
        assert_eq!(d[0].evidence["threads_waiting_behind_loop"], 0.0);
        assert!((d[0].evidence["blocked_share"] - 0.9).abs() < 1e-9);
    }

    #[test]
    fn threads_waiting_for_the_gil_behind_a_blocked_loop_are_named_in_its_evidence() {
        let mut threads = vec![lone_loop_thread()];
        for tid in 101..=103 {
            let mut t = with_tid(thread(0.1, 0.16), tid);
            t.blocked_by = vec![BlockedBy {
                tid: 100,
                gil_wait_s: 0.15,
            }];
            threads.push(t);
        }
        // Blocked a quarter of the time: a warning.
        let loops = [lagging_loop(100, 120.0, 1.0)];
        let d = diagnose_loops(&process(0.13, 0.92), &threads, &loops);
        let e = d.iter().find(|d| d.kind == DiagnosisKind::EventLoopBlocked);
        let e = e.expect("event_loop_blocked");
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(e.evidence["threads_waiting_behind_loop"], 3.0);
        assert!((e.evidence["gil_wait_behind_loop_s"] - 0.45).abs() < 1e-9);
        assert!(
            e.summary.contains("3 other threads waited 0.45 s"),
            "{}",
            e.summary
        );
    }

    #[test]
    fn a_loop_with_short_iterations_or_rare_long_ones_is_not_blocked() {
        let threads = vec![lone_loop_thread()];
        // A busy healthy loop: many short iterations, a few GC pauses.
        let busy = [lagging_loop(100, 1.5, 0.05)];
        let d = diagnose_loops(&process(0.0, 0.9), &threads, &busy);
        assert!(
            d.iter().all(|d| d.kind != DiagnosisKind::EventLoopBlocked),
            "{d:?}"
        );
        // One long start-up callback: a long tail, but little time blocked.
        let once = [lagging_loop(100, 25.0, 0.3)];
        let d = diagnose_loops(&process(0.0, 0.9), &threads, &once);
        assert!(
            d.iter().all(|d| d.kind != DiagnosisKind::EventLoopBlocked),
            "{d:?}"
        );
        // The exited threads' row is no loop of its own.
        let exited = [lagging_loop(EXITED_TID, 33.0, 3.6)];
        let d = diagnose_loops(&process(0.0, 0.9), &threads, &exited);
        assert!(
            d.iter().all(|d| d.kind != DiagnosisKind::EventLoopBlocked),
            "{d:?}"
        );
        // No loop at all (four CPU-bound threads holding the GIL long).
        let threads: Vec<ThreadReport> = (1..=4)
            .map(|tid| {
                let mut t = with_tid(thread(1.0, 3.0), tid);
                t.hold_stretch_p99_ms = 60.0;
                t
            })
            .collect();
        let d = diagnose_(&process(3.0, 1.0), &threads);
        assert!(
            d.iter().all(|d| d.kind != DiagnosisKind::EventLoopBlocked),
            "{d:?}"
        );
    }

    #[test]
    fn one_busy_thread_alone_is_not_serialization() {
        let threads = vec![thread(4.0, 0.0), thread(0.0, 1.2)];
        let d = diagnose_(&process(0.3, 1.0), &threads);
        assert_eq!(d[0].kind, DiagnosisKind::NoContention);
    }

    #[test]
    fn a_sleeper_waiting_to_retake_the_gil_does_not_make_threads_serialized() {
        // A spinner, and a thread that sleeps 1 ms and then waits ~5 ms to retake
        // the GIL: 3.4 s of GIL wait in 4 s, all of it retake latency.
        let mut sleeper = thread(0.05, 3.4);
        sleeper.retake_wait_s = 3.4;
        let threads = vec![thread(3.9, 0.0), sleeper];
        let d = diagnose_(&process(0.85, 1.0), &threads);
        assert!(
            d.iter()
                .all(|d| d.kind != DiagnosisKind::GilSerializedThreads),
            "{d:?}"
        );
    }

    /// The kinds in the first column of the README's Diagnoses table.
    fn readme_kinds(readme: &str) -> Vec<String> {
        let section = readme
            .split("\n## ")
            .find(|s| s.starts_with("Diagnoses\n"))
            .unwrap_or_default();
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(kind, _)| kind.to_string())
            .collect()
    }

    #[test]
    fn the_readme_diagnoses_table_lists_every_kind_once() {
        let listed = readme_kinds(include_str!("../../../README.md"));
        let mut sorted = listed.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), listed.len(), "a kind twice: {listed:?}");
        let mut want: Vec<String> = DiagnosisKind::ALL
            .iter()
            .map(|k| k.name().to_string())
            .collect();
        want.sort();
        assert_eq!(
            sorted, want,
            "README's Diagnoses table against DiagnosisKind::ALL"
        );
    }
}
