//! One hostile target next to an ordinary service, and what must hold while
//! `gilscope run` watches both: the daemon stays small (RSS ≤ 64 MiB, debug
//! build) and alive (`/healthz` answers within 1 s), the ordinary service — a
//! 3-thread CPU-bound `cpu_threads.py` — is exported every interval with its
//! true values (GIL utilization ≥ 0.9, 4 threads), a process started meanwhile
//! is exported within 2 intervals, and no series carries another process's
//! service or container. What the hostile target itself earns (measured, or
//! refused in one clear log line) each test says with [`Scene::measured`] or
//! [`Scene::refused`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::receivers::*;
use crate::common::*;

/// The export interval of every scene.
const INTERVAL_S: f64 = 1.0;
/// The daemon's resident memory may not exceed this (a debug build).
const MAX_RSS_MIB: f64 = 64.0;
/// `/healthz` must answer within this.
const HEALTHZ_WITHIN: Duration = Duration::from_secs(1);

/// Seconds since the epoch.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Resident memory of `pid` in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // After ')' come state (not a number, skipped), ppid, ...: utime and stime are
    // fields 14 and 15 of the line, the 11th and 12th numbers here.
    (f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0)) / 100.0
}

/// What the watchdog saw of the daemon while the scene ran.
#[derive(Debug, Default, Clone)]
pub struct Vitals {
    pub max_rss_mib: f64,
    pub max_healthz_ms: f64,
    pub healthz_failures: Vec<String>,
    pub looks: u32,
}

/// A thread that looks at the daemon's RSS and `/healthz` every 250 ms.
struct Watchdog {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vitals>,
}

impl Watchdog {
    fn start(pid: u32, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(HEALTHZ_WITHIN))
                .build()
                .into();
            let mut v = Vitals::default();
            while !flag.load(Ordering::Relaxed) {
                v.max_rss_mib = v.max_rss_mib.max(rss_mib(pid));
                let t0 = Instant::now();
                let answer = agent
                    .get(&format!("http://127.0.0.1:{port}/healthz"))
                    .call()
                    .map(|r| r.status().as_u16());
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                v.max_healthz_ms = v.max_healthz_ms.max(ms);
                match answer {
                    Ok(200) if ms <= HEALTHZ_WITHIN.as_secs_f64() * 1e3 => {}
                    other => {
                        if v.healthz_failures.len() < 5 {
                            v.healthz_failures
                                .push(format!("{other:?} after {ms:.0} ms"));
                        }
                    }
                }
                v.looks += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            v
        });
        Self { stop, handle }
    }

    fn finish(self) -> Vitals {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Who a watched process must be in every series it has.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub service: Option<String>,
    pub container: Option<String>,
}

/// The ordinary service, the VictoriaMetrics it is exported to, and (once
/// started) the daemon and its watchdog.
pub struct Scene {
    pub marker: String,
    _vm: Receiver,
    pub vm_port: u16,
    pub listen_port: u16,
    log: PathBuf,
    daemon: Option<Running>,
    watchdog: Option<Watchdog>,
    pub ordinary: Running,
    /// Process -> who it must be in every series.
    expected: BTreeMap<u32, Expect>,
    /// When the daemon started (unix seconds).
    started_at: f64,
    cpu_at_start: f64,
    failures: Vec<String>,
    /// Numbers for the log line of [`Scene::finish`].
    notes: Vec<String>,
}

impl Scene {
    /// Starts VictoriaMetrics and the ordinary service (not yet the daemon: a
    /// test may prepare its hostile target first). `None`: something this
    /// machine lacks (skipped outside CI).
    pub fn prepare(what: &str) -> Option<Self> {
        let (Some(python), Some((_, vm))) = (debian_python311(), receivers()) else {
            return None;
        };
        if !can_use_bpf() {
            return None;
        }
        let marker = format!("hostile-{what}-{}", std::process::id());
        let (receiver, vm_port) = start_vm(&vm, &marker);
        let log = receiver.1.join("daemon.log");
        let ordinary_service = format!("{marker}-ordinary");
        let ordinary = Running(
            Command::new(&python)
                .args([&workload("cpu_threads.py"), "3", "3600", &ordinary_service])
                .env("OTEL_SERVICE_NAME", &ordinary_service)
                .stdout(Stdio::null())
                .spawn()
                .expect("start the ordinary service"),
        );
        let mut expected = BTreeMap::new();
        expected.insert(
            ordinary.0.id(),
            Expect {
                service: Some(ordinary_service.clone()),
                container: None,
            },
        );
        Some(Self {
            marker,
            _vm: receiver,
            vm_port,
            listen_port: free_port(),
            log,
            daemon: None,
            watchdog: None,
            ordinary,
            expected,
            started_at: 0.0,
            cpu_at_start: 0.0,
            failures: Vec::new(),
            notes: Vec::new(),
        })
    }

    /// Records a failure of the test's own (reported with the scene's numbers).
    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Says who process `pid` must be in every series it has.
    pub fn expect(&mut self, pid: u32, expect: Expect) {
        self.expected.insert(pid, expect);
    }

    /// Starts `gilscope run -v` (1 s intervals, 100 GIL samples a second, OTLP/HTTP into VictoriaMetrics,
    /// `/healthz` on a free port, only command lines with the marker),
    /// waits for the ordinary service's first export, and starts the watchdog.
    pub fn start_daemon(&mut self, extra: &[&str]) {
        let vm = format!("http://127.0.0.1:{}/opentelemetry", self.vm_port);
        let child = gilscope()
            .args([
                "run",
                "-v",
                "--interval",
                "1s",
                "--protocol",
                "http/protobuf",
            ])
            // 100 samples an interval: the utilization is known to 1 %, not 10 %.
            .args(["--sample-hz", "100"])
            .args(["--endpoint", &vm])
            .args(["--listen", &format!("127.0.0.1:{}", self.listen_port)])
            .args(["--include-cmdline", &self.marker])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("daemon log"))
            .spawn()
            .expect("start gilscope run");
        self.started_at = unix_now();
        let pid = child.id();
        self.daemon = Some(Running(child));
        self.cpu_at_start = cpu_seconds(pid);
        wait_for_port(self.listen_port, "gilscope run --listen");
        self.watchdog = Some(Watchdog::start(pid, self.listen_port));
        let ordinary = self.ordinary.0.id();
        if self.first_export(ordinary, 30.0).is_none() {
            self.failures.push(format!(
                "the ordinary service {ordinary} was never exported"
            ));
        }
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, |d| d.0.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the daemon's log that mention process `pid`.
    pub fn lines_about(&self, pid: u32) -> Vec<String> {
        let needle = format!("process {pid}");
        self.log()
            .lines()
            .filter(|l| {
                l.contains(&format!("{needle} "))
                    || l.contains(&format!("{needle}:"))
                    || l.ends_with(&needle)
            })
            .map(str::to_string)
            .collect()
    }

    /// When `pid` was first exported (unix seconds of its first point), waiting
    /// up to `within_s` for it.
    pub fn first_export(&self, pid: u32, within_s: f64) -> Option<f64> {
        let query = format!(
            "min(tfirst_over_time({{__name__=\"process.thread.count\",process.pid=\"{pid}\"}}[10m]))"
        );
        let deadline = Instant::now() + Duration::from_secs_f64(within_s);
        loop {
            if let Some(t) = scalar(&promql(self.vm_port, &query)) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts another 3-thread service and requires its first export within
    /// two intervals of its start.
    pub fn newcomer_is_exported_within_two_intervals(&mut self) {
        let python = debian_python311().expect("checked in prepare");
        let service = format!("{}-newcomer", self.marker);
        let t0 = unix_now();
        let newcomer = Running(
            Command::new(python)
                .args([&workload("cpu_threads.py"), "3", "20", &service])
                .env("OTEL_SERVICE_NAME", &service)
                .stdout(Stdio::null())
                .spawn()
                .expect("start the newcomer"),
        );
        let pid = newcomer.0.id();
        self.expect(
            pid,
            Expect {
                service: Some(service),
                container: None,
            },
        );
        match self.first_export(pid, 30.0) {
            Some(t) => {
                let after = t - t0;
                self.notes
                    .push(format!("newcomer exported after {after:.2} s"));
                if after > 2.0 * INTERVAL_S {
                    self.failures.push(format!(
                        "a new process was first exported {after:.2} s after it started (2 intervals: {:.0} s)",
                        2.0 * INTERVAL_S
                    ));
                }
            }
            None => self.failures.push(format!(
                "a new process ({pid}) was not exported within 30 s"
            )),
        }
        // Its last points are in; it must keep its own service (checked at the end).
        std::thread::sleep(Duration::from_secs(2));
        drop(newcomer);
    }

    /// Requires the daemon to have refused process `pid` in exactly one log
    /// line containing `why`, and exported nothing of it.
    pub fn refused(&mut self, pid: u32, why: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.lines_about(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
        // Give a second line (which must not come) a chance to be written.
        std::thread::sleep(Duration::from_secs(2));
        let lines = self.lines_about(pid);
        self.notes.push(format!("target {pid}: {lines:?}"));
        if lines.len() != 1 || !lines[0].contains(why) {
            self.failures.push(format!(
                "hostile target {pid} must be refused in one line saying {why:?}: {lines:?}"
            ));
        }
        let q = format!("count({{__name__=~\".+\",process.pid=\"{pid}\"}})");
        if let Some(n) = scalar(&promql(self.vm_port, &q)) {
            self.failures
                .push(format!("refused target {pid} has {n} exported series"));
        }
    }

    /// Raw points of `metric` for process `pid`: (unix seconds, value).
    fn points(&self, metric: &str, pid: u32) -> Vec<(f64, f64)> {
        let url = format!("http://127.0.0.1:{}/api/v1/export", self.vm_port);
        let selector = format!("{{__name__=\"{metric}\",process.pid=\"{pid}\"}}");
        let body = ureq::get(&url)
            .query("match[]", &selector)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default();
        let mut out: Vec<(f64, f64)> = body
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|doc| {
                let ts: Vec<f64> = doc["timestamps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_f64().map(|ms| ms / 1e3))
                    .collect();
                let vs: Vec<f64> = doc["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect();
                ts.into_iter().zip(vs).collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    /// The ordinary service was exported every interval since its first
    /// export, with its true values.
    fn ordinary_every_interval(&mut self, until: f64) {
        let pid = self.ordinary.0.id();
        let util: Vec<(f64, f64)> = self
            .points("cpython.gil.utilization", pid)
            .into_iter()
            .filter(|(t, _)| *t <= until)
            .collect();
        let threads = self.points("process.thread.count", pid);
        let max_gap = util
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .fold(0.0f64, f64::max);
        let min_util = util.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let span = util.last().map_or(0.0, |l| l.0) - util.first().map_or(0.0, |f| f.0);
        self.notes.push(format!(
            "ordinary: {} points over {span:.0} s, largest gap {max_gap:.2} s, min utilization {min_util:.3}",
            util.len()
        ));
        if util.len() < 10 {
            self.failures
                .push(format!("the ordinary service has {} points", util.len()));
        }
        if max_gap > 1.5 * INTERVAL_S {
            self.failures.push(format!(
                "the ordinary service missed an interval: {max_gap:.2} s between two points"
            ));
        }
        if min_util < 0.9 {
            self.failures.push(format!(
                "the ordinary service's GIL utilization fell to {min_util:.3}"
            ));
        }
        if let Some(bad) = threads.iter().find(|p| p.1 != 4.0) {
            self.failures
                .push(format!("the ordinary service's thread count: {bad:?}"));
        }
    }

    /// Every series of a known process carries its service and container, and
    /// no other process carries them.
    fn attribution(&mut self) {
        let url = format!("http://127.0.0.1:{}/api/v1/series", self.vm_port);
        let body = ureq::get(&url)
            .query("match[]", "{__name__=~\".+\",process.pid!=\"\"}")
            .query("start", format!("{:.0}", self.started_at - 60.0))
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_default();
        let doc: Value = serde_json::from_str(&body).unwrap_or_default();
        let series = doc["data"].as_array().cloned().unwrap_or_default();
        let mut wrong = Vec::new();
        for s in &series {
            let label = |k: &str| s[k].as_str().map(str::to_string);
            let pid: u32 = label("process.pid")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for (other, e) in &self.expected {
                let same_service = e.service.is_some() && e.service == label("service.name");
                let same_container = e.container.is_some() && e.container == label("container.id");
                if pid == *other {
                    if e.service.is_some() && !same_service {
                        wrong.push(format!("{pid} exported as {:?}", label("service.name")));
                    }
                    if e.container.is_some() && !same_container {
                        wrong.push(format!("{pid} in container {:?}", label("container.id")));
                    }
                } else if same_service || same_container {
                    wrong.push(format!("{pid} carries the identity of {other}: {s}"));
                }
            }
        }
        wrong.sort();
        wrong.dedup();
        self.notes.push(format!("{} series checked", series.len()));
        if series.is_empty() {
            self.failures.push("no series at all".into());
        }
        self.failures.extend(wrong.into_iter().take(10));
    }

    /// Stops the watchdog and checks what must have held throughout; panics
    /// with every failure (after printing the numbers, which a failing run needs most).
    pub fn finish(mut self) {
        let pid = self.daemon_pid();
        let cpu = cpu_seconds(pid) - self.cpu_at_start;
        let wall = unix_now() - self.started_at;
        let vitals = self
            .watchdog
            .take()
            .map(Watchdog::finish)
            .unwrap_or_default();
        let alive = self
            .daemon
            .as_mut()
            .is_some_and(|d| matches!(d.0.try_wait(), Ok(None)));
        let until = unix_now();
        // Points of the last second become searchable a little later.
        std::thread::sleep(Duration::from_secs(3));
        self.ordinary_every_interval(until);
        self.attribution();
        if !alive {
            self.failures.push("gilscope run died".into());
        }
        if vitals.max_rss_mib > MAX_RSS_MIB {
            self.failures
                .push(format!("daemon RSS {:.1} MiB", vitals.max_rss_mib));
        }
        if !vitals.healthz_failures.is_empty() {
            self.failures
                .push(format!("/healthz: {:?}", vitals.healthz_failures));
        }
        eprintln!(
            "{}: daemon RSS ≤ {:.1} MiB, /healthz ≤ {:.0} ms ({} looks), CPU {:.1} s in {wall:.0} s; {}",
            self.marker,
            vitals.max_rss_mib,
            vitals.max_healthz_ms,
            vitals.looks,
            cpu,
            self.notes.join("; ")
        );
        assert!(
            self.failures.is_empty(),
            "{}:\n  {}\ndaemon log (last 40 lines):\n{}",
            self.marker,
            self.failures.join("\n  "),
            self.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
