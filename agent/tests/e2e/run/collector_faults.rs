//! `gilscope run` against a misbehaving collector: slow (every answer 5 s
//! late), throttling (HTTP 503 + `Retry-After`, gRPC RESOURCE_EXHAUSTED +
//! `google.rpc.RetryInfo`), taking a request only in part (OTLP
//! `partial_success`), and slow for long enough that the queue overflows.
//!
//! The collector is a small OTLP server in this file (std HTTP/1.1, or a tonic
//! `MetricsService`) that decodes each request like a real receiver, records
//! when it arrived, how many data points it held and whether the agent was still
//! there to take the answer, and forwards what it accepted to a real
//! VictoriaMetrics. Each test compares what the server saw with the daemon's
//! final "export totals" line and its exported `gilscope.export.*` counters:
//! the loss must be counted exactly. The spool-full case is in `run_outage.rs`
//! (`a_full_spool_drops_the_oldest_and_says_so_once_per_interval`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, NumberDataPoint};
use prost::Message;

use crate::common::daemon::*;
use crate::common::receivers::*;
use crate::common::*;

/// What the collector does wrong.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// How late each of the first `slow_first` answers is.
    delay: Duration,
    slow_first: usize,
    /// The first `throttle_first` requests are refused with a 3 s retry delay.
    throttle_first: usize,
    /// The first accepted request is taken only in part: this many points rejected.
    reject: i64,
    /// VictoriaMetrics (port) that gets what was accepted.
    forward: Option<u16>,
}

const RETRY_AFTER: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Throttled,
    /// The agent had given up (timed out) before the answer came.
    Abandoned,
    Accepted {
        rejected: u64,
    },
}

/// One request as the collector saw it.
#[derive(Clone, Debug)]
struct Seen {
    arrived: Instant,
    /// The newest point's timestamp: the interval the request carries.
    interval: u64,
    points: u64,
    /// The agent's own `gilscope.export.data_points{outcome="dropped"}` in it.
    dropped_counter: Option<f64>,
    outcome: Outcome,
}

#[derive(Default)]
struct State {
    faults: Faults,
    arrivals: usize,
    seen: Vec<Seen>,
}

/// The fault collector: its port and what it saw.
struct Collector {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Collector {
    /// What the collector saw, in the order the requests arrived.
    fn seen(&self) -> Vec<Seen> {
        let mut seen = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .clone();
        seen.sort_by_key(|s| s.arrived);
        seen
    }
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => 0.0,
    }
}

/// Data points, newest timestamp and the agent's exported drop counter of a request.
fn inspect(req: &ExportMetricsServiceRequest) -> (u64, u64, Option<f64>) {
    let (mut points, mut newest, mut dropped) = (0u64, 0u64, None);
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let (n, times): (usize, Vec<u64>) = match &m.data {
                    Some(Data::Gauge(g)) => (
                        g.data_points.len(),
                        g.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    ),
                    Some(Data::Sum(s)) => {
                        if m.name == "gilscope.export.data_points" {
                            for p in &s.data_points {
                                let is_dropped = p.attributes.iter().any(|kv| {
                                    kv.key == "outcome"
                                        && matches!(
                                            kv.value.as_ref().and_then(|v| v.value.as_ref()),
                                            Some(any_value::Value::StringValue(s)) if s == "dropped"
                                        )
                                });
                                if is_dropped {
                                    dropped = Some(value(p));
                                }
                            }
                        }
                        (
                            s.data_points.len(),
                            s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                        )
                    }
                    Some(Data::Histogram(h)) => (
                        h.data_points.len(),
                        h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    ),
                    Some(Data::ExponentialHistogram(h)) => (
                        h.data_points.len(),
                        h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    ),
                    Some(Data::Summary(s)) => (
                        s.data_points.len(),
                        s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                    ),
                    None => (0, Vec::new()),
                };
                points += n as u64;
                newest = times.into_iter().fold(newest, u64::max);
            }
        }
    }
    (points, newest, dropped)
}

impl State {
    /// A metrics request arrived: should it be throttled, and how late is the answer?
    fn arrive(&mut self) -> (bool, Duration) {
        let n = self.arrivals;
        self.arrivals += 1;
        if n < self.faults.throttle_first {
            return (true, Duration::ZERO);
        }
        let slow = n - self.faults.throttle_first < self.faults.slow_first;
        (
            false,
            if slow {
                self.faults.delay
            } else {
                Duration::ZERO
            },
        )
    }

    /// Records a request; for an accepted one, how many points are rejected.
    fn record(
        &mut self,
        arrived: Instant,
        req: &ExportMetricsServiceRequest,
        outcome: Outcome,
    ) -> u64 {
        let (points, interval, dropped_counter) = inspect(req);
        let outcome = match outcome {
            Outcome::Accepted { .. } => {
                let first = !self
                    .seen
                    .iter()
                    .any(|s| matches!(s.outcome, Outcome::Accepted { .. }));
                let rejected = if first { self.faults.reject as u64 } else { 0 };
                if let Some(vm) = self.faults.forward {
                    forward(vm, req);
                }
                Outcome::Accepted { rejected }
            }
            other => other,
        };
        self.seen.push(Seen {
            arrived,
            interval,
            points,
            dropped_counter,
            outcome,
        });
        match outcome {
            Outcome::Accepted { rejected } => rejected,
            _ => 0,
        }
    }
}

/// Hands an accepted request on to VictoriaMetrics, as a collector would.
fn forward(vm: u16, req: &ExportMetricsServiceRequest) {
    let url = format!("http://127.0.0.1:{vm}/opentelemetry/v1/metrics");
    if let Err(e) = ureq::post(&url)
        .header("Content-Type", "application/x-protobuf")
        .send(&req.encode_to_vec()[..])
    {
        panic!("forward to VictoriaMetrics: {e}");
    }
}

/// Is the peer still connected (it closes the socket when it times out)?
fn still_there(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    let _ = s.set_nonblocking(true);
    let alive = match s.peek(&mut b) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    alive
}

/// An OTLP/HTTP collector on a free port (std only, one thread per connection).
fn http_collector(faults: Faults) -> Collector {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = Arc::new(Mutex::new(State {
        faults,
        ..State::default()
    }));
    let shared = Arc::clone(&state);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let state = Arc::clone(&shared);
            std::thread::spawn(move || http_connection(conn, &state));
        }
    });
    Collector { port, state }
}

fn http_connection(mut s: TcpStream, state: &Mutex<State>) {
    let Ok(read_half) = s.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut length, mut encoding) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-encoding" => encoding = v.trim().to_ascii_lowercase(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let arrived = Instant::now();
        let raw = match encoding.as_str() {
            "gzip" => {
                let mut out = Vec::new();
                let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out);
                out
            }
            "zstd" => zstd::decode_all(&body[..]).unwrap_or_default(),
            _ => body,
        };
        let req = match ExportMetricsServiceRequest::decode(&raw[..]) {
            Ok(r) if path.ends_with("/v1/metrics") => r,
            _ => {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
        };
        let (throttle, delay) = state.lock().unwrap_or_else(|p| p.into_inner()).arrive();
        if throttle {
            state.lock().unwrap_or_else(|p| p.into_inner()).record(
                arrived,
                &req,
                Outcome::Throttled,
            );
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {}\r\nContent-Length: 0\r\n\r\n",
                RETRY_AFTER.as_secs()
            );
            let _ = s.write_all(answer.as_bytes());
            continue;
        }
        std::thread::sleep(delay);
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        if !still_there(&s) {
            st.record(arrived, &req, Outcome::Abandoned);
            return;
        }
        let rejected = st.record(arrived, &req, Outcome::Accepted { rejected: 0 });
        drop(st);
        let response = ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message: format!("{rejected} points too old"),
            }),
        }
        .encode_to_vec();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            response.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&response);
    }
}

/// The same collector over gRPC: a tonic `MetricsService`.
struct Grpc(Arc<Mutex<State>>);

/// Marks a request abandoned if tonic drops its handler (the agent cancelled).
struct Pending<'a> {
    state: &'a Mutex<State>,
    arrived: Instant,
    req: Option<ExportMetricsServiceRequest>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(req) = self.req.take() {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).record(
                self.arrived,
                &req,
                Outcome::Abandoned,
            );
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        use tonic_types::{ErrorDetails, StatusExt};
        let arrived = Instant::now();
        let req = request.into_inner();
        let (throttle, delay) = self.0.lock().unwrap_or_else(|p| p.into_inner()).arrive();
        if throttle {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).record(
                arrived,
                &req,
                Outcome::Throttled,
            );
            return Err(tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "collector over its memory limit",
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            ));
        }
        let mut pending = Pending {
            state: &self.0,
            arrived,
            req: Some(req),
        };
        tokio::time::sleep(delay).await;
        let req = pending.req.take().unwrap_or_default();
        let rejected = self.0.lock().unwrap_or_else(|p| p.into_inner()).record(
            arrived,
            &req,
            Outcome::Accepted { rejected: 0 },
        );
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message: format!("{rejected} points too old"),
            }),
        }))
    }
}

fn grpc_collector(faults: Faults) -> Collector {
    let port = free_port();
    let state = Arc::new(Mutex::new(State {
        faults,
        ..State::default()
    }));
    let service = MetricsServiceServer::new(Grpc(Arc::clone(&state)))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let addr = ([127, 0, 0, 1], port).into();
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve(addr)
                .await
            {
                eprintln!("gRPC collector: {e}");
            }
        });
    });
    wait_for_port(port, "the gRPC fault collector");
    Collector { port, state }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Http,
    Grpc,
}

fn collector(proto: Proto, faults: Faults) -> Collector {
    match proto {
        Proto::Http => http_collector(faults),
        Proto::Grpc => grpc_collector(faults),
    }
}

/// Runs `gilscope run` for `seconds` at a 1 s interval against the collector;
/// returns its log and its RSS (bytes) sampled from /proc every 200 ms.
fn run_daemon(
    proto: Proto,
    port: u16,
    seconds: u64,
    config: &str,
    env: &[(&str, &str)],
    tag: &str,
) -> (String, Vec<u64>) {
    let dir = scratch(&format!("{tag}-daemon"));
    let config_path = dir.join("gilscope.yaml");
    // batch_size: one request per interval, so a missing interval is a missing request.
    std::fs::write(
        &config_path,
        format!("export:\n  batch_size: 100000\n{config}"),
    )
    .expect("config");
    let (endpoint, protocol) = match proto {
        Proto::Http => (format!("http://127.0.0.1:{port}"), "http/protobuf"),
        Proto::Grpc => (format!("http://127.0.0.1:{port}"), "grpc"),
    };
    let log_path = dir.join("gilscope.log");
    let mut cmd = daemon();
    cmd.arg("--config")
        .arg(&config_path)
        .args(["--endpoint", &endpoint, "--protocol", protocol])
        .args(["--include-cmdline", tag, "--no-spans", "-v"])
        .args(["--interval", "1s", "--duration", &format!("{seconds}s")])
        .env("OTEL_SERVICE_NAME", format!("gilscope-{tag}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Running(cmd.spawn().expect("start gilscope run"));
    let pid = child.0.id();
    let mut samples = Vec::new();
    let status = loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            break status;
        }
        samples.extend(rss(pid));
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "gilscope run failed ({status}):\n{log}");
    (log, samples)
}

/// Resident memory of a process, from /proc/PID/status.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn accepted(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter()
        .filter(|s| matches!(s.outcome, Outcome::Accepted { .. }))
        .collect()
}

/// What both sides must agree on whatever the fault: every request the daemon
/// counted as sent was accepted exactly once by the collector, its points too,
/// and every interval is either sent or counted as dropped.
fn assert_exact(t: &ExportTotals, seen: &[Seen], log: &str) {
    let ok = accepted(seen);
    let mut intervals: Vec<u64> = ok.iter().map(|s| s.interval).collect();
    intervals.sort_unstable();
    intervals.dedup();
    assert_eq!(
        intervals.len(),
        ok.len(),
        "an interval was accepted twice: {seen:#?}"
    );
    assert_eq!(
        t.requests_sent,
        ok.len() as u64,
        "requests: sent per the daemon vs accepted by the collector:\n{log}"
    );
    let rejected: u64 = ok
        .iter()
        .map(|s| match s.outcome {
            Outcome::Accepted { rejected } => rejected,
            _ => 0,
        })
        .sum();
    let points: u64 = ok.iter().map(|s| s.points).sum();
    assert_eq!(
        t.points_sent,
        points - rejected,
        "points: sent per the daemon vs accepted by the collector:\n{log}"
    );
    let exported =
        intervals_exported(log).unwrap_or_else(|| panic!("no interval count logged:\n{log}"));
    assert_eq!(
        t.requests_sent + t.requests_dropped,
        exported,
        "every interval is sent or counted as dropped:\n{log}"
    );
}

fn throttled_then_accepted(proto: Proto) {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let tag = unique_tag("throttle");
    let c = collector(
        proto,
        Faults {
            throttle_first: 2,
            ..Faults::default()
        },
    );
    let (log, _rss) = run_daemon(proto, c.port, 12, "", &[], &tag);
    let t = export_totals(&log).unwrap_or_else(|| panic!("no export totals:\n{log}"));
    let seen = c.seen();
    // Each refusal is followed by the retry no sooner than the collector asked.
    let gaps: Vec<Duration> = seen
        .windows(2)
        .filter(|w| w[0].outcome == Outcome::Throttled)
        .map(|w| w[1].arrived - w[0].arrived)
        .collect();
    eprintln!("{proto:?} throttled: {t:?}; gaps after a refusal {gaps:?}");
    assert_eq!(gaps.len(), 2, "{seen:#?}");
    for gap in &gaps {
        assert!(
            *gap >= RETRY_AFTER && *gap < RETRY_AFTER + Duration::from_secs(1),
            "retried {gap:?} after a refusal asking for {RETRY_AFTER:?}:\n{log}"
        );
    }
    // The retry is the same interval, and nothing is lost.
    assert_eq!(seen[0].interval, seen[1].interval);
    assert_eq!(seen[1].interval, seen[2].interval);
    assert_eq!((t.points_dropped, t.requests_dropped), (0, 0), "{log}");
    assert_exact(&t, &seen, &log);
}

#[test]
fn http_503_with_retry_after_is_waited_out_and_nothing_is_lost() {
    throttled_then_accepted(Proto::Http);
}

#[test]
fn grpc_resource_exhausted_with_retry_info_is_waited_out_and_nothing_is_lost() {
    throttled_then_accepted(Proto::Grpc);
}

fn partial_success(proto: Proto) {
    if !can_use_bpf() {
        return;
    }
    const K: i64 = 5;
    let tag = unique_tag("partial");
    let c = collector(
        proto,
        Faults {
            reject: K,
            ..Faults::default()
        },
    );
    let (log, _rss) = run_daemon(proto, c.port, 5, "", &[], &tag);
    let t = export_totals(&log).unwrap_or_else(|| panic!("no export totals:\n{log}"));
    let seen = c.seen();
    eprintln!("{proto:?} partial success: {t:?}");
    assert_eq!(
        t.points_dropped, K as u64,
        "exactly the rejected points:\n{log}"
    );
    assert_eq!(t.requests_dropped, 0, "{log}");
    assert_exact(&t, &seen, &log);
    // The agent's own exported counter says so in the requests after the first.
    let last = accepted(&seen).last().and_then(|s| s.dropped_counter);
    assert_eq!(last, Some(K as f64), "{seen:#?}");
    assert!(
        log.contains("rejected 5 data points") && log.contains("5 points too old"),
        "the rejection and the collector's reason are logged:\n{log}"
    );
}

#[test]
fn http_partial_success_counts_the_rejected_points_as_dropped() {
    partial_success(Proto::Http);
}

#[test]
fn grpc_partial_success_counts_the_rejected_points_as_dropped() {
    partial_success(Proto::Grpc);
}

/// Every answer 5 s late, within the default 10 s timeout: all that is sent
/// arrives once (at VictoriaMetrics too), the backlog is dropped and counted.
#[test]
fn a_collector_5s_slow_gets_every_sent_request_once() {
    if !can_use_bpf() {
        return;
    }
    let Some((_, vm)) = receivers() else { return };
    let _machine = serial();
    let tag = unique_tag("slow");
    let (_vm, vm_port) = start_vm(&vm, &tag);
    let c = collector(
        Proto::Http,
        Faults {
            delay: Duration::from_secs(5),
            slow_first: usize::MAX,
            forward: Some(vm_port),
            ..Faults::default()
        },
    );
    // A queue of 4: the 1 s intervals outrun one request per 5 s.
    let (log, _rss) = run_daemon(Proto::Http, c.port, 14, "  queue_size: 4\n", &[], &tag);
    let t = export_totals(&log).unwrap_or_else(|| panic!("no export totals:\n{log}"));
    let seen = c.seen();
    eprintln!("slow collector: {t:?}; {} requests seen", seen.len());
    assert!(
        seen.iter().all(|s| s.outcome != Outcome::Abandoned),
        "a 5 s answer is within the 10 s timeout: {seen:#?}"
    );
    assert!(t.requests_sent >= 3, "{log}");
    assert!(t.requests_dropped > 0, "the queue overflows: {log}");
    assert_exact(&t, &seen, &log);
    // Points: all requests here are alike (no watched process), so the dropped
    // points are the dropped requests times that size.
    let sizes: Vec<u64> = seen.iter().map(|s| s.points).collect();
    assert!(sizes.windows(2).all(|w| w[0] == w[1]), "{sizes:?}");
    assert_eq!(t.points_dropped, t.requests_dropped * sizes[0], "{log}");
    // The real receiver has exactly the accepted intervals.
    std::thread::sleep(Duration::from_secs(5));
    let q = format!(
        "count_over_time({{__name__=\"gilscope.processes.watched\",service.name=\"gilscope-{tag}\"}}[10m])"
    );
    let in_vm = scalar(&promql(vm_port, &q)).unwrap_or(0.0) as u64;
    assert_eq!(in_vm, t.requests_sent, "VictoriaMetrics vs sent:\n{log}");
}

/// Answers 5 s late with a 2 s timeout (`OTEL_EXPORTER_OTLP_TIMEOUT=2000`):
/// the first attempts time out and are retried; the collector saw them
/// (duplicates the specification allows) but accepted each interval once.
fn timeouts_are_retried(proto: Proto) {
    if !can_use_bpf() {
        return;
    }
    let _machine = serial();
    let tag = unique_tag("timeout");
    let c = collector(
        proto,
        Faults {
            delay: Duration::from_secs(5),
            slow_first: 3,
            ..Faults::default()
        },
    );
    let (log, _rss) = run_daemon(
        proto,
        c.port,
        12,
        "",
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")],
        &tag,
    );
    let t = export_totals(&log).unwrap_or_else(|| panic!("no export totals:\n{log}"));
    // The collector notices an abandoned gRPC call when it would answer: wait for that.
    std::thread::sleep(Duration::from_secs(4));
    let seen = c.seen();
    let abandoned = seen
        .iter()
        .filter(|s| s.outcome == Outcome::Abandoned)
        .count();
    eprintln!("{proto:?} timeouts: {t:?}; {abandoned} attempts abandoned");
    assert_eq!(abandoned, 3, "{seen:#?}\n{log}");
    assert_eq!(
        seen[0].interval, seen[3].interval,
        "the timed-out request is retried"
    );
    assert_eq!((t.points_dropped, t.requests_dropped), (0, 0), "{log}");
    assert_exact(&t, &seen, &log);
    assert!(log.contains("timed out") || log.contains("imeout"), "{log}");
}

#[test]
fn http_timeouts_are_retried_and_counted_exactly() {
    timeouts_are_retried(Proto::Http);
}

#[test]
fn grpc_timeouts_are_retried_and_counted_exactly() {
    timeouts_are_retried(Proto::Grpc);
}

/// A collector that never answers in time for 40 s, a tiny queue, no spool, and
/// a real workload: memory stays bounded and every interval is counted as dropped.
#[test]
fn memory_stays_bounded_while_the_collector_hangs() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let tag = unique_tag("rss");
    let _work = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "4", "60", &tag])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the workload"),
    );
    let c = collector(
        Proto::Http,
        Faults {
            delay: Duration::from_secs(5),
            slow_first: usize::MAX,
            ..Faults::default()
        },
    );
    let (log, samples) = run_daemon(
        Proto::Http,
        c.port,
        40,
        "  queue_size: 2\n",
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")],
        &tag,
    );
    let t = export_totals(&log).unwrap_or_else(|| panic!("no export totals:\n{log}"));
    let seen = c.seen();
    // Settled after 5 s (BPF loaded, the workload found); the outage then lasts 35 s more.
    let settled = samples.iter().take(25).copied().max().unwrap_or(0);
    let peak = samples.iter().copied().max().unwrap_or(0);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "hanging collector: {t:?}; RSS {:.1} MiB after 5 s, peak {:.1} MiB ({} samples); {} attempts seen",
        mb(settled),
        mb(peak),
        samples.len(),
        seen.len()
    );
    const BOUND: u64 = 60 << 20;
    const GROWTH: u64 = 4 << 20;
    assert!(samples.len() > 150, "RSS sampled {} times", samples.len());
    assert!(peak < BOUND, "peak RSS {:.1} MiB", mb(peak));
    assert!(
        peak - settled < GROWTH,
        "RSS grew {:.1} MiB during the outage",
        mb(peak - settled)
    );
    assert_eq!(t.requests_sent, 0, "{log}");
    assert!(accepted(&seen).is_empty());
    let exported =
        intervals_exported(&log).unwrap_or_else(|| panic!("no interval count logged:\n{log}"));
    assert_eq!(t.requests_dropped, exported, "{log}");
    assert!(t.points_dropped > 0, "{log}");
    let warnings = log.lines().filter(|l| l.contains("failing")).count();
    assert!(
        (1..=45).contains(&warnings),
        "one warning per interval at most, got {warnings}:\n{log}"
    );
}
