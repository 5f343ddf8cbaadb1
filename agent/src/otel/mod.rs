//! OpenTelemetry out: the metric catalog and series, spans, resources and
//! Kubernetes metadata, OTLP encoding, the Prometheus exposition and its HTTP
//! endpoints, and the exporter.

pub mod catalog;
pub mod export;
pub mod http;
pub mod kube;
pub mod otlp;
pub mod prometheus;
pub mod resource;
pub mod series;
pub mod spans;

/// Counter temporality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since the process was first watched (the OTLP default).
    Cumulative,
    /// What happened in the interval only; unchanged series are not re-sent.
    Delta,
}

impl Temporality {
    /// Where a counter's window starts: at `first` (when the process was first
    /// watched) under cumulative, at `previous` (the last interval) under delta.
    pub fn window<T>(self, first: T, previous: T) -> T {
        match self {
            Temporality::Cumulative => first,
            Temporality::Delta => previous,
        }
    }
}
