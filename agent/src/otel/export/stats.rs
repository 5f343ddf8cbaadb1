//! What the exporter did, counted for self-telemetry (`gilscope.export.*`): the
//! worker and the queue count here, the daemon reads the totals each interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::spool::Kind;

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
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's current value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a request of `items` data points or spans that will never be sent.
    pub(super) fn dropped(&self, kind: Kind, items: u64) {
        ExportStats::add(&self.requests_dropped, 1);
        ExportStats::add(self.items_dropped(kind), items);
    }

    /// Counts a request the collector took, less the `rejected` items it
    /// refused (partial success): those are dropped, the request is not.
    pub(super) fn delivered(&self, kind: Kind, items: u64, bytes: u64, rejected: u64) {
        ExportStats::add(&self.requests_sent, 1);
        let sent = match kind {
            Kind::Traces => &self.spans_sent,
            Kind::Metrics => &self.points_sent,
        };
        let rejected = rejected.min(items);
        ExportStats::add(sent, items - rejected);
        ExportStats::add(self.items_dropped(kind), rejected);
        ExportStats::add(&self.bytes_sent, bytes);
    }

    fn items_dropped(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Traces => &self.spans_dropped,
            Kind::Metrics => &self.points_dropped,
        }
    }

    /// Whether the endpoint said it takes no traces.
    pub(super) fn traces_refused(&self) -> bool {
        self.traces_refused.load(Ordering::Relaxed)
    }
}
