//! Sends OTLP requests without ever blocking the measuring loop or losing data silently.
//!
//! The daemon hands finished requests (metrics or spans, one [`Payload`]) to a
//! bounded queue; one worker thread
//! sends them over gRPC (tonic) or HTTP/protobuf (ureq), compressed, retrying
//! transient failures with exponential backoff and jitter until the request is
//! too old. What cannot be queued or sent in time is dropped and counted
//! ([`ExportStats`], exported as `gilscope.export.*`), and a failing collector
//! produces one warning per interval, not one per request.
//!
//! With a [`Spool`], a request that fails transiently goes to disk at once and
//! so does everything queued behind it while a backlog exists: the oldest
//! spooled request is retried (with the same backoff) and, once the collector
//! answers, the backlog is replayed oldest first before newer data, so each
//! series reaches the backend in order and memory stays bounded however long
//! the outage. Only the spool's size cap drops data then, oldest first, counted.

pub mod budget;
pub mod hold;
pub mod spool;
pub mod tls;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

use crate::error::RunError;
use crate::otel::Temporality;
use spool::{Kind, Spool, SpoolError, SpoolSettings};
use tls::TlsSettings;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// gRPC: the server URL; HTTP: the full URL of the metrics path.
    pub endpoint: String,
    /// gRPC: the server URL; HTTP: the full URL of the traces path (spans).
    pub traces_endpoint: String,
    pub protocol: Protocol,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub compression: Compression,
    pub temporality: Temporality,
    pub batch_points: usize,
    pub queue_requests: usize,
    /// `Some`: requests that cannot be sent in time wait on disk instead of being dropped.
    pub spool: Option<SpoolSettings>,
    /// `Some` for `https://` endpoints.
    pub tls: Option<TlsSettings>,
}

/// What the exporter did, for self-telemetry (all cumulative).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub points_sent: AtomicU64,
    pub points_dropped: AtomicU64,
    pub requests_sent: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_dropped: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub retries: AtomicU64,
    pub spans_sent: AtomicU64,
    pub spans_dropped: AtomicU64,
    /// Requests waiting in the on-disk spool now (a gauge).
    pub spool_requests: AtomicU64,
    /// Bytes the spool takes on disk now (a gauge).
    pub spool_bytes: AtomicU64,
    /// Set once the endpoint answered that it takes no traces: spans are not built
    /// or sent after that (they are counted as dropped while it was learned).
    pub traces_refused: AtomicBool,
}

impl ExportStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One OTLP request: metrics and spans share the queue, the retries and the
/// accounting, so an outage treats both alike.
#[derive(Debug, Clone)]
pub enum Payload {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

impl Payload {
    fn encoded_len(&self) -> usize {
        match self {
            Payload::Metrics(r) => r.encoded_len(),
            Payload::Traces(r) => r.encoded_len(),
        }
    }

    fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Payload::Metrics(r) => r.encode_to_vec(),
            Payload::Traces(r) => r.encode_to_vec(),
        }
    }

    fn is_traces(&self) -> bool {
        matches!(self, Payload::Traces(_))
    }

    fn kind(&self) -> Kind {
        match self {
            Payload::Metrics(_) => Kind::Metrics,
            Payload::Traces(_) => Kind::Traces,
        }
    }

    /// A spooled request back in memory.
    fn decode(kind: Kind, body: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match kind {
            Kind::Metrics => Payload::Metrics(ExportMetricsServiceRequest::decode(body)?),
            Kind::Traces => Payload::Traces(ExportTraceServiceRequest::decode(body)?),
        })
    }
}

struct Job {
    payload: Payload,
    /// Data points (metrics) or spans (traces) in the request.
    items: usize,
    queued_at: Instant,
}

impl ExportStats {
    /// Counts a request that will never be sent.
    fn dropped(&self, job: &Job) {
        self.dropped_items(job.payload.kind(), job.items as u64);
    }

    fn dropped_items(&self, kind: Kind, items: u64) {
        ExportStats::add(&self.requests_dropped, 1);
        let counter = match kind {
            Kind::Traces => &self.spans_dropped,
            Kind::Metrics => &self.points_dropped,
        };
        ExportStats::add(counter, items);
    }

    /// Counts a request the collector took, less the `rejected` items it
    /// refused (partial success): those are dropped, the request is not.
    fn delivered(&self, job: &Job, bytes: u64, rejected: u64) {
        ExportStats::add(&self.requests_sent, 1);
        let (sent, dropped) = if job.payload.is_traces() {
            (&self.spans_sent, &self.spans_dropped)
        } else {
            (&self.points_sent, &self.points_dropped)
        };
        let rejected = rejected.min(job.items as u64);
        ExportStats::add(sent, job.items as u64 - rejected);
        ExportStats::add(dropped, rejected);
        ExportStats::add(&self.bytes_sent, bytes);
    }
}

/// A failed attempt: may it be retried?
#[derive(Debug, Default)]
struct SendError {
    transient: bool,
    /// The endpoint does not serve this signal at all (gRPC UNIMPLEMENTED, HTTP 404/405/415).
    unsupported: bool,
    /// How long the collector asked us to wait (HTTP `Retry-After`, gRPC `RetryInfo`).
    retry_after: Option<Duration>,
    message: String,
}

/// A request the collector took: all of it, or all but `rejected` items
/// (OTLP `partial_success`), which are lost for good and counted as dropped.
#[derive(Debug, Default, PartialEq)]
struct Accepted {
    rejected: u64,
    message: String,
}

impl Accepted {
    fn partial(rejected: i64, message: String) -> Self {
        Self {
            rejected: rejected.max(0) as u64,
            message,
        }
    }
}

/// The largest response body read (a partial-success or error message): a
/// collector cannot make the agent buffer more.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Whether a gRPC failure may be retried and after how long, per the OTLP
/// specification ("Failures", "OTLP/gRPC Throttling"): UNAVAILABLE and the
/// other transient codes are retried; RESOURCE_EXHAUSTED only when the server
/// says recovery is possible by sending `google.rpc.RetryInfo`, whose
/// `retry_delay` is then honoured. A status the client made up for a broken
/// transport (UNKNOWN with a cause, e.g. a connection reset mid-request) is a
/// network failure and retried; UNKNOWN sent by the server is not.
fn grpc_retry(status: &tonic::Status) -> (bool, Option<Duration>) {
    use tonic::Code;
    use tonic_types::StatusExt;
    let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let from_transport = std::error::Error::source(status).is_some();
    let transient = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => retry_after.is_some() || from_transport,
        Code::Unknown => from_transport,
        _ => false,
    };
    (transient, retry_after)
}

/// An HTTP `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 10.2.3).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `partial_success` of an OTLP/HTTP response body (protobuf); an empty or
/// undecodable body means all was taken, as the specification says.
fn http_partial_success(traces: bool, body: &[u8]) -> Accepted {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    if traces {
        ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| Accepted::partial(p.rejected_spans, p.error_message))
    } else {
        ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| Accepted::partial(p.rejected_data_points, p.error_message))
    }
    .unwrap_or_default()
}

/// The message of an OTLP/HTTP error body (a protobuf `google.rpc.Status`), if any.
fn http_error_message(body: &[u8]) -> Option<String> {
    let status = tonic_types::Status::decode(body).ok()?;
    let message = status.message.trim().to_string();
    (!message.is_empty()).then_some(message)
}

/// The gRPC clients of both signals on one channel.
struct GrpcTransport {
    runtime: tokio::runtime::Runtime,
    client: MetricsServiceClient<Channel>,
    traces: TraceServiceClient<Channel>,
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    timeout: Duration,
}

enum Transport {
    Grpc(Box<GrpcTransport>),
    Http {
        agent: ureq::Agent,
        url: String,
        traces_url: String,
        headers: Vec<(String, String)>,
        compression: Compression,
    },
}

impl Transport {
    fn new(s: &ExportSettings) -> Result<Self, RunError> {
        match s.protocol {
            Protocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        RunError::setting("exporter", format!("cannot start its runtime: {e}"))
                    })?;
                let mut endpoint = Channel::from_shared(s.endpoint.clone())
                    .map_err(|e| RunError::setting("endpoint", format!("'{}': {e}", s.endpoint)))?
                    .connect_timeout(s.timeout)
                    .timeout(s.timeout);
                if let Some(tls) = &s.tls {
                    endpoint = endpoint.tls_config(tls.tonic_config()).map_err(|e| {
                        RunError::setting("tls", format!("{}: {}", s.endpoint, error_chain(&e)))
                    })?;
                }
                let channel = {
                    let _guard = runtime.enter();
                    endpoint.connect_lazy()
                };
                let mut client = MetricsServiceClient::new(channel.clone());
                let mut traces = TraceServiceClient::new(channel);
                if let Some(encoding) = match s.compression {
                    Compression::Gzip => Some(CompressionEncoding::Gzip),
                    Compression::Zstd => Some(CompressionEncoding::Zstd),
                    Compression::None => None,
                } {
                    client = client.send_compressed(encoding);
                    traces = traces.send_compressed(encoding);
                }
                let mut headers = Vec::new();
                for (k, v) in &s.headers {
                    let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(
                        |_| {
                            RunError::setting(
                                "headers",
                                format!("'{k}' is not a valid header name"),
                            )
                        },
                    )?;
                    let value = MetadataValue::try_from(v.as_str()).map_err(|_| {
                        RunError::setting(
                            "headers",
                            format!("the value of '{k}' is not a valid header value"),
                        )
                    })?;
                    headers.push((key, value));
                }
                Ok(Transport::Grpc(Box::new(GrpcTransport {
                    runtime,
                    client,
                    traces,
                    headers,
                    timeout: s.timeout,
                })))
            }
            Protocol::HttpProtobuf => {
                let mut config = ureq::Agent::config_builder()
                    .timeout_global(Some(s.timeout))
                    // Statuses are read here: a 429/503 carries Retry-After.
                    .http_status_as_error(false);
                if let Some(tls) = &s.tls {
                    config = config.tls_config(tls.ureq_config()?);
                }
                let config = config.build();
                Ok(Transport::Http {
                    agent: config.into(),
                    url: s.endpoint.clone(),
                    traces_url: s.traces_endpoint.clone(),
                    headers: s.headers.clone(),
                    compression: s.compression,
                })
            }
        }
    }

    fn send(&mut self, payload: &Payload) -> Result<Accepted, SendError> {
        match self {
            Transport::Grpc(grpc) => {
                let GrpcTransport {
                    runtime,
                    client,
                    traces,
                    headers,
                    timeout,
                } = &mut **grpc;
                fn request<T>(
                    body: T,
                    timeout: Duration,
                    headers: &[(
                        MetadataKey<tonic::metadata::Ascii>,
                        MetadataValue<tonic::metadata::Ascii>,
                    )],
                ) -> tonic::Request<T> {
                    let mut req = tonic::Request::new(body);
                    req.set_timeout(timeout);
                    for (k, v) in headers {
                        req.metadata_mut().insert(k.clone(), v.clone());
                    }
                    req
                }
                let limit = *timeout + Duration::from_secs(1);
                let result = match payload {
                    Payload::Metrics(r) => {
                        let req = request(r.clone(), *timeout, headers);
                        let mut client = client.clone();
                        runtime.block_on(async {
                            tokio::time::timeout(limit, client.export(req))
                                .await
                                .map(|r| {
                                    r.map(|resp| {
                                        resp.into_inner()
                                            .partial_success
                                            .map(|p| {
                                                Accepted::partial(
                                                    p.rejected_data_points,
                                                    p.error_message,
                                                )
                                            })
                                            .unwrap_or_default()
                                    })
                                })
                        })
                    }
                    Payload::Traces(r) => {
                        let req = request(r.clone(), *timeout, headers);
                        let mut client = traces.clone();
                        runtime.block_on(async {
                            tokio::time::timeout(limit, client.export(req))
                                .await
                                .map(|r| {
                                    r.map(|resp| {
                                        resp.into_inner()
                                            .partial_success
                                            .map(|p| {
                                                Accepted::partial(p.rejected_spans, p.error_message)
                                            })
                                            .unwrap_or_default()
                                    })
                                })
                        })
                    }
                };
                match result {
                    Ok(Ok(accepted)) => Ok(accepted),
                    Ok(Err(status)) => {
                        let (transient, retry_after) = grpc_retry(&status);
                        Err(SendError {
                            unsupported: status.code() == tonic::Code::Unimplemented,
                            transient,
                            retry_after,
                            message: grpc_message(&status),
                        })
                    }
                    Err(_) => Err(SendError {
                        transient: true,
                        message: "timed out".into(),
                        ..SendError::default()
                    }),
                }
            }
            Transport::Http {
                agent,
                url,
                traces_url,
                headers,
                compression,
            } => {
                let url = if payload.is_traces() { traces_url } else { url };
                let raw = payload.encode_to_vec();
                let (body, encoding) = compress(&raw, *compression);
                let mut call = agent
                    .post(url.as_str())
                    .header("Content-Type", "application/x-protobuf");
                if let Some(e) = encoding {
                    call = call.header("Content-Encoding", e);
                }
                for (k, v) in headers.iter() {
                    call = call.header(k.as_str(), v.as_str());
                }
                let mut response = match call.send(&body[..]) {
                    Ok(response) => response,
                    Err(e) => {
                        return Err(SendError {
                            transient: true,
                            message: e.to_string(),
                            ..SendError::default()
                        })
                    }
                };
                let code = response.status().as_u16();
                // Protobuf answers only (what we send); a proxy's HTML or JSON page is not one.
                let protobuf = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_none_or(|v| v.contains("protobuf"));
                // Read the (bounded) body either way, so the connection can be reused.
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_RESPONSE_BYTES)
                    .read_to_vec()
                    .unwrap_or_default();
                let body = if protobuf { body } else { Vec::new() };
                if (200..300).contains(&code) {
                    return Ok(http_partial_success(payload.is_traces(), &body));
                }
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                let detail = http_error_message(&body)
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                Err(SendError {
                    // OTLP/HTTP: only these are retried; every other 4xx/5xx must not be.
                    transient: matches!(code, 429 | 502 | 503 | 504),
                    // VictoriaMetrics answers 400 "unsupported path" for /v1/traces.
                    unsupported: matches!(code, 404 | 405 | 415)
                        || (code == 400 && payload.is_traces()),
                    retry_after,
                    message: format!("HTTP {code} from {url}{detail}"),
                })
            }
        }
    }
}

/// A gRPC failure in one line: its code, its message and, when the message
/// does not say it already, the root cause ("transport error" alone hides a
/// refused connection or a certificate the CA does not vouch for).
fn grpc_message(status: &tonic::Status) -> String {
    let mut root = std::error::Error::source(status);
    while let Some(next) = root.and_then(|e| e.source()) {
        root = Some(next);
    }
    let message = status.message();
    match root.map(|r| r.to_string()) {
        Some(r) if !message.contains(&r) => format!("{:?}: {message}: {r}", status.code()),
        _ => format!("{:?}: {message}", status.code()),
    }
}

/// An error and its causes on one line, repeated texts said once.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if parts
            .last()
            .is_some_and(|last| text.contains(last.as_str()))
        {
            // A cause that repeats its wrapper's text: keep the fuller one.
            parts.pop();
        }
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Compresses an HTTP body; returns it with its `Content-Encoding`.
pub fn compress(raw: &[u8], how: Compression) -> (Vec<u8>, Option<&'static str>) {
    match how {
        Compression::None => (raw.to_vec(), None),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            match enc.write_all(raw).and_then(|_| enc.finish()) {
                Ok(body) => (body, Some("gzip")),
                Err(_) => (raw.to_vec(), None),
            }
        }
        Compression::Zstd => match zstd::encode_all(raw, 3) {
            Ok(body) => (body, Some("zstd")),
            Err(_) => (raw.to_vec(), None),
        },
    }
}

/// The exporter: a bounded queue and the thread that drains it.
pub struct Exporter {
    tx: Option<SyncSender<Job>>,
    stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// One attempt's timeout: how long a send in flight at shutdown may still take.
    send_timeout: Duration,
}

/// First retry delay; doubled per attempt up to the interval (1-30 s): a
/// collector that is back is found within about one interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait a collector's `Retry-After`/`RetryInfo` can impose; without
/// a spool a request is dropped sooner if the wait would outlive its `max_age`.
const MAX_THROTTLE: Duration = Duration::from_secs(300);

impl Exporter {
    /// Checks the settings (endpoint, headers) and starts the worker. A request is
    /// retried until it is `max_age` old; warnings come at most once per `log_every`.
    pub fn start(
        settings: &ExportSettings,
        max_age: Duration,
        log_every: Duration,
    ) -> Result<Self, RunError> {
        let transport = Transport::new(settings)?;
        let (tx, rx) = sync_channel(settings.queue_requests);
        let stats = Arc::new(ExportStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let send_timeout = settings.timeout;
        let spool = match &settings.spool {
            None => None,
            Some(s) => {
                let (spool, damaged) = Spool::open(s).map_err(|e| {
                    RunError::setting(
                        "spool",
                        format!(
                            "{e}; the spool directory (--spool-dir, GILSCOPE_SPOOL_DIR, \
                             export.spool.dir) must be a writable directory"
                        ),
                    )
                })?;
                if let Some(first) = damaged.first() {
                    tracing::warn!(
                        "{} damaged spool file(s) from a previous run skipped and counted as dropped requests (first: {first})",
                        damaged.len()
                    );
                    ExportStats::add(&stats.requests_dropped, damaged.len() as u64);
                }
                if !spool.is_empty() {
                    tracing::info!(
                        "spool {} holds {} request(s) ({} bytes) from a previous run; sending them first",
                        s.dir.display(),
                        spool.len(),
                        spool.bytes()
                    );
                }
                Some(spool)
            }
        };
        let worker = Worker {
            rx,
            transport,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            endpoint: settings.endpoint.clone(),
            max_age,
            max_backoff: log_every.clamp(Duration::from_secs(1), MAX_BACKOFF),
            log_every,
            failing_since_log: 0,
            dropped_since_log: 0,
            evicted_since_log: (0, 0),
            spool_problem: None,
            spool_dir: settings
                .spool
                .as_ref()
                .map(|s| (s.dir.display().to_string(), s.max_bytes)),
            last_log: None,
            last_error: None,
            failing: false,
            partial_since_log: (0, 0, None),
        };
        let handle = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || match spool {
                Some(spool) => worker.run_spooled(spool),
                None => worker.run(),
            })
            .map_err(|e| RunError::setting("exporter", format!("cannot start its thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            stats,
            stop,
            handle: Some(handle),
            send_timeout,
        })
    }

    /// Counters of what was sent and dropped.
    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Queues a request of `items` data points or spans; when the queue is full
    /// it is dropped and counted.
    pub fn submit(&self, payload: Payload, items: usize) {
        let Some(tx) = &self.tx else { return };
        let job = Job {
            payload,
            items,
            queued_at: Instant::now(),
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.stats.dropped(&job);
            }
        }
    }

    /// Sends what is queued for up to `grace`, then stops retrying and joins the worker.
    pub fn shutdown(mut self, grace: Duration) {
        self.tx.take();
        let deadline = Instant::now() + grace;
        if let Some(handle) = self.handle.take() {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop.store(true, Ordering::Relaxed);
            // Queued requests are now counted as dropped without a try; a send in
            // flight ends within its timeout (gRPC adds a second of slack), and
            // only then are the totals below exact.
            let deadline = Instant::now() + self.send_timeout + Duration::from_secs(2);
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!("export still in flight at shutdown; not waiting for it");
            }
        }
        let s = &self.stats;
        let (dropped, spans_dropped) = (
            ExportStats::get(&s.points_dropped),
            ExportStats::get(&s.spans_dropped),
        );
        let totals = format!(
            "export totals: {} data points sent, {dropped} dropped; {} requests sent, {} dropped; \
             {} spans sent, {spans_dropped} dropped; {} requests left in the spool",
            ExportStats::get(&s.points_sent),
            ExportStats::get(&s.requests_sent),
            ExportStats::get(&s.requests_dropped),
            ExportStats::get(&s.spans_sent),
            ExportStats::get(&s.spool_requests),
        );
        if dropped + spans_dropped > 0 {
            tracing::warn!("{totals}");
        } else {
            tracing::info!("{totals}");
        }
    }
}

struct Worker {
    rx: Receiver<Job>,
    transport: Transport,
    stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
    endpoint: String,
    max_age: Duration,
    max_backoff: Duration,
    log_every: Duration,
    failing_since_log: u64,
    dropped_since_log: u64,
    /// Requests and data points the full spool dropped since the last message.
    evicted_since_log: (u64, u64),
    /// A spool write or read failure since the last message.
    spool_problem: Option<String>,
    /// The spool's directory and cap, for messages.
    spool_dir: Option<(String, u64)>,
    last_log: Option<Instant>,
    last_error: Option<String>,
    failing: bool,
    /// Partial successes since the last message: requests, items rejected, the collector's reason.
    partial_since_log: (u64, u64, Option<String>),
}

/// Up to a quarter of `d` added at random, so agents on many nodes do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ nanos;
    let quarter = d.as_millis() as u64 / 4 + 1;
    d + Duration::from_millis(seed % quarter)
}

/// What one attempt came to.
enum Tried {
    /// Sent, or given up on for good (and counted).
    Done,
    /// Failed in a way worth retrying; the collector may have said when.
    Transient(Option<Duration>),
}

impl Worker {
    /// Without a spool: each request is retried in memory until it is `max_age` old.
    fn run(mut self) {
        while let Ok(job) = self.rx.recv() {
            if self.stop.load(Ordering::Relaxed) {
                // Shutting down past the grace: what is still queued is not tried.
                self.drop_job(&job);
                continue;
            }
            self.deliver(job);
        }
        self.log(true);
    }

    fn deliver(&mut self, job: Job) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.try_once(&job) {
                Tried::Done => return,
                Tried::Transient(asked) => {
                    let wait = self.wait(asked, backoff);
                    let too_old = job.queued_at.elapsed() + wait > self.max_age;
                    if too_old || self.stop.load(Ordering::Relaxed) {
                        self.drop_job(&job);
                        self.log(false);
                        return;
                    }
                    self.log(false);
                    ExportStats::add(&self.stats.retries, 1);
                    let until = Instant::now() + wait;
                    while Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// With a spool: a request that fails goes to disk, and while anything waits
    /// there, new requests go behind it; the oldest is retried with backoff.
    fn run_spooled(mut self, mut spool: Spool) {
        let mut backoff = FIRST_BACKOFF;
        let mut next_try = Instant::now();
        let mut closed = false;
        loop {
            self.publish(&spool);
            if spool.is_empty() {
                if closed {
                    break;
                }
                let Ok(job) = self.rx.recv() else { break };
                if self.stop.load(Ordering::Relaxed) {
                    // Past the grace: no more tries, the rest waits on disk for the next start.
                    self.spill(&mut spool, &job);
                    continue;
                }
                if let Tried::Transient(asked) = self.try_once(&job) {
                    self.spill(&mut spool, &job);
                    self.log(false);
                    next_try = Instant::now() + self.wait(asked, backoff);
                    backoff = (backoff * 2).min(self.max_backoff);
                }
                continue;
            }
            // A backlog: take in what is queued (memory stays small), in order.
            loop {
                match self.rx.try_recv() {
                    Ok(job) => self.spill(&mut spool, &job),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break; // what is left stays on disk for the next start
            }
            let now = Instant::now();
            if now < next_try {
                let wait = (next_try - now).min(Duration::from_millis(100));
                if closed {
                    std::thread::sleep(wait);
                } else if let Ok(job) = self.rx.recv_timeout(wait) {
                    self.spill(&mut spool, &job);
                }
                self.log(false);
                continue;
            }
            let Some(read) = spool.read_oldest() else {
                continue;
            };
            let decoded = read.and_then(|(entry, body)| {
                let path = spool.path(entry.seq);
                Payload::decode(entry.kind, &body)
                    .map(|payload| (entry, payload))
                    .map_err(|e| SpoolError::Corrupt {
                        path,
                        why: format!("not an OTLP request: {e}"),
                    })
            });
            match decoded {
                Err(e) => {
                    if let Some(entry) = spool.pop() {
                        self.stats.dropped_items(entry.kind, entry.items);
                        if entry.kind == Kind::Metrics {
                            self.dropped_since_log += entry.items;
                        }
                    }
                    self.spool_problem = Some(e.to_string());
                    self.log(false);
                }
                Ok((entry, payload)) => {
                    let job = Job {
                        payload,
                        items: entry.items as usize,
                        queued_at: now,
                    };
                    match self.try_once(&job) {
                        Tried::Done => {
                            spool.pop();
                            backoff = FIRST_BACKOFF;
                        }
                        Tried::Transient(asked) => {
                            ExportStats::add(&self.stats.retries, 1);
                            self.log(false);
                            next_try = Instant::now() + self.wait(asked, backoff);
                            backoff = (backoff * 2).min(self.max_backoff);
                        }
                    }
                }
            }
        }
        self.publish(&spool);
        self.log(true);
    }

    /// How long to wait before the next attempt: what the collector asked for
    /// (OTLP throttling; capped), else the jittered backoff.
    fn wait(&self, asked: Option<Duration>, backoff: Duration) -> Duration {
        match asked {
            Some(d) => d.min(MAX_THROTTLE),
            None => jitter(backoff),
        }
    }

    /// The spool's size, for self-telemetry.
    fn publish(&self, spool: &Spool) {
        self.stats
            .spool_requests
            .store(spool.len() as u64, Ordering::Relaxed);
        self.stats
            .spool_bytes
            .store(spool.bytes(), Ordering::Relaxed);
    }

    /// Writes a request to the spool; what the cap pushes out (or a failed write) is dropped.
    fn spill(&mut self, spool: &mut Spool, job: &Job) {
        match spool.push(
            job.payload.kind(),
            job.items as u64,
            &job.payload.encode_to_vec(),
        ) {
            Ok(evicted) => {
                for e in evicted {
                    self.stats.dropped_items(e.kind, e.items);
                    self.evicted_since_log.0 += 1;
                    if e.kind == Kind::Metrics {
                        self.evicted_since_log.1 += e.items;
                    }
                }
            }
            Err(e) => {
                self.drop_job(job);
                self.spool_problem = Some(format!("cannot write to the spool: {e}"));
            }
        }
        self.publish(spool);
    }

    /// One attempt at a request. Success, a permanent error and a signal the
    /// endpoint does not take are settled (and counted) here.
    fn try_once(&mut self, job: &Job) -> Tried {
        if job.payload.is_traces() && self.stats.traces_refused.load(Ordering::Relaxed) {
            self.stats.dropped(job);
            return Tried::Done;
        }
        let size = job.payload.encoded_len() as u64;
        match self.transport.send(&job.payload) {
            Ok(accepted) => {
                self.stats.delivered(job, size, accepted.rejected);
                if self.failing {
                    tracing::warn!("export to {} works again", self.endpoint);
                    self.failing = false;
                }
                if accepted.rejected > 0 || !accepted.message.is_empty() {
                    let rejected = accepted.rejected.min(job.items as u64);
                    let p = &mut self.partial_since_log;
                    p.0 += 1;
                    p.1 += rejected;
                    if !accepted.message.is_empty() {
                        p.2 = Some(accepted.message);
                    }
                    self.log(false);
                }
                Tried::Done
            }
            Err(e) if e.unsupported && job.payload.is_traces() => {
                // Not a failure of the collector: it takes metrics only. Say so once.
                tracing::warn!(
                    "{} does not accept traces ({}); contention spans are not sent to it",
                    self.endpoint,
                    e.message
                );
                self.stats.traces_refused.store(true, Ordering::Relaxed);
                self.stats.dropped(job);
                Tried::Done
            }
            Err(e) => {
                ExportStats::add(&self.stats.requests_failed, 1);
                self.failing_since_log += 1;
                self.last_error = Some(e.message.clone());
                self.failing = true;
                if e.transient {
                    Tried::Transient(e.retry_after)
                } else {
                    self.drop_job(job);
                    self.log(false);
                    Tried::Done
                }
            }
        }
    }

    fn drop_job(&mut self, job: &Job) {
        self.stats.dropped(job);
        if !job.payload.is_traces() {
            self.dropped_since_log += job.items as u64;
        }
    }

    /// One warning per `log_every` for each kind of trouble, summing up what
    /// happened since the last.
    fn log(&mut self, last: bool) {
        let quiet = self.failing_since_log == 0
            && self.partial_since_log.0 == 0
            && self.dropped_since_log == 0
            && self.evicted_since_log.0 == 0
            && self.spool_problem.is_none();
        if quiet {
            return;
        }
        if !last && self.last_log.is_some_and(|t| t.elapsed() < self.log_every) {
            return;
        }
        let total = ExportStats::get(&self.stats.points_dropped);
        if self.failing_since_log > 0 || self.dropped_since_log > 0 {
            let error = self.last_error.as_deref().unwrap_or("unknown error");
            match &self.spool_dir {
                Some((dir, _)) => tracing::warn!(
                    "export to {} failing: {error}; {} failed attempts, {} data points dropped since the last message \
                     ({total} dropped in all); {} requests ({} bytes) wait in the spool {dir}",
                    self.endpoint,
                    self.failing_since_log,
                    self.dropped_since_log,
                    ExportStats::get(&self.stats.spool_requests),
                    ExportStats::get(&self.stats.spool_bytes),
                ),
                None => tracing::warn!(
                    "export to {} failing: {error}; {} failed attempts, {} data points dropped since the last message \
                     ({total} dropped in all); retrying with backoff",
                    self.endpoint,
                    self.failing_since_log,
                    self.dropped_since_log,
                ),
            }
        }
        if self.partial_since_log.0 > 0 {
            let (requests, rejected, reason) = std::mem::take(&mut self.partial_since_log);
            tracing::warn!(
                "{} accepted {requests} request(s) only in part: it rejected {rejected} data points or spans                  since the last message, counted as dropped ({total} data points dropped in all): {}",
                self.endpoint,
                reason.as_deref().unwrap_or("no reason given"),
            );
        }
        if self.evicted_since_log.0 > 0 {
            let (dir, cap) = self.spool_dir.clone().unwrap_or_default();
            tracing::warn!(
                "spool {dir} is full ({cap} bytes): dropped its {} oldest requests ({} data points) since the last \
                 message ({total} data points dropped in all); raise --spool-max-bytes to keep a longer outage",
                self.evicted_since_log.0,
                self.evicted_since_log.1,
            );
        }
        if let Some(problem) = self.spool_problem.take() {
            tracing::warn!("{problem}");
        }
        self.failing_since_log = 0;
        self.dropped_since_log = 0;
        self.evicted_since_log = (0, 0);
        self.last_log = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel::Temporality;

    fn settings(protocol: Protocol, endpoint: &str) -> ExportSettings {
        ExportSettings {
            endpoint: endpoint.into(),
            traces_endpoint: endpoint.into(),
            protocol,
            headers: vec![("x-api-key".into(), "k".into())],
            timeout: Duration::from_millis(300),
            compression: Compression::Gzip,
            temporality: Temporality::Cumulative,
            batch_points: 512,
            queue_requests: 2,
            spool: None,
            tls: None,
        }
    }

    #[test]
    fn bodies_are_compressed() {
        let raw = vec![7u8; 10_000];
        let (gz, enc) = compress(&raw, Compression::Gzip);
        assert_eq!(enc, Some("gzip"));
        assert!(gz.len() < 200);
        let (zs, enc) = compress(&raw, Compression::Zstd);
        assert_eq!(enc, Some("zstd"));
        assert_eq!(zstd::decode_all(&zs[..]).ok(), Some(raw));
    }

    #[test]
    fn an_unreachable_collector_drops_and_counts_without_blocking() {
        // Port 9 (discard) on localhost: nothing listens, connections are refused.
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let exporter = Exporter::start(
                &settings(protocol, "http://127.0.0.1:9"),
                Duration::from_millis(700),
                Duration::from_secs(60),
            )
            .expect("start");
            let stats = exporter.stats();
            let started = Instant::now();
            for _ in 0..10 {
                exporter.submit(Payload::Metrics(ExportMetricsServiceRequest::default()), 5);
            }
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "submit blocked"
            );
            exporter.shutdown(Duration::from_secs(5));
            assert_eq!(ExportStats::get(&stats.points_sent), 0);
            assert_eq!(ExportStats::get(&stats.points_dropped), 50, "{protocol:?}");
        }
    }

    #[test]
    fn with_a_spool_an_unreachable_collector_drops_nothing_and_keeps_the_order() {
        let dir =
            std::env::temp_dir().join(format!("gilscope-export-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = super::spool::SpoolSettings {
            dir: dir.clone(),
            max_bytes: 1 << 20,
        };
        for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
            let mut s = settings(protocol, "http://127.0.0.1:9");
            s.spool = Some(spool.clone());
            s.queue_requests = 64;
            let exporter = Exporter::start(&s, Duration::from_millis(700), Duration::from_secs(60))
                .expect("start");
            let stats = exporter.stats();
            for items in 1..=5 {
                exporter.submit(
                    Payload::Metrics(ExportMetricsServiceRequest::default()),
                    items,
                );
            }
            exporter.shutdown(Duration::from_secs(2));
            assert_eq!(ExportStats::get(&stats.points_dropped), 0, "{protocol:?}");
            assert_eq!(ExportStats::get(&stats.spool_requests), 5, "{protocol:?}");
            // What is left is on disk, oldest first, for the next start.
            let (mut left, damaged) = Spool::open(&spool).expect("reopen");
            assert!(damaged.is_empty());
            let mut order = Vec::new();
            while let Some(Ok((entry, _))) = left.read_oldest() {
                order.push(entry.items);
                left.pop();
            }
            assert_eq!(order, vec![1, 2, 3, 4, 5], "{protocol:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        // RFC 9110's example date is 784111777 s after the epoch: 10 s later here.
        let later = now - Duration::from_secs(10);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(5)
            ),
            Some(Duration::ZERO),
            "a date in the past: retry at once"
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn grpc_statuses_are_retried_as_the_otlp_spec_says() {
        use tonic::Code;
        use tonic_types::{ErrorDetails, StatusExt};
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert_eq!(grpc_retry(&tonic::Status::new(code, "x")), (true, None));
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::Unknown,
            // Without RetryInfo the server does not say recovery is possible.
            Code::ResourceExhausted,
        ] {
            assert!(!grpc_retry(&tonic::Status::new(code, "x")).0, "{code:?}");
        }
        let throttled = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(grpc_retry(&throttled), (true, Some(Duration::from_secs(3))));
    }

    #[test]
    fn a_partial_success_body_is_read() {
        use opentelemetry_proto::tonic::collector::metrics::v1::{
            ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
        };
        let body = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 7,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            http_partial_success(false, &body),
            Accepted {
                rejected: 7,
                message: "too old".into()
            }
        );
        assert_eq!(http_partial_success(false, b""), Accepted::default());
        assert_eq!(
            http_partial_success(false, b"{not protobuf"),
            Accepted::default()
        );
    }

    #[test]
    fn a_bad_header_is_a_setting_error() {
        let mut s = settings(Protocol::Grpc, "http://127.0.0.1:4317");
        s.headers = vec![("bad header".into(), "v".into())];
        let err = Exporter::start(&s, Duration::from_secs(1), Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("bad header"), "{err}");
    }
}
