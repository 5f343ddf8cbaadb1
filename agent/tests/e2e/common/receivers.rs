//! The real OTLP receivers of the `gilscope run` tests: VictoriaMetrics (OTLP
//! ingestion, PromQL) and rotel (an OTLP collector that logs what it receives and
//! forwards to VictoriaMetrics), each on free ports with a scratch directory.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{gilscope, missing};

/// A child process killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A receiver with its scratch directory (data, logs), both gone when the test ends.
pub struct Receiver(pub Running, pub PathBuf);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0 .0.kill();
        let _ = self.0 .0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

pub fn receivers() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var("GILSCOPE_RECEIVERS")
        .unwrap_or_else(|_| "/var/cache/gilscope/receivers".into());
    let bin = Path::new(&dir).join("bin");
    let rotel = bin.join("rotel");
    let vm = bin.join("victoria-metrics");
    if rotel.exists() && vm.exists() {
        Some((rotel, vm))
    } else {
        missing(&format!(
            "no rotel/victoria-metrics under {}: run tests/receivers/install.sh",
            bin.display()
        ));
        None
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One GET on localhost: status, content type, body (any status is an answer, not an error).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok((status, ctype, body))
}

/// `gilscope run --listen 127.0.0.1:PORT` watching only `marker`, with its stderr in `log`.
pub fn listening_daemon(
    port: u16,
    marker: &str,
    seconds: u32,
    log: &Path,
    extra: &[&str],
) -> Running {
    let child = gilscope()
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--interval", "1s", "--duration", &format!("{seconds}s")])
        .args(["--include-cmdline", marker])
        .args(extra)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start gilscope run");
    Running(child)
}

pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gilscope-run-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// VictoriaMetrics on a free port, its data in a fresh directory.
pub fn start_vm(vm: &Path, tag: &str) -> (Receiver, u16) {
    let port = free_port();
    let dir = scratch(tag);
    let child = Command::new(vm)
        .arg(format!("-storageDataPath={}", dir.join("vm").display()))
        .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vm.log")).expect("log"))
        .spawn()
        .expect("start victoria-metrics");
    let running = Receiver(Running(child), dir);
    wait_for_port(port, "victoria-metrics");
    (running, port)
}

/// rotel receiving OTLP gRPC/HTTP and forwarding over OTLP/HTTP to VictoriaMetrics.
pub fn start_rotel(rotel: &Path, vm_port: u16, tag: &str) -> (Running, u16, PathBuf) {
    let grpc = free_port();
    let http = free_port();
    let log = scratch(tag).join("rotel.log");
    let child = Command::new(rotel)
        .arg("start")
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args(["--exporter", "otlp"])
        .args([
            "--otlp-exporter-endpoint",
            &format!("http://127.0.0.1:{vm_port}/opentelemetry"),
        ])
        .args(["--otlp-exporter-protocol", "http"])
        .args([
            "--debug-log",
            "metrics",
            "--debug-log",
            "traces",
            "--debug-log-verbosity",
            "detailed",
        ])
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel");
    let running = Running(child);
    wait_for_port(grpc, "rotel");
    (running, grpc, log)
}

/// One PromQL instant query; the result vector.
pub fn promql(vm_port: u16, query: &str) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{vm_port}/api/v1/query");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let body = ureq::get(&url)
        .query("query", query)
        .query("time", now.to_string())
        // Recent samples too (the default hides the last 30 s).
        .query("latency_offset", "1ms")
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .unwrap_or_else(|e| panic!("query {query}: {e}"));
    let doc: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn scalar(result: &[Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// The mean of the series `selector` over its last 8 s, once five or more
/// intervals (1 s each) are in, waiting up to `within`; `None` after that. One
/// interval's GIL utilization moves in steps of 0.1 at 10 samples a second;
/// fifty samples make a 0.9 claim one that sampling noise cannot fail.
pub fn mean_of_five_intervals(vm_port: u16, selector: &str, within: Duration) -> Option<f64> {
    let deadline = Instant::now() + within;
    loop {
        let count = scalar(&promql(
            vm_port,
            &format!("max(count_over_time({selector}[8s]))"),
        ));
        if count.unwrap_or(0.0) >= 5.0 {
            let mean = format!("max(avg_over_time({selector}[8s]))");
            return scalar(&promql(vm_port, &mean));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The 4-thread CPU workload (threads `cpu-0`..`cpu-3`) under its own service name,
/// with a spoofed `tenant.id` a tenant rule must override; `marker` makes its command
/// line unique so a daemon watches only it on a shared machine.
pub fn workload_process(python: &Path, seconds: u32, service: &str, marker: &str) -> Running {
    let child = Command::new(python)
        .args([
            &super::workload("cpu_threads.py"),
            "4",
            &seconds.to_string(),
            marker,
        ])
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_RESOURCE_ATTRIBUTES", "team=blue,tenant.id=spoofed")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    Running(child)
}
