//! The Prometheus text exposition (format 0.0.4) of what `gilscope run` exports
//! over OTLP, for `/metrics`.
//!
//! The data points are the daemon's own ([`Point`]s built once per interval for
//! OTLP); nothing is measured or computed a second time. Names and labels follow
//! the rule VictoriaMetrics applies to OTLP with `-opentelemetry.usePrometheusNaming`
//! (the OpenTelemetry collector's Prometheus normalization): dots become
//! underscores, the unit is appended (`s` -> `_seconds`, `By` -> `_bytes`,
//! `{annotations}` dropped), monotonic sums get `_total`, unit-`1` gauges get
//! `_ratio`, histograms become `_bucket{le}`/`_sum`/`_count`, and every resource
//! attribute becomes a label (`service.name` -> `service_name`). So a series
//! scraped here and the same series pushed over OTLP carry one name and one label
//! set, and one dashboard serves both.
//!
//! `/metrics` is always cumulative: under delta temporality the interval's sums
//! are added up here, per series, for as long as the process is watched.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::otel::catalog::{self, wait_bounds_s, Kind, MetricDef};
use crate::otel::series::{Point, Value};
use crate::otel::Temporality;

/// OTLP units and the word Prometheus names carry for them (the OpenTelemetry
/// collector's table, which VictoriaMetrics copies).
const UNIT_WORDS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("KBy", "kilobytes"),
    ("MBy", "megabytes"),
    ("GBy", "gigabytes"),
    ("1", ""),
    ("%", "percent"),
];

/// Units after a `/` (`By/s` -> `_bytes_per_second`).
const PER_UNIT_WORDS: &[(&str, &str)] = &[
    ("s", "second"),
    ("m", "minute"),
    ("h", "hour"),
    ("d", "day"),
    ("w", "week"),
];

fn word<'a>(table: &[(&str, &'a str)], unit: &'a str) -> &'a str {
    table
        .iter()
        .find(|(u, _)| *u == unit)
        .map_or(unit, |(_, w)| *w)
}

/// The Prometheus name of an OTLP metric, as VictoriaMetrics and the
/// OpenTelemetry collector derive it (`cpython.gil.wait.time` in `s`, a counter:
/// `cpython_gil_wait_time_seconds_total`).
pub fn metric_name(def: &MetricDef) -> String {
    let mut tokens: Vec<&str> = def
        .name
        .split(['/', '_', '.', '-', ':', ' '])
        .filter(|t| !t.is_empty())
        .collect();
    let (main, per) = match def.unit.split_once('/') {
        Some((m, p)) => (m.trim(), p.trim()),
        None => (def.unit.trim(), ""),
    };
    if !main.is_empty() && !main.contains('{') {
        let w = word(UNIT_WORDS, main);
        if !w.is_empty() && !tokens.contains(&w) {
            tokens.push(w);
        }
    }
    if !per.is_empty() && !per.contains('{') {
        let w = word(PER_UNIT_WORDS, per);
        if !w.is_empty() && !tokens.contains(&w) {
            tokens.extend(["per", w]);
        }
    }
    let suffix = match def.kind {
        Kind::Counter => Some("total"),
        Kind::Gauge if def.unit == "1" => Some("ratio"),
        _ => None,
    };
    if let Some(s) = suffix {
        tokens.retain(|t| *t != s);
        tokens.push(s);
    }
    tokens.join("_")
}

/// The Prometheus label of an OTLP attribute key, as VictoriaMetrics derives it:
/// characters other than `[a-zA-Z0-9_]` become `_`; a leading digit gets `key_`,
/// a leading single `_` gets `key`.
pub fn label_name(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if clean.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{clean}")
    } else if clean.starts_with('_') && !clean.starts_with("__") {
        format!("key{clean}")
    } else {
        clean
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: only `\` and newlines are escaped.
fn push_help(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value (`+Inf`, `-Inf`, `NaN` spelled as Prometheus reads them).
fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Labels of one series: sanitized names, resource first; a point attribute
/// replaces a resource attribute that maps to the same label.
type Labels = Vec<(String, String)>;

fn labels_of(pairs: impl IntoIterator<Item = (String, String)>) -> Labels {
    let mut out: Labels = Vec::new();
    for (k, v) in pairs {
        let k = label_name(&k);
        match out.iter_mut().find(|(have, _)| *have == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

/// One resource's points of an interval, and whether its sums are cumulative or delta.
pub type Batch<'a> = (&'a [(String, String)], &'a [Point], Temporality);

/// One resource's series: (metric, point labels) -> value.
type Series = BTreeMap<(&'static str, Labels), (&'static MetricDef, Value)>;

/// Adds an interval's sum to the running total of a series.
fn add(total: Value, delta: &Value) -> Value {
    match (total, delta) {
        (Value::Double(a), Value::Double(b)) => Value::Double(a + b),
        (Value::Int(a), Value::Int(b)) => Value::Int(a.saturating_add(*b)),
        (
            Value::Histogram { counts, sum_s },
            Value::Histogram {
                counts: more,
                sum_s: more_s,
            },
        ) if counts.len() == more.len() => Value::Histogram {
            counts: counts.iter().zip(more).map(|(a, b)| a + b).collect(),
            sum_s: sum_s + more_s,
        },
        // Kinds never change for one series; if they did, the newest wins.
        (_, d) => d.clone(),
    }
}

/// The current cumulative series of every watched process and of the agent,
/// kept between intervals so delta sums can be added up.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Keyed by the resource's labels; a resource absent from an interval is gone.
    resources: BTreeMap<Labels, Series>,
}

impl Exposition {
    /// Takes one interval's points: each resource with its points and their
    /// temporality, as built for OTLP. Resources not in `batch` (exited
    /// processes, already reported once more) are dropped.
    pub fn update(&mut self, batch: &[Batch<'_>]) {
        let mut next = BTreeMap::new();
        for (resource, points, temporality) in batch {
            let delta = *temporality == Temporality::Delta;
            let key = labels_of(resource.iter().cloned());
            let mut old = self.resources.remove(&key).unwrap_or_default();
            let mut fresh = Series::new();
            for p in points.iter() {
                let id = (
                    p.metric.name,
                    labels_of(p.attributes.iter().map(|(k, v)| (k.to_string(), v.clone()))),
                );
                let summed = delta && p.metric.kind != Kind::Gauge;
                let value = match old.remove(&id) {
                    Some((_, total)) if summed => add(total, &p.value),
                    _ => p.value.clone(),
                };
                fresh.insert(id, (p.metric, value));
            }
            if delta {
                // Under delta an unchanged sum is not re-sent: keep its total.
                for (id, (def, total)) in old {
                    if def.kind != Kind::Gauge {
                        fresh.entry(id).or_insert((def, total));
                    }
                }
            }
            next.insert(key, fresh);
        }
        self.resources = next;
    }

    /// The text exposition: one `# HELP`/`# TYPE` block per metric, in the
    /// README's order, every series of every resource under it.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let bounds: Vec<String> = wait_bounds_s().iter().map(|b| format!("{b}")).collect();
        // A resource's labels are the same on each of its series: written once.
        let prefixes: Vec<String> = self.resources.keys().map(label_text).collect();
        for def in catalog::ALL {
            let series: Vec<(&Labels, &str, &Labels, &Value)> = self
                .resources
                .iter()
                .zip(&prefixes)
                .flat_map(|((resource, series), prefix)| {
                    series
                        .iter()
                        .filter(|((name, _), _)| *name == def.name)
                        .map(move |((_, attrs), (_, v))| (resource, prefix.as_str(), attrs, v))
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            let name = metric_name(def);
            let _ = write!(out, "# HELP {name} ");
            push_help(&mut out, def.description);
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "\n# TYPE {name} {kind}");
            for (resource, prefix, attrs, value) in series {
                let clash = attrs
                    .iter()
                    .any(|(k, _)| k == "le" || resource.iter().any(|(r, _)| r == k));
                let labels = match (attrs.is_empty(), clash) {
                    (true, _) => prefix.to_string(),
                    (false, false) if prefix.is_empty() => label_text(attrs),
                    (false, false) => format!("{prefix},{}", label_text(attrs)),
                    // A point attribute named like a resource label replaces it.
                    (false, true) => {
                        let mut all = labels_of(resource.iter().chain(attrs.iter()).cloned());
                        all.retain(|(k, _)| k != "le");
                        label_text(&all)
                    }
                };
                match value {
                    Value::Double(v) => sample(&mut out, &name, &labels, None, |o| push_f64(o, *v)),
                    Value::Int(v) => sample(&mut out, &name, &labels, None, |o| {
                        let _ = write!(o, "{v}");
                    }),
                    Value::Histogram { counts, sum_s } => {
                        let bucket = format!("{name}_bucket");
                        let mut running = 0u64;
                        for (i, n) in counts.iter().enumerate() {
                            running += n;
                            let le = bounds.get(i).map_or("+Inf", String::as_str);
                            sample(&mut out, &bucket, &labels, Some(le), |o| {
                                let _ = write!(o, "{running}");
                            });
                        }
                        if counts.len() <= bounds.len() {
                            // Fewer counts than bounds (never built so): still close with +Inf.
                            sample(&mut out, &bucket, &labels, Some("+Inf"), |o| {
                                let _ = write!(o, "{running}");
                            });
                        }
                        sample(&mut out, &format!("{name}_sum"), &labels, None, |o| {
                            push_f64(o, *sum_s)
                        });
                        sample(&mut out, &format!("{name}_count"), &labels, None, |o| {
                            let _ = write!(o, "{running}");
                        });
                    }
                }
            }
        }
        out
    }
}

/// `k="v",k2="v2"`, values escaped.
fn label_text(labels: &Labels) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        push_label_value(&mut out, v);
        out.push('"');
    }
    out
}

/// One sample line: `name{labels,le="…"} value` (`labels` already written out).
fn sample(
    out: &mut String,
    name: &str,
    labels: &str,
    le: Option<&str>,
    value: impl FnOnce(&mut String),
) {
    out.push_str(name);
    match (labels.is_empty(), le) {
        (true, None) => {}
        (true, Some(le)) => {
            let _ = write!(out, "{{le=\"{le}\"}}");
        }
        (false, None) => {
            let _ = write!(out, "{{{labels}}}");
        }
        (false, Some(le)) => {
            let _ = write!(out, "{{{labels},le=\"{le}\"}}");
        }
    }
    out.push(' ');
    value(out);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::otel::catalog::*;
    use crate::otel::series::*;

    #[test]
    fn names_are_those_victoria_metrics_gives_otlp_metrics() {
        // As -opentelemetry.usePrometheusNaming names them (see VictoriaMetrics'
        // lib/protoparser/opentelemetry/stream/sanitize.go and its tests).
        for (def, want) in [
            (&GIL_WAIT_TIME, "cpython_gil_wait_time_seconds_total"),
            (&GIL_WAITS, "cpython_gil_waits_total"),
            (&GIL_WAIT_DURATION, "cpython_gil_wait_duration_seconds"),
            (&GIL_UTILIZATION, "cpython_gil_utilization_ratio"),
            (&GIL_QUEUE_LENGTH, "cpython_gil_queue_length"),
            (&CPU_TIME, "process_cpu_time_seconds_total"),
            (&THREAD_COUNT, "process_thread_count"),
            (&EXPORT_BYTES, "gilscope_export_bytes_total"),
            (&EXPORT_POINTS, "gilscope_export_data_points_total"),
            (&PROCESSES_WATCHED, "gilscope_processes_watched"),
            (&BPF_ENTRIES_DROPPED, "gilscope_bpf_entries_dropped_total"),
        ] {
            assert_eq!(metric_name(def), want);
        }
        let odd = MetricDef {
            name: "a.total.b",
            kind: Kind::Counter,
            unit: "By/s",
            description: "",
        };
        assert_eq!(metric_name(&odd), "a_b_bytes_per_second_total");
        let ratio = MetricDef {
            name: "x.ratio.y",
            kind: Kind::Gauge,
            unit: "1",
            description: "",
        };
        assert_eq!(metric_name(&ratio), "x_y_ratio");
        for def in ALL {
            let n = metric_name(def);
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !n.starts_with(|c: char| c.is_ascii_digit()),
                "{n}"
            );
        }
    }

    #[test]
    fn attribute_keys_become_label_names_as_victoria_metrics_makes_them() {
        assert_eq!(label_name("service.name"), "service_name");
        assert_eq!(label_name("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(label_name("1st"), "key_1st");
        assert_eq!(label_name("_x"), "key_x");
        assert_eq!(label_name("__x"), "__x");
        assert_eq!(label_name("ünï"), "key_n_");
    }

    fn res(pid: &str) -> Vec<(String, String)> {
        vec![
            ("service.name".into(), "shop \"api\"\\\nv2".into()),
            ("process.pid".into(), pid.into()),
        ]
    }

    fn p(metric: &'static MetricDef, value: Value) -> Point {
        Point {
            metric,
            attributes: Vec::new(),
            value,
            start: Instant::now(),
        }
    }

    #[test]
    fn label_values_are_escaped_and_every_series_has_its_resource() {
        let mut e = Exposition::default();
        let r = res("42");
        let points = vec![p(&GIL_UTILIZATION, Value::Double(0.97))];
        e.update(&[(&r, &points, Temporality::Cumulative)]);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP cpython_gil_utilization_ratio Share of the interval the GIL was held (sampled).\n\
             # TYPE cpython_gil_utilization_ratio gauge\n\
             cpython_gil_utilization_ratio{service_name=\"shop \\\"api\\\"\\\\\\nv2\",process_pid=\"42\"} 0.97\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_buckets_with_le_sum_and_count() {
        let mut e = Exposition::default();
        let r = res("7");
        let mut counts = vec![0u64; wait_bounds_s().len() + 1];
        counts[0] = 2;
        counts[3] = 5;
        *counts.last_mut().unwrap_or(&mut 0) = 1;
        let points = vec![p(
            &GIL_WAIT_DURATION,
            Value::Histogram { counts, sum_s: 1.5 },
        )];
        e.update(&[(&r, &points, Temporality::Cumulative)]);
        let text = e.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "# TYPE cpython_gil_wait_duration_seconds histogram"
        );
        assert!(lines[2].starts_with("cpython_gil_wait_duration_seconds_bucket{"));
        assert!(lines[2].ends_with(",le=\"0.000002048\"} 2"), "{}", lines[2]);
        assert!(lines[5].ends_with(" 7"), "{}", lines[5]);
        let inf = lines
            .iter()
            .find(|l| l.contains("le=\"+Inf\""))
            .copied()
            .unwrap_or_default();
        assert!(inf.ends_with("} 8"), "{inf}");
        assert!(text.contains("cpython_gil_wait_duration_seconds_sum{service_name="));
        assert!(text.ends_with("process_pid=\"7\"} 8\n"), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.contains("_bucket{")).count(),
            wait_bounds_s().len() + 1
        );
    }

    #[test]
    fn delta_sums_are_added_up_and_exited_processes_drop_out() {
        let mut e = Exposition::default();
        let (a, b) = (res("1"), res("2"));
        let first = vec![
            p(&GIL_WAIT_TIME, Value::Double(1.5)),
            p(&GIL_WAITS, Value::Int(10)),
            p(&GIL_UTILIZATION, Value::Double(0.5)),
        ];
        e.update(&[
            (&a, &first, Temporality::Delta),
            (&b, &first, Temporality::Delta),
        ]);
        // Second interval: waits did not change (not re-sent under delta).
        let second = vec![
            p(&GIL_WAIT_TIME, Value::Double(0.25)),
            p(&GIL_UTILIZATION, Value::Double(0.75)),
        ];
        e.update(&[
            (&a, &second, Temporality::Delta),
            (&b, &second, Temporality::Delta),
        ]);
        let text = e.render();
        assert!(text.contains("cpython_gil_wait_time_seconds_total{service_name=\"shop \\\"api\\\"\\\\\\nv2\",process_pid=\"1\"} 1.75\n"), "{text}");
        assert!(
            text.contains("cpython_gil_waits_total{") && text.contains("process_pid=\"2\"} 10\n")
        );
        assert!(text.contains("process_pid=\"1\"} 0.75\n"), "{text}");
        // Process 2 exited: its series go.
        e.update(&[(&a, &second, Temporality::Delta)]);
        let text = e.render();
        assert!(!text.contains("process_pid=\"2\""), "{text}");
        assert!(text.contains("process_pid=\"1\"} 2\n"), "{text}");
        // Cumulative values are shown as they come.
        e.update(&[(&a, &first, Temporality::Cumulative)]);
        assert!(e.render().contains("process_pid=\"1\"} 1.5\n"));
    }

    #[test]
    fn a_point_attribute_named_like_a_resource_label_replaces_it() {
        let mut e = Exposition::default();
        let r = vec![("thread.id".to_string(), "1".to_string())];
        let mut pt = p(&THREAD_CPU_TIME, Value::Double(2.0));
        pt.attributes.push(("thread.id", "9".into()));
        e.update(&[(&r, &[pt], Temporality::Cumulative)]);
        assert!(e
            .render()
            .ends_with("\ncpython_thread_cpu_time_seconds_total{thread_id=\"9\"} 2\n"));
    }

    #[test]
    fn counters_are_typed_counter_and_special_floats_are_spelled_for_prometheus() {
        let mut e = Exposition::default();
        let r = res("3");
        let mut diag = p(&DIAGNOSIS, Value::Int(1));
        diag.attributes
            .push(("cpython.diagnosis.kind", "no_contention".into()));
        let points = vec![
            p(&CPU_TIME, Value::Double(f64::INFINITY)),
            p(&SPEEDUP_ESTIMATE, Value::Double(f64::NAN)),
            diag,
        ];
        e.update(&[(&r, &points, Temporality::Cumulative)]);
        let text = e.render();
        assert!(text.contains("# TYPE process_cpu_time_seconds_total counter\n"));
        assert!(text.contains("process_pid=\"3\"} +Inf\n"));
        assert!(text.contains("process_pid=\"3\"} NaN\n"));
        assert!(text.contains(
            "cpython_diagnosis_ratio{service_name=\"shop \\\"api\\\"\\\\\\nv2\",process_pid=\"3\",cpython_diagnosis_kind=\"no_contention\"} 1\n"
        ));
    }
}
