//! A long-lived process whose threads come and go (a thread-per-request server):
//! the exited threads' kernel entries are released while the process runs, and
//! nothing they counted is lost or counted twice.
//!
//! Truths used: the kernel counts every take wait twice, once under the waiting
//! thread (`thread_waits`, released when the thread is retired) and once under
//! the process's GIL (`gil_waits`, never released while watched). Whatever the
//! retirement does, the per-thread sum (live threads plus the exited-threads row)
//! must equal the per-GIL total. And the intervals of `top`/`run` must add up to
//! the total since attaching.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::kernel::wait_probe_and_debian_311;
use crate::common::*;
use gilscope::core::analyse::analyse;
use gilscope::core::retire::{EXITED_TID, GONE_KEPT, RETIRE_AFTER};
use gilscope::watch::session::{Sampling, Session, SessionOptions, Snapshot};

/// Short threads started per second by the workload (it reaches ~175 here).
const PER_S: u32 = 200;
const CHURN_S: u64 = 25;
/// Long enough after the churn for every exited thread to be retired.
const TAIL_S: u64 = RETIRE_AFTER.as_secs() + 12;

/// The workload's arguments: churn, then a tail with the keeper alone.
fn churn_args() -> [String; 5] {
    [
        workload("thread_churn.py"),
        CHURN_S.to_string(),
        PER_S.to_string(),
        "1".to_string(),
        TAIL_S.to_string(),
    ]
}

/// How many short threads the workload started (it prints that as it exits).
fn threads_started(stdout: Option<std::process::ChildStdout>) -> usize {
    let mut out = String::new();
    let _ = stdout.map(|mut s| s.read_to_string(&mut out));
    out.trim()
        .parse()
        .expect("the workload says how many it started")
}

/// (process GIL wait s, GIL waits, CPU s) over an interval, the exited row included.
fn totals(watch: &Session, from: &Snapshot, to: &Snapshot) -> (f64, u64, f64) {
    let (p, _) = analyse(&watch.measurement(from, to));
    (p.gil_wait_s, p.gil_waits, p.cpu_s)
}

#[test]
fn exited_threads_of_a_running_process_are_released_and_still_counted() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    let mut child = Command::new(&python)
        .args(churn_args())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let pid = child.id();
    let mut watch = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(w) = Session::attach(pid, &mut probe, &sampled_at(100)) {
            watch = Some(w);
            break;
        }
    }
    let mut watch = watch.expect("the interpreter is watchable within 5 s");
    let first = watch.first_snapshot();
    let started_at = Instant::now();

    let mut snaps: Vec<Snapshot> = Vec::new();
    let mut kernel_entries_in_churn = 0usize;
    let mut kernel_entries_at_end = usize::MAX;
    let mut gil_sums_match = Vec::new();
    while started_at.elapsed() < Duration::from_secs(CHURN_S + TAIL_S - 2) {
        std::thread::sleep(Duration::from_secs(1));
        watch.tick(&mut probe);
        let snap = watch.snapshot(&probe);
        let raw = probe.read(pid).expect("read the kernel counters");
        if started_at.elapsed() < Duration::from_secs(CHURN_S) {
            kernel_entries_in_churn = kernel_entries_in_churn.max(raw.threads.len());
        }
        kernel_entries_at_end = raw.threads.len();
        // Per-thread take waits (live + exited row) against the per-GIL total.
        let by_thread: u64 = snap.waits.threads.values().map(|w| w.take_waits).sum();
        let by_gil: u64 = snap.waits.gils.values().map(|g| g.take_waits).sum();
        gil_sums_match.push((by_thread, by_gil));
        snaps.push(snap);
    }
    let live_at_end = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    let retired = watch.threads_retired();
    let started = threads_started(child.stdout.take());
    let _ = child.wait();
    eprintln!(
        "started {started} short threads; kernel entries of the process: at most {kernel_entries_in_churn} \
         during the churn, {kernel_entries_at_end} at the end ({live_at_end} threads alive); retired {retired}"
    );

    assert!(
        started >= 2000,
        "the workload churned too little: {started}"
    );
    // Released while running: without retirement every started thread keeps its entry.
    let rate = started / CHURN_S as usize;
    let bound = GONE_KEPT + rate * 8 + 10;
    assert!(
        kernel_entries_in_churn <= bound && kernel_entries_in_churn * 3 < started,
        "{kernel_entries_in_churn} kernel entries for {started} threads (bound {bound})"
    );
    assert!(
        kernel_entries_at_end <= live_at_end.max(2) + 1,
        "after the churn, {kernel_entries_at_end} entries for {live_at_end} live threads"
    );
    // Every short thread slept once, so each had kernel entries to release.
    assert!(
        retired as usize >= started * 9 / 10,
        "retired {retired} of {started}"
    );

    // Nothing lost: per-thread sums equal the per-GIL totals at every snapshot.
    // While threads churn the maps are read a moment apart and waits close in
    // between (hundreds a second); once only the keeper runs, nothing does.
    for (i, (by_thread, by_gil)) in gil_sums_match.iter().enumerate() {
        let gap = by_thread.abs_diff(*by_gil);
        assert!(
            gap <= 5 + by_gil / 100,
            "snapshot {i}: {by_thread} take waits by thread, {by_gil} by GIL"
        );
    }
    let (by_thread, by_gil) = gil_sums_match.last().copied().unwrap_or_default();
    assert!(
        by_thread.abs_diff(by_gil) <= 2 && by_gil > retired,
        "at the end, with {retired} threads retired: {by_thread} take waits by thread, {by_gil} by GIL"
    );

    // Intervals add up to the total, and the total never falls.
    let last = snaps.last().expect("snapshots");
    let (total_wait, total_waits, total_cpu) = totals(&watch, &first, last);
    let (mut sum_wait, mut sum_waits, mut sum_cpu) = (0.0, 0u64, 0.0);
    let mut prev = &first;
    let mut before = (0.0, 0u64, 0.0);
    for snap in &snaps {
        let (w, n, c) = totals(&watch, prev, snap);
        sum_wait += w;
        sum_waits += n;
        sum_cpu += c;
        let cumulative = totals(&watch, &first, snap);
        assert!(
            cumulative.0 >= before.0 - 1e-9
                && cumulative.1 >= before.1
                && cumulative.2 >= before.2 - 1e-9,
            "a cumulative total fell: {before:?} -> {cumulative:?}"
        );
        before = cumulative;
        prev = snap;
    }
    assert_eq!(sum_waits, total_waits, "GIL waits: intervals vs total");
    assert!(
        (sum_wait - total_wait).abs() < 1e-6 && (sum_cpu - total_cpu).abs() < 1e-6,
        "intervals {sum_wait}/{sum_cpu} vs total {total_wait}/{total_cpu}"
    );

    // The exited row holds what the short threads did.
    let (process, threads) = analyse(&watch.measurement(&first, last));
    eprintln!(
        "total: {} GIL waits, {:.2} s GIL wait, {:.2} s CPU; intervals: {sum_waits} waits",
        process.gil_waits, process.gil_wait_s, process.cpu_s
    );
    let row = threads
        .iter()
        .find(|t| t.tid == EXITED_TID)
        .expect("an exited-threads row");
    assert!(
        row.gil_waits as usize >= retired as usize / 2 && row.cpu_s > 0.0,
        "exited row: {} waits, {:.2} s CPU",
        row.gil_waits,
        row.cpu_s
    );
    assert!(
        threads.len() <= live_at_end + GONE_KEPT + 2,
        "{} rows in the report",
        threads.len()
    );
    let _ = watch.release(&mut probe);
}

/// Entries of BPF hash map `name` held by process `pid` (through its map fds
/// and bpftool), `None` when it holds no such map yet.
fn map_entries_of(pid: u32, name: &str) -> Option<usize> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    let mut ids: Vec<String> = fds
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let shown = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id])
            .output()
            .ok()?;
        let doc: serde_json::Value = serde_json::from_slice(&shown.stdout).ok()?;
        if doc["name"] == name {
            let dumped = Command::new("bpftool")
                .args(["-j", "map", "dump", "id", &id])
                .output()
                .ok()?;
            let entries: serde_json::Value = serde_json::from_slice(&dumped.stdout).ok()?;
            return entries.as_array().map(Vec::len);
        }
    }
    None
}

#[test]
fn a_long_check_of_a_thread_per_request_process_releases_exited_threads() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python311() else {
        return;
    };
    if Command::new("bpftool").arg("version").output().is_err() {
        missing("bpftool is not installed (tests/setup.sh)");
        return;
    }
    let _machine = serial();
    let report = std::env::temp_dir().join(format!("gilscope-churn-{}.json", std::process::id()));
    let mut check = gilscope()
        .args(["check", "--json", "-o"])
        .arg(&report)
        .arg("--")
        .arg(&python)
        .args(churn_args())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start gilscope check");
    let started_at = Instant::now();
    let (mut in_churn, mut at_end) = (0usize, usize::MAX);
    while check.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_secs(2));
        if let Some(n) = map_entries_of(check.id(), "thread_waits") {
            if started_at.elapsed() < Duration::from_secs(CHURN_S) {
                in_churn = in_churn.max(n);
            } else {
                at_end = n;
            }
        }
    }
    let started = threads_started(check.stdout.take());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("the report")).expect("JSON");
    let _ = std::fs::remove_file(&report);
    let threads = doc["threads"].as_array().expect("threads");
    let row = threads
        .iter()
        .find(|t| t["tid"] == u64::from(EXITED_TID))
        .expect("an exited-threads row");
    let by_thread: u64 = threads.iter().filter_map(|t| t["gil_waits"].as_u64()).sum();
    let by_gil: u64 = doc["gils"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["gil_waits"].as_u64())
        .sum();
    eprintln!(
        "check: started {started}; thread_waits entries at most {in_churn} in the churn, {at_end} \
         at the end; {} rows; exited row {} waits; {by_thread} waits by thread, {by_gil} by GIL",
        threads.len(),
        row["gil_waits"]
    );
    let bound = GONE_KEPT + started / CHURN_S as usize * 8 + 10;
    assert!(
        in_churn > 0 && in_churn <= bound && in_churn * 3 < started,
        "{in_churn} kernel entries for {started} threads (bound {bound})"
    );
    assert!(at_end <= 4, "{at_end} entries once only the keeper runs");
    assert!(threads.len() <= GONE_KEPT + 4, "{} rows", threads.len());
    assert!(
        row["gil_waits"].as_u64().unwrap_or(0) as usize >= started / 2,
        "exited row: {row}"
    );
    assert_eq!(
        by_thread, by_gil,
        "per-thread waits against the GIL's total"
    );
}

/// A watcher's options, sampling the GIL on a thread of its own at `hz`.
fn sampled_at(hz: u32) -> SessionOptions<'static> {
    SessionOptions {
        sampling: Sampling::Own(hz),
        ..SessionOptions::watcher(None)
    }
}
