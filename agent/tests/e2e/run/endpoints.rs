//! `gilscope run --listen`: the real daemon next to the real 4-thread workload,
//! probed as Kubernetes would (`/readyz`, `/healthz`) and scraped as Prometheus
//! would (`/metrics`, checked line by line against the text format 0.0.4, and
//! its values against the workload's truths). A second daemon on the same port is
//! one clear error. VictoriaMetrics scrapes the endpoint while the same daemon
//! pushes OTLP to it, and both paths must give the same metric names and labels,
//! so one dashboard serves both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::daemon::unique_tag;
use crate::common::receivers::{
    free_port, http_get, listening_daemon, promql, wait_for_port, workload_process, Running,
};
use crate::common::*;
use gilscope::core::report::DiagnosisKind;
use serde_json::Value;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gilscope-ep-{tag}"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `/metrics` asked for with `Accept-Encoding: gzip`, checked to be gzip, inflated.
fn gzipped_metrics(port: u16) -> Result<String, String> {
    use std::io::Read as _;
    let mut r = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .header("Accept-Encoding", "deflate, gzip;q=1.0, *;q=0.5")
        .call()
        .map_err(|e| e.to_string())?;
    let encoding = r
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if encoding != "gzip" {
        return Err(format!("Content-Encoding {encoding:?}"));
    }
    let raw = r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
    let mut page = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut page)
        .map_err(|e| format!("not gzip: {e}"))?;
    Ok(page)
}

/// One sample of a scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict reader of the text format 0.0.4: every line is a `# HELP`, a
/// `# TYPE` or a sample; names and labels have the allowed characters; label
/// values are properly escaped; each family has one TYPE, before its samples,
/// which are contiguous; counters end in `_total`; each histogram series has
/// increasing buckets ending at `le="+Inf"`, equal to its `_count`.
fn parse_exposition(text: &str) -> Result<(Vec<Sample>, BTreeMap<String, String>), String> {
    fn name_ok(n: &str) -> bool {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn value(v: &str) -> Option<f64> {
        match v {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            v if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => v.parse().ok(),
            _ => None,
        }
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut family_order: Vec<String> = Vec::new();
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line}", no + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| bad("HELP without text"))?;
            if !name_ok(name) {
                return Err(bad("bad name in HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| bad("TYPE without a type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(bad("unknown type"));
            }
            if !name_ok(name) || types.insert(name.into(), kind.into()).is_some() {
                return Err(bad("bad or repeated TYPE"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(bad("a counter without _total"));
            }
            family_order.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(bad("unexpected comment or blank line"));
        }
        // name{labels} value
        let name_end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        if !name_ok(name) {
            return Err(bad("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            loop {
                let start = chars
                    .peek()
                    .map(|(i, _)| *i)
                    .ok_or_else(|| bad("open labels"))?;
                if body[start..].starts_with('}') {
                    rest = &body[start + 1..];
                    break;
                }
                let eq = body[start..]
                    .find("=\"")
                    .ok_or_else(|| bad("label without =\""))?;
                let key = &body[start..start + eq];
                if !name_ok(key) || key.contains(':') {
                    return Err(bad("bad label name"));
                }
                for _ in 0..eq + 2 {
                    chars.next();
                }
                let mut val = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => val.push('\\'),
                            Some((_, '"')) => val.push('"'),
                            Some((_, 'n')) => val.push('\n'),
                            _ => return Err(bad("bad escape in a label value")),
                        },
                        Some((_, '"')) => break,
                        Some((_, '\n')) | None => return Err(bad("unterminated label value")),
                        Some((_, c)) => val.push(c),
                    }
                }
                if labels.insert(key.to_string(), val).is_some() {
                    return Err(bad("repeated label"));
                }
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => return Err(bad("labels not separated by ','")),
                }
            }
        }
        let v = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?;
        let v = value(v).ok_or_else(|| bad("bad value (or a timestamp)"))?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if family_order.last().map(String::as_str) != Some(family) {
            return Err(bad(
                "a sample outside its family's block (or before its TYPE)",
            ));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: v,
        });
    }
    // Histograms: buckets increase up to +Inf, which equals _count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for s in &samples {
            let mut id = s.labels.clone();
            let le = id.remove("le");
            let key = format!("{id:?}");
            if s.name == format!("{family}_bucket") {
                let le = le.ok_or("a bucket without le")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("le {le}"))?
                };
                series.entry(key).or_default().push((bound, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(key, s.value);
            }
        }
        for (key, buckets) in series {
            let increasing = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().copied().unwrap_or((0.0, 0.0));
            if !increasing || last.0 != f64::INFINITY || counts.get(&key) != Some(&last.1) {
                return Err(format!("histogram {family} {key}: bad buckets {buckets:?}"));
            }
        }
    }
    Ok((samples, types))
}

#[test]
fn the_exposition_reader_rejects_what_prometheus_would() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"q\\\"\\\\\\n\"} 1\n";
    let (samples, _) = parse_exposition(good).expect("valid");
    assert_eq!(samples[0].labels["k"], "q\"\\\n");
    for bad in [
        "# TYPE a counter\na 1\n",
        "# TYPE a_total counter\na_total{k=\"x} 1\n",
        "# TYPE a_total counter\na_total{k=\"\\x\"} 1\n",
        "# TYPE a_total counter\na_total{k.j=\"x\"} 1\n",
        "# TYPE b gauge\na 1\n",
        "# TYPE a gauge\na 1 2 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE a gauge\na 1",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted: {bad}");
    }
}

/// One run of the daemon next to the workload: the probes, then /metrics.
fn probe_and_scrape(python: &Path) -> Vec<String> {
    let marker = unique_tag("ep");
    let service = format!("gil-ep-{marker}");
    let work = workload_process(python, 14, &service, &marker);
    let pid = work.0.id();
    let port = free_port();
    let log = scratch(&marker).join("gilscope.log");
    let started = Instant::now();
    // With the event-loop probe, whose map-full counter is listed too.
    let _daemon = listening_daemon(port, &marker, 12, &log, &["--event-loops"]);
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut failures = Vec::new();

    // /readyz: 503 (with a reason) while the probe loads, then 200.
    let mut answers: Vec<(u16, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready_after = loop {
        if let Ok((status, _, body)) = http_get(port, "/readyz") {
            if answers.last().map(|a| a.0) != Some(status) {
                answers.push((status, body.trim().to_string()));
            }
            if status == 200 {
                break Some(started.elapsed());
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("/readyz answers: {answers:?}, ready after {ready_after:?}");
    if ready_after.is_none() {
        failures.push(format!("/readyz never 200: {answers:?}\n{}", stderr()));
        return failures;
    }
    if !answers
        .iter()
        .all(|(s, b)| (*s == 200 && b == "ready") || (*s == 503 && !b.is_empty()))
    {
        failures.push(format!("/readyz answered something else: {answers:?}"));
    }
    match http_get(port, "/healthz") {
        Ok((200, _, body)) if body.starts_with("ok") => {}
        other => failures.push(format!("/healthz: {other:?}")),
    }
    match http_get(port, "/nope") {
        Ok((404, ..)) => {}
        other => failures.push(format!("/nope: {other:?}")),
    }

    // After ready, each interval (1 s) brings a new page; read three, 1.2 s apart.
    // The first interval can be a partial one around the workload's start-up, so
    // the GIL utilization must reach 0.9 in one of the three.
    let mut utilization = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        let (status, ctype, body) = match http_get(port, "/metrics") {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("/metrics: {e}"));
                return failures;
            }
        };
        if status != 200 || ctype != "text/plain; version=0.0.4; charset=utf-8" {
            failures.push(format!("/metrics: status {status}, content type {ctype:?}"));
        }
        let (samples, types) = match parse_exposition(&body) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("/metrics is not valid text format: {e}"));
                return failures;
            }
        };
        utilization.extend(
            samples
                .iter()
                .filter(|s| s.name == "cpython_gil_utilization_ratio")
                .filter(|s| s.labels.get("process_pid") == Some(&pid.to_string()))
                .filter(|s| s.labels.get("service_name") == Some(&service))
                .map(|s| s.value),
        );
        last = Some((samples, types));
    }
    let Some((samples, types)) = last else {
        return failures;
    };
    // A scraper asking for gzip gets the same page gzipped.
    match gzipped_metrics(port) {
        Ok(page) => {
            if let Err(e) = parse_exposition(&page) {
                failures.push(format!("the gzipped page is not valid: {e}"));
            }
        }
        Err(e) => failures.push(format!("gzipped /metrics: {e}")),
    }
    if !utilization.iter().any(|u| *u >= 0.9) {
        failures.push(format!(
            "GIL utilization of pid {pid} with service_name {service}: {utilization:?}, expected one >= 0.9"
        ));
    }
    let of = |name: &str| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.name == name && s.labels.get("process_pid") == Some(&pid.to_string()))
            .collect()
    };
    let wait = of("cpython_gil_wait_time_seconds_total");
    let cpu = of("process_cpu_time_seconds_total");
    // Σ GIL wait ≈ 3 × CPU: while one worker runs, the three others wait for the GIL.
    match (wait.as_slice(), cpu.as_slice()) {
        ([w], [c]) if c.value > 0.2 && w.value > 1.5 * c.value => {}
        ([w], [c]) => failures.push(format!(
            "pid {pid}: GIL wait {} s for {} s of CPU, expected about 3 times more wait",
            w.value, c.value
        )),
        _ => failures.push(format!("no wait/cpu totals of pid {pid}")),
    }
    if types
        .get("cpython_gil_wait_time_seconds_total")
        .map(String::as_str)
        != Some("counter")
        || types
            .get("cpython_gil_wait_duration_seconds")
            .map(String::as_str)
            != Some("histogram")
    {
        failures.push(format!("types: {types:?}"));
    }
    if of("cpython_gil_wait_duration_seconds_count")
        .first()
        .is_none_or(|s| s.value < 10.0)
    {
        failures.push("no GIL wait histogram with waits".into());
    }
    let diag: Vec<&Sample> = of("cpython_diagnosis_ratio")
        .into_iter()
        .filter(|s| s.value == 1.0)
        .collect();
    if !diag.iter().any(|s| {
        s.labels.get("cpython_diagnosis_kind").map(String::as_str) == Some("gil_serialized_threads")
    }) {
        failures.push(format!("diagnosis gil_serialized_threads not 1: {diag:?}"));
    }
    // Every kind has its state series (0 or 1): an alert on any of them can fire.
    let states = of("cpython_diagnosis_ratio");
    for kind in DiagnosisKind::ALL {
        let name = Some(kind.name());
        if !states
            .iter()
            .any(|s| s.labels.get("cpython_diagnosis_kind").map(String::as_str) == name)
        {
            failures.push(format!(
                "/metrics has no cpython_diagnosis_ratio for {kind}"
            ));
        }
    }
    // The agent's own series, under its own resource.
    let watched: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "gilscope_processes_watched")
        .collect();
    match watched.as_slice() {
        [s] if s.value == 1.0
            && s.labels.get("service_name").map(String::as_str) == Some("gilscope") => {}
        other => failures.push(format!("gilscope_processes_watched: {other:?}")),
    }
    // Four threads fill no kernel map: the map-full counters are there, at 0
    // (the futex probe's and the event-loop probe's).
    let full: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "gilscope_bpf_entries_dropped_total")
        .collect();
    let maps: BTreeSet<&str> = full
        .iter()
        .filter_map(|s| s.labels.get("gilscope_bpf_map").map(String::as_str))
        .collect();
    let want = BTreeSet::from([
        "blocked_by",
        "gil_waits",
        "holder_stacks",
        "holder_waits",
        "inflight",
        "loop_threads",
        "thread_waits",
    ]);
    if maps != want || full.iter().any(|s| s.value != 0.0) {
        failures.push(format!("gilscope_bpf_entries_dropped_total: {full:?}"));
    }
    if !samples
        .iter()
        .any(|s| s.name == "gilscope_export_requests_total")
    {
        failures.push("no gilscope_export_requests_total".into());
    }
    for (key, want) in [("process_runtime_name", "cpython"), ("host_arch", "amd64")] {
        if of("process_thread_count")
            .first()
            .and_then(|s| s.labels.get(key))
            .map(String::as_str)
            != Some(want)
        {
            failures.push(format!("resource label {key} is not {want}"));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("gilscope stderr:\n{}", stderr()));
    }
    failures
}

#[test]
fn probes_answer_as_kubernetes_expects_and_metrics_show_four_serialized_threads() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("endpoints", || probe_and_scrape(&python));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_second_daemon_on_the_same_port_or_a_bad_address_is_one_clear_error() {
    if !can_use_bpf() {
        return;
    }
    let marker = unique_tag("port");
    let port = free_port();
    let log = scratch(&marker).join("first.log");
    let _first = listening_daemon(port, &marker, 6, &log, &[]);
    wait_for_port(port, "the first gilscope run");
    let started = Instant::now();
    let out = gilscope()
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--duration", "5s"])
        .output()
        .expect("run gilscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(3), "failed late");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("gilscope run: --listen: "), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");

    for (env, flag, named) in [
        (None, Some("localhost"), "--listen"),
        (Some("0.0.0.0:99999"), None, "GILSCOPE_LISTEN"),
    ] {
        let mut cmd = gilscope();
        cmd.arg("run");
        if let Some(v) = env {
            cmd.env("GILSCOPE_LISTEN", v);
        }
        if let Some(v) = flag {
            cmd.args(["--listen", v]);
        }
        let out = cmd.output().expect("run gilscope");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("gilscope run: {named}: ")) && stderr.contains("host:port"),
            "{stderr}"
        );
    }
}

/// VictoriaMetrics' binary, from tests/receivers/install.sh.
fn victoria_metrics() -> Option<PathBuf> {
    let dir = std::env::var("GILSCOPE_RECEIVERS")
        .unwrap_or_else(|_| "/var/cache/gilscope/receivers".into());
    let vm = Path::new(&dir).join("bin/victoria-metrics");
    if vm.exists() {
        Some(vm)
    } else {
        missing(&format!(
            "no victoria-metrics under {dir}/bin: run tests/receivers/install.sh"
        ));
        None
    }
}

/// Label names of each series in `result`, without those only one path adds.
fn label_sets(result: &[Value], drop: &[&str]) -> BTreeSet<Vec<String>> {
    result
        .iter()
        .filter_map(|r| r["metric"].as_object())
        .map(|m| {
            m.keys()
                .filter(|k| !drop.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .collect()
}

/// The daemon pushes OTLP/HTTP into VictoriaMetrics (`-opentelemetry.usePrometheusNaming`)
/// and VictoriaMetrics scrapes its /metrics: the same names, labels and values come out.
fn scraped_equals_pushed(vm: &Path, python: &Path) -> Vec<String> {
    let marker = unique_tag("vmscrape");
    let service = format!("gil-ep-{marker}");
    let dir = scratch(&marker);
    let (vm_port, listen) = (free_port(), free_port());
    let scrape = dir.join("scrape.yaml");
    std::fs::write(
        &scrape,
        format!(
            "scrape_configs:\n  - job_name: gilscope\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: ['127.0.0.1:{listen}']\n"
        ),
    )
    .expect("scrape config");
    let _vm = Running(
        Command::new(vm)
            .arg(format!("-storageDataPath={}", dir.join("vm").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{vm_port}"))
            .arg("-opentelemetry.usePrometheusNaming")
            .arg(format!("-promscrape.config={}", scrape.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vm.log")).expect("log"))
            .spawn()
            .expect("start victoria-metrics"),
    );
    wait_for_port(vm_port, "victoria-metrics");
    let _work = workload_process(python, 11, &service, &marker);
    let log = dir.join("gilscope.log");
    let mut daemon = listening_daemon(
        listen,
        &marker,
        8,
        &log,
        &[
            "--endpoint",
            &format!("http://127.0.0.1:{vm_port}/opentelemetry"),
            "--protocol",
            "http/protobuf",
        ],
    );
    let _ = daemon.0.wait();
    // Fresh rows become searchable within a couple of seconds.
    std::thread::sleep(Duration::from_secs(4));
    let mut failures = Vec::new();
    let up = promql(vm_port, "max_over_time(up{job=\"gilscope\"}[5m])");
    if up.first().and_then(|r| r["value"][1].as_str()) != Some("1") {
        failures.push(format!(
            "VictoriaMetrics never scraped /metrics successfully: {up:?}"
        ));
    }
    // Scraped series carry job/instance; pushed ones do not.
    let names = |path: &str| -> BTreeSet<String> {
        promql(
            vm_port,
            &format!(
                "count by (__name__) (last_over_time({{__name__=~\"cpython_.+|process_.+|gilscope_.+\",service_name=~\"{service}|gilscope\",job{path}\"gilscope\"}}[5m]))"
            ),
        )
        .iter()
        .filter_map(|r| r["metric"]["__name__"].as_str().map(String::from))
        .collect()
    };
    let (scraped, pushed) = (names("="), names("!="));
    eprintln!("scraped: {scraped:?}\npushed: {pushed:?}");
    if scraped.is_empty() || scraped != pushed {
        failures.push(format!(
            "metric names differ: only scraped {:?}, only pushed {:?}",
            scraped.difference(&pushed).collect::<Vec<_>>(),
            pushed.difference(&scraped).collect::<Vec<_>>()
        ));
    }
    for must in [
        "cpython_gil_utilization_ratio",
        "cpython_gil_wait_time_seconds_total",
        "cpython_gil_wait_duration_seconds_bucket",
        "gilscope_processes_watched",
    ] {
        if !scraped.contains(must) {
            failures.push(format!("{must} not scraped"));
        }
    }
    // The same label names on both paths (scraping adds job and instance; the
    // OTLP path adds the instrumentation scope), and the same histogram bounds.
    for metric in [
        "cpython_gil_utilization_ratio",
        "cpython_gil_wait_duration_seconds_bucket",
    ] {
        let q = |path: &str| {
            promql(
                vm_port,
                &format!("last_over_time({metric}{{service_name=\"{service}\",job{path}\"gilscope\"}}[5m])"),
            )
        };
        let (s, p) = (q("="), q("!="));
        let drop = ["job", "instance", "__name__"];
        let scope = |k: &Vec<String>| -> Vec<String> {
            k.iter()
                .filter(|k| !k.starts_with("otel_scope") && !k.starts_with("scope_"))
                .cloned()
                .collect()
        };
        let (ls, lp): (BTreeSet<_>, BTreeSet<_>) = (
            label_sets(&s, &drop).iter().map(scope).collect(),
            label_sets(&p, &drop).iter().map(scope).collect(),
        );
        if ls.is_empty() || ls != lp {
            failures.push(format!(
                "{metric} labels differ:\nscraped {ls:?}\npushed  {lp:?}"
            ));
        }
        if metric.ends_with("_bucket") {
            let les = |r: &[Value]| -> BTreeSet<String> {
                r.iter()
                    .filter_map(|v| v["metric"]["le"].as_str().map(String::from))
                    .collect()
            };
            if les(&s).len() < 10 || les(&s) != les(&p) {
                failures.push(format!("le bounds differ: {:?} vs {:?}", les(&s), les(&p)));
            }
        }
    }
    // The scraper saw the values the exporter pushed (each interval's point; a scrape
    // between two intervals sees the last one again).
    let values = |path: &str| -> Vec<String> {
        promql(
            vm_port,
            &format!("cpython_gil_utilization_ratio{{service_name=\"{service}\",job{path}\"gilscope\"}}[5m]"),
        )
        .first()
        .and_then(|r| r["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v[1].as_str().map(String::from))
        // The scraper marks a series stale (NaN) once the daemon is gone.
        .filter(|v| v != "NaN")
        .collect()
    };
    let (scraped, pushed) = (values("="), values("!="));
    eprintln!("utilization scraped {scraped:?}\npushed {pushed:?}");
    // The OTLP side uses the lean encoding (gauges kept to 12 mantissa bits, relative
    // error < 2.5e-4); /metrics has full precision: equal within that.
    let near = |a: &str, b: &str| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 2.5e-4 * x.abs().max(y.abs()),
        _ => a == b,
    };
    if scraped.len() < 4 || scraped.iter().any(|v| !pushed.iter().any(|p| near(v, p))) {
        failures.push(format!(
            "scraped utilization values {scraped:?} are not among the pushed ones {pushed:?}"
        ));
    }
    if !scraped
        .iter()
        .any(|v| v.parse::<f64>().is_ok_and(|u| u >= 0.9))
    {
        failures.push(format!("no scraped GIL utilization >= 0.9: {scraped:?}"));
    }
    if !failures.is_empty() {
        failures.push(format!(
            "gilscope stderr:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    failures
}

#[test]
fn victoria_metrics_scrapes_the_names_and_labels_the_otlp_path_creates() {
    if !can_use_bpf() {
        return;
    }
    let (Some(vm), Some(python)) = (victoria_metrics(), pyenv_python311()) else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("scrape vs push", || scraped_equals_pushed(&vm, &python));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Resident memory of process `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Threads and open sockets of process `pid`, from /proc.
fn threads_and_sockets(pid: u32) -> (usize, usize) {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0);
    (threads, sockets)
}

/// Whether the server closed `stream` within `within`: reads (and discards) until
/// end of stream or reset; a read that times out means the server still holds it.
fn closed_by_server(mut stream: &std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read as _;
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The daemon under a slow-client attack: hundreds of silent connections, 32 that
/// send half a request line and stall, 4 that pipeline 2000 scrapes through a tiny
/// receive buffer and never read. Probes must still be answered within the
/// kubelet's 1 s, the daemon must not grow a thread per client, and it must close
/// the stalled connections itself within the documented timeouts.
fn probes_under_slow_clients() -> Vec<String> {
    use std::io::Write as _;
    use std::net::TcpStream;
    let marker = unique_tag("slow");
    let port = free_port();
    let log = scratch(&marker).join("gilscope.log");
    let daemon = listening_daemon(port, &marker, 60, &log, &[]);
    let pid = daemon.0.id();
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut failures = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(http_get(port, "/readyz"), Ok((200, ..))) {
        if Instant::now() > deadline {
            return vec![format!("/readyz never 200:\n{}", stderr())];
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (threads_before, _) = threads_and_sockets(pid);
    let rss_before = rss_kib(pid);
    let connect = || TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon");

    // Oldest first: 200 that say nothing (more than the daemon keeps open at once).
    let silent: Vec<TcpStream> = (0..200).map(|_| connect()).collect();
    let half: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut s = connect();
            s.write_all(b"GET /heal").expect("half a request line");
            s
        })
        .collect();
    let scrapes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = connect();
            let tiny: libc::c_int = 1024;
            // SAFETY: a valid socket and a c_int option of the right size.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&tiny as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = (&s).write_all(&scrapes);
            s
        })
        .collect();
    let attacked = Instant::now();

    // The kubelet probes every 250 ms for 12 s with its 1 s timeout.
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let mut latencies = Vec::new();
    let mut most = (0, 0);
    let mut rss_most = rss_before;
    let mut round = 0;
    while attacked.elapsed() < Duration::from_secs(12) {
        let path = if round % 8 == 7 {
            "/metrics"
        } else {
            "/healthz"
        };
        round += 1;
        let asked = Instant::now();
        let answer = probe
            .get(&format!("http://127.0.0.1:{port}{path}"))
            .call()
            .and_then(|mut r| Ok((r.status().as_u16(), r.body_mut().read_to_string()?)));
        match answer {
            Ok((200, _)) => latencies.push(asked.elapsed()),
            Ok((status, _)) => failures.push(format!(
                "{path} at {:.1} s of the attack: status {status}",
                attacked.elapsed().as_secs_f64()
            )),
            Err(e) => failures.push(format!(
                "{path} at {:.1} s of the attack: {e}",
                attacked.elapsed().as_secs_f64()
            )),
        }
        let (t, s) = threads_and_sockets(pid);
        most = (most.0.max(t), most.1.max(s));
        rss_most = rss_most.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    latencies.sort();
    eprintln!(
        "under attack: {} of {round} probes answered, median {:?}, slowest {:?}; \
         threads {threads_before} before, at most {}; at most {} sockets; \
         resident memory {rss_before} KiB before, at most {rss_most} KiB",
        latencies.len(),
        latencies.get(latencies.len() / 2),
        latencies.last(),
        most.0,
        most.1
    );
    // A connection costs kilobytes; 128 of them (and 4 stalled pages) stay far below this.
    if rss_most > rss_before + 32 * 1024 {
        failures.push(format!(
            "resident memory grew from {rss_before} to {rss_most} KiB under the attack"
        ));
    }
    // The HTTP side may start a thread or two, never one per client.
    if most.0 > threads_before + 4 {
        failures.push(format!(
            "the daemon went from {threads_before} to {} threads under 236 slow clients",
            most.0
        ));
    }
    // At most 128 client connections (documented), plus the agent's own sockets.
    if most.1 > 128 + 16 {
        failures.push(format!("the daemon held {} sockets open", most.1));
    }
    // By now (12 s) the daemon has hung up on every one of them: 5 s to send the
    // request head, 10 s for a whole connection.
    let open_half = half
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_secs(1)))
        .count();
    let open_stalled = stalled
        .iter()
        .filter(|s| !closed_by_server(s, Duration::from_secs(2)))
        .count();
    if open_half + open_stalled > 0 {
        failures.push(format!(
            "after 12 s the daemon still held {open_half} of 32 half requests and \
             {open_stalled} of 4 stalled readers"
        ));
    }
    drop((silent, half, stalled));

    // The attack over, everything is normal.
    std::thread::sleep(Duration::from_millis(500));
    match http_get(port, "/healthz") {
        Ok((200, _, body)) if body.starts_with("ok") => {}
        other => failures.push(format!("/healthz after the attack: {other:?}")),
    }
    match http_get(port, "/metrics") {
        Ok((200, _, body)) => {
            if let Err(e) = parse_exposition(&body) {
                failures.push(format!("/metrics after the attack: {e}"));
            }
        }
        other => failures.push(format!("/metrics after the attack: {other:?}")),
    }
    match gzipped_metrics(port) {
        Ok(page) => {
            if let Err(e) = parse_exposition(&page) {
                failures.push(format!("gzipped /metrics after the attack: {e}"));
            }
        }
        Err(e) => failures.push(format!("gzipped /metrics after the attack: {e}")),
    }
    let (threads_after, sockets_after) = threads_and_sockets(pid);
    eprintln!("after the attack: {threads_after} threads, {sockets_after} sockets");
    if !failures.is_empty() {
        failures.push(format!("gilscope stderr:\n{}", stderr()));
    }
    failures
}

#[test]
fn slow_or_stalled_clients_do_not_starve_the_probes() {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let failures = twice_on_noise("slow clients", probes_under_slow_clients);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
