//! `gilscope run` through a 60 s collector outage: VictoriaMetrics is stopped
//! while a CPython workload runs and the daemon exports every second, then
//! started again on the same port and data directory.
//!
//! With the on-disk spool every interval reaches VictoriaMetrics, in order
//! (the cumulative counters never reset) and nothing is counted as dropped.
//! Without it, exactly as many intervals are missing as the daemon counted as
//! dropped requests, and its exported drop counter says the same as its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon::*;
use crate::common::receivers::*;
use crate::common::*;

const OUTAGE: Duration = Duration::from_secs(60);
/// Exporting before the outage, and after it until the daemon stops.
const BEFORE: Duration = Duration::from_secs(8);
const AFTER: Duration = Duration::from_secs(14);

/// VictoriaMetrics on `port` with its data in `dir` (kept across a restart).
fn vm_on(vm: &Path, port: u16, dir: &Path, log: &str) -> Child {
    let child = Command::new(vm)
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).expect("vm log"))
        .spawn()
        .expect("start victoria-metrics");
    wait_for_port(port, "victoria-metrics");
    child
}

/// Stops VictoriaMetrics the way an operator would (SIGTERM: it flushes what it took in).
fn stop_gracefully(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Outcome {
    log: String,
    /// Intervals the daemon exported, and its export totals, as it logged them.
    intervals: u64,
    totals: ExportTotals,
    vm_port: u16,
    service: String,
    agent: String,
    _vm: Running,
    dir: PathBuf,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Outcome {
    fn count(&self, metric: &str, service: &str) -> u64 {
        let q =
            format!("count_over_time({{__name__=\"{metric}\",service.name=\"{service}\"}}[10m])");
        scalar(&promql(self.vm_port, &q)).unwrap_or(0.0) as u64
    }

    fn last(&self, query: &str) -> Option<f64> {
        scalar(&promql(self.vm_port, query))
    }
}

/// Runs the daemon through the outage; `spool` adds `--spool-dir`.
fn through_an_outage(tag: &str, spool: bool) -> Option<Outcome> {
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return None;
    };
    let dir = scratch(tag);
    let port = free_port();
    let service = format!("gil-outage-{tag}");
    let agent = format!("gilscope-{tag}");
    let total = BEFORE + OUTAGE + AFTER;
    let work = Running(
        Command::new(&python)
            .args([
                &workload("cpu_threads.py"),
                "2",
                &(total.as_secs() + 20).to_string(),
                tag,
            ])
            .env("OTEL_SERVICE_NAME", &service)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    );
    // One request per interval: a missing interval is a missing request.
    let config = config_file(tag, "export:\n  batch_size: 100000\n");
    let mut vm_child = Some(vm_on(&vm, port, &dir, "vm1.log"));
    let mut cmd = daemon();
    cmd.arg("--config")
        .arg(&config)
        .args(into_victoria_metrics(port))
        .args(["--include-cmdline", tag])
        // Metrics only: one request per interval (spans would add requests of their own).
        .arg("--no-spans")
        .args(["--interval", "1s", "--duration"])
        .arg(format!("{}s", total.as_secs()))
        .arg("-v")
        .env("OTEL_SERVICE_NAME", &agent)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gilscope.log")).expect("log"));
    if spool {
        cmd.arg("--spool-dir").arg(dir.join("spool"));
    }
    let daemon = Running(cmd.spawn().expect("start gilscope run"));
    std::thread::sleep(BEFORE);
    if let Some(child) = vm_child.take() {
        stop_gracefully(child);
    }
    std::thread::sleep(OUTAGE);
    let vm_again = Running(vm_on(&vm, port, &dir, "vm2.log"));
    let mut daemon = daemon;
    let status = daemon.0.wait().expect("gilscope run");
    drop(work);
    let log = std::fs::read_to_string(dir.join("gilscope.log")).unwrap_or_default();
    assert!(status.success(), "gilscope run failed ({status}):\n{log}");
    let intervals =
        intervals_exported(&log).unwrap_or_else(|| panic!("no interval count logged:\n{log}"));
    let totals = export_totals(&log).unwrap_or_else(|| panic!("no export totals logged:\n{log}"));
    // VictoriaMetrics makes fresh rows searchable within a few seconds.
    std::thread::sleep(Duration::from_secs(6));
    Some(Outcome {
        log,
        intervals,
        totals,
        vm_port: port,
        service,
        agent,
        _vm: vm_again,
        dir,
    })
}

#[test]
fn with_the_spool_a_60s_outage_loses_no_interval() {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let tag = unique_tag("spool");
    let Some(out) = through_an_outage(&tag, true) else {
        return;
    };
    let (log, intervals) = (&out.log, out.intervals);
    let ExportTotals {
        points_sent,
        points_dropped,
        requests_sent,
        requests_dropped,
        spooled: left,
        ..
    } = out.totals;
    let agent_points = out.count("gilscope.processes.watched", &out.agent);
    let process_points = out.count("cpython.gil.utilization", &out.service);
    eprintln!(
        "spool: {intervals} intervals; VictoriaMetrics holds {agent_points} of the agent's, \
         {process_points} of the process's; {points_sent} points sent, {points_dropped} dropped, \
         {requests_sent} requests sent, {requests_dropped} dropped, {left} left"
    );
    assert!(intervals >= 70, "too few intervals: {intervals}\n{log}");
    assert_eq!(
        (points_dropped, requests_dropped, left),
        (0, 0, 0),
        "nothing may be dropped or left behind:\n{log}"
    );
    assert_eq!(requests_sent, intervals, "one request per interval:\n{log}");
    assert_eq!(
        agent_points, intervals,
        "every interval must reach VictoriaMetrics:\n{log}"
    );
    assert_eq!(
        process_points, intervals,
        "every interval of the workload must reach VictoriaMetrics:\n{log}"
    );
    // Replayed oldest first: a cumulative counter never goes down.
    let resets = out.last(&format!(
        "resets({{__name__=\"cpython.gil.wait.time\",service.name=\"{}\"}}[10m])",
        out.service
    ));
    assert_eq!(resets, Some(0.0), "counter went backwards:\n{log}");
    let dropped = out.last(&format!(
        "max_over_time({{__name__=\"gilscope.export.data_points\",outcome=\"dropped\",service.name=\"{}\"}}[10m])",
        out.agent
    ));
    assert_eq!(dropped, Some(0.0));
    let spooled = out.last(&format!(
        "max_over_time({{__name__=\"gilscope.export.spool.requests\",service.name=\"{}\"}}[10m])",
        out.agent
    ));
    assert!(
        spooled.unwrap_or(0.0) >= 50.0,
        "the spool held {spooled:?} requests at most during a 60 s outage"
    );
    assert!(log.contains("works again"), "recovery not logged:\n{log}");
    let warnings = log.lines().filter(|l| l.contains("failing")).count();
    assert!(
        (1..=70).contains(&warnings),
        "about one warning per interval of the outage, got {warnings}:\n{log}"
    );
}

#[test]
fn without_the_spool_what_is_missing_is_what_was_counted_as_dropped() {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let tag = unique_tag("nospool");
    let Some(out) = through_an_outage(&tag, false) else {
        return;
    };
    let (log, intervals, t) = (&out.log, out.intervals, out.totals);
    let agent_points = out.count("gilscope.processes.watched", &out.agent);
    let process_points = out.count("cpython.gil.utilization", &out.service);
    eprintln!(
        "no spool: {intervals} intervals; VictoriaMetrics holds {agent_points} of the agent's, \
         {process_points} of the process's; {t:?}"
    );
    assert!(
        t.requests_dropped > 0,
        "a 60 s outage with a 30 s retry window must drop something:\n{log}"
    );
    assert_eq!(
        t.requests_sent + t.requests_dropped,
        intervals,
        "every request is sent or counted as dropped:\n{log}"
    );
    assert_eq!(
        intervals - agent_points,
        t.requests_dropped,
        "missing intervals in VictoriaMetrics = dropped requests:\n{log}"
    );
    assert_eq!(process_points, agent_points, "{log}");
    // Points: what arrived per request times what is missing is what was counted.
    let per_request = t.points_sent as f64 / t.requests_sent.max(1) as f64;
    let expected = per_request * t.requests_dropped as f64;
    assert!(
        (t.points_dropped as f64 - expected).abs() <= 0.05 * expected + 2.0,
        "{} points counted as dropped, {expected:.0} expected \
         ({} requests of ~{per_request:.1} points):\n{log}",
        t.points_dropped,
        t.requests_dropped
    );
    // The exported drop counter says what the log says (the last interval was sent).
    let exported = out.last(&format!(
        "max_over_time({{__name__=\"gilscope.export.data_points\",outcome=\"dropped\",service.name=\"{}\"}}[10m])",
        out.agent
    ));
    assert_eq!(
        exported,
        Some(t.points_dropped as f64),
        "exported drop counter vs the log:\n{log}"
    );
    let warnings = log.lines().filter(|l| l.contains("failing")).count();
    assert!(
        (1..=70).contains(&warnings),
        "about one warning per interval of the outage, got {warnings}:\n{log}"
    );
}

/// Spool files (`*.otlp`) in `dir` and their total size.
fn spool_files(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".otlp"))
                .fold((0, 0), |(n, b), e| {
                    (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
                })
        })
        .unwrap_or((0, 0))
}

#[test]
fn a_crash_keeps_the_spool_and_the_next_start_sends_it_first() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let tag = unique_tag("crash");
    let dir = scratch(&tag);
    let spool = dir.join("spool");
    let service = format!("gil-crash-{tag}");
    let _work = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "2", "40", &tag])
            .env("OTEL_SERVICE_NAME", &service)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    );
    let config = config_file(&tag, "export:\n  batch_size: 100000\n");
    let port = free_port(); // nothing listens there during the first run
    let spooling_daemon = |seconds: u32| {
        let mut cmd = daemon();
        cmd.arg("--config")
            .arg(&config)
            .args(into_victoria_metrics(port))
            .args(["--include-cmdline", &tag])
            .arg("--no-spans")
            .args([
                "--interval",
                "1s",
                "--duration",
                &format!("{seconds}s"),
                "-v",
            ])
            .arg("--spool-dir")
            .arg(&spool)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    // First run: the collector is down; the daemon is killed (SIGKILL: a crash).
    let mut first = spooling_daemon(60).spawn().expect("start gilscope run");
    std::thread::sleep(Duration::from_secs(6));
    let _ = first.kill();
    let _ = first.wait();
    let (files, _) = spool_files(&spool);
    assert!(files >= 4, "{files} requests spooled in 6 s at 1 s");
    // A damaged file among them: skipped and reported, not sent, not fatal.
    std::fs::write(
        spool.join("00000000000099999999.otlp"),
        b"GILSPL01 but cut short",
    )
    .expect("damaged file");
    // Second run: the collector is up.
    let _vm = Running(vm_on(&vm, port, &dir, "vm.log"));
    let out = spooling_daemon(4).output().expect("gilscope run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let intervals =
        intervals_exported(&stderr).unwrap_or_else(|| panic!("no interval count:\n{stderr}"));
    assert!(
        stderr.contains(&format!("holds {files} request(s)")),
        "the replay is announced:\n{stderr}"
    );
    let damaged: Vec<&str> = stderr.lines().filter(|l| l.contains("damaged")).collect();
    assert_eq!(
        damaged.len(),
        1,
        "one message for the damaged file:\n{stderr}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let q = format!(
        "count_over_time({{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}[10m])"
    );
    let n = scalar(&promql(port, &q)).unwrap_or(0.0) as u64;
    assert_eq!(
        n,
        files as u64 + intervals,
        "the crashed run's {files} spooled intervals and the {intervals} new ones:\n{stderr}"
    );
    assert_eq!(
        spool_files(&spool).0,
        0,
        "the spool is empty after the replay"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spool_drops_the_oldest_and_says_so_once_per_interval() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let tag = unique_tag("full");
    let dir = scratch(&tag);
    let spool = dir.join("spool");
    let _work = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "2", "20", &tag])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    );
    const CAP: u64 = 16 * 1024;
    let port = free_port(); // nothing listens there
    let stderr = run_ok_for(
        daemon()
            .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
            .args(["--no-spans", "--include-cmdline", &tag, "-v"])
            .arg("--spool-dir")
            .arg(&spool)
            .args(["--spool-max-bytes", &CAP.to_string()]),
        8,
    );
    let intervals =
        intervals_exported(&stderr).unwrap_or_else(|| panic!("no interval count:\n{stderr}"));
    let ExportTotals {
        points_dropped,
        requests_sent,
        requests_dropped,
        spooled: left,
        ..
    } = export_totals(&stderr).unwrap_or_else(|| panic!("no totals:\n{stderr}"));
    let (files, bytes) = spool_files(&spool);
    eprintln!(
        "full spool: {intervals} intervals, {requests_dropped} requests ({points_dropped} points) \
         dropped, {left} left ({files} files, {bytes} bytes)"
    );
    assert_eq!(requests_sent, 0, "{stderr}");
    assert!(bytes <= CAP, "{bytes} bytes on disk, cap {CAP}");
    assert!(files > 0 && requests_dropped > 0, "{stderr}");
    assert_eq!(files as u64, left, "{stderr}");
    // The newest are kept: the oldest kept one is numbered intervals - left.
    let oldest_kept = std::fs::read_dir(&spool)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".otlp")
                        .and_then(|s| s.parse::<u64>().ok())
                })
                .min()
        })
        .ok()
        .flatten();
    assert_eq!(oldest_kept, Some(intervals - left), "{stderr}");
    assert_eq!(
        requests_dropped + left,
        intervals,
        "every interval is either on disk or counted as dropped:\n{stderr}"
    );
    let full: Vec<&str> = stderr.lines().filter(|l| l.contains("is full")).collect();
    // 8 s of run and up to 5 s of shutdown grace, one message per 1 s interval at most.
    assert!(
        (1..=14).contains(&full.len()),
        "{} 'is full' messages:\n{stderr}",
        full.len()
    );
    assert!(
        full[0].contains("--spool-max-bytes"),
        "says what to do: {}",
        full[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
