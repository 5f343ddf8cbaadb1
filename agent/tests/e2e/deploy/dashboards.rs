//! The Grafana dashboards and Prometheus alert rules of `dashboards/`, checked
//! against real parts: `vmalert-tool unittest` runs the rules' unit tests (and
//! must fail when a threshold is wrong); then one real `gilscope run` exports
//! OTLP/HTTP straight into VictoriaMetrics while a 4-thread CPU workload (GIL-bound),
//! an I/O workload and, where a CPU cgroup can be made, a throttled one run at
//! once. Every PromQL query of both dashboards (panels and template variables)
//! must return data, and vmalert evaluating `alerts.yaml` against that
//! VictoriaMetrics must fire `GILBoundService` for the CPU workload only.
//!
//! The tools come from `tests/receivers/install.sh` (victoria-metrics, vmalert,
//! vmalert-tool, cached under /var/cache/gilscope/receivers); without them these
//! tests skip, or fail under CI=true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::quota::QuotaCgroup;
use crate::common::receivers::*;
use crate::common::*;
use serde_json::Value;

/// How long the workloads are watched: long enough for vmalert (2 s evaluations,
/// `for` shortened to 6 s) to see the alert pending then firing.
const RUN_SECONDS: u32 = 30;

/// CPU quota of the throttled workload: 2 ms per 100 ms period. So small that its
/// one CPU-bound thread is throttled most of the time even when a busy machine
/// gives it little CPU (at 20 %, with other jobs running, it rarely reached its quota).
const THROTTLED_CORES: f64 = 0.02;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// `vmalert` and `vmalert-tool` next to the receivers, if installed.
fn vm_tools() -> Option<(PathBuf, PathBuf)> {
    let (_, vm) = receivers()?;
    let bin = vm.parent()?.to_path_buf();
    let (vmalert, tool) = (bin.join("vmalert"), bin.join("vmalert-tool"));
    if vmalert.exists() && tool.exists() {
        Some((vmalert, tool))
    } else {
        missing(&format!(
            "no vmalert/vmalert-tool under {}: run tests/receivers/install.sh",
            bin.display()
        ));
        None
    }
}

/// `vmalert-tool unittest` of `tests_file` (rules resolved relative to its directory).
fn unittest(tool: &Path, tests_file: &Path) -> (bool, String) {
    let dir = tests_file.parent().expect("a directory");
    let out = Command::new(tool)
        .arg("unittest")
        .arg(format!("--files={}", tests_file.display()))
        .current_dir(dir)
        .output()
        .expect("run vmalert-tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_their_unit_tests_and_a_wrong_threshold_fails_them() {
    let Some((_, tool)) = vm_tools() else {
        return;
    };
    let dir = dashboards_dir();
    let (ok, text) = unittest(&tool, &dir.join("alerts.test.yaml"));
    assert!(ok, "vmalert-tool unittest failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");

    // The tests can fail: a GILBoundService that wants 3 queued threads misses the
    // 4-thread service (2.7) and must be caught.
    let rules = std::fs::read_to_string(dir.join("alerts.yaml")).expect("alerts.yaml");
    let wrong = rules.replacen(") >= 1\n", ") >= 3\n", 1);
    assert_ne!(wrong, rules, "GILBoundService's queue bound not found");
    let scratch = scratch("alerts-mutant");
    std::fs::write(scratch.join("alerts.yaml"), wrong).expect("write rules");
    std::fs::copy(
        dir.join("alerts.test.yaml"),
        scratch.join("alerts.test.yaml"),
    )
    .expect("copy tests");
    let (ok, text) = unittest(&tool, &scratch.join("alerts.test.yaml"));
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(!ok, "a wrong threshold passed the unit tests:\n{text}");
    assert!(text.contains("GILBoundService"), "{text}");
}

/// The services of the end-to-end run, each a workload with its own service.name.
struct Services {
    cpu: String,
    io: String,
    throttled: Option<String>,
}

/// Starts the workloads; `tag` on each command line lets the daemon watch only them.
fn start_workloads(
    python: &Path,
    tag: &str,
    cgroup: Option<&QuotaCgroup>,
) -> (Services, Vec<Running>) {
    let seconds = (RUN_SECONDS + 8).to_string();
    let services = Services {
        cpu: format!("dash-cpu-{tag}"),
        io: format!("dash-io-{tag}"),
        throttled: cgroup.map(|_| format!("dash-throttled-{tag}")),
    };
    let spawn = |cmd: &mut Command, service: &str, team: &str| {
        let child = cmd
            .env("OTEL_SERVICE_NAME", service)
            .env("OTEL_RESOURCE_ATTRIBUTES", format!("team={team}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a workload");
        Running(child)
    };
    let mut running = vec![
        spawn(
            Command::new(python).args([&workload("cpu_threads.py"), "4", &seconds, tag]),
            &services.cpu,
            "blue",
        ),
        spawn(
            Command::new(python).args([&workload("io_threads.py"), "8", &seconds, tag]),
            &services.io,
            "green",
        ),
    ];
    if let (Some(cgroup), Some(service)) = (cgroup, &services.throttled) {
        // The shell moves itself into the cgroup, then becomes the workload.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} {} 1 {seconds} {tag}",
            cgroup.dir.display(),
            python.display(),
            workload("cpu_threads.py")
        );
        running.push(spawn(
            Command::new("sh").args(["-c", &script]),
            service,
            "blue",
        ));
    }
    (services, running)
}

/// A copy of alerts.yaml a test can wait for: `for: 10m` becomes 6 s, each group is
/// evaluated every 2 s and asks VictoriaMetrics for the freshest samples too
/// (`latency_offset`; the default hides the last 30 s). Expressions are unchanged.
fn rules_for_the_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(dashboards_dir().join("alerts.yaml")).expect("alerts.yaml");
    let mut doc: serde_norway::Value = serde_norway::from_str(&text).expect("alerts.yaml is YAML");
    let groups = doc["groups"].as_sequence_mut().expect("groups");
    let mut waits = BTreeMap::new();
    for group in groups.iter_mut() {
        group["interval"] = "2s".into();
        let params: serde_norway::Value =
            serde_norway::from_str("{latency_offset: ['1ms']}").expect("params");
        group["params"] = params;
        for rule in group["rules"].as_sequence_mut().expect("rules").iter_mut() {
            let name = rule["alert"].as_str().unwrap_or_default().to_string();
            waits.insert(name, rule["for"].as_str().unwrap_or_default().to_string());
            rule["for"] = "6s".into();
        }
    }
    assert_eq!(
        waits.get("GILBoundService").map(String::as_str),
        Some("10m"),
        "GILBoundService must wait 10 m: {waits:?}"
    );
    let path = dir.join("alerts.e2e.yaml");
    std::fs::write(&path, serde_norway::to_string(&doc).expect("YAML")).expect("write rules");
    path
}

/// vmalert evaluating `rules` against VictoriaMetrics on `vm_port`; its HTTP port.
fn start_vmalert(vmalert: &Path, rules: &Path, vm_port: u16, dir: &Path) -> (Running, u16) {
    let port = free_port();
    let child = Command::new(vmalert)
        .arg(format!("-rule={}", rules.display()))
        .arg(format!("-datasource.url=http://127.0.0.1:{vm_port}"))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .args(["-evaluationInterval=2s", "-rule.evalDelay=0s"])
        .arg("-notifier.blackhole")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmalert.log")).expect("log"))
        .spawn()
        .expect("start vmalert");
    let running = Running(child);
    wait_for_port(port, "vmalert");
    (running, port)
}

/// GET `url` with `params`; the JSON document, or what went wrong.
fn get_json(url: &str, params: &[(&str, String)]) -> Result<Value, String> {
    let mut req = ureq::get(url).config().http_status_as_error(false).build();
    for (k, v) in params {
        req = req.query(*k, v);
    }
    let mut resp = req.call().map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

/// One PromQL query against VictoriaMetrics: a range query over `range` or an
/// instant query at its end; the result series.
fn query(vm_port: u16, expr: &str, range: Option<(u64, u64)>) -> Result<Vec<Value>, String> {
    let now = unix_now();
    let (path, mut params) = match range {
        Some((start, end)) => (
            "query_range",
            vec![
                ("start", start.to_string()),
                ("end", end.to_string()),
                ("step", "2s".to_string()),
            ],
        ),
        None => ("query", vec![("time", now.to_string())]),
    };
    params.push(("query", expr.to_string()));
    params.push(("latency_offset", "1ms".to_string()));
    let doc = get_json(
        &format!("http://127.0.0.1:{vm_port}/api/v1/{path}"),
        &params,
    )?;
    Ok(doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Grafana's variables as the test sets them: every tenant and namespace (the
/// dashboards' `All` value), the CPU-bound service, every process; built-in
/// intervals as Grafana would give them for a short range at 1 s resolution.
/// Whole names only (`$tenantx` is not `$tenant`): an unknown variable stays and
/// is reported.
fn substitute(expr: &str, service: &str) -> String {
    let value = |name: &str| match name {
        "__rate_interval" => Some("20s"),
        "__interval" => Some("5s"),
        "__range" => Some("5m"),
        "tenant" | "namespace" | "instance" => Some(".*"),
        "service" => Some(service),
        _ => None,
    };
    let var = regex::Regex::new(r"\$\{(\w+)\}|\$(\w+)").expect("regex");
    var.replace_all(expr, |c: &regex::Captures| {
        let name = c.get(1).or(c.get(2)).map_or("", |m| m.as_str());
        value(name).map_or_else(|| c[0].to_string(), str::to_string)
    })
    .into_owned()
}

/// One PromQL query of a dashboard: where it is, its text, whether Grafana runs it as an instant query.
struct DashQuery {
    place: String,
    expr: String,
    instant: bool,
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        out.extend(p["panels"].as_array().into_iter().flatten().cloned());
    }
    out
}

/// The PromQL of every panel target; panels that cannot be checked here are
/// failures unless they are the Tempo panel (checked for its TraceQL).
fn panel_queries(name: &str, dashboard: &Value, failures: &mut Vec<String>) -> Vec<DashQuery> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let ptype = p["type"].as_str().unwrap_or_default();
        if ptype == "row" {
            continue;
        }
        let place = format!("{name}: panel {:?}", p["title"].as_str().unwrap_or("?"));
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            failures.push(format!("{place} has no query"));
        }
        for t in targets {
            let ds = t["datasource"]["type"]
                .as_str()
                .or(p["datasource"]["type"].as_str())
                .unwrap_or_default();
            match (ds, t["expr"].as_str(), t["query"].as_str()) {
                ("prometheus", Some(expr), _) => out.push(DashQuery {
                    place: format!("{place} {}", t["refId"].as_str().unwrap_or("?")),
                    expr: expr.to_string(),
                    instant: t["instant"].as_bool() == Some(true),
                }),
                ("tempo", _, Some(traceql)) => {
                    if !traceql.contains("name = \"gil.wait\"") || !traceql.contains("$service") {
                        failures.push(format!("{place}: TraceQL {traceql:?} does not select gil.wait spans of $service"));
                    }
                }
                _ => failures.push(format!("{place}: a target this test cannot run: {t}")),
            }
        }
    }
    out
}

/// The template variables' `query_result(...)` queries with the regex Grafana applies.
fn variable_queries(name: &str, dashboard: &Value) -> Vec<(String, String, regex::Regex)> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let var = v["name"].as_str().unwrap_or("?").to_string();
        let query = v["query"]["query"].as_str().unwrap_or_default();
        let inner = query
            .strip_prefix("query_result(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: variable {var}: not query_result(...): {query}"));
        let re = v["regex"].as_str().unwrap_or_default();
        let re = re
            .strip_prefix('/')
            .and_then(|r| r.strip_suffix('/'))
            .unwrap_or_else(|| panic!("{name}: variable {var}: regex {re:?} is not /.../"));
        let re = regex::Regex::new(re).unwrap_or_else(|e| panic!("{name}: {var}: {e}"));
        out.push((var, inner.to_string(), re));
    }
    out
}

/// Values of a `query_result` variable as Grafana lists them: each series as
/// `name{k="v",...} value ts`, through the variable's regex.
fn variable_values(result: &[Value], re: &regex::Regex) -> Vec<String> {
    let mut values = Vec::new();
    for s in result {
        let labels: Vec<String> = s["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "__name__")
            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
            .collect();
        let text = format!("{{{}}}", labels.join(","));
        if let Some(c) = re.captures(&text).and_then(|c| c.get(1)) {
            values.push(c.as_str().to_string());
        }
    }
    values.sort();
    values
}

/// Checks both dashboards against what VictoriaMetrics holds; failures as text.
fn check_dashboards(vm_port: u16, services: &Services, since: u64) -> Vec<String> {
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in ["gilscope-fleet.json", "gilscope-service.json"] {
        let text = std::fs::read_to_string(dashboards_dir().join(file)).expect("dashboard");
        let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
        if dashboard["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            failures.push(format!(
                "{file}: schemaVersion {} < 39",
                dashboard["schemaVersion"]
            ));
        }
        for (var, expr, re) in variable_queries(file, &dashboard) {
            let expr = substitute(&expr, &services.cpu);
            checked += 1;
            let result = match query(vm_port, &expr, None) {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => {
                    failures.push(format!("{file}: variable {var}: no data from {expr}"));
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{file}: variable {var}: {expr}: {e}"));
                    continue;
                }
            };
            let values = variable_values(&result, &re);
            let want: Vec<&str> = match var.as_str() {
                "tenant" => vec!["blue", "green"],
                "service" => vec![services.cpu.as_str(), services.io.as_str()],
                "instance" => vec![],
                // No pod metadata here: no value, the `All` (.*) default matches the absent label.
                "namespace" => {
                    if !values.is_empty() {
                        failures.push(format!(
                            "{file}: namespace values {values:?} without Kubernetes"
                        ));
                    }
                    vec![]
                }
                other => {
                    failures.push(format!("{file}: unexpected variable {other}"));
                    vec![]
                }
            };
            for w in want {
                if !values.iter().any(|v| v == w) {
                    failures.push(format!("{file}: variable {var} lacks {w}: {values:?}"));
                }
            }
            if var == "instance" && values.is_empty() {
                failures.push(format!("{file}: variable instance has no value"));
            }
        }
        for q in panel_queries(file, &dashboard, &mut failures) {
            let expr = substitute(&q.expr, &services.cpu);
            if expr.contains('$') {
                failures.push(format!("{}: unknown variable left in {expr}", q.place));
                continue;
            }
            checked += 1;
            let range = (!q.instant).then_some((since, unix_now()));
            match query(vm_port, &expr, range) {
                Ok(r) if r.is_empty() => failures.push(format!("{}: no data: {expr}", q.place)),
                Ok(_) => {}
                Err(e) => failures.push(format!("{}: {expr}: {e}", q.place)),
            }
        }
    }
    eprintln!("dashboards: {checked} queries run");
    if checked < 40 {
        failures.push(format!("only {checked} queries found in the dashboards"));
    }
    failures
}

/// Active alerts of vmalert: (alert name, service.name, state).
fn active_alerts(vmalert_port: u16) -> Result<Vec<(String, String, String)>, String> {
    let doc = get_json(
        &format!("http://127.0.0.1:{vmalert_port}/api/v1/alerts"),
        &[],
    )?;
    Ok(doc["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&a["name"]),
                s(&a["labels"]["service.name"]),
                s(&a["state"]),
            )
        })
        .collect())
}

/// What the run measured per service, for the log (and the thresholds' comments).
fn log_measurements(vm_port: u16, services: &Services) {
    let all = [
        Some(&services.cpu),
        Some(&services.io),
        services.throttled.as_ref(),
    ];
    for service in all.into_iter().flatten() {
        let sel = |name: &str| format!("{{\"{name}\", \"service.name\"=\"{service}\"}}");
        let one = |expr: String| {
            query(vm_port, &expr, None)
                .ok()
                .and_then(|r| scalar(&r))
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        };
        eprintln!(
            "measured {service}: GIL utilization {} queue length {} throttled share {} median GIL wait {} ms",
            one(format!("avg_over_time({}[5m])", sel("cpython.gil.utilization"))),
            one(format!("avg_over_time({}[5m])", sel("cpython.gil.queue_length"))),
            one(format!("rate({}[5m])", sel("cpython.cpu.throttled.time"))),
            one(format!(
                "1000 * histogram_quantile(0.5, sum by (le) (rate({}[5m])))",
                sel("cpython.gil.wait.duration_bucket")
            )),
        );
    }
}

/// Checks the alerts vmalert holds, polling until `deadline` for the expected firing ones.
fn check_alerts(vmalert_port: u16, services: &Services, deadline: Instant) -> Vec<String> {
    loop {
        let mut failures = Vec::new();
        let alerts = match active_alerts(vmalert_port) {
            Ok(a) => a,
            Err(e) => vec![("(vmalert)".into(), e, String::new())],
        };
        let state = |alert: &str, service: &str| {
            alerts
                .iter()
                .find(|(a, s, _)| a == alert && s == service)
                .map(|(_, _, st)| st.clone())
        };
        if state("GILBoundService", &services.cpu).as_deref() != Some("firing") {
            failures.push(format!(
                "GILBoundService not firing for the 4-thread service {}",
                services.cpu
            ));
        }
        for alert in [
            "GILBoundService",
            "GILResidualLatencyHigh",
            "PythonCPUThrottledNotGIL",
        ] {
            if let Some(st) = state(alert, &services.io) {
                failures.push(format!(
                    "{alert} is {st} for the I/O service {}",
                    services.io
                ));
            }
        }
        if let Some(throttled) = &services.throttled {
            if state("PythonCPUThrottledNotGIL", throttled).as_deref() != Some("firing") {
                failures.push(format!(
                    "PythonCPUThrottledNotGIL not firing for the throttled service {throttled}"
                ));
            }
            if let Some(st) = state("GILBoundService", throttled) {
                failures.push(format!(
                    "GILBoundService is {st} for the 1-thread throttled service"
                ));
            }
        }
        if let Some(st) = state("PythonCPUThrottledNotGIL", &services.cpu) {
            failures.push(format!(
                "PythonCPUThrottledNotGIL is {st} for the unthrottled 4-thread service"
            ));
        }
        if failures.is_empty() || Instant::now() > deadline {
            if !failures.is_empty() {
                failures.push(format!("vmalert's active alerts: {alerts:?}"));
            }
            return failures;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn every_dashboard_query_returns_data_and_gil_bound_service_fires_only_for_the_cpu_bound_service() {
    if !can_use_bpf() {
        return;
    }
    let (Some((_, vm)), Some((vmalert, _)), Some(python)) =
        (receivers(), vm_tools(), pyenv_python311())
    else {
        return;
    };
    let cgroup = QuotaCgroup::new(THROTTLED_CORES);
    if cgroup.is_none() {
        missing("no writable CPU cgroup controller (v1 cpu or v2 with cpu) to set a quota");
    }
    let _machine = serial();
    let tag = format!("dash{}x{}", std::process::id(), unix_now() % 100_000);
    let dir = scratch(&tag);
    let (_vm, vm_port) = start_vm(&vm, &tag);
    let rules = rules_for_the_test(&dir);
    let (_vmalert, vmalert_port) = start_vmalert(&vmalert, &rules, vm_port, &dir);
    let since = unix_now();
    let (services, _work) = start_workloads(&python, &tag, cgroup.as_ref());
    let out = gilscope()
        .arg("run")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .args([
            "--endpoint",
            &format!("http://127.0.0.1:{vm_port}/opentelemetry"),
        ])
        .args(["--protocol", "http/protobuf", "--include-cmdline", &tag])
        .args(["--tenant-from", "team", "--per-thread"])
        .args(["--interval", "1s", "--duration", &format!("{RUN_SECONDS}s")])
        .output()
        .expect("run gilscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gilscope run failed: {stderr}");
    // VictoriaMetrics makes fresh rows searchable within a second or two.
    std::thread::sleep(Duration::from_secs(2));
    log_measurements(vm_port, &services);

    let mut failures = check_dashboards(vm_port, &services, since);
    failures.extend(check_alerts(
        vmalert_port,
        &services,
        Instant::now() + Duration::from_secs(10),
    ));
    if !failures.is_empty() {
        let log = std::fs::read_to_string(dir.join("vmalert.log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
        failures.push(format!("vmalert log (last lines, newest first):\n{tail}"));
        failures.push(format!("gilscope stderr:\n{stderr}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
