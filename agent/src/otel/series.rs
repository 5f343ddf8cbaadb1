//! How one process's interval becomes data points of the metrics in
//! [`crate::otel::catalog`].
//!
//! Counters come from the cumulative counters of the process since it was first
//! watched (cumulative temporality) or since the previous interval (delta);
//! gauges describe the last interval. The figures are those of `check`: the same
//! [`analyse`], [`estimate`] and [`diagnose`] run over the interval, so the two
//! never disagree. The input is plain core data ([`Measurement`]s): whoever
//! watches the process makes them, this module only counts.

use std::time::Instant;

use crate::core::analyse::{analyse, estimate, Measurement};
use crate::core::counters::HIST_SLOTS;
use crate::core::diagnose::{diagnose, Facts};
use crate::core::event_loop::{event_loops, is_event_loop};
use crate::core::report::{Diagnosis, DiagnosisKind, ProcessReport, Severity, ThreadReport};
use crate::core::samples::GilSamples;

use crate::otel::catalog::*;
use crate::otel::Temporality;

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
    pub diagnosis: Vec<(DiagnosisKind, Severity)>,
    pub speedup: f64,
}

/// What one interval of one process needs, as plain core data.
pub struct IntervalInput<'a> {
    /// The interval alone (previous to current snapshot): gauges and diagnoses describe it.
    pub interval: &'a Measurement,
    /// The window counters count over: since first watched (cumulative) or since
    /// the previous interval (delta), chosen with [`Temporality::window`].
    pub counted: &'a Measurement,
    /// When the counted window began.
    pub counted_from: Instant,
    /// When the interval ended (the current snapshot).
    pub at: Instant,
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

/// GIL switches in a tally of the sampler over a window (its first and last
/// `switch_number` seen).
fn switches(gil: &GilSamples) -> u64 {
    match (gil.first_switch, gil.last_switch) {
        (Some((_, a)), Some((_, b))) => b.wrapping_sub(a).min(1 << 40),
        _ => 0,
    }
}

/// Data points of one process for one interval.
pub fn process_series(input: &IntervalInput) -> ProcessSeries {
    let (process, threads) = analyse(input.interval);
    let est = estimate(&process, &threads);
    let loops = input
        .interval
        .loops
        .as_ref()
        .map(event_loops)
        .unwrap_or_default();
    let diagnoses = diagnose(&Facts {
        process: &process,
        threads: &threads,
        locks: None,
        children: &[],
        profile: None,
        loops: &loops,
    });
    let (total, total_threads) = analyse(input.counted);
    let delta = input.temporality == Temporality::Delta;
    let (start, now) = (input.counted_from, input.at);

    let mut points = counter_points(&total, input.counted, start, delta);
    // An interval in which the sampler took no sample (the first one after an
    // attach can be) has no utilization: 0 would be a false dip, so none is sent.
    if input.interval.gil.samples > 0 || process.gil_hold_s.is_some() {
        points.push(point(
            &GIL_UTILIZATION,
            Value::Double(process.gil_utilization),
            now,
        ));
    }
    points.extend([
        point(
            &GIL_QUEUE_LENGTH,
            Value::Double(process.gil_queue_length),
            now,
        ),
        point(
            &EFFECTIVE_PARALLELISM,
            Value::Double(process.effective_parallelism),
            now,
        ),
        point(&THREAD_COUNT, Value::Int(input.thread_count as i64), now),
        point(
            &SPEEDUP_ESTIMATE,
            Value::Double(est.speedup_without_gil),
            now,
        ),
    ]);
    points.extend(diagnosis_points(&diagnoses, now));
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
        diagnosis: diagnoses.iter().map(|d| (d.kind, d.severity)).collect(),
        speedup: est.speedup_without_gil,
        process,
    }
}

/// The counters and the wait histogram over the counted window; under delta an
/// unchanged series is not re-sent.
fn counter_points(
    total: &ProcessReport,
    counted: &Measurement,
    start: Instant,
    delta: bool,
) -> Vec<Point> {
    let mut points = Vec::with_capacity(24);
    let mut counter = |metric: &'static MetricDef, value: Value| {
        let zero = matches!(value, Value::Double(v) if v == 0.0) || matches!(value, Value::Int(0));
        if !(delta && zero) {
            points.push(point(metric, value, start));
        }
    };
    counter(&GIL_WAIT_TIME, Value::Double(total.gil_wait_s));
    counter(&GIL_WAITS, Value::Int(total.gil_waits as i64));
    counter(&GIL_SWITCHES, Value::Int(switches(&counted.gil) as i64));
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
    points.extend(loop_points(counted, start, delta));
    points
}

/// The event-loop lag histogram and blocked time over the counted window,
/// summed over the process's loop threads; nothing for a process without a
/// loop (most have none: no series to pay for).
fn loop_points(counted: &Measurement, start: Instant, delta: bool) -> Vec<Point> {
    let Some(loops) = &counted.loops else {
        return Vec::new();
    };
    let mut hist = [0u64; HIST_SLOTS];
    let (mut busy_ns, mut long_ns, mut any) = (0u64, 0u64, false);
    for t in loops.threads.values().filter(|t| is_event_loop(&t.counted)) {
        any = true;
        for (a, b) in hist.iter_mut().zip(t.counted.hist.iter()) {
            *a += b;
        }
        busy_ns += t.counted.busy_ns;
        long_ns += t.counted.long_ns;
    }
    if !any {
        return Vec::new();
    }
    let counts = fold_hist(&hist);
    let lag = Value::Histogram {
        counts,
        sum_s: busy_ns as f64 / 1e9,
    };
    let mut out = vec![point(&EVENT_LOOP_LAG, lag, start)];
    if !(delta && long_ns == 0) {
        let blocked = Value::Double(long_ns as f64 / 1e9);
        out.push(point(&EVENT_LOOP_BLOCKED_TIME, blocked, start));
    }
    out
}

/// The diagnosis state gauge: one point for every [`DiagnosisKind`], 1 where a
/// finding of that kind holds, 0 for the others (so an alert sees it clear).
pub fn diagnosis_points(diagnoses: &[Diagnosis], now: Instant) -> Vec<Point> {
    DiagnosisKind::ALL
        .iter()
        .map(|&kind| {
            let holds = diagnoses.iter().any(|d| d.kind == kind);
            let mut p = point(&DIAGNOSIS, Value::Int(i64::from(holds)), now);
            p.attributes
                .push(("cpython.diagnosis.kind", kind.name().to_string()));
            p
        })
        .collect()
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

    fn thread(tid: u32, cpu_s: f64, gil_wait_s: f64) -> ThreadReport {
        ThreadReport {
            tid,
            name: format!("w{tid}"),
            cpu_s,
            gil_wait_s,
            gil_waits: 1,
            gil_hold_share: 0.25,
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
    fn every_diagnosis_kind_reaches_the_metrics_page_and_otlp() {
        use crate::otel::otlp::{resource_metrics_of, Clock, Encoding};
        use crate::otel::prometheus::Exposition;
        use opentelemetry_proto::tonic::common::v1::any_value;
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};

        let held = Diagnosis {
            kind: DiagnosisKind::EventLoopBlocked,
            severity: Severity::Critical,
            summary: String::new(),
            advice: String::new(),
            evidence: Default::default(),
        };
        let now = Instant::now();
        let points = diagnosis_points(&[held], now);
        let resource = vec![("process.pid".to_string(), "7".to_string())];
        let mut page = Exposition::default();
        page.update(&[(&resource, &points, Temporality::Cumulative)]);
        let page = page.render();
        let otlp = resource_metrics_of(
            &resource,
            &points,
            now,
            &Clock::new(),
            Temporality::Cumulative,
            Encoding::STANDARD,
        );
        let gauge: Vec<(String, Option<number_data_point::Value>)> = otlp
            .scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .filter(|m| m.name == DIAGNOSIS.name)
            .filter_map(|m| match &m.data {
                Some(Data::Gauge(g)) => Some(&g.data_points),
                _ => None,
            })
            .flatten()
            .filter_map(|p| {
                let kind = p
                    .attributes
                    .iter()
                    .find(|a| a.key == "cpython.diagnosis.kind")?;
                match kind.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(k) => Some((k.clone(), p.value)),
                    _ => None,
                }
            })
            .collect();
        for &kind in DiagnosisKind::ALL {
            let holds = i64::from(kind == DiagnosisKind::EventLoopBlocked);
            let line = format!(
                "cpython_diagnosis_ratio{{process_pid=\"7\",cpython_diagnosis_kind=\"{kind}\"}} {holds}\n"
            );
            assert!(page.contains(&line), "/metrics lacks {line:?}:\n{page}");
            let sent: Vec<_> = gauge.iter().filter(|(k, _)| k == kind.name()).collect();
            assert_eq!(
                sent,
                [&(
                    kind.name().to_string(),
                    Some(number_data_point::Value::AsInt(holds))
                )],
                "OTLP for {kind}"
            );
        }
    }
}
