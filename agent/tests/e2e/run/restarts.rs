//! `gilscope run` killed with SIGKILL leaves nothing attached in the kernel, and a
//! restarted daemon resumes watching the same workload with cumulative counters
//! that carry a new start time (so a backend sees a reset, not a negative rate).
//!
//! The daemon's BPF programs, links and maps are identified by the fds it holds
//! (/proc/PID/fdinfo: prog_id, link_id, map_id) while it runs, then looked up in
//! `bpftool prog/link/map/perf show` after the kill. Start times come from rotel's
//! detailed debug log (StartTimestamp of every Sum point it received).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::receivers::*;
use crate::common::*;
use serde_json::Value;

/// The ids of the BPF objects (`kind`: prog_id, link_id, map_id) `pid` holds fds of.
fn held_ids(pid: u32, kind: &str) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return HashSet::new();
    };
    fds.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix(kind)?
                    .strip_prefix(":\t")?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .collect()
}

/// Every id `bpftool -j OBJECT show` lists (`field`: id, or prog_id for perf).
fn bpftool_ids(object: &str, field: &str) -> HashSet<u64> {
    let out = Command::new("bpftool")
        .args(["-j", object, "show"])
        .output()
        .expect("run bpftool (tests/setup.sh installs it)");
    assert!(out.status.success(), "bpftool {object} show failed");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    doc.as_array()
        .map(|a| a.iter().filter_map(|o| o[field].as_u64()).collect())
        .unwrap_or_default()
}

fn start_daemon(grpc: u16, marker: &str, log: &Path) -> Running {
    let child = gilscope()
        .args(["run", "-v", "--interval", "1s"])
        .args(["--endpoint", &format!("http://127.0.0.1:{grpc}")])
        .args(["--include-cmdline", marker])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("daemon log"))
        .spawn()
        .expect("start gilscope run");
    Running(child)
}

/// Waits until `text()` contains `needle`; the text when it does.
fn wait_for(what: &str, needle: &str, text: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = text();
        if t.contains(needle) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: no {needle:?} in\n{t}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The start times (unix seconds) of every Sum data point in a stretch of rotel's log.
fn sum_start_times(log: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut in_sum = false;
    for line in log.lines() {
        if let Some(kind) = line.trim().strip_prefix("-> DataType: ") {
            in_sum = kind.trim() == "Sum";
        }
        if let Some(ts) = line.trim().strip_prefix("StartTimestamp: ") {
            if in_sum {
                // Nanoseconds since the epoch; 0 when unset.
                if let Some(ns) = ts.trim().parse::<u64>().ok().filter(|ns| *ns > 0) {
                    out.push(ns as f64 / 1e9);
                }
            }
        }
    }
    out
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn a_killed_daemon_leaves_no_probe_and_a_restart_resumes_with_a_new_start_time() {
    if !can_use_bpf() {
        return;
    }
    let (Some(python), Some((rotel, vm))) = (debian_python311(), receivers()) else {
        return;
    };
    if Command::new("bpftool").arg("version").output().is_err() {
        missing("bpftool is not installed (tests/setup.sh)");
        return;
    }
    let _machine = serial();
    let marker = format!("restarts-{}", std::process::id());
    let (_vm, vm_port) = start_vm(&vm, "restarts-vm");
    let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, "restarts-rotel");
    let workload = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "3", "60", &marker])
            .env("OTEL_SERVICE_NAME", &marker)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    );
    let pid = workload.0.id();
    let dir = scratch("restarts");
    let rotel_text = || std::fs::read_to_string(&rotel_log).unwrap_or_default();
    let pid_attr = format!("-> process.pid: Int({pid})");

    // First run: watching, exporting.
    let mut first = start_daemon(grpc, &marker, &dir.join("first.log"));
    let daemon_pid = first.0.id();
    wait_for("first run exported the workload", &pid_attr, rotel_text);
    let progs = held_ids(daemon_pid, "prog_id");
    let links = held_ids(daemon_pid, "link_id");
    let maps = held_ids(daemon_pid, "map_id");
    assert!(!progs.is_empty() && !links.is_empty() && !maps.is_empty());
    let listed = |object: &str, field: &str, ours: &HashSet<u64>| -> Vec<u64> {
        bpftool_ids(object, field)
            .intersection(ours)
            .copied()
            .collect()
    };
    assert_eq!(
        listed("prog", "id", &progs).len(),
        progs.len(),
        "bpftool lists the daemon's programs"
    );
    assert_eq!(
        listed("link", "id", &links).len(),
        links.len(),
        "bpftool lists the daemon's links"
    );
    std::thread::sleep(Duration::from_secs(2));

    first.0.kill().expect("SIGKILL the daemon");
    let _ = first.0.wait();
    let killed_at = now_unix();
    let offset = rotel_text().len();

    // Nothing of it stays in the kernel (maps are freed asynchronously: a short grace).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = [
            ("prog", listed("prog", "id", &progs)),
            ("link", listed("link", "id", &links)),
            ("map", listed("map", "id", &maps)),
            ("perf", listed("perf", "prog_id", &progs)),
        ];
        if left.iter().all(|(_, ids)| ids.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still attached after SIGKILL: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Restart: it finds the same workload and exports it again, counting anew.
    std::thread::sleep(Duration::from_millis(1500));
    let second = start_daemon(grpc, &marker, &dir.join("second.log"));
    wait_for("second run exported the workload", &pid_attr, || {
        rotel_text().get(offset..).unwrap_or_default().to_string()
    });
    std::thread::sleep(Duration::from_secs(2));
    let _ = Command::new("kill").arg(second.0.id().to_string()).status();
    std::thread::sleep(Duration::from_secs(1));
    drop(second);
    let log = rotel_text();
    let (before, after) = log.split_at(offset.min(log.len()));
    let starts_before = sum_start_times(before);
    let starts_after = sum_start_times(after);
    assert!(
        !starts_before.is_empty(),
        "no Sum points with a start time before the kill"
    );
    assert!(
        !starts_after.is_empty(),
        "no Sum points with a start time after the restart"
    );
    let latest_before = starts_before.iter().copied().fold(f64::MIN, f64::max);
    let earliest_after = starts_after.iter().copied().fold(f64::MAX, f64::min);
    eprintln!(
        "{} Sum points before the kill (latest start {latest_before:.3}), {} after the \
         restart (earliest start {earliest_after:.3}); killed at {killed_at:.3}; \
         programs {progs:?}, links {links:?}, {} maps gone",
        starts_before.len(),
        starts_after.len(),
        maps.len()
    );
    assert!(
        latest_before <= killed_at && earliest_after > killed_at - 1.0,
        "cumulative points must start anew after a restart: latest start before the kill \
         {latest_before}, earliest after it {earliest_after}, killed at {killed_at}"
    );
    // The lean encoding floors start times to the second; the restart waited 1.5 s.
    assert!(
        earliest_after > latest_before,
        "{earliest_after} <= {latest_before}"
    );

    // VictoriaMetrics sees a counter reset, not a negative rate.
    let sel = format!("{{__name__=\"cpython.gil.wait.time\",service.name=\"{marker}\"}}");
    let inc = promql(vm_port, &format!("sum(increase({sel}[5m]))"));
    assert!(
        scalar(&inc).is_some_and(|v| v >= 0.0),
        "increase over the restart: {inc:?}"
    );
    drop(workload);
    let _ = std::fs::remove_dir_all(&dir);
}
