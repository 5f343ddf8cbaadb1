//! Holds finished intervals until a batch is full or the max delay has passed, so a
//! thin link carries fewer, larger requests (one request header, one compression
//! context) instead of one small request per interval.
//!
//! Nothing is merged or dropped here: every interval's resources are kept as they
//! are and handed on in order. A zero max delay hands each interval on at once.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use crate::otel::otlp::point_count;

/// Finished resources waiting to be sent.
#[derive(Debug, Default)]
pub struct Held {
    metrics: Vec<ResourceMetrics>,
    spans: Vec<ResourceSpans>,
    items: usize,
    since: Option<Instant>,
}

impl Held {
    /// Adds one interval's resources.
    pub fn add(&mut self, metrics: Vec<ResourceMetrics>, spans: Vec<ResourceSpans>, now: Instant) {
        self.items += metrics.iter().map(point_count).sum::<usize>();
        self.items += spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum::<usize>();
        self.metrics.extend(metrics);
        self.spans.extend(spans);
        self.since.get_or_insert(now);
    }

    /// Whether what is held should go now: a batch is full, the oldest has waited
    /// `max_delay`, or nothing is to be held at all.
    pub fn due(&self, now: Instant, batch_items: usize, max_delay: Duration) -> bool {
        let Some(since) = self.since else {
            return false;
        };
        max_delay.is_zero()
            || self.items >= batch_items
            || now.saturating_duration_since(since) >= max_delay
    }

    /// Takes everything held, oldest first.
    pub fn take(&mut self) -> (Vec<ResourceMetrics>, Vec<ResourceSpans>) {
        self.items = 0;
        self.since = None;
        (
            std::mem::take(&mut self.metrics),
            std::mem::take(&mut self.spans),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, Gauge, Metric, NumberDataPoint, ScopeMetrics,
    };

    fn interval(points: usize) -> Vec<ResourceMetrics> {
        vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default(); points],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }]
    }

    #[test]
    fn intervals_wait_until_the_delay_passes_or_a_batch_fills() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(30);
        let mut held = Held::default();
        assert!(!held.due(t0, 100, delay), "nothing held is never due");
        held.add(interval(40), Vec::new(), t0);
        assert!(!held.due(t0 + Duration::from_secs(10), 100, delay));
        held.add(interval(40), Vec::new(), t0 + Duration::from_secs(10));
        assert!(!held.due(t0 + Duration::from_secs(20), 100, delay));
        assert!(held.due(t0 + Duration::from_secs(30), 100, delay), "delay");
        held.add(interval(40), Vec::new(), t0 + Duration::from_secs(20));
        assert!(
            held.due(t0 + Duration::from_secs(20), 100, delay),
            "batch full"
        );
        let (metrics, spans) = held.take();
        assert_eq!((metrics.len(), spans.len()), (3, 0), "all kept, in order");
        assert!(!held.due(t0 + Duration::from_secs(99), 100, delay));
    }

    #[test]
    fn a_zero_delay_sends_every_interval() {
        let mut held = Held::default();
        let now = Instant::now();
        held.add(interval(1), Vec::new(), now);
        assert!(held.due(now, 512, Duration::ZERO));
    }
}
