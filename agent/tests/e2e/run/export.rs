//! `gilscope run` end to end against real receivers: rotel (an OTLP collector)
//! forwarding to VictoriaMetrics, and VictoriaMetrics' own OTLP/HTTP ingestion.
//! What the daemon exported is read back with PromQL and checked against the
//! truths of the 4-thread CPU workload; a bad config and an unreachable
//! collector each give one clear message.
//!
//! The receivers come from `tests/receivers/install.sh` (cached under
//! /var/cache/gilscope/receivers); without them these tests skip, or fail under CI=true.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon::*;
use crate::common::receivers::*;
use crate::common::*;
use gilscope::core::report::DiagnosisKind;
use serde_json::Value;

/// Checks what VictoriaMetrics holds for `service` against the workload's truths.
fn check_exported(vm_port: u16, service: &str, tenant: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let sel = |name: &str| format!("{{__name__=\"{name}\",service.name=\"{service}\"}}");
    let util = promql(
        vm_port,
        &format!("avg_over_time({}[5m])", sel("cpython.gil.utilization")),
    );
    match scalar(&util) {
        Some(u) if u >= 0.9 => {}
        other => failures.push(format!("GIL utilization {other:?}, expected >= 0.9")),
    }
    // Σ wait over the four workers per second of wall, from the exported counter.
    let rate = promql(
        vm_port,
        &format!(
            "(max_over_time({s}[5m]) - min_over_time({s}[5m])) / \
             (tlast_over_time({s}[5m]) - tfirst_over_time({s}[5m]))",
            s = sel("cpython.gil.wait.time")
        ),
    );
    match scalar(&rate).map(|r| r / 4.0) {
        Some(per_worker) if (0.55..=0.85).contains(&per_worker) => {}
        other => failures.push(format!(
            "GIL wait per worker per second {other:?}, expected 0.55-0.85"
        )),
    }
    let queue = promql(
        vm_port,
        &format!("avg_over_time({}[5m])", sel("cpython.gil.queue_length")),
    );
    match scalar(&queue) {
        Some(q) if (2.2..=3.4).contains(&q) => {}
        other => failures.push(format!("queue length {other:?}, expected about 3")),
    }
    let diag = promql(
        vm_port,
        &format!(
            "max_over_time({{__name__=\"cpython.diagnosis\",service.name=\"{service}\",cpython.diagnosis.kind=\"gil_serialized_threads\"}}[5m])"
        ),
    );
    if scalar(&diag) != Some(1.0) {
        failures.push(format!("diagnosis gil_serialized_threads not 1: {diag:?}"));
    }
    // Every kind has its state series (0 or 1): an alert on any of them can fire.
    let states = promql(
        vm_port,
        &format!(
            "last_over_time({{__name__=\"cpython.diagnosis\",service.name=\"{service}\"}}[5m])"
        ),
    );
    for kind in DiagnosisKind::ALL {
        if !states
            .iter()
            .any(|s| s["metric"]["cpython.diagnosis.kind"].as_str() == Some(kind.name()))
        {
            failures.push(format!(
                "OTLP brought no cpython.diagnosis for {kind}: {states:?}"
            ));
        }
    }
    let labels = util
        .first()
        .map(|v| v["metric"].clone())
        .unwrap_or(Value::Null);
    // avg_over_time drops the name but keeps the resource labels.
    let series = promql(vm_port, &sel("cpython.gil.queue_length"));
    let metric = series
        .first()
        .map(|v| v["metric"].clone())
        .unwrap_or(labels);
    for (key, want) in [
        ("tenant.id", tenant),
        ("process.runtime.name", "cpython"),
        ("host.arch", "amd64"),
    ] {
        if metric[key].as_str() != Some(want) {
            failures.push(format!(
                "resource {key} = {:?}, expected {want}: {metric}",
                metric[key]
            ));
        }
    }
    for key in [
        "process.pid",
        "service.instance.id",
        "host.name",
        "process.runtime.version",
    ] {
        if metric[key].as_str().is_none_or(str::is_empty) {
            failures.push(format!("resource {key} missing: {metric}"));
        }
    }
    failures
}

#[test]
fn grpc_gzip_through_rotel_into_victoria_metrics_shows_four_serialized_threads() {
    if !can_use_bpf() {
        return;
    }
    let (Some((rotel, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("grpc via rotel", || {
        let tag = unique_tag("grpc");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let (_rotel, grpc, rotel_log) = start_rotel(&rotel, vm_port, &tag);
        let service = format!("gil-e2e-{tag}");
        let config = config_file(
            &tag,
            &format!(
                "include:\n  cmdline: ['{tag}']\ntenant:\n  resource_attribute: team\nexport:\n  batch_size: 512\n"
            ),
        );
        let _work = workload_process(&python, 9, &service, &tag);
        let stderr = run_ok_for(
            daemon()
                .envs(otlp_grpc_env(grpc))
                .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
                .arg("--config")
                .arg(&config)
                .arg("-v"),
            7,
        );
        // rotel forwards in batches; give it a moment.
        std::thread::sleep(Duration::from_secs(3));
        let mut failures = check_exported(vm_port, &service, "blue");
        let seen = std::fs::read_to_string(&rotel_log).unwrap_or_default();
        if !seen.contains("cpython.gil.utilization") {
            failures.push(format!(
                "rotel's debug log shows no cpython.gil.utilization:\n{}",
                &seen[..seen.len().min(2000)]
            ));
        }
        with_daemon_log(failures, &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn http_protobuf_straight_into_victoria_metrics_carries_the_tenant_rule() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("http into vm", || {
        let tag = unique_tag("http");
        let (_vm, vm_port) = start_vm(&vm, &tag);
        let service = format!("gil-e2e-{tag}");
        let _work = workload_process(&python, 9, &service, &tag);
        let stderr = run_ok_for(
            daemon()
                .args(into_victoria_metrics(vm_port))
                .args(["--tenant", "acme"])
                .args(["--include-cmdline", &tag]),
            7,
        );
        with_daemon_log(check_exported(vm_port, &service, "acme"), &stderr)
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_collector_that_comes_up_late_gets_every_interval_retried_and_none_dropped() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let tag = unique_tag("late");
    let service = format!("gil-e2e-{tag}");
    let _work = workload_process(&python, 12, &service, &tag);
    // Reserve the port, start the daemon against it, bring VictoriaMetrics up 4 s later.
    let port = free_port();
    let daemon = daemon()
        .args(into_victoria_metrics(port))
        .args(["--include-cmdline", &tag])
        .args(["--interval", "1s", "--duration", "8s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gilscope run");
    std::thread::sleep(Duration::from_secs(4));
    let dir = scratch(&tag);
    let _vm = Receiver(
        Running(
            Command::new(&vm)
                .arg(format!("-storageDataPath={}", dir.join("vm").display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start victoria-metrics"),
        ),
        dir.clone(),
    );
    let out = daemon.wait_with_output().expect("gilscope run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // VictoriaMetrics makes fresh rows searchable within a couple of seconds.
    std::thread::sleep(Duration::from_secs(5));
    let count = promql(
        port,
        &format!("count_over_time({{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}[5m])"),
    );
    let n = scalar(&count).unwrap_or(0.0);
    // 7 one-second intervals and the final one at 8 s; the first 3-4 waited for the collector.
    assert!(
        n >= 8.0,
        "{n} intervals arrived, expected every one of ~9:\n{stderr}"
    );
    let dropped = promql(
        port,
        "max_over_time({__name__=\"gilscope.export.data_points\",outcome=\"dropped\"}[5m])",
    );
    assert_eq!(scalar(&dropped), Some(0.0), "{dropped:?}\n{stderr}");
    let retries = promql(
        port,
        "max_over_time({__name__=\"gilscope.export.retries\"}[5m])",
    );
    assert!(
        scalar(&retries).unwrap_or(0.0) >= 1.0,
        "no retry counted: {retries:?}"
    );
    assert!(
        stderr.contains("works again"),
        "recovery not logged:\n{stderr}"
    );
}

#[test]
fn an_unreachable_collector_gives_one_warning_per_interval_and_the_daemon_keeps_running() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let tag = unique_tag("down");
    let _work = workload_process(&python, 8, "gil-down", &tag);
    let port = free_port(); // nothing listens there
    let started = Instant::now();
    let stderr = run_ok_for(
        daemon()
            .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
            .args(["--include-cmdline", &tag]),
        5,
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5),
        "stopped early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "shutdown hung: {elapsed:?}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("failing")).collect();
    assert!(
        // 5 s of run and up to 5 s of shutdown grace (still retrying), one a second at most
        !warnings.is_empty() && warnings.len() <= 11,
        "expected about one warning per interval, got {}:\n{stderr}",
        warnings.len()
    );
    assert!(
        warnings[0].contains(&format!("127.0.0.1:{port}")),
        "the warning names the endpoint: {}",
        warnings[0]
    );
}

#[test]
fn a_bad_config_file_is_one_clear_error() {
    let dir = scratch("badcfg");
    let config = dir.join("bad.yaml");
    std::fs::write(&config, "interval: 1s\nexport:\n  compresion: gzip\n").expect("write");
    let out = gilscope()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run gilscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("compresion"), "names the bad key: {stderr}");
    assert!(
        stderr.contains(&config.display().to_string()),
        "names the file: {stderr}"
    );

    let _ = std::fs::remove_dir_all(&dir);
    let out = gilscope()
        .args(["run", "--endpoint", "localhost:4317"])
        .output()
        .expect("run gilscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("must start with http://"), "{stderr}");
}

/// (unix seconds, value) of every raw sample of `selector` in the last 5 minutes.
fn samples(vm_port: u16, selector: &str) -> Vec<(f64, f64)> {
    let result = promql(vm_port, &format!("{selector}[5m]"));
    let mut out: Vec<(f64, f64)> = result
        .first()
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| Some((v[0].as_f64()?, v[1].as_str()?.parse().ok()?)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Bytes a minute of the agent's `gilscope.export.bytes` counter between two times.
fn bytes_per_minute(bytes: &[(f64, f64)], from: f64, to: f64) -> Option<f64> {
    let first = bytes.iter().find(|(t, _)| *t >= from)?;
    let last = bytes.iter().rev().find(|(t, _)| *t <= to)?;
    (last.0 > first.0 + 1.0).then(|| (last.1 - first.1) / (last.0 - first.0) * 60.0)
}

#[test]
fn a_tiny_byte_budget_drops_per_thread_series_then_stretches_the_interval_and_says_so() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let tag = unique_tag("budget");
    let (_vm, port) = start_vm(&vm, &tag);
    let service = format!("gil-budget-{tag}");
    let agent = format!("gilscope-{tag}");
    let _work = workload_process(&python, 65, &service, &tag);
    // One process with its 5 threads sends well over 40 kB/min at a 1 s interval,
    // with per-thread series or without; it fits only with a stretched interval.
    let budget = 40_000.0;
    let stderr = run_ok_for(
        daemon()
            .env("OTEL_SERVICE_NAME", &agent)
            .env("GILSCOPE_BYTE_BUDGET", "40000")
            .args(into_victoria_metrics(port))
            .args(["--per-thread", "--include-cmdline", &tag]),
        60,
    );
    std::thread::sleep(Duration::from_secs(3));
    let levels: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("byte budget 40000 B/min"))
        .collect();
    assert!(
        levels.len() >= 2
            && levels[0].contains("full detail -> per-thread series dropped")
            && levels[1].contains("(2x)"),
        "expected one line per step (per-thread, 2x, ...):\n{stderr}"
    );
    eprintln!("{}", levels.join("\n"));
    let agent_sel = |name: &str| format!("{{__name__=\"{name}\",service.name=\"{agent}\"}}");
    let degradation = samples(port, &agent_sel("gilscope.export.degradation"));
    let last_level = degradation.last().map_or(0.0, |s| s.1);
    assert!(
        last_level >= 2.0,
        "degradation gauge {degradation:?}\n{stderr}"
    );
    // When the final level was first reported.
    let settled = degradation
        .iter()
        .find(|s| s.1 == last_level)
        .map_or(0.0, |s| s.0);
    // Per-thread series stopped at the first step and did not come back.
    let threads = samples(
        port,
        &format!("{{__name__=\"cpython.thread.cpu.time\",service.name=\"{service}\"}}"),
    );
    let first_step = degradation.iter().find(|s| s.1 >= 1.0).map_or(0.0, |s| s.0);
    assert!(!threads.is_empty(), "per-thread series were never sent");
    assert!(
        threads.iter().all(|(t, _)| *t <= first_step + 0.5),
        "per-thread samples after the first step at {first_step}: {threads:?}"
    );
    // The interval is N x 1 s once settled at level N: a process gauge's samples N s apart.
    let util = samples(
        port,
        &format!("{{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}"),
    );
    let gaps: Vec<f64> = util
        .windows(2)
        .filter(|w| w[0].0 >= settled)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    // The last one is the partial interval at shutdown; a loaded machine may be a
    // little late for one interval, never early.
    let full = &gaps[..gaps.len().saturating_sub(1)];
    assert!(
        full.len() >= 2
            && full
                .iter()
                .all(|g| (last_level - 0.5..=last_level + 1.5).contains(g)),
        "gaps after settling at level {last_level} at {settled}: {gaps:?}\n{stderr}"
    );
    // Bytes sent: over the budget before degrading, under it once settled.
    let bytes = samples(port, &agent_sel("gilscope.export.bytes"));
    let start = bytes.first().map_or(0.0, |s| s.0);
    let before = bytes_per_minute(&bytes, start, first_step);
    let after = bytes_per_minute(&bytes, settled, f64::MAX);
    assert!(
        before.is_some_and(|b| b > budget),
        "before degrading {before:?} B/min, budget {budget}: {bytes:?}"
    );
    eprintln!("bytes/min before {before:?}, after settling {after:?}");
    assert!(
        after.is_some_and(|a| a <= budget),
        "after settling {after:?} B/min, budget {budget}: {bytes:?}\n{stderr}"
    );
}

#[test]
fn a_max_delay_sends_every_interval_in_fewer_requests() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some(python)) = (receivers(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let tag = unique_tag("hold");
    let (_vm, vm_port) = start_vm(&vm, &tag);
    let service = format!("gil-e2e-{tag}");
    let _work = workload_process(&python, 14, &service, &tag);
    // 1 s intervals held up to 4 s: about a quarter of the requests, every interval kept.
    let stderr = run_ok_for(
        daemon()
            .args(into_victoria_metrics(vm_port))
            .args(["--no-spans", "-v"])
            .args(["--max-delay", "4s"])
            .args(["--include-cmdline", &tag]),
        12,
    );
    let intervals = stderr
        .lines()
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.windows(2).position(|w| w[1] == "intervals")?;
            words.get(i)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0);
    assert!(
        intervals >= 8.0,
        "intervals exported: {intervals}\n{stderr}"
    );
    // VictoriaMetrics makes fresh rows searchable within a few seconds.
    let stored = || {
        scalar(&promql(
            vm_port,
            &format!(
                "count_over_time({{__name__=\"cpython.gil.utilization\",service.name=\"{service}\"}}[5m])"
            ),
        ))
        .unwrap_or(0.0)
    };
    // The workload is found within an interval or two; every interval after that is stored.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut samples = stored();
    while samples < intervals - 3.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        samples = stored();
    }
    // What the receiver itself counted, not what the agent says it sent.
    let page = ureq::get(&format!("http://127.0.0.1:{vm_port}/metrics"))
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_default();
    let requests = page
        .lines()
        .find(|l| {
            l.starts_with("vm_http_requests_total{")
                && l.contains("path=\"/opentelemetry/v1/metrics\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    eprintln!("{intervals} intervals exported, {samples} stored, in {requests} requests");
    assert!(
        samples >= intervals - 3.0,
        "{samples} intervals stored of {intervals}\n{stderr}"
    );
    // Held up to 4 s: one request per 4 intervals or so (plus the last), not one each.
    assert!(
        (1.0..=(intervals / 4.0).ceil() + 1.0).contains(&requests),
        "{requests} requests for {intervals} intervals\n{stderr}"
    );
}
