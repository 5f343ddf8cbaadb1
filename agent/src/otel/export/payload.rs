//! What goes to the collector and what comes back: one [`Payload`] (metrics or
//! spans) and the collector's [`Accepted`]. Both signals travel one path; this
//! is the only place that tells them apart.

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::spool::Kind;

/// One OTLP request: metrics and spans share the queue, the retries and the
/// accounting, so an outage treats both alike.
#[derive(Debug, Clone)]
pub enum Payload {
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

impl Payload {
    pub(super) fn encoded_len(&self) -> usize {
        match self {
            Payload::Metrics(r) => r.encoded_len(),
            Payload::Traces(r) => r.encoded_len(),
        }
    }

    pub(super) fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            Payload::Metrics(r) => r.encode_to_vec(),
            Payload::Traces(r) => r.encode_to_vec(),
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            Payload::Metrics(_) => Kind::Metrics,
            Payload::Traces(_) => Kind::Traces,
        }
    }

    pub(super) fn is_traces(&self) -> bool {
        self.kind() == Kind::Traces
    }

    /// A spooled request back in memory.
    pub(super) fn decode(kind: Kind, body: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match kind {
            Kind::Metrics => Payload::Metrics(ExportMetricsServiceRequest::decode(body)?),
            Kind::Traces => Payload::Traces(ExportTraceServiceRequest::decode(body)?),
        })
    }

    /// What an OTLP/HTTP response body to this request says was taken: its
    /// `partial_success`; an empty or undecodable body means all, as the
    /// specification says.
    pub(super) fn accepted_by(&self, body: &[u8]) -> Accepted {
        match self {
            Payload::Metrics(_) => decode_answer::<ExportMetricsServiceResponse>(body),
            Payload::Traces(_) => decode_answer::<ExportTraceServiceResponse>(body),
        }
    }
}

/// A request the collector took: all of it, or all but `rejected` items
/// (OTLP `partial_success`), which are lost for good and counted as dropped.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Accepted {
    pub rejected: u64,
    pub message: String,
}

impl Accepted {
    fn partial(rejected: i64, message: String) -> Self {
        Self {
            rejected: rejected.max(0) as u64,
            message,
        }
    }
}

/// A collector's answer to one signal's export request.
pub(super) trait Answer: Message + Default {
    /// What it took: all, or all but what its `partial_success` rejects.
    fn accepted(self) -> Accepted;
}

impl Answer for ExportMetricsServiceResponse {
    fn accepted(self) -> Accepted {
        self.partial_success
            .map(|p| Accepted::partial(p.rejected_data_points, p.error_message))
            .unwrap_or_default()
    }
}

impl Answer for ExportTraceServiceResponse {
    fn accepted(self) -> Accepted {
        self.partial_success
            .map(|p| Accepted::partial(p.rejected_spans, p.error_message))
            .unwrap_or_default()
    }
}

fn decode_answer<A: Answer>(body: &[u8]) -> Accepted {
    A::decode(body).map(A::accepted).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;

    #[test]
    fn a_partial_success_body_is_read() {
        let body = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 7,
                error_message: "too old".into(),
            }),
        }
        .encode_to_vec();
        let metrics = Payload::Metrics(ExportMetricsServiceRequest::default());
        assert_eq!(
            metrics.accepted_by(&body),
            Accepted {
                rejected: 7,
                message: "too old".into()
            }
        );
        assert_eq!(metrics.accepted_by(b""), Accepted::default());
        assert_eq!(metrics.accepted_by(b"{not protobuf"), Accepted::default());
    }
}
