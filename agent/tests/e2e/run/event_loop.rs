//! `gilscope run --listen` next to an asyncio program whose loop runs CPU work
//! inline (tests/workloads/blocked_loop.py): the daemon says so on /metrics,
//! `cpython_diagnosis_ratio{cpython_diagnosis_kind="event_loop_blocked"} 1`, as
//! `gilscope check` does for the same program, and every other kind of
//! [`DiagnosisKind::ALL`] has its series next to it.
//!
//! With `--event-loops` (off by default in `run`: its uprobes cost a busy loop
//! about 14 µs per poll call): the loop's lag is counted by the event-loop
//! probe on every iteration, not sampled.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon::unique_tag;
use crate::common::receivers::{free_port, http_get, listening_daemon, wait_for_port, Running};
use crate::common::*;
use gilscope::core::report::DiagnosisKind;

/// The diagnosis states of process `pid` on a /metrics page: (kind, value).
fn states(page: &str, pid: u32) -> Vec<(String, f64)> {
    let pid_label = format!("process_pid=\"{pid}\"");
    page.lines()
        .filter(|l| l.starts_with("cpython_diagnosis_ratio{") && l.contains(&pid_label))
        .filter_map(|l| {
            let (_, rest) = l.split_once("cpython_diagnosis_kind=\"")?;
            let (kind, _) = rest.split_once('"')?;
            let value = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((kind.to_string(), value))
        })
        .collect()
}

/// The loop's own series beside the diagnosis: the lag histogram (its count
/// is the iterations, at least one per 100 ms burst so far) and the blocked
/// time (the bursts are 100 ms, each one counted whole).
fn loop_series_present(page: &str, pid: u32) -> Vec<String> {
    let pid_label = format!("process_pid=\"{pid}\"");
    let value = |name: &str| -> Option<f64> {
        page.lines()
            .filter(|l| l.starts_with(name) && l.contains(&pid_label))
            .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
    };
    let mut bad = Vec::new();
    match value("cpython_event_loop_lag_seconds_count{") {
        Some(n) if n >= 5.0 => {}
        other => bad.push(format!("lag histogram count {other:?}")),
    }
    match value("cpython_event_loop_blocked_time_seconds_total{") {
        Some(s) if s >= 0.1 => {}
        other => bad.push(format!("blocked time {other:?}")),
    }
    if bad.is_empty() {
        return bad;
    }
    vec![format!(
        "event-loop series of pid {pid}: {}\n{page}",
        bad.join(", ")
    )]
}

/// One run: the workload, the daemon next to it, /metrics read every second
/// until the loop is reported blocked.
fn blocked_loop_under_the_daemon(python: &Path) -> Vec<String> {
    let marker = unique_tag("loop");
    // blocked_loop.py reads its duration only; the marker names its command line.
    let work = Running(
        Command::new(python)
            .arg(workload("blocked_loop.py"))
            .args(["16", &marker])
            .stdout(Stdio::null())
            .spawn()
            .expect("start blocked_loop.py"),
    );
    let pid = work.0.id();
    let port = free_port();
    let log = std::env::temp_dir().join(format!("gilscope-{marker}.log"));
    let _daemon = listening_daemon(port, &marker, 15, &log, &["--event-loops"]);
    wait_for_port(port, "gilscope run --listen");
    let deadline = Instant::now() + Duration::from_secs(14);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let Ok((200, _, page)) = http_get(port, "/metrics") else {
            continue;
        };
        let now = states(&page, pid);
        if now.is_empty() {
            continue;
        }
        let missing: Vec<&str> = DiagnosisKind::ALL
            .iter()
            .map(|k| k.name())
            .filter(|k| !now.iter().any(|(n, _)| n == k))
            .collect();
        if !missing.is_empty() {
            return vec![format!("kinds missing from /metrics: {missing:?}\n{page}")];
        }
        if now
            .iter()
            .any(|(k, v)| k == "event_loop_blocked" && *v == 1.0)
        {
            return loop_series_present(&page, pid);
        }
        seen.push(now);
    }
    vec![format!(
        "event_loop_blocked never 1 for pid {pid}: {seen:?}\ngilscope stderr:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    )]
}

#[test]
fn a_blocked_asyncio_loop_shows_event_loop_blocked_on_metrics() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("blocked loop under run --listen", || {
        blocked_loop_under_the_daemon(&python)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
