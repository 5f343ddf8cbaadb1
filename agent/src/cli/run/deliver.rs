//! The delivery stage: an interval's series go to the exporter (held for a
//! full batch or the max delay on thin links), to `/metrics`, and to stdout.

use std::io::Write as _;
use std::time::Instant;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use super::{summary, Daemon};
use crate::otel::export::{self, ExportStats};
use crate::otel::otlp;
use crate::otel::series::ProcessSeries;
use crate::otel::Temporality;

/// Under the lean encoding, metric descriptions go out every this many intervals
/// (and in the first): receivers keep them as metadata per metric name.
const DESCRIBE_EVERY: u64 = 60;

impl Daemon {
    /// Hands one interval to every output that is on.
    pub(super) fn deliver(
        &mut self,
        all: &[ProcessSeries],
        spans: Vec<ResourceSpans>,
        now: Instant,
        temporality: Temporality,
        interval_s: f64,
    ) {
        if self.exporter.is_some() {
            let encoding = self.encoding();
            let mut resources: Vec<_> = all
                .iter()
                .map(|s| otlp::resource_metrics(s, &self.clock, temporality, encoding, now))
                .collect();
            resources.push(self.self_telemetry(now, temporality, encoding));
            self.intervals += 1;
            self.held.add(resources, spans, now);
            self.send_held(now, false);
            // The budget watches the bytes every interval, whether or not one was sent.
            if let (Some(budget), Some(exporter)) = (&mut self.budget, &self.exporter) {
                let sent = ExportStats::get(&exporter.stats().bytes_sent);
                budget.observe(now, sent, self.settings.interval);
            }
        }
        if self.endpoints.is_some() {
            // Cumulative always: /metrics is scraped, not pushed.
            let resource = self.agent_resource();
            let counts = self.export_counts();
            let points = self.agent_points(counts, self.started, now);
            if let Some(e) = &mut self.endpoints {
                e.publish(all, (&resource, &points), temporality);
            }
        }
        if self.settings.summary && !all.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(summary::render(all, interval_s).as_bytes());
            let _ = out.flush();
        }
    }

    /// Hands what is held to the exporter when it is due (or `now_anyway`, at a stop).
    pub(super) fn send_held(&mut self, now: Instant, now_anyway: bool) {
        let batch_points = self
            .settings
            .export
            .as_ref()
            .map_or(crate::cli::settings::DEFAULT_BATCH_POINTS, |e| {
                e.batch_points
            });
        if !now_anyway && !self.held.due(now, batch_points, self.settings.max_delay) {
            return;
        }
        let (resources, span_resources) = self.held.take();
        let Some(exporter) = &self.exporter else {
            return;
        };
        for (request, points) in otlp::batch(resources, batch_points) {
            exporter.submit(export::Payload::Metrics(request), points);
        }
        for (request, n) in otlp::batch_spans(span_resources, batch_points) {
            exporter.submit(export::Payload::Traces(request), n);
        }
    }

    /// The request shape of this interval.
    fn encoding(&self) -> otlp::Encoding {
        let lean = self.settings.lean_encoding;
        otlp::Encoding {
            lean,
            describe: !lean || self.intervals.is_multiple_of(DESCRIBE_EVERY),
        }
    }
}
