//! The zero-setup output of `gilscope run`: with no endpoint configured, one
//! compact block per interval on stdout, one line per process, so the daemon is
//! useful before any collector exists.

use std::fmt::Write as _;

use crate::otel::series::ProcessSeries;

fn resource<'a>(s: &'a ProcessSeries, key: &str) -> &'a str {
    s.resource
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The block for one interval (processes in pid order).
pub fn render(series: &[ProcessSeries], interval_s: f64) -> String {
    let mut out = format!(
        "gilscope run: {} CPython process{} over the last {interval_s:.1} s\n",
        series.len(),
        if series.len() == 1 { "" } else { "es" }
    );
    let mut rows: Vec<&ProcessSeries> = series.iter().collect();
    rows.sort_by_key(|s| resource(s, "process.pid").parse::<u64>().unwrap_or(0));
    for s in rows {
        let p = &s.process;
        let diag = s
            .diagnosis
            .first()
            .map(|(kind, severity)| format!("{} {kind}", severity.name().to_uppercase()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  pid {:>7} {:<24} GIL held {:>3.0}%  queue {:>5.2}  parallelism {:>5.2}  cpu {:>6.2}s  \
             GIL wait {:>7.2}s in {:>6} waits  speedup {:.1}x  {diag}",
            resource(s, "process.pid"),
            truncate(resource(s, "service.name"), 24),
            p.gil_utilization * 100.0,
            p.gil_queue_length,
            p.effective_parallelism,
            p.cpu_s,
            p.gil_wait_s,
            p.gil_waits,
            s.speedup,
        );
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max - 1).collect::<String>() + "…"
    }
}
