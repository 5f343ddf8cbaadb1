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
//! The parts: [`queue`] (the daemon's side: [`Exporter`]), [`worker`] (the
//! thread and its two loops, in memory or spooled), [`retry`] (backoff and
//! what a failure allows), the transports [`grpc`] and [`http`] behind one
//! [`Transport`], [`payload`] (the one place metrics and traces differ),
//! [`stats`] and [`warnings`] (what is counted and what is said), and the
//! [`spool`], byte [`budget`] and [`hold`] the daemon uses around them.
//!
//! With a [`Spool`], a request that fails transiently goes to disk at once and
//! so does everything queued behind it while a backlog exists: the oldest
//! spooled request is retried (with the same backoff) and, once the collector
//! answers, the backlog is replayed oldest first before newer data, so each
//! series reaches the backend in order and memory stays bounded however long
//! the outage. Only the spool's size cap drops data then, oldest first, counted.

pub mod budget;
mod grpc;
pub mod hold;
mod http;
mod payload;
mod queue;
mod retry;
pub mod spool;
mod stats;
pub mod tls;
mod warnings;
mod worker;

use std::time::Duration;

use crate::error::RunError;
use crate::otel::Temporality;
use spool::SpoolSettings;
use tls::TlsSettings;

pub use payload::Payload;
pub use queue::Exporter;
pub use stats::ExportStats;

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

/// What a collector's answer body says, read as the exporter reads it: the
/// items rejected by its `partial_success` for a request of `kind`, its
/// message, and the message of the body as an error (`google.rpc.Status`).
/// The bodies come from the network, so the fuzzers feed this
/// (`fuzz/`, target `collector_answers`).
pub fn read_answer(kind: spool::Kind, body: &[u8]) -> (u64, String, Option<String>) {
    let request = match kind {
        spool::Kind::Metrics => Payload::Metrics(Default::default()),
        spool::Kind::Traces => Payload::Traces(Default::default()),
    };
    let accepted = request.accepted_by(body);
    (
        accepted.rejected,
        accepted.message,
        http::error_message(body),
    )
}

/// The configured transport; both signals go through the same one.
enum Transport {
    Grpc(Box<grpc::GrpcTransport>),
    Http(http::HttpTransport),
}

impl Transport {
    fn new(s: &ExportSettings) -> Result<Self, RunError> {
        Ok(match s.protocol {
            Protocol::Grpc => Transport::Grpc(Box::new(grpc::GrpcTransport::new(s)?)),
            Protocol::HttpProtobuf => Transport::Http(http::HttpTransport::new(s)?),
        })
    }

    /// One attempt at one request.
    fn send(&mut self, payload: &Payload) -> Result<payload::Accepted, retry::SendError> {
        match self {
            Transport::Grpc(grpc) => grpc.send(payload),
            Transport::Http(http) => http.send(payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use spool::Spool;
    use std::time::Instant;

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
    fn a_bad_header_is_a_setting_error() {
        let mut s = settings(Protocol::Grpc, "http://127.0.0.1:4317");
        s.headers = vec![("bad header".into(), "v".into())];
        let err = Exporter::start(&s, Duration::from_secs(1), Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("bad header"), "{err}");
    }
}
