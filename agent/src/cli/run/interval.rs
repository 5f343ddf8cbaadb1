//! The interval stage: every member's snapshots become its series (and its
//! long GIL waits spans), then exited processes are released.

use std::time::Instant;

use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use super::Daemon;
use crate::os::process::{start_ticks, thread_count};
use crate::otel::otlp;
use crate::otel::series::{self, IntervalInput, ProcessSeries};
use crate::otel::Temporality;

impl Daemon {
    /// Builds, exports (or prints) one interval, then releases exited processes.
    pub(super) fn interval(&mut self) {
        self.complete_pods();
        let now = Instant::now();
        let interval_s = now.duration_since(self.last_interval).as_secs_f64();
        self.last_interval = now;
        let temporality = self.temporality();
        self.fleet.refresh(&mut self.probe, true);
        self.drain_episodes();
        let (series, spans) = self.series(temporality);
        let dropped = self.entries_dropped();
        let probe = &self.probe;
        self.full.report(&dropped, |map| probe.capacity(map));
        self.deliver(&series, spans, now, temporality, interval_s);
        self.release_gone();
    }

    /// Each member's points for this interval, and the spans of its long waits.
    fn series(&mut self, temporality: Temporality) -> (Vec<ProcessSeries>, Vec<ResourceSpans>) {
        let counters = self.fleet.read_counters(&self.probe);
        let per_thread = self.settings.per_thread.filter(|_| {
            !self
                .budget
                .as_ref()
                .is_some_and(|b| b.level().per_thread_dropped)
        });
        let mut all = Vec::with_capacity(self.fleet.members().len());
        let mut spans = Vec::new();
        let episodes = &mut self.episodes;
        let clock = &self.clock;
        self.fleet.end_interval(&self.probe, counters, |m, cur| {
            let pid = m.session.pid();
            let window = temporality.window(&m.first, &m.prev);
            let mut series = series::process_series(&IntervalInput {
                interval: &m.session.measurement(&m.prev, cur),
                counted: &m.session.measurement(window, cur),
                counted_from: window.at,
                at: cur.at,
                thread_count: thread_count(pid),
                temporality,
                per_thread,
                resource: &m.extra.resource,
            });
            if let Some(episodes) = episodes.as_mut() {
                let kept = episodes.take(pid, &m.session);
                let loops = episodes.take_long_iterations(pid, &m.session);
                if !kept.is_empty() || !loops.is_empty() {
                    let resource = &m.extra.resource;
                    spans.push(otlp::resource_spans(resource, &kept, &loops, clock));
                }
                series
                    .points
                    .extend(episodes.points(pid, temporality, window.at));
            }
            all.push(series);
        });
        (all, spans)
    }

    /// Releases the kernel state of processes that exited (or exec'd), after
    /// their last interval; their lost-episode and full-map counts are kept.
    fn release_gone(&mut self) {
        let episodes = &mut self.episodes;
        let full = &mut self.full;
        let lost = &mut self.released_episodes_lost;
        self.fleet.release_gone(&mut self.probe, |m| {
            let pid = m.session.pid();
            if let Some(e) = episodes.as_mut() {
                e.forget(pid);
            }
            *lost += m.session.episodes_lost();
            if let Some(counts) = m.session.entries_dropped() {
                full.release(&counts);
            }
            if start_ticks(pid) == Some(m.identity.start_ticks) {
                tracing::info!(
                    "process {pid} now runs another program (exec); released its kernel state"
                );
            } else {
                tracing::info!("process {pid} exited; released its kernel state");
            }
        });
    }
}
