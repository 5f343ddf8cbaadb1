//! The agent's own telemetry: what the exporter sent, dropped and retried,
//! spans lost, kernel maps that ran full, processes watched — under the
//! agent's own resource, so a collector can alert on the agent itself.

use std::time::Instant;

use super::{full, Daemon};
use crate::core::counters::{EntriesDropped, KernelMap};
use crate::otel::catalog;
use crate::otel::export::{ExportStats, Exporter};
use crate::otel::otlp;
use crate::otel::series::{Point, Value};
use crate::otel::Temporality;

/// Values of the agent's own counters kept for delta temporality: the exporter's,
/// lost episodes, then failed inserts per kernel map (from [`FIRST_FULL`] on).
pub(super) const SELF_STATS: usize = FIRST_FULL + full::MAPS;

/// Index of the first map-full count in the self-telemetry values.
const FIRST_FULL: usize = 11;

impl Daemon {
    /// Failed inserts per kernel map since the start: the futex probe's and the
    /// event-loop probe's, then the musl probes' (live and released).
    pub(super) fn entries_dropped(&mut self) -> EntriesDropped {
        let musl: Vec<EntriesDropped> = self
            .fleet
            .members()
            .values()
            .filter_map(|m| m.session.entries_dropped())
            .collect();
        let mut shared = self.probe.entries_dropped();
        if let Some(loops) = self.fleet.loops() {
            shared.add(&loops.entries_dropped());
        }
        self.full.totals(shared, musl.iter())
    }

    /// The exporter's counters since the start (zeros without an exporter).
    pub(super) fn export_counts(&mut self) -> [u64; SELF_STATS] {
        let dropped = self.entries_dropped();
        let stats = self.exporter.as_ref().map(Exporter::stats);
        let get = |f: fn(&ExportStats) -> &std::sync::atomic::AtomicU64| {
            stats.as_ref().map_or(0, |s| ExportStats::get(f(s)))
        };
        let exported: [u64; FIRST_FULL] = [
            get(|s| &s.points_sent),
            get(|s| &s.points_dropped),
            get(|s| &s.requests_sent),
            get(|s| &s.requests_failed),
            get(|s| &s.requests_dropped),
            get(|s| &s.bytes_sent),
            get(|s| &s.retries),
            get(|s| &s.spans_sent),
            get(|s| &s.spans_dropped),
            self.probe.episodes_lost()
                + self.released_episodes_lost
                + self
                    .fleet
                    .members()
                    .values()
                    .map(|m| m.session.episodes_lost())
                    .sum::<u64>(),
            0,
        ];
        let mut values = [0; SELF_STATS];
        values[..FIRST_FULL].copy_from_slice(&exported);
        for (value, (_, n)) in values[FIRST_FULL..].iter_mut().zip(dropped.iter()) {
            *value = n;
        }
        values
    }

    /// The agent's own counters, under its own resource.
    pub(super) fn self_telemetry(
        &mut self,
        now: Instant,
        temporality: Temporality,
        encoding: otlp::Encoding,
    ) -> opentelemetry_proto::tonic::metrics::v1::ResourceMetrics {
        let values = self.export_counts();
        let (shown, start) = match temporality {
            Temporality::Cumulative => (values, self.started),
            Temporality::Delta => {
                let mut d = values;
                for (v, p) in d.iter_mut().zip(self.prev_stats.iter()) {
                    *v = v.saturating_sub(*p);
                }
                (d, self.last_interval_start(now))
            }
        };
        self.prev_stats = values;
        let points = self.agent_points(shown, start, now);
        let resource = self.agent_resource();
        otlp::resource_metrics_of(&resource, &points, now, &self.clock, temporality, encoding)
    }

    /// The agent's own data points: export counters `shown` (counted from
    /// `start`) and the processes watched now.
    pub(super) fn agent_points(
        &self,
        shown: [u64; SELF_STATS],
        start: Instant,
        now: Instant,
    ) -> Vec<Point> {
        let counter = |metric, outcome: Option<&str>, v: u64| Point {
            metric,
            attributes: outcome
                .map(|o| vec![("outcome", o.to_string())])
                .unwrap_or_default(),
            value: Value::Int(v as i64),
            start,
        };
        let stats = self.exporter.as_ref().map(Exporter::stats);
        let get = |f: fn(&ExportStats) -> &std::sync::atomic::AtomicU64| {
            stats.as_ref().map_or(0, |s| ExportStats::get(f(s)))
        };
        let mut points = vec![
            counter(&catalog::EXPORT_POINTS, Some("sent"), shown[0]),
            counter(&catalog::EXPORT_POINTS, Some("dropped"), shown[1]),
            counter(&catalog::EXPORT_REQUESTS, Some("sent"), shown[2]),
            counter(&catalog::EXPORT_REQUESTS, Some("failed"), shown[3]),
            counter(&catalog::EXPORT_REQUESTS, Some("dropped"), shown[4]),
            counter(&catalog::EXPORT_BYTES, None, shown[5]),
            counter(&catalog::EXPORT_RETRIES, None, shown[6]),
            counter(&catalog::EXPORT_SPANS, Some("sent"), shown[7]),
            counter(&catalog::EXPORT_SPANS, Some("dropped"), shown[8]),
            counter(&catalog::EPISODES_LOST, None, shown[9]),
            Point {
                metric: &catalog::EXPORT_SPOOL_REQUESTS,
                attributes: Vec::new(),
                value: Value::Int(get(|s| &s.spool_requests) as i64),
                start: now,
            },
            Point {
                metric: &catalog::EXPORT_SPOOL_BYTES,
                attributes: Vec::new(),
                value: Value::Int(get(|s| &s.spool_bytes) as i64),
                start: now,
            },
            Point {
                metric: &catalog::EXPORT_DEGRADATION,
                attributes: Vec::new(),
                value: Value::Int(self.budget.as_ref().map_or(0, |b| b.level().gauge())),
                start: now,
            },
            Point {
                metric: &catalog::PROCESSES_WATCHED,
                attributes: Vec::new(),
                value: Value::Int(self.fleet.members().len() as i64),
                start: now,
            },
        ];
        // The musl maps only once a musl process was watched, the event-loop
        // map only with its probe loaded: elsewhere they do not exist.
        let exists = |map: &KernelMap| match map {
            m if m.is_condwait() => self.full.musl_seen(),
            KernelMap::LoopThreads => self.fleet.loops().is_some(),
            _ => true,
        };
        let maps = KernelMap::ALL.iter().zip(&shown[FIRST_FULL..]);
        for (map, n) in maps.filter(|(map, _)| exists(map)) {
            points.push(Point {
                metric: &catalog::BPF_ENTRIES_DROPPED,
                attributes: vec![("gilscope.bpf.map", map.name().to_string())],
                value: Value::Int(*n as i64),
                start,
            });
        }
        points
    }

    /// The agent's own resource.
    pub(super) fn agent_resource(&self) -> Vec<(String, String)> {
        let mut resource = vec![
            (
                "service.name".to_string(),
                self.settings.agent_service_name.clone(),
            ),
            (
                "service.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            ("host.name".to_string(), self.host.name.clone()),
            ("host.arch".to_string(), self.host.arch.clone()),
            ("process.pid".to_string(), std::process::id().to_string()),
        ];
        resource.extend(self.settings.agent_attributes.iter().cloned());
        resource
    }

    pub(super) fn last_interval_start(&self, now: Instant) -> Instant {
        now.checked_sub(self.interval_now())
            .unwrap_or(self.started)
            .max(self.started)
    }
}
