//! Renders a [`Report`] for people (a terminal table) or programs (one JSON document).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::core::event_loop::LONG_ITERATION_NS;
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
        "event loops: lag is one iteration (poll return to the next poll call): p50/p99 \
         from log2 buckets (within a factor of 2), max exact; blocked: time in iterations \
         of {} ms or more",
        LONG_ITERATION_NS / 1_000_000
    );
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
        for f in l.functions.iter().take(LOOP_FUNCTION_ROWS) {
            let line = f.line.map(|n| format!(":{n}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{:>10}{:>4.0}%  {}  {}{line}",
                "",
                f.share * 100.0,
                f.function,
                f.file
            );
        }
    }
}

/// Functions shown under each loop: what ran during its long iterations.
const LOOP_FUNCTION_ROWS: usize = 3;

/// The report as a terminal table: verdict first, then the process, then each thread.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    verdict(&mut out, report);
    out.push('\n');
    process(&mut out, report);
    out.push('\n');
    threads(&mut out, report);
    holders(&mut out, report);
    event_loops(&mut out, report);
    children(&mut out, report);
    out.push('\n');
    let _ = writeln!(out, "estimate: {}", report.estimate.model);
    for line in &report.measured_by {
        let _ = writeln!(out, "measured: {line}");
    }
    out
}

/// What was measured, and what it means: the diagnoses with their advice.
fn verdict(out: &mut String, report: &Report) {
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
}

/// The process's totals and ratios, PyMutex parking and the GIL's state.
fn process(out: &mut String, report: &Report) {
    let p = &report.process;
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
}

/// One row per thread, with the threads it waited behind.
fn threads(out: &mut String, report: &Report) {
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
}

/// Holder functions shown in the text report.
const HOLDER_ROWS: usize = 5;

/// The code that held the GIL while others waited: the top holder functions
/// by the wait behind them (nothing where the holders' code was not captured).
fn holders(out: &mut String, report: &Report) {
    let Some(profile) = &report.contention_profile else {
        return;
    };
    out.push('\n');
    if profile.functions.is_empty() {
        let _ = writeln!(
            out,
            "GIL held while others waited: no wait behind any holder"
        );
        return;
    }
    let _ = writeln!(
        out,
        "GIL held while others waited ({:.2}s of GIL wait, by the function the holder ran):",
        profile.wait_s
    );
    let _ = writeln!(
        out,
        "  {:<32} {:<40} {:>8} {:>6}",
        "function", "file:line", "wait", "share"
    );
    for f in profile.functions.iter().take(HOLDER_ROWS) {
        let place = match f.line {
            Some(line) => format!("{}:{line}", f.file),
            None => f.file.clone(),
        };
        // The end of a long path says more than its start.
        let place: String = if place.chars().count() > 40 {
            let tail: String = place.chars().rev().take(39).collect();
            format!("…{}", tail.chars().rev().collect::<String>())
        } else {
            place
        };
        let _ = writeln!(
            out,
            "  {:<32} {:<40} {:>7.2}s {:>6}",
            column(&f.function, 32),
            place,
            f.wait_s,
            pct(f.share)
        );
    }
    if profile.frames_unnamed > 0 {
        let _ = writeln!(
            out,
            "  ({} captured frames could not be named: their code was gone)",
            profile.frames_unnamed
        );
    }
}

/// One row per CPython child process, if any.
fn children(out: &mut String, report: &Report) {
    if report.children.is_empty() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::report::*;

    fn report() -> Report {
        Report {
            schema: SCHEMA,
            pid: 42,
            duration_s: 4.0,
            mode: Mode::Default,
            interpreter: InterpreterInfo {
                executable: "/usr/bin/python3.13t".into(),
                library: None,
                version: "3.13.0".into(),
                stripped: true,
                gil_enabled: false,
                gil_enabled_changed: true,
                free_threaded: true,
                libc: "glibc",
            },
            process: ProcessReport {
                wall_s: 4.0,
                cpu_s: 3.5,
                gil_utilization: 0.5,
                cpu_limit_cores: Some(2.0),
                ..ProcessReport::default()
            },
            threads: vec![
                ThreadReport {
                    tid: 42,
                    name: "MainThread".into(),
                    python_name: Some("MainThread".into()),
                    blocked_by: vec![BlockedBy {
                        tid: 43,
                        gil_wait_s: 0.5,
                    }],
                    ..ThreadReport::default()
                },
                ThreadReport {
                    tid: 43,
                    name: "a-worker-with-a-very-long-thread-name".into(),
                    python_name: Some("worker".into()),
                    ..ThreadReport::default()
                },
            ],
            diagnosis: vec![Diagnosis {
                kind: DiagnosisKind::LockContention,
                severity: Severity::Warning,
                summary: "lock contention: …".into(),
                advice: "Give each thread its own data.".into(),
                evidence: Default::default(),
            }],
            ended: Ending::Duration,
            command_exit_code: None,
            measured_by: vec!["GIL waits: futex".into()],
            gils: vec![],
            lock_contention: Some(LockContention {
                wait_s: 1.0,
                waits: 10,
                wait_p50_us: 50.0,
                wait_p99_us: 2000.0,
                top_locks: vec![HotLock {
                    address: "0x10".into(),
                    wait_s: 1.0,
                    waits: 10,
                }],
            }),
            estimate: Estimate {
                speedup_without_gil: 1.5,
                cpu_demand_cores: 1.0,
                model: "the model".into(),
            },
            children: vec![ChildReport {
                pid: 50,
                command: "python3 -c worker".into(),
                version: "3.13.0".into(),
                started_after_s: 0.1,
                watched_s: 3.0,
                exited: true,
                threads: 1,
                cpu_s: 1.0,
                busy_share: 0.3,
                gil_wait_s: 0.0,
                futex_wait_s: 2.0,
            }],
            event_loops: vec![EventLoopReport {
                tid: 42,
                iterations: 1200,
                lag_p50_ms: 1.0,
                lag_p99_ms: 33.0,
                lag_max_ms: 35.0,
                blocked_s: 3.6,
                functions: vec![],
            }],
            precise_probes: None,
            contention_profile: Some(crate::core::profile::ContentionProfile {
                wait_s: 0.5,
                functions: vec![crate::core::profile::FunctionWait {
                    function: "Worker.crunch".into(),
                    file: "/srv/app/work.py".into(),
                    line: Some(12),
                    wait_s: 0.5,
                    share: 1.0,
                }],
                stacks: vec![],
                frames_unnamed: 0,
            }),
        }
    }

    #[test]
    fn the_text_report_reads_verdict_process_threads_loops_children_then_how() {
        let text = text(&report());
        let order = [
            "gilscope check: pid 42, CPython 3.13.0 (/usr/bin/python3.13t, stripped), 4.0 s, default mode\n\nWARNING: lock contention",
            "\n  Give each thread its own data.\n\nprocess: GIL utilization 50%",
            "cores available 0.00 (CPU limit 2.00)",
            "lock contention (PyMutex parking): 1.00s in 10 waits (p50 50µs, p99 2.0ms)  top locks: 0x10 1.00s/10",
            "free-threaded build: GIL off (switched while measuring)\n\n",
            "MainThread",
            "worker 0.50s",
            "a-worker-with-a-very-lo…",
            "\n\nGIL held while others waited (0.50s of GIL wait",
            "\n  Worker.crunch                    /srv/app/work.py:12",
            "0.50s   100%",
            "\n\nevent loops: lag is one iteration",
            "blocked: time in iterations of 20 ms or more\n",
            "\n      42  MainThread                     1200    1.0ms   33.0ms   35.0ms    3.60s",
            "\n\n   child  command",
            "\n      50  python3 -c worker",
            "(exited)\n\nestimate: the model\nmeasured: GIL waits: futex\n",
        ];
        let mut at = 0;
        for part in order {
            let found = text[at..].find(part);
            assert!(found.is_some(), "{part:?} not after byte {at} in:\n{text}");
            at += found.unwrap_or(0) + part.len();
        }
        assert!(text.ends_with(order[order.len() - 1]), "{text}");
    }
}
