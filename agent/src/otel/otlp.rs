//! Encodes data points as OTLP protobuf requests, one `ResourceMetrics` per process,
//! and GIL contention episodes as spans, one `ResourceSpans` per process with the
//! same resource as its metrics.
//!
//! Why not the SDK's `MeterProvider`: one agent reports many processes, each with
//! its own resource, and the SDK binds one resource to a provider; a provider per
//! process means a reader thread, an exporter and a connection per process, and
//! a request per process per interval. Built here, one request carries every
//! process (up to the batch size), and the counters keep their exact values
//! (the kernel counted them; an SDK would only re-aggregate them).
//!
//! The lean [`Encoding`] (the default) shapes requests for thin links without
//! changing a single series or sample: see its doc and BENCHMARKS.md.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};

use crate::otel::catalog::{wait_bounds_s, Kind, MetricDef};
use crate::otel::series::{Point, ProcessSeries, Value};
use crate::otel::spans::{Episode, LoopIterationSpan};
use crate::otel::Temporality;

/// How requests are shaped. Every series and every sample is sent either way;
/// lean only leaves out what a receiver does not need again and makes the rest
/// repeat, so compression finds it (BENCHMARKS.md: ~35 % fewer bytes with gzip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// One timestamp for every process of an interval (the caller's `at`), start
    /// times rounded down to the second (cumulative only), gauge doubles cut to [`GAUGE_BITS`]
    /// mantissa bits, counters of seconds rounded down to [`COUNTER_STEP_S`]. Standard: what a per-process SDK would send.
    pub lean: bool,
    /// Metric descriptions (HELP metadata). Lean sends them only now and then.
    pub describe: bool,
}

impl Encoding {
    /// What an OpenTelemetry SDK sends: descriptions every time, full precision.
    pub const STANDARD: Encoding = Encoding {
        lean: false,
        describe: true,
    };
}

/// Mantissa bits kept of a gauge's double under the lean encoding: a relative
/// error under 2.5e-4, well below what a gauge sampled at 10 Hz resolves (1e-2
/// over a 10 s interval); the 40 zero bits left compress to almost nothing.
pub const GAUGE_BITS: u32 = 12;

/// Resolution of counters in seconds under the lean encoding: 2^-20 s (~1 µs).
/// Rounding down to a binary grid keeps a counter monotonic (a <= b stays
/// floor(a) <= floor(b)) and exact (no decimal), and zeroes ~25 bits of noise.
pub const COUNTER_STEP_S: f64 = 1.0 / 1_048_576.0;

/// `v` rounded down to a multiple of `step` (a power of two: exact in binary).
pub fn floor_to(v: f64, step: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    (v / step).floor() * step
}

/// `v` with only the top `bits` bits of its mantissa (rounded toward zero).
pub fn cut_mantissa(v: f64, bits: u32) -> f64 {
    if !v.is_finite() || v == 0.0 || bits >= 52 {
        return v;
    }
    let mask = !((1u64 << (52 - bits)) - 1);
    f64::from_bits(v.to_bits() & mask)
}

/// Maps monotonic instants to wall-clock nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_unix_ns: u64,
    /// CLOCK_MONOTONIC ns at `base`: the kernel's `bpf_ktime_get_ns` clock.
    base_mono_ns: u64,
}

/// CLOCK_MONOTONIC now, in ns (0 if unreadable, which Linux never is).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Clock {
    /// Pairs now with now.
    pub fn new() -> Self {
        let base_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            base: Instant::now(),
            base_unix_ns,
            base_mono_ns: monotonic_ns(),
        }
    }

    /// Unix nanoseconds of a kernel timestamp (CLOCK_MONOTONIC ns).
    pub fn unix_ns_of_monotonic(&self, mono_ns: u64) -> u64 {
        if mono_ns >= self.base_mono_ns {
            self.base_unix_ns + (mono_ns - self.base_mono_ns)
        } else {
            self.base_unix_ns
                .saturating_sub(self.base_mono_ns - mono_ns)
        }
    }

    /// Unix nanoseconds of `at`.
    pub fn unix_ns(&self, at: Instant) -> u64 {
        if at >= self.base {
            self.base_unix_ns + (at - self.base).as_nanos() as u64
        } else {
            self.base_unix_ns
                .saturating_sub((self.base - at).as_nanos() as u64)
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    let value = match value.parse::<i64>() {
        // process.pid is an int in the semantic conventions.
        Ok(n) if key == "process.pid" => any_value::Value::IntValue(n),
        _ => any_value::Value::StringValue(value.to_string()),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "gilscope".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    }
}

fn temporality_code(t: Temporality) -> i32 {
    match t {
        Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
        Temporality::Delta => AggregationTemporality::Delta as i32,
    }
}

/// One process's points as a `ResourceMetrics` (points of one metric grouped).
/// Lean: stamped `interval_at`, the interval's time shared by every process.
pub fn resource_metrics(
    series: &ProcessSeries,
    clock: &Clock,
    temporality: Temporality,
    encoding: Encoding,
    interval_at: Instant,
) -> ResourceMetrics {
    let at = if encoding.lean {
        interval_at
    } else {
        series.at
    };
    resource_metrics_of(
        &series.resource,
        &series.points,
        at,
        clock,
        temporality,
        encoding,
    )
}

/// Points with a resource, as a `ResourceMetrics`.
pub fn resource_metrics_of(
    resource: &[(String, String)],
    points: &[Point],
    at: Instant,
    clock: &Clock,
    temporality: Temporality,
    encoding: Encoding,
) -> ResourceMetrics {
    let time = clock.unix_ns(at);
    let mut metrics: Vec<Metric> = Vec::new();
    for p in points {
        let mut start = clock.unix_ns(p.start);
        if encoding.lean && temporality == Temporality::Cumulative {
            // Earlier, never later: the counted window still holds every event.
            // (Delta windows must meet end to start, so they are left exact.)
            start -= start % 1_000_000_000;
        }
        let index = match metrics.iter().position(|m| m.name == p.metric.name) {
            Some(i) => i,
            None => {
                metrics.push(empty_metric(p.metric, temporality, encoding.describe));
                metrics.len() - 1
            }
        };
        add_point(&mut metrics[index], p, start, time, encoding.lean);
    }
    ResourceMetrics {
        resource: Some(Resource {
            attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Resource::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(scope()),
            metrics,
            ..ScopeMetrics::default()
        }],
        ..ResourceMetrics::default()
    }
}

/// A metric of `def`'s kind without points; its description only when `describe`.
fn empty_metric(def: &MetricDef, temporality: Temporality, describe: bool) -> Metric {
    let data = match def.kind {
        Kind::Counter => Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: temporality_code(temporality),
            is_monotonic: true,
        }),
        Kind::Gauge => Data::Gauge(Gauge {
            data_points: Vec::new(),
        }),
        Kind::Histogram => Data::Histogram(Histogram {
            data_points: Vec::new(),
            aggregation_temporality: temporality_code(temporality),
        }),
    };
    Metric {
        name: def.name.to_string(),
        description: if describe {
            def.description.to_string()
        } else {
            String::new()
        },
        unit: def.unit.to_string(),
        data: Some(data),
        ..Metric::default()
    }
}

/// A number as sent: under the lean encoding gauges keep [`GAUGE_BITS`] of
/// mantissa and counters of seconds go down to [`COUNTER_STEP_S`].
fn number_value(p: &Point, lean: bool) -> Option<number_data_point::Value> {
    use number_data_point::Value as N;
    match &p.value {
        Value::Double(v) if lean && p.metric.kind == Kind::Gauge => {
            Some(N::AsDouble(cut_mantissa(*v, GAUGE_BITS)))
        }
        Value::Double(v) if lean && p.metric.kind == Kind::Counter => {
            Some(N::AsDouble(floor_to(*v, COUNTER_STEP_S)))
        }
        Value::Double(v) => Some(N::AsDouble(*v)),
        Value::Int(v) => Some(N::AsInt(*v)),
        Value::Histogram { .. } => None,
    }
}

/// Adds one point to its metric: counted from `start` (sums, histograms; gauges
/// have no start), stamped `time`.
fn add_point(metric: &mut Metric, p: &Point, start: u64, time: u64, lean: bool) {
    let attributes: Vec<KeyValue> = p.attributes.iter().map(|(k, v)| kv(k, v)).collect();
    let number = |value, start_time_unix_nano| NumberDataPoint {
        attributes: attributes.clone(),
        start_time_unix_nano,
        time_unix_nano: time,
        value: Some(value),
        ..NumberDataPoint::default()
    };
    match (&mut metric.data, &p.value, number_value(p, lean)) {
        (Some(Data::Sum(s)), _, Some(v)) => s.data_points.push(number(v, start)),
        (Some(Data::Gauge(g)), _, Some(v)) => g.data_points.push(number(v, 0)),
        (Some(Data::Histogram(h)), Value::Histogram { counts, sum_s }, _) => {
            h.data_points.push(HistogramDataPoint {
                attributes: attributes.clone(),
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: counts.iter().sum(),
                sum: Some(*sum_s),
                bucket_counts: counts.clone(),
                explicit_bounds: wait_bounds_s(),
                ..HistogramDataPoint::default()
            })
        }
        _ => {}
    }
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn array(values: impl Iterator<Item = any_value::Value>) -> any_value::Value {
    any_value::Value::ArrayValue(ArrayValue {
        values: values.map(|v| AnyValue { value: Some(v) }).collect(),
    })
}

/// Name of every contention span: one GIL wait of one thread.
pub const SPAN_NAME: &str = "gil.wait";

/// Name of the span of an event-loop iteration that blocked its loop.
pub const LOOP_SPAN_NAME: &str = "event_loop.iteration";

/// A fresh (trace id, span id) pair: never all zero (invalid in OTLP); with
/// 128/64 random bits a repeat never happens in practice.
fn new_ids() -> (Vec<u8>, Vec<u8>) {
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    while trace_id == [0; 16] {
        trace_id = rand::random();
    }
    while span_id == [0; 8] {
        span_id = rand::random();
    }
    (trace_id.to_vec(), span_id.to_vec())
}

/// One long loop iteration as a span: its own trace, kind INTERNAL, the loop
/// thread and the iteration's length as attributes.
pub fn loop_iteration_span(l: &LoopIterationSpan, clock: &Clock) -> Span {
    use any_value::Value as V;
    let (trace_id, span_id) = new_ids();
    Span {
        trace_id,
        span_id,
        name: LOOP_SPAN_NAME.to_string(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: clock.unix_ns_of_monotonic(l.start_ns),
        end_time_unix_nano: clock.unix_ns_of_monotonic(l.end_ns),
        attributes: vec![
            attr("thread.id", V::IntValue(i64::from(l.tid))),
            attr("thread.name", V::StringValue(l.thread_name.clone())),
            attr(
                "cpython.event_loop.iteration.time",
                V::DoubleValue(l.end_ns.saturating_sub(l.start_ns) as f64 / 1e9),
            ),
        ],
        ..Span::default()
    }
}

/// One episode as a span: its own trace (an episode has no caller to join),
/// kind INTERNAL, the waiter and holders as attributes.
pub fn episode_span(e: &Episode, clock: &Clock) -> Span {
    use any_value::Value as V;
    let (trace_id, span_id) = new_ids();
    let mut attributes = vec![
        attr("thread.id", V::IntValue(i64::from(e.tid))),
        attr("thread.name", V::StringValue(e.thread_name.clone())),
        attr(
            "cpython.gil.holder.thread.ids",
            array(
                e.holders
                    .iter()
                    .map(|(tid, _)| V::IntValue(i64::from(*tid))),
            ),
        ),
        attr(
            "cpython.gil.holder.thread.names",
            array(e.holders.iter().map(|(_, n)| V::StringValue(n.clone()))),
        ),
        attr(
            "cpython.gil.wait.time",
            V::DoubleValue(e.wait_ns as f64 / 1e9),
        ),
        attr("cpython.gil.wait.slices", V::IntValue(i64::from(e.slices))),
        attr("cpython.gil.retake", V::BoolValue(e.retake)),
    ];
    // The holder's code, under the semantic conventions' code.* names.
    if let Some(code) = &e.code {
        attributes.push(attr(
            "code.function.name",
            V::StringValue(code.function.clone()),
        ));
        attributes.push(attr("code.file.path", V::StringValue(code.file.clone())));
        if let Some(line) = code.line {
            attributes.push(attr("code.line.number", V::IntValue(i64::from(line))));
        }
    }
    Span {
        trace_id,
        span_id,
        name: SPAN_NAME.to_string(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: clock.unix_ns_of_monotonic(e.start_ns),
        end_time_unix_nano: clock.unix_ns_of_monotonic(e.end_ns),
        attributes,
        ..Span::default()
    }
}

/// One process's episodes as a `ResourceSpans` under its resource.
pub fn resource_spans(
    resource: &[(String, String)],
    episodes: &[Episode],
    loops: &[LoopIterationSpan],
    clock: &Clock,
) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(scope()),
            spans: episodes
                .iter()
                .map(|e| episode_span(e, clock))
                .chain(loops.iter().map(|l| loop_iteration_span(l, clock)))
                .collect(),
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }
}

/// Packs processes' spans into requests of at most `batch` spans each (a process
/// is never split; one bigger than the batch goes alone; one without spans is left out).
pub fn batch_spans(
    resources: Vec<ResourceSpans>,
    batch: usize,
) -> Vec<(ExportTraceServiceRequest, usize)> {
    let with_spans = resources.into_iter().filter(|rs| span_count(rs) > 0);
    pack(with_spans, batch, span_count)
        .into_iter()
        .map(|(resource_spans, n)| (ExportTraceServiceRequest { resource_spans }, n))
        .collect()
}

/// Spans in a `ResourceSpans`.
fn span_count(rs: &ResourceSpans) -> usize {
    rs.scope_spans.iter().map(|s| s.spans.len()).sum()
}

/// Data points in a `ResourceMetrics`.
pub fn point_count(rm: &ResourceMetrics) -> usize {
    rm.scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        })
        .sum()
}

/// Packs resources into requests of at most `batch_points` data points each
/// (a process is never split; one bigger than the batch goes alone).
pub fn batch(
    resources: Vec<ResourceMetrics>,
    batch_points: usize,
) -> Vec<(ExportMetricsServiceRequest, usize)> {
    pack(resources, batch_points, point_count)
        .into_iter()
        .map(|(resource_metrics, n)| (ExportMetricsServiceRequest { resource_metrics }, n))
        .collect()
}

/// Groups items in order, at most `limit` of their `size` a group (an item is
/// never split; one bigger than the limit goes alone), each with its total size.
fn pack<T>(
    items: impl IntoIterator<Item = T>,
    limit: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<(Vec<T>, usize)> {
    let mut out = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut total = 0;
    for item in items {
        let n = size(&item);
        if !cur.is_empty() && total + n > limit {
            out.push((std::mem::take(&mut cur), total));
            total = 0;
        }
        total += n;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push((cur, total));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel::catalog::{DIAGNOSIS, GIL_WAIT_DURATION, GIL_WAIT_TIME};

    fn points(now: Instant) -> Vec<Point> {
        let mut diag = Point {
            metric: &DIAGNOSIS,
            attributes: vec![("cpython.diagnosis.kind", "no_contention".into())],
            value: Value::Int(1),
            start: now,
        };
        let diag2 = {
            let mut d = diag.clone();
            d.attributes[0].1 = "cpu_starved".into();
            d.value = Value::Int(0);
            d
        };
        diag.start = now;
        vec![
            Point {
                metric: &GIL_WAIT_TIME,
                attributes: vec![],
                value: Value::Double(2.5),
                start: now,
            },
            diag,
            diag2,
            Point {
                metric: &GIL_WAIT_DURATION,
                attributes: vec![],
                value: Value::Histogram {
                    counts: vec![0; wait_bounds_s().len() + 1],
                    sum_s: 0.0,
                },
                start: now,
            },
        ]
    }

    #[test]
    fn points_of_one_metric_share_one_metric_and_resources_are_kept() {
        let clock = Clock::new();
        let now = Instant::now();
        let res = vec![
            ("service.name".to_string(), "shop".to_string()),
            ("process.pid".to_string(), "42".to_string()),
        ];
        let rm = resource_metrics_of(
            &res,
            &points(now),
            now,
            &clock,
            Temporality::Delta,
            Encoding::STANDARD,
        );
        let metrics = &rm.scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 3);
        assert_eq!(point_count(&rm), 4);
        match &metrics[0].data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Delta as i32
                );
                assert_eq!(metrics[0].unit, "s");
            }
            other => panic!("not a sum: {other:?}"),
        }
        let attrs = &rm
            .resource
            .as_ref()
            .map(|r| r.attributes.clone())
            .unwrap_or_default();
        assert_eq!(
            attrs[1].value.as_ref().and_then(|v| v.value.clone()),
            Some(any_value::Value::IntValue(42))
        );
    }

    #[test]
    fn an_episode_is_an_internal_span_with_waiter_holders_and_unix_times() {
        let clock = Clock::new();
        let mono = monotonic_ns();
        let e = Episode {
            pid: 42,
            tid: 101,
            thread_name: "cpu-0".into(),
            start_ns: mono - 80_000_000,
            end_ns: mono - 20_000_000,
            wait_ns: 60_000_000,
            holders: vec![(102, "cpu-1".into()), (103, "cpu-2".into())],
            slices: 12,
            retake: false,
            records: 1,
            holder_stack: Some(0x42),
            code: Some(crate::core::stacks::Frame {
                function: "Worker.crunch".into(),
                file: "/srv/app/work.py".into(),
                line: Some(12),
            }),
        };
        let res = vec![("service.name".to_string(), "shop".to_string())];
        let blocked = LoopIterationSpan {
            pid: 42,
            tid: 100,
            thread_name: "MainThread".into(),
            start_ns: mono - 70_000_000,
            end_ns: mono - 30_000_000,
        };
        let rs = resource_spans(&res, &[e.clone(), e], &[blocked], &clock);
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        let l = &spans[2];
        assert_eq!(l.name, "event_loop.iteration");
        assert_eq!(l.end_time_unix_nano - l.start_time_unix_nano, 40_000_000);
        assert!(l
            .attributes
            .iter()
            .any(|a| a.key == "cpython.event_loop.iteration.time"
                && a.value.as_ref().and_then(|v| v.value.clone())
                    == Some(any_value::Value::DoubleValue(0.04))));
        let s = &spans[0];
        assert_eq!(
            (s.name.as_str(), s.kind),
            ("gil.wait", SpanKind::Internal as i32)
        );
        assert_eq!((s.trace_id.len(), s.span_id.len()), (16, 8));
        assert_ne!(spans[0].trace_id, spans[1].trace_id);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 60_000_000);
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let lag = now_unix.saturating_sub(s.end_time_unix_nano);
        assert!((15_000_000..1_000_000_000).contains(&lag), "lag {lag} ns");
        let get = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(get("thread.id"), Some(any_value::Value::IntValue(101)));
        assert_eq!(
            get("cpython.gil.wait.time"),
            Some(any_value::Value::DoubleValue(0.06))
        );
        match get("cpython.gil.holder.thread.names") {
            Some(any_value::Value::ArrayValue(a)) => assert_eq!(a.values.len(), 2),
            other => panic!("holder names {other:?}"),
        }
        assert_eq!(
            get("code.function.name"),
            Some(any_value::Value::StringValue("Worker.crunch".into()))
        );
        assert_eq!(
            get("code.file.path"),
            Some(any_value::Value::StringValue("/srv/app/work.py".into()))
        );
        assert_eq!(
            get("code.line.number"),
            Some(any_value::Value::IntValue(12))
        );
        let batches = batch_spans(vec![rs.clone(), rs.clone(), rs], 3);
        assert_eq!(
            batches.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![3, 3, 3]
        );
    }

    #[test]
    fn lean_keeps_every_point_and_counter_value_and_drops_only_what_repeats() {
        let clock = Clock::new();
        let now = Instant::now();
        let mut pts = points(now);
        pts.push(Point {
            metric: &crate::otel::catalog::GIL_UTILIZATION,
            attributes: vec![],
            value: Value::Double(0.123456789),
            start: now,
        });
        let lean = Encoding {
            lean: true,
            describe: false,
        };
        let std_rm = resource_metrics_of(
            &[],
            &pts,
            now,
            &clock,
            Temporality::Cumulative,
            Encoding::STANDARD,
        );
        let lean_rm = resource_metrics_of(&[], &pts, now, &clock, Temporality::Cumulative, lean);
        assert_eq!(point_count(&lean_rm), point_count(&std_rm));
        let metrics = &lean_rm.scope_metrics[0].metrics;
        assert!(metrics
            .iter()
            .all(|m| m.description.is_empty() && !m.unit.is_empty()));
        let number = |rm: &ResourceMetrics, name: &str| {
            rm.scope_metrics[0]
                .metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| match &m.data {
                    Some(Data::Sum(s)) => s.data_points.first().cloned(),
                    Some(Data::Gauge(g)) => g.data_points.first().cloned(),
                    _ => None,
                })
                .expect("point")
        };
        // Counters keep their value to the µs; the start only moves earlier, to a whole second.
        let (c_std, c_lean) = (
            number(&std_rm, "cpython.gil.wait.time"),
            number(&lean_rm, "cpython.gil.wait.time"),
        );
        assert_eq!(c_std.value, c_lean.value, "2.5 s is on the grid");
        let x = 1_234.567_890_123;
        let q = floor_to(x, COUNTER_STEP_S);
        assert!(q <= x && x - q < 1e-6, "{q}");
        assert_eq!(q.to_bits() & 0xff, 0);
        assert!(floor_to(x + 1e-9, COUNTER_STEP_S) >= q, "monotonic");
        assert!(c_lean.start_time_unix_nano <= c_std.start_time_unix_nano);
        assert!(c_std.start_time_unix_nano - c_lean.start_time_unix_nano < 1_000_000_000);
        assert_eq!(c_lean.start_time_unix_nano % 1_000_000_000, 0);
        // Gauges keep 12 mantissa bits: within 2.5e-4 of the value.
        match number(&lean_rm, "cpython.gil.utilization").value {
            Some(number_data_point::Value::AsDouble(v)) => {
                assert!(((v - 0.123456789) / 0.123456789).abs() < 2.5e-4, "{v}");
                assert_eq!(v.to_bits() & ((1 << 40) - 1), 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cut_mantissa(1.0, GAUGE_BITS), 1.0);
        assert_eq!(cut_mantissa(0.0, GAUGE_BITS), 0.0);
    }

    #[test]
    fn batches_hold_whole_processes_up_to_the_point_limit() {
        let clock = Clock::new();
        let now = Instant::now();
        let rms: Vec<ResourceMetrics> = (0..5)
            .map(|i| {
                resource_metrics_of(
                    &[("process.pid".into(), i.to_string())],
                    &points(now),
                    now,
                    &clock,
                    Temporality::Cumulative,
                    Encoding::STANDARD,
                )
            })
            .collect();
        let batches = batch(rms, 10);
        assert_eq!(
            batches.iter().map(|(_, n)| n).collect::<Vec<_>>(),
            vec![&8, &8, &4]
        );
        assert_eq!(batch(Vec::new(), 10).len(), 0);
    }
}
