//! OTLP over gRPC (tonic): both signals' clients on one lazily connected
//! channel, compressed, with the configured headers; failures classified as
//! the OTLP specification says.

use std::future::Future;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::transport::Channel;

use super::payload::{Accepted, Answer, Payload};
use super::retry::SendError;
use super::{Compression, ExportSettings};
use crate::error::RunError;

/// One request header as gRPC metadata.
type Header = (MetadataKey<Ascii>, MetadataValue<Ascii>);

/// The gRPC clients of both signals on one channel.
pub(super) struct GrpcTransport {
    runtime: tokio::runtime::Runtime,
    metrics: MetricsServiceClient<Channel>,
    traces: TraceServiceClient<Channel>,
    headers: Vec<Header>,
    timeout: Duration,
    /// TLS without a client certificate: a server that demands one may close
    /// the connection before its alert can be read, and that is worth a hint.
    tls_without_client_certificate: bool,
}

impl GrpcTransport {
    /// Checks the endpoint, TLS settings and headers; connects on first use.
    pub fn new(s: &ExportSettings) -> Result<Self, RunError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RunError::setting("exporter", format!("cannot start its runtime: {e}")))?;
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
        let mut metrics = MetricsServiceClient::new(channel.clone());
        let mut traces = TraceServiceClient::new(channel);
        if let Some(encoding) = match s.compression {
            Compression::Gzip => Some(CompressionEncoding::Gzip),
            Compression::Zstd => Some(CompressionEncoding::Zstd),
            Compression::None => None,
        } {
            metrics = metrics.send_compressed(encoding);
            traces = traces.send_compressed(encoding);
        }
        Ok(Self {
            runtime,
            metrics,
            traces,
            headers: metadata(&s.headers)?,
            timeout: s.timeout,
            tls_without_client_certificate: s.tls.as_ref().is_some_and(|t| t.client.is_none()),
        })
    }

    /// One attempt at one request.
    pub fn send(&mut self, payload: &Payload) -> Result<Accepted, SendError> {
        match payload {
            Payload::Metrics(r) => {
                let (mut client, request) = (self.metrics.clone(), self.request(r.clone()));
                self.call(async move { client.export(request).await })
            }
            Payload::Traces(r) => {
                let (mut client, request) = (self.traces.clone(), self.request(r.clone()));
                self.call(async move { client.export(request).await })
            }
        }
    }

    /// A request with the attempt's timeout and the configured headers.
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        request.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        request
    }

    /// Runs one export call to its answer, within the timeout and a second of slack.
    fn call<A: Answer>(
        &self,
        export: impl Future<Output = Result<tonic::Response<A>, tonic::Status>>,
    ) -> Result<Accepted, SendError> {
        let limit = self.timeout + Duration::from_secs(1);
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(limit, export).await });
        match answer {
            Ok(Ok(response)) => Ok(response.into_inner().accepted()),
            Ok(Err(status)) => {
                let (transient, retry_after) = grpc_retry(&status);
                Err(SendError {
                    unsupported: status.code() == tonic::Code::Unimplemented,
                    transient,
                    retry_after,
                    message: client_certificate_hint(
                        grpc_message(&status),
                        self.tls_without_client_certificate,
                    ),
                })
            }
            Err(_) => Err(SendError {
                transient: true,
                message: "timed out".into(),
                ..SendError::default()
            }),
        }
    }
}

/// The configured headers as gRPC metadata (names lowercased); a name or value
/// gRPC cannot carry is a setting error.
fn metadata(headers: &[(String, String)]) -> Result<Vec<Header>, RunError> {
    headers
        .iter()
        .map(|(k, v)| {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|_| {
                RunError::setting("headers", format!("'{k}' is not a valid header name"))
            })?;
            let value = MetadataValue::try_from(v.as_str()).map_err(|_| {
                RunError::setting(
                    "headers",
                    format!("the value of '{k}' is not a valid header value"),
                )
            })?;
            Ok((key, value))
        })
        .collect()
}

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

/// `message`, with the likely reason when a TLS server closed a connection
/// made without a client certificate (`tls_without_client_certificate`): after
/// a TLS 1.3 handshake the server checks the client's certificate last, and
/// its alert is often lost to the reset of the connection, leaving only
/// "connection closed".
fn client_certificate_hint(message: String, tls_without_client_certificate: bool) -> String {
    let lower = message.to_ascii_lowercase();
    let closed = ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|c| lower.contains(c));
    if tls_without_client_certificate && closed {
        format!(
            "{message} (the TLS server closed the connection; if it requires a client \
             certificate, none is configured: export.client_certificate, \
             OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)"
        )
    } else {
        message
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_tls_connection_without_a_client_certificate_says_it_may_need_one() {
        let closed = "Cancelled: operation was canceled: connection closed".to_string();
        let hinted = client_certificate_hint(closed.clone(), true);
        assert!(hinted.starts_with(&closed), "{hinted}");
        assert!(hinted.contains("none is configured"), "{hinted}");
        // With a certificate, or for another failure, the message stays as it is.
        assert_eq!(client_certificate_hint(closed.clone(), false), closed);
        let refused = "Unavailable: tcp connect error: Connection refused".to_string();
        assert_eq!(client_certificate_hint(refused.clone(), true), refused);
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
}
