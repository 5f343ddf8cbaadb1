//! Every metric `gilscope run` exports, named in one place, and how one process's
//! interval becomes data points.
//!
//! Counters come from the cumulative counters of the process since it was first
//! watched (cumulative temporality) or since the previous interval (delta);
//! gauges describe the last interval. The figures are those of `check`: the same
//! [`analyse`], [`estimate`] and [`diagnose`] run over the interval, so the two
//! never disagree. The README's metric table lists [`ALL`]; a test keeps them equal.

use std::time::Instant;

use crate::core::analyse::{analyse, estimate};
use crate::core::counters::HIST_SLOTS;
use crate::core::diagnose::{diagnose, Facts};
use crate::core::event_loop::event_loops;
use crate::core::report::{ProcessReport, ThreadReport};
use crate::watch::session::{Session, Snapshot};

use crate::otel::Temporality;

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic sum.
    Counter,
    Gauge,
    /// Explicit-bucket histogram.
    Histogram,
}

/// A metric's identity: name, kind, unit (UCUM) and one line of meaning.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub description: &'static str,
}

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, $unit:literal, $desc:literal) => {
        #[doc = $desc]
        pub const $id: MetricDef = MetricDef {
            name: $name,
            kind: Kind::$kind,
            unit: $unit,
            description: $desc,
        };
    };
}

metric!(
    GIL_WAIT_TIME,
    "cpython.gil.wait.time",
    Counter,
    "s",
    "Time threads spent blocked waiting to take the GIL (summed over threads)."
);
metric!(
    GIL_WAITS,
    "cpython.gil.waits",
    Counter,
    "{wait}",
    "GIL acquisitions that had to wait (timed-out 5 ms slices of one acquisition count once)."
);
metric!(GIL_WAIT_DURATION, "cpython.gil.wait.duration", Histogram, "s", "Durations of GIL waits, from the kernel's log2 histogram (bucket bounds are powers of two in nanoseconds).");
metric!(
    GIL_UTILIZATION,
    "cpython.gil.utilization",
    Gauge,
    "1",
    "Share of the interval the GIL was held (sampled)."
);
metric!(
    GIL_SWITCHES,
    "cpython.gil.switches",
    Counter,
    "{switch}",
    "GIL hand-overs between threads (the GIL's switch_number)."
);
metric!(
    GIL_QUEUE_LENGTH,
    "cpython.gil.queue_length",
    Gauge,
    "{thread}",
    "Threads waiting for the GIL on average over the interval (Σ GIL wait / wall)."
);
metric!(
    CPU_TIME,
    "process.cpu.time",
    Counter,
    "s",
    "CPU time of the process's threads while watched (schedstat, user+system)."
);
metric!(
    THREAD_COUNT,
    "process.thread.count",
    Gauge,
    "{thread}",
    "Live threads of the process at the end of the interval."
);
metric!(
    EFFECTIVE_PARALLELISM,
    "cpython.effective_parallelism",
    Gauge,
    "{cpu}",
    "Cores the process really used over the interval (Σ CPU / wall)."
);
metric!(
    RUNQUEUE_WAIT_TIME,
    "cpython.runqueue.wait.time",
    Counter,
    "s",
    "Time threads were runnable but waited for a CPU (run-queue delay)."
);
metric!(
    CPU_THROTTLED_TIME,
    "cpython.cpu.throttled.time",
    Counter,
    "s",
    "Time the process's cgroup was throttled by its CPU quota."
);
metric!(
    FUTEX_WAIT_TIME,
    "cpython.futex.wait.time",
    Counter,
    "s",
    "Time threads were blocked in futex waits other than the GIL (locks, queues, conditions)."
);
metric!(DIAGNOSIS, "cpython.diagnosis", Gauge, "1", "1 for each diagnosis that holds over the interval, 0 for the others (attribute cpython.diagnosis.kind).");
metric!(
    SPEEDUP_ESTIMATE,
    "cpython.gil.speedup_estimate",
    Gauge,
    "1",
    "Estimated speedup without the GIL over the interval (1 = nothing to gain)."
);
metric!(
    THREAD_GIL_WAIT_TIME,
    "cpython.thread.gil.wait.time",
    Counter,
    "s",
    "Per thread (opt-in): time blocked waiting for the GIL."
);
metric!(
    THREAD_CPU_TIME,
    "cpython.thread.cpu.time",
    Counter,
    "s",
    "Per thread (opt-in): CPU time."
);
metric!(
    THREAD_GIL_HOLD,
    "cpython.thread.gil.hold_share",
    Gauge,
    "1",
    "Per thread (opt-in): share of the interval the thread held the GIL (sampled)."
);
metric!(
    GIL_EPISODES,
    "cpython.gil.episodes",
    Counter,
    "{episode}",
    "GIL contention episodes (waits over the span threshold), by outcome: exported as a span, or rate_limited."
);
metric!(
    EXPORT_POINTS,
    "gilscope.export.data_points",
    Counter,
    "{data_point}",
    "The agent's own: data points handed to the exporter, by outcome (sent, dropped)."
);
metric!(
    EXPORT_REQUESTS,
    "gilscope.export.requests",
    Counter,
    "{request}",
    "The agent's own: export requests, by outcome (sent, failed, dropped)."
);
metric!(
    EXPORT_BYTES,
    "gilscope.export.bytes",
    Counter,
    "By",
    "The agent's own: encoded request bytes sent, before compression."
);
metric!(
    EXPORT_RETRIES,
    "gilscope.export.retries",
    Counter,
    "{retry}",
    "The agent's own: export attempts retried after a transient error."
);
metric!(
    EXPORT_SPANS,
    "gilscope.export.spans",
    Counter,
    "{span}",
    "The agent's own: contention spans handed to the exporter, by outcome (sent, dropped)."
);
metric!(
    EPISODES_LOST,
    "gilscope.episodes.lost",
    Counter,
    "{episode}",
    "The agent's own: contention episodes the kernel could not record (its ring buffer was full)."
);
metric!(
    BPF_ENTRIES_DROPPED,
    "gilscope.bpf.entries.dropped",
    Counter,
    "{entry}",
    "The agent's own: inserts into a kernel map that failed because it was full, by map (gilscope.bpf.map); the waits they carried were not counted."
);
metric!(
    EXPORT_SPOOL_REQUESTS,
    "gilscope.export.spool.requests",
    Gauge,
    "{request}",
    "The agent's own: requests waiting in the on-disk spool (0 without one)."
);
metric!(
    EXPORT_SPOOL_BYTES,
    "gilscope.export.spool.bytes",
    Gauge,
    "By",
    "The agent's own: bytes the on-disk spool takes."
);
metric!(
    EXPORT_DEGRADATION,
    "gilscope.export.degradation",
    Gauge,
    "1",
    "The agent's own: detail given up to stay in the byte budget (0 none, 1 per-thread series dropped, N >= 2 also the interval N times longer)."
);
metric!(
    PROCESSES_WATCHED,
    "gilscope.processes.watched",
    Gauge,
    "{process}",
    "The agent's own: CPython processes watched now."
);

/// Every metric, in the README's order.
pub const ALL: &[&MetricDef] = &[
    &GIL_WAIT_TIME,
    &GIL_WAITS,
    &GIL_WAIT_DURATION,
    &GIL_UTILIZATION,
    &GIL_SWITCHES,
    &GIL_QUEUE_LENGTH,
    &CPU_TIME,
    &THREAD_COUNT,
    &EFFECTIVE_PARALLELISM,
    &RUNQUEUE_WAIT_TIME,
    &CPU_THROTTLED_TIME,
    &FUTEX_WAIT_TIME,
    &DIAGNOSIS,
    &SPEEDUP_ESTIMATE,
    &THREAD_GIL_WAIT_TIME,
    &THREAD_CPU_TIME,
    &THREAD_GIL_HOLD,
    &GIL_EPISODES,
    &EXPORT_POINTS,
    &EXPORT_REQUESTS,
    &EXPORT_BYTES,
    &EXPORT_RETRIES,
    &EXPORT_SPANS,
    &EPISODES_LOST,
    &BPF_ENTRIES_DROPPED,
    &EXPORT_SPOOL_REQUESTS,
    &EXPORT_SPOOL_BYTES,
    &EXPORT_DEGRADATION,
    &PROCESSES_WATCHED,
];

/// Every diagnosis kind, so the state gauge reports 0 for those that do not hold.
pub const DIAGNOSIS_KINDS: &[&str] = &[
    "gil_serialized_threads",
    "lock_contention",
    "cpu_throttled",
    "cpu_starved",
    "process_pool_overhead",
    "no_contention",
];

/// Histogram buckets: log2 slot `HIST_FIRST` and below form the first bucket,
/// slots above `HIST_LAST` the last, so bounds run 2 µs .. 17 s.
const HIST_FIRST: usize = 10;
const HIST_LAST: usize = 33;

/// Upper bounds of the histogram buckets, in seconds (powers of two in ns).
pub fn wait_bounds_s() -> Vec<f64> {
    (HIST_FIRST..=HIST_LAST)
        .map(|slot| 2f64.powi(slot as i32 + 1) / 1e9)
        .collect()
}

/// Folds a kernel log2(ns) histogram into the exported buckets.
pub fn fold_hist(hist: &[u64; HIST_SLOTS]) -> Vec<u64> {
    let mut out = vec![0u64; HIST_LAST - HIST_FIRST + 2];
    for (slot, &n) in hist.iter().enumerate() {
        let bucket = slot.clamp(HIST_FIRST, HIST_LAST + 1) - HIST_FIRST;
        out[bucket] += n;
    }
    out
}

/// A data point's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Double(f64),
    Int(i64),
    Histogram { counts: Vec<u64>, sum_s: f64 },
}

/// One data point of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: &'static MetricDef,
    pub attributes: Vec<(&'static str, String)>,
    pub value: Value,
    /// Start of the counted window (counters and histograms).
    pub start: Instant,
}

/// One process's points at the end of an interval, with its resource.
#[derive(Debug, Clone)]
pub struct ProcessSeries {
    pub resource: Vec<(String, String)>,
    pub at: Instant,
    pub points: Vec<Point>,
    /// The interval's figures, for the stdout summary.
    pub process: ProcessReport,
    pub diagnosis: Vec<(String, String)>,
    pub speedup: f64,
}

/// What one interval of one process needs.
pub struct IntervalInput<'a> {
    pub watch: &'a Session,
    pub first: &'a Snapshot,
    pub prev: &'a Snapshot,
    pub cur: &'a Snapshot,
    pub thread_count: usize,
    pub temporality: Temporality,
    /// `Some(cap)`: per-thread series for the `cap` threads with most GIL wait + CPU.
    pub per_thread: Option<usize>,
    pub resource: &'a [(String, String)],
}

fn point(metric: &'static MetricDef, value: Value, start: Instant) -> Point {
    Point {
        metric,
        attributes: Vec::new(),
        value,
        start,
    }
}

/// GIL switches counted between two snapshots of the sampler.
fn switches(from: &Snapshot, to: &Snapshot) -> u64 {
    let g = to.gil.since(&from.gil);
    match (g.first_switch, g.last_switch) {
        (Some((_, a)), Some((_, b))) => b.wrapping_sub(a).min(1 << 40),
        _ => 0,
    }
}

/// Data points of one process for one interval.
pub fn process_series(input: &IntervalInput) -> ProcessSeries {
    let w = input.watch;
    let interval = w.measurement(input.prev, input.cur);
    let (process, threads) = analyse(&interval);
    let est = estimate(&process, &threads);
    let loops = interval.loops.as_ref().map(event_loops).unwrap_or_default();
    let diagnoses = diagnose(&Facts {
        process: &process,
        threads: &threads,
        locks: None,
        children: &[],
        loops: &loops,
    });

    let window = match input.temporality {
        Temporality::Cumulative => input.first,
        Temporality::Delta => input.prev,
    };
    let counted = w.measurement(window, input.cur);
    let (total, total_threads) = analyse(&counted);
    let start = window.at;
    let delta = input.temporality == Temporality::Delta;

    let mut points = Vec::with_capacity(24);
    let mut counter = |metric: &'static MetricDef, value: Value| {
        let zero = matches!(value, Value::Double(v) if v == 0.0) || matches!(value, Value::Int(0));
        // Under delta an unchanged series is not re-sent.
        if !(delta && zero) {
            points.push(point(metric, value, start));
        }
    };
    counter(&GIL_WAIT_TIME, Value::Double(total.gil_wait_s));
    counter(&GIL_WAITS, Value::Int(total.gil_waits as i64));
    counter(
        &GIL_SWITCHES,
        Value::Int(switches(window, input.cur) as i64),
    );
    counter(&CPU_TIME, Value::Double(total.cpu_s));
    counter(&RUNQUEUE_WAIT_TIME, Value::Double(total.runqueue_wait_s));
    counter(&CPU_THROTTLED_TIME, Value::Double(total.throttled_s));
    counter(&FUTEX_WAIT_TIME, Value::Double(total.futex_wait_s));
    let mut hist = [0u64; HIST_SLOTS];
    let mut take_ns = 0u64;
    for t in counted.waits.threads.values() {
        for (a, b) in hist.iter_mut().zip(t.take_hist.iter()) {
            *a += b;
        }
        take_ns += t.take_wait_ns;
    }
    let counts = fold_hist(&hist);
    if !(delta && counts.iter().all(|c| *c == 0)) {
        points.push(point(
            &GIL_WAIT_DURATION,
            Value::Histogram {
                counts,
                sum_s: take_ns as f64 / 1e9,
            },
            start,
        ));
    }

    let now = input.cur.at;
    points.push(point(
        &GIL_UTILIZATION,
        Value::Double(process.gil_utilization),
        now,
    ));
    points.push(point(
        &GIL_QUEUE_LENGTH,
        Value::Double(process.gil_queue_length),
        now,
    ));
    points.push(point(
        &EFFECTIVE_PARALLELISM,
        Value::Double(process.effective_parallelism),
        now,
    ));
    points.push(point(
        &THREAD_COUNT,
        Value::Int(input.thread_count as i64),
        now,
    ));
    points.push(point(
        &SPEEDUP_ESTIMATE,
        Value::Double(est.speedup_without_gil),
        now,
    ));
    for kind in DIAGNOSIS_KINDS {
        let holds = diagnoses.iter().any(|d| d.kind == *kind);
        let mut p = point(&DIAGNOSIS, Value::Int(i64::from(holds)), now);
        p.attributes
            .push(("cpython.diagnosis.kind", (*kind).to_string()));
        points.push(p);
    }

    if let Some(cap) = input.per_thread {
        points.extend(thread_points(
            &threads,
            &total_threads,
            cap,
            start,
            now,
            delta,
        ));
    }

    ProcessSeries {
        resource: input.resource.to_vec(),
        at: now,
        points,
        diagnosis: diagnoses
            .iter()
            .map(|d| (d.kind.clone(), format!("{:?}", d.severity).to_lowercase()))
            .collect(),
        speedup: est.speedup_without_gil,
        process,
    }
}

/// Per-thread points for the busiest `cap` threads of the interval.
fn thread_points(
    interval: &[ThreadReport],
    counted: &[ThreadReport],
    cap: usize,
    start: Instant,
    now: Instant,
    delta: bool,
) -> Vec<Point> {
    // The exited-threads row is no thread: its figures are in the process totals.
    let mut busiest: Vec<&ThreadReport> = interval
        .iter()
        .filter(|t| t.tid != crate::core::retire::EXITED_TID)
        .collect();
    busiest.sort_by(|a, b| {
        (b.gil_wait_s + b.cpu_s)
            .total_cmp(&(a.gil_wait_s + a.cpu_s))
            .then(a.tid.cmp(&b.tid))
    });
    let mut out = Vec::new();
    for t in busiest.into_iter().take(cap) {
        let attrs = vec![
            ("thread.id", t.tid.to_string()),
            ("thread.name", t.name.clone()),
        ];
        let total = counted.iter().find(|c| c.tid == t.tid);
        let wait = total.map_or(0.0, |c| c.gil_wait_s);
        let cpu = total.map_or(0.0, |c| c.cpu_s);
        for (metric, v, at) in [
            (&THREAD_GIL_WAIT_TIME, wait, start),
            (&THREAD_CPU_TIME, cpu, start),
        ] {
            if !(delta && v == 0.0) {
                out.push(Point {
                    metric,
                    attributes: attrs.clone(),
                    value: Value::Double(v),
                    start: at,
                });
            }
        }
        out.push(Point {
            metric: &THREAD_GIL_HOLD,
            attributes: attrs,
            value: Value::Double(t.gil_hold_share),
            start: now,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_opentelemetry_rules() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "duplicate {}", m.name);
            assert!(m.name.len() <= 255);
            assert!(
                m.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{}",
                m.name
            );
            assert!(
                !m.name.ends_with(".count") || m.kind != Kind::Counter,
                "{}",
                m.name
            );
            if m.name.ends_with(".time") {
                assert_eq!((m.kind, m.unit), (Kind::Counter, "s"), "{}", m.name);
            }
        }
    }

    #[test]
    fn the_readme_documents_every_metric() {
        let readme = include_str!("../../../README.md");
        for m in ALL {
            let row = format!("| `{}` |", m.name);
            assert!(readme.contains(&row), "README lacks a row for {}", m.name);
        }
    }

    fn thread(tid: u32, cpu_s: f64, gil_wait_s: f64) -> ThreadReport {
        ThreadReport {
            tid,
            name: format!("w{tid}"),
            cpu_s,
            runqueue_wait_s: 0.0,
            gil_wait_s,
            gil_waits: 1,
            gil_wait_p50_us: 0.0,
            gil_wait_p99_us: 0.0,
            gil_hold_s: None,
            gil_hold_share: 0.25,
            drop_wait_s: 0.0,
            futex_wait_s: 0.0,
            lock_wait_s: 0.0,
            lock_waits: 0,
            blocked_by: vec![],
            ..ThreadReport::default()
        }
    }

    #[test]
    fn per_thread_series_keep_only_the_busiest_threads() {
        let threads: Vec<ThreadReport> = (1..=30)
            .map(|t| thread(t, f64::from(t) / 10.0, 0.1))
            .collect();
        let now = Instant::now();
        let points = thread_points(&threads, &threads, 5, now, now, false);
        // Three series a thread (wait, cpu, hold share), for the five busiest.
        assert_eq!(points.len(), 15);
        let tids: std::collections::BTreeSet<&str> = points
            .iter()
            .filter_map(|p| p.attributes.iter().find(|(k, _)| *k == "thread.id"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            tids.into_iter().collect::<Vec<_>>(),
            ["26", "27", "28", "29", "30"]
        );
        assert!(points
            .iter()
            .all(|p| p.attributes.iter().any(|(k, _)| *k == "thread.name")));
        // Under delta, a thread that did not wait sends no wait point.
        let idle = vec![thread(7, 1.0, 0.0)];
        let points = thread_points(&idle, &idle, 5, now, now, true);
        assert!(points
            .iter()
            .all(|p| p.metric.name != THREAD_GIL_WAIT_TIME.name));
    }

    #[test]
    fn log2_slots_fold_into_second_bounds() {
        let bounds = wait_bounds_s();
        assert_eq!(bounds.len(), HIST_LAST - HIST_FIRST + 1);
        assert!((bounds[0] - 2048e-9).abs() < 1e-15);
        let mut h = [0u64; HIST_SLOTS];
        h[3] = 1; // 8 ns: first bucket
        h[22] = 5; // 4.2-8.4 ms
        h[50] = 2; // beyond the last bound
        let counts = fold_hist(&h);
        assert_eq!(counts.len(), bounds.len() + 1);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[22 - HIST_FIRST], 5);
        // slot 22 holds [2^22, 2^23) ns; its bucket's upper bound is 2^23 ns.
        assert!((bounds[22 - HIST_FIRST] - 8_388_608e-9).abs() < 1e-12);
        assert_eq!(*counts.last().unwrap_or(&0), 2);
        assert_eq!(counts.iter().sum::<u64>(), 8);
    }
}
