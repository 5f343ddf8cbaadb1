//! Every metric `gilscope run` exports, named in one place: name, instrument,
//! unit, description, and the wait histogram's buckets. The series built each interval,
//! the OTLP encoding and the Prometheus page all read these definitions, so a
//! metric is renamed or re-described here and nowhere else. The README's metric
//! table lists [`ALL`]; a test keeps them equal.

use crate::core::counters::HIST_SLOTS;

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
metric!(
    EVENT_LOOP_LAG,
    "cpython.event_loop.lag",
    Histogram,
    "s",
    "Lengths of the iterations of the process's event loops (a poll-family return to the thread's next call): how long every other callback of the loop waited."
);
metric!(
    EVENT_LOOP_BLOCKED_TIME,
    "cpython.event_loop.blocked.time",
    Counter,
    "s",
    "Time the process's event loops spent in iterations of 20 ms or more: the loop was blocked."
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
    "The agent's own: contention episodes the kernel could not record (its ring buffer was full, or their process had sent its share of it since the last drain)."
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
    &EVENT_LOOP_LAG,
    &EVENT_LOOP_BLOCKED_TIME,
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
