//! `gilscope run` through a 60 s collector outage: VictoriaMetrics is stopped
//! while a CPython workload runs and the daemon exports every second, then
//! started again on the same port and data directory.
//!
//! With the on-disk spool every interval reaches VictoriaMetrics, in order
//! (the cumulative counters never reset) and nothing is counted as dropped.
//! Without it, exactly as many intervals are missing as the daemon counted as
//! dropped requests, and its exported drop counter says the same as its log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::receivers::*;
use common::*;

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

/// A number that follows `before` in a log line (`"... 12 intervals exported"`).
fn number_before(log: &str, before: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(before))?;
    let head = &line[..line.find(before)?];
    head.split_whitespace().last()?.parse().ok()
}

/// The export totals the daemon logs at shutdown: (points sent, points dropped,
/// requests sent, requests dropped, requests left in the spool).
fn totals(log: &str) -> Option<(u64, u64, u64, u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("export totals:"))?;
    let after = &line[line.find("export totals:")? + "export totals:".len()..];
    let numbers: Vec<u64> = after
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    // points sent, dropped; requests sent, dropped; spans sent, dropped; spool
    match numbers[..] {
        [ps, pd, rs, rd, _, _, left] => Some((ps, pd, rs, rd, left)),
        _ => None,
    }
}

struct Outcome {
    log: String,
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
    let config = dir.join("gilscope.yaml");
    // One request per interval: a missing interval is a missing request.
    std::fs::write(&config, "export:\n  batch_size: 100000\n").expect("config");
    let mut vm_child = Some(vm_on(&vm, port, &dir, "vm1.log"));
    let mut cmd = gilscope();
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{port}/opentelemetry"),
        ])
        .args(["--protocol", "http/protobuf", "--include-cmdline", tag])
        .args(["--interval", "1s", "--duration"])
        .arg(format!("{}s", total.as_secs()))
        .arg("-v")
        .env("OTEL_SERVICE_NAME", &agent)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("GILSCOPE_SPOOL_DIR")
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
    // VictoriaMetrics makes fresh rows searchable within a few seconds.
    std::thread::sleep(Duration::from_secs(6));
    Some(Outcome {
        log,
        vm_port: port,
        service,
        agent,
        _vm: vm_again,
        dir,
    })
}

/// A short tag unique to this test run.
fn rand_tag(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{what}{}x{nanos:x}", std::process::id())
}

#[test]
fn with_the_spool_a_60s_outage_loses_no_interval() {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let tag = rand_tag("spool");
    let Some(out) = through_an_outage(&tag, true) else {
        return;
    };
    let log = &out.log;
    let intervals = number_before(log, "intervals exported")
        .unwrap_or_else(|| panic!("no interval count logged:\n{log}"));
    let (points_sent, points_dropped, requests_sent, requests_dropped, left) =
        totals(log).unwrap_or_else(|| panic!("no export totals logged:\n{log}"));
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
    let tag = rand_tag("nospool");
    let Some(out) = through_an_outage(&tag, false) else {
        return;
    };
    let log = &out.log;
    let intervals = number_before(log, "intervals exported")
        .unwrap_or_else(|| panic!("no interval count logged:\n{log}"));
    let (points_sent, points_dropped, requests_sent, requests_dropped, _) =
        totals(log).unwrap_or_else(|| panic!("no export totals logged:\n{log}"));
    let agent_points = out.count("gilscope.processes.watched", &out.agent);
    let process_points = out.count("cpython.gil.utilization", &out.service);
    eprintln!(
        "no spool: {intervals} intervals; VictoriaMetrics holds {agent_points} of the agent's, \
         {process_points} of the process's; {points_sent} points sent, {points_dropped} dropped, \
         {requests_sent} requests sent, {requests_dropped} dropped"
    );
    assert!(
        requests_dropped > 0,
        "a 60 s outage with a 30 s retry window must drop something:\n{log}"
    );
    assert_eq!(
        requests_sent + requests_dropped,
        intervals,
        "every request is sent or counted as dropped:\n{log}"
    );
    assert_eq!(
        intervals - agent_points,
        requests_dropped,
        "missing intervals in VictoriaMetrics = dropped requests:\n{log}"
    );
    assert_eq!(process_points, agent_points, "{log}");
    // Points: what arrived per request times what is missing is what was counted.
    let per_request = points_sent as f64 / requests_sent.max(1) as f64;
    let expected = per_request * requests_dropped as f64;
    assert!(
        (points_dropped as f64 - expected).abs() <= 0.05 * expected + 2.0,
        "{points_dropped} points counted as dropped, {expected:.0} expected \
         ({requests_dropped} requests of ~{per_request:.1} points):\n{log}"
    );
    // The exported drop counter says what the log says (the last interval was sent).
    let exported = out.last(&format!(
        "max_over_time({{__name__=\"gilscope.export.data_points\",outcome=\"dropped\",service.name=\"{}\"}}[10m])",
        out.agent
    ));
    assert_eq!(
        exported,
        Some(points_dropped as f64),
        "exported drop counter vs the log:\n{log}"
    );
    let warnings = log.lines().filter(|l| l.contains("failing")).count();
    assert!(
        (1..=70).contains(&warnings),
        "about one warning per interval of the outage, got {warnings}:\n{log}"
    );
}
