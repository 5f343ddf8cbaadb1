//! `gilscope run`: the node daemon. Watches every CPython process of the node
//! and exports what it sees as OpenTelemetry metrics every interval.
//!
//! One loop, one thread (plus one GIL sampler thread for all processes, the
//! export worker and, in Kubernetes, the pod watch), in named stages:
//! - **discover** (every poll): a [`Fleet`] of the node's CPython processes
//!   attaches to new ones; each gets its resource ([`identity`]);
//! - **episodes** (every poll): long GIL waits are drained from the kernel and
//!   resolved while their threads live ([`crate::otel::spans`]);
//! - **refresh** (every [`TICK`]): per-thread CPU of the busy members;
//! - **interval** (every interval): each member's snapshots become a
//!   [`ProcessSeries`] ([`interval`]), which are **delivered** to the exporter,
//!   `/metrics` and the stdout summary ([`deliver`]); exited processes are
//!   reported once more, then released. The agent's own counters go along
//!   ([`telemetry`]).

pub mod deliver;
pub mod full;
pub mod identity;
pub mod interval;
mod lookup;
pub mod summary;
pub mod telemetry;

use std::time::{Duration, Instant};

use crate::cli::settings::Settings;
use crate::core::counters::{LongIteration, WaitEpisode};
use crate::error::RunError;
use crate::otel::export::{budget, hold, Exporter};
use crate::otel::otlp::Clock;
use crate::otel::resource::Host;
use crate::otel::{http, kube, spans};
use crate::probes::wait::WaitProbe;
use crate::watch::fleet::{Fleet, Scope};
use identity::{ResourceSources, Watched};
use telemetry::SELF_STATS;

/// How often per-thread CPU is refreshed (threads that exit keep their last figures,
/// so a thread's last TICK of CPU can be missed when it exits).
const TICK: Duration = Duration::from_secs(2);

/// The daemon's state between iterations.
struct Daemon {
    settings: Settings,
    probe: WaitProbe,
    /// The watched processes, each with its resource.
    fleet: Fleet<Watched>,
    host: Host,
    clock: Clock,
    exporter: Option<Exporter>,
    kube: Option<kube::KubeMetadata>,
    started: Instant,
    /// Self-telemetry at the previous interval (for delta temporality).
    prev_stats: [u64; SELF_STATS],
    last_interval: Instant,
    /// The byte budget, when one is set and exporting.
    budget: Option<budget::Budget>,
    /// `/metrics`, `/healthz`, `/readyz` when `--listen` is given.
    endpoints: Option<http::Endpoints>,
    /// Contention episodes waiting for the interval (`None`: spans off).
    episodes: Option<spans::Episodes>,
    /// Reused buffer for draining the kernel's episode records.
    episode_buf: Vec<WaitEpisode>,
    /// Reused buffer for the event-loop probe's long iterations.
    loop_buf: Vec<LongIteration>,
    /// Episodes lost by the per-process (musl) probes of released processes,
    /// so the lost counter never goes down when one is released.
    released_episodes_lost: u64,
    /// Kernel maps that ran full: warned about once each, exported as a counter.
    full: full::FullMaps,
    /// Intervals handed to the exporter (logged at shutdown next to the export totals).
    intervals: u64,
    /// Finished intervals waiting for a full batch or the max delay.
    held: hold::Held,
}

/// Starts the exporter when one is configured: a bad spool directory or
/// endpoint is reported before BPF is loaded.
fn start_exporter(settings: &Settings) -> Result<Option<Exporter>, RunError> {
    let Some(e) = &settings.export else {
        return Ok(None);
    };
    // A request older than a few intervals is stale; keep retrying it until then.
    let max_age = (settings.interval * 3).max(Duration::from_secs(30));
    tracing::info!(
        "exporting to {} ({:?}, {:?})",
        e.endpoint,
        e.protocol,
        e.compression
    );
    Exporter::start(e, max_age, settings.interval).map(Some)
}

/// Runs until SIGTERM/SIGINT (or `run_for`), exporting every interval.
pub fn run(settings: Settings) -> Result<(), RunError> {
    crate::os::signals::catch_stop_signals();
    // Listen first: a port in use stops the start before the probe is loaded.
    let endpoints = match &settings.listen {
        Some(l) => Some(http::Endpoints::start(
            l.addr,
            &l.source,
            settings.interval,
        )?),
        None => None,
    };
    let exporter = start_exporter(&settings)?;
    let threshold_ns = settings
        .spans
        .map_or(0, |s| s.threshold.as_nanos().max(1) as u64);
    let probe = WaitProbe::load_with_capacity(threshold_ns, settings.thread_capacity)?;
    if let Some(e) = &endpoints {
        e.probe_loaded();
    }
    let kube = settings.kubernetes.clone().map(|k| {
        tracing::info!(
            "Kubernetes metadata: watching the pods of node {}",
            k.node_name
        );
        kube::KubeMetadata::start(k)
    });
    let now = Instant::now();
    let budget = settings
        .byte_budget
        .filter(|_| exporter.is_some())
        .map(|b| budget::Budget::new(b, settings.per_thread.is_some()));
    let mut fleet = Fleet::new(
        Scope::Host(settings.rules.clone()),
        Some(settings.sample_hz),
    );
    if settings.event_loops {
        if let Some(loops) = crate::probes::event_loop::load_or_warn() {
            fleet.watch_loops(loops);
        }
    }
    if settings.spans.is_some() {
        // The spans name the holder's code (captured on the slow path only).
        fleet.name_code();
    }
    let mut daemon = Daemon {
        fleet,
        probe,
        host: Host::detect(),
        clock: Clock::new(),
        exporter,
        kube,
        started: now,
        prev_stats: [0; SELF_STATS],
        last_interval: now,
        endpoints,
        episodes: settings.spans.map(spans::Episodes::new),
        episode_buf: Vec::new(),
        loop_buf: Vec::new(),
        released_episodes_lost: 0,
        full: full::FullMaps::default(),
        settings,
        budget,
        intervals: 0,
        held: hold::Held::default(),
    };
    daemon.main_loop();
    Ok(())
}

impl Daemon {
    fn main_loop(&mut self) {
        let mut next_tick = Instant::now() + TICK;
        let mut next_export = Instant::now() + self.interval_now();
        loop {
            let done = crate::os::signals::stop_asked()
                || self
                    .settings
                    .run_for
                    .is_some_and(|d| self.started.elapsed() >= d);
            if done {
                break;
            }
            self.discover();
            if let Some(e) = &self.endpoints {
                e.beat();
            }
            self.drain_episodes();
            let now = Instant::now();
            if now >= next_tick {
                self.fleet.refresh(&mut self.probe, false);
                next_tick = now + TICK;
            }
            if now >= next_export {
                self.interval();
                let interval = self.interval_now();
                next_export += interval;
                if next_export < now {
                    next_export = now + interval;
                }
            }
            let wake = (Instant::now() + self.settings.poll).min(next_export);
            let nap = wake.saturating_duration_since(Instant::now());
            std::thread::sleep(nap.max(Duration::from_millis(1)));
        }
        if let Some(e) = &self.endpoints {
            e.stopping();
        }
        // A last (partial) interval, so a stop does not lose the tail. The kernel
        // state goes with the probe when the process exits: no per-process detach.
        self.interval();
        self.send_held(Instant::now(), true);
        if let Some(exporter) = self.exporter.take() {
            tracing::info!("{} intervals exported", self.intervals);
            exporter.shutdown(Duration::from_secs(5));
        }
    }

    /// Attaches to new CPython processes, each with its resource.
    fn discover(&mut self) {
        let sources = ResourceSources {
            host: &self.host,
            tenant: self.settings.tenant.as_ref(),
            kube: self.kube.as_ref(),
        };
        self.fleet.discover(&mut self.probe, |session, identity| {
            sources.joined(session, identity)
        });
    }

    /// Takes the kernel's episode records and resolves them while their threads
    /// live; dropped unread once the endpoint said it takes no traces.
    fn drain_episodes(&mut self) {
        let Some(episodes) = self.episodes.as_mut() else {
            return;
        };
        self.episode_buf.clear();
        self.probe.drain_episodes(&mut self.episode_buf);
        for m in self.fleet.members_mut().values_mut() {
            m.session.drain_episodes(&mut self.episode_buf);
        }
        let refused = self.exporter.as_ref().is_some_and(|e| {
            e.stats()
                .traces_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        if refused {
            return;
        }
        for record in &self.episode_buf {
            if let Some(m) = self.fleet.members().get(&record.tgid) {
                episodes.record(record, &m.session);
            }
        }
        if let Some(loops) = self.fleet.loops() {
            self.loop_buf.clear();
            loops.drain_long_iterations(&mut self.loop_buf);
            for it in &self.loop_buf {
                if self.fleet.members().contains_key(&it.tgid) {
                    episodes.record_long_iteration(it);
                }
            }
        }
    }

    /// The export interval now: the configured one, stretched by the byte budget.
    fn interval_now(&self) -> Duration {
        let multiplier = self.budget.as_ref().map_or(1, |b| b.level().multiplier);
        self.settings.interval * multiplier
    }

    /// The counters' temporality: the exporter's, or the setting without one.
    fn temporality(&self) -> crate::otel::Temporality {
        self.settings
            .export
            .as_ref()
            .map_or(self.settings.temporality, |e| e.temporality)
    }

    /// Processes whose pod was not known at attach time get their pod metadata.
    fn complete_pods(&mut self) {
        let sources = ResourceSources {
            host: &self.host,
            tenant: self.settings.tenant.as_ref(),
            kube: self.kube.as_ref(),
        };
        for (pid, m) in self.fleet.members_mut().iter_mut() {
            sources.complete(*pid, &mut m.extra);
        }
    }
}
