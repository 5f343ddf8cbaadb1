//! OTLP over HTTP/protobuf (ureq): one POST per request to the signal's URL,
//! compressed, with the configured headers; statuses classified as the OTLP
//! specification says, `Retry-After` honoured.

use std::io::Write;
use std::time::Duration;

use prost::Message;

use super::payload::{Accepted, Payload};
use super::retry::SendError;
use super::{Compression, ExportSettings};
use crate::error::RunError;

/// The largest response body read (a partial-success or error message): a
/// collector cannot make the agent buffer more.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// One HTTP agent (it keeps connections) and where each signal goes.
pub(super) struct HttpTransport {
    agent: ureq::Agent,
    url: String,
    traces_url: String,
    headers: Vec<(String, String)>,
    compression: Compression,
}

impl HttpTransport {
    /// Checks the TLS settings; connects on first use.
    pub fn new(s: &ExportSettings) -> Result<Self, RunError> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(s.timeout))
            // Statuses are read here: a 429/503 carries Retry-After.
            .http_status_as_error(false);
        if let Some(tls) = &s.tls {
            config = config.tls_config(tls.ureq_config()?);
        }
        Ok(Self {
            agent: config.build().into(),
            url: s.endpoint.clone(),
            traces_url: s.traces_endpoint.clone(),
            headers: s.headers.clone(),
            compression: s.compression,
        })
    }

    /// One attempt at one request.
    pub fn send(&mut self, payload: &Payload) -> Result<Accepted, SendError> {
        let url = if payload.is_traces() {
            &self.traces_url
        } else {
            &self.url
        };
        let (body, encoding) = compress(&payload.encode_to_vec(), self.compression);
        let mut call = self
            .agent
            .post(url.as_str())
            .header("Content-Type", "application/x-protobuf");
        if let Some(e) = encoding {
            call = call.header("Content-Encoding", e);
        }
        for (k, v) in &self.headers {
            call = call.header(k.as_str(), v.as_str());
        }
        let mut response = call.send(&body[..]).map_err(|e| SendError {
            transient: true,
            message: e.to_string(),
            ..SendError::default()
        })?;
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
            return Ok(payload.accepted_by(&body));
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let detail = error_message(&body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        Err(SendError {
            // OTLP/HTTP: only these are retried; every other 4xx/5xx must not be.
            transient: matches!(code, 429 | 502 | 503 | 504),
            // VictoriaMetrics answers 400 "unsupported path" for /v1/traces.
            unsupported: matches!(code, 404 | 405 | 415) || (code == 400 && payload.is_traces()),
            retry_after,
            message: format!("HTTP {code} from {url}{detail}"),
        })
    }
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

/// The message of an OTLP/HTTP error body (a protobuf `google.rpc.Status`), if any.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let status = tonic_types::Status::decode(body).ok()?;
    let message = status.message.trim().to_string();
    (!message.is_empty()).then_some(message)
}

/// Compresses an HTTP body; returns it with its `Content-Encoding`.
fn compress(raw: &[u8], how: Compression) -> (Vec<u8>, Option<&'static str>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
