//! Renders a [`Report`] for people (a terminal table) or programs (one JSON document).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::core::report::{Report, Severity};

/// The report as one pretty-printed JSON document.
pub fn json(report: &Report) -> String {
    // Serializing plain structs of numbers and strings cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// `s` cut to `width` characters (with `…` when cut), so long thread names keep the table aligned.
fn column(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn duration_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{us:.0}µs")
    }
}

/// The event loops found, one row each: how long their iterations kept every
/// other callback of the loop waiting. Nothing when there is none.
fn event_loops(out: &mut String, report: &Report) {
    if report.event_loops.is_empty() {
        return;
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>8}  {:<24} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "loop", "thread", "iterations", "lag p50", "p99", "max", "blocked"
    );
    for l in &report.event_loops {
        let name = report
            .threads
            .iter()
            .find(|t| t.tid == l.tid)
            .map_or("", |t| t.name.as_str());
        let _ = writeln!(
            out,
            "{:>8}  {:<24} {:>10} {:>8} {:>8} {:>8} {:>7.2}s",
            l.tid,
            column(name, 24),
            l.iterations,
            duration_us(l.lag_p50_ms * 1e3),
            duration_us(l.lag_p99_ms * 1e3),
            duration_us(l.lag_max_ms * 1e3),
            l.blocked_s
        );
    }
}

/// The report as a terminal table: verdict first, then the process, then each thread.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let p = &report.process;
    let i = &report.interpreter;
    let _ = writeln!(
        out,
        "gilscope check: pid {}, CPython {} ({}{}{}), {:.1} s, {} mode",
        report.pid,
        i.version,
        i.library.as_deref().unwrap_or(&i.executable),
        if i.stripped { ", stripped" } else { "" },
        if i.libc == "musl" { ", musl" } else { "" },
        report.duration_s,
        match report.mode {
            crate::core::report::Mode::Default => "default",
            crate::core::report::Mode::Precise => "precise",
        }
    );
    out.push('\n');
    for d in &report.diagnosis {
        let tag = match d.severity {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Info => "OK",
        };
        let _ = writeln!(out, "{tag}: {}", d.summary);
        let _ = writeln!(out, "  {}", d.advice);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "process: GIL utilization {}  queue length {:.2}  effective parallelism {:.2}  \
         switches {:.0}/s",
        pct(p.gil_utilization),
        p.gil_queue_length,
        p.effective_parallelism,
        p.gil_switches_per_s
    );
    let _ = writeln!(
        out,
        "         CPU {:.2}s  run-queue {:.2}s  GIL wait {:.2}s in {} waits (p50 {}, p99 {})  \
         other futex wait {:.2}s",
        p.cpu_s,
        p.runqueue_wait_s,
        p.gil_wait_s,
        p.gil_waits,
        duration_us(p.gil_wait_p50_us),
        duration_us(p.gil_wait_p99_us),
        p.futex_wait_s
    );
    let _ = writeln!(
        out,
        "         blocked outside the GIL: poll {:.2}s  I/O {:.2}s  sleep {:.2}s  other {:.2}s",
        p.poll_wait_s, p.io_wait_s, p.sleep_wait_s, p.other_block_s
    );
    let _ = writeln!(
        out,
        "         cores available {:.2}{}  throttled {:.2}s  speedup without the GIL ≈ {:.2}x",
        p.cores_available,
        p.cpu_limit_cores
            .map(|c| format!(" (CPU limit {c:.2})"))
            .unwrap_or_default(),
        p.throttled_s,
        report.estimate.speedup_without_gil
    );
    if let Some(locks) = &report.lock_contention {
        let top: Vec<String> = locks
            .top_locks
            .iter()
            .take(3)
            .map(|l| format!("{} {:.2}s/{}", l.address, l.wait_s, l.waits))
            .collect();
        let _ = writeln!(
            out,
            "lock contention (PyMutex parking): {:.2}s in {} waits (p50 {}, p99 {}){}{}",
            locks.wait_s,
            locks.waits,
            duration_us(locks.wait_p50_us),
            duration_us(locks.wait_p99_us),
            if top.is_empty() { "" } else { "  top locks: " },
            top.join(", ")
        );
    }
    if report.interpreter.free_threaded {
        let _ = writeln!(
            out,
            "free-threaded build: GIL {}{}",
            if report.interpreter.gil_enabled {
                "ON"
            } else {
                "off"
            },
            if report.interpreter.gil_enabled_changed {
                " (switched while measuring)"
            } else {
                ""
            }
        );
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:>8}  {:<24} {:>7} {:>7} {:>8} {:>6} {:>8} {:>8} {:>6} {:>7} {:>8}  blocked by",
        "tid", "thread", "cpu", "runq", "gil wait", "waits", "p50", "p99", "hold", "drop", "futex"
    );
    // Holders by their Python name where there is one: "cpu-1 1.08s", not "29976 1.08s".
    let python_names: HashMap<u32, &str> = report
        .threads
        .iter()
        .filter_map(|t| Some((t.tid, t.python_name.as_deref()?)))
        .collect();
    for t in &report.threads {
        let blocked: Vec<String> = t
            .blocked_by
            .iter()
            .take(3)
            .map(|b| {
                let who = match python_names.get(&b.tid) {
                    _ if b.tid == 0 => "?".to_string(),
                    Some(name) => name.to_string(),
                    None => b.tid.to_string(),
                };
                format!("{who} {:.2}s", b.gil_wait_s)
            })
            .collect();
        let _ = writeln!(
            out,
            "{:>8}  {:<24} {:>6.2}s {:>6.2}s {:>7.2}s {:>6} {:>8} {:>8} {:>6} {:>6.2}s {:>7.2}s  {}",
            t.tid,
            column(&t.name, 24),
            t.cpu_s,
            t.runqueue_wait_s,
            t.gil_wait_s,
            t.gil_waits,
            duration_us(t.gil_wait_p50_us),
            duration_us(t.gil_wait_p99_us),
            pct(t.gil_hold_share),
            t.drop_wait_s,
            t.futex_wait_s,
            blocked.join(", ")
        );
    }
    event_loops(&mut out, report);
    if !report.children.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "{:>8}  {:<40} {:>7} {:>6} {:>8} {:>8}  threads",
            "child", "command", "cpu", "busy", "gil wait", "futex"
        );
        for c in &report.children {
            let command: String = c.command.chars().take(40).collect();
            let _ = writeln!(
                out,
                "{:>8}  {:<40} {:>6.2}s {:>6} {:>7.2}s {:>7.2}s  {}{}",
                c.pid,
                command,
                c.cpu_s,
                pct(c.busy_share),
                c.gil_wait_s,
                c.futex_wait_s,
                c.threads,
                if c.exited { " (exited)" } else { "" }
            );
        }
    }
    out.push('\n');
    let _ = writeln!(out, "estimate: {}", report.estimate.model);
    for line in &report.measured_by {
        let _ = writeln!(out, "measured: {line}");
    }
    out
}
