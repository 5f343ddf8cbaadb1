//! `gilscope run`: the node daemon. Watches every CPython process of the node
//! and exports what it sees as OpenTelemetry metrics every interval.
//!
//! One loop, one thread (plus one GIL sampler thread for all processes and the export worker):
//! every poll it lists /proc and attaches to new CPython processes
//! ([`discover`]); every second it refreshes per-thread CPU of the watched ones;
//! every interval it turns each process's snapshots into data points
//! ([`series`]) with its resource ([`resource`]), encodes them ([`otlp`]) and
//! queues them for the exporter ([`export`]), or prints the [`summary`] when no
//! endpoint is configured. Exited processes are reported once more, then their
//! kernel state is released. When exporting, long GIL waits also leave as spans
//! ([`spans`]): drained from the kernel every poll, sent once per interval. In
//! Kubernetes, [`kube`] adds each container's pod metadata from a watch on this
//! node's pods, running on a thread of its own.

pub mod full;
mod lookup;
pub mod summary;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::core::counters::WaitEpisode;
use crate::cpython::gil_sampler::SamplerPool;
use crate::probes::wait::WaitProbe;
use crate::watch::session::{ProcessWatch, Snapshot};

use crate::cli::settings::Settings;
use crate::error::RunError;
use crate::otel::catalog;
use crate::otel::export::{self, budget, hold, ExportStats, Exporter};
use crate::otel::otlp::{self, Clock};
use crate::otel::resource::{self, Host, ProcessFacts};
use crate::otel::series::{self, IntervalInput, Point, ProcessSeries, Value};
use crate::otel::Temporality;
use crate::otel::{http, kube, spans};
use crate::watch::discover::{self, Discovery, Identity, Verdict};

/// Under the lean encoding, metric descriptions go out every this many intervals
/// (and in the first): receivers keep them as metadata per metric name.
const DESCRIBE_EVERY: u64 = 60;

/// How often per-thread CPU is refreshed (threads that exit keep their last figures,
/// so a thread's last TICK of CPU can be missed when it exits).
const TICK: Duration = Duration::from_secs(2);

/// Set by SIGINT/SIGTERM: export what was seen and stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::debug!("cannot install a {signal} handler: {e}");
        }
    }
}

/// One watched process and its snapshots.
struct Watched {
    watch: ProcessWatch,
    identity: Identity,
    first: Snapshot,
    prev: Snapshot,
    resource: Vec<(String, String)>,
    facts: ProcessFacts,
    /// In a container whose pod was not known yet: look again each interval.
    pod_pending: bool,
}

/// Live threads of a process (0 once it is gone).
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The same process still runs under this pid (not exited, not exec'd into something else).
fn still_same(identity: &Identity) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", identity.pid))
        .is_ok_and(|exe| discover::same_executable(&identity.exe, &exe))
        && discover::start_ticks(identity.pid) == Some(identity.start_ticks)
}

/// The daemon's state between iterations.
struct Daemon {
    settings: Settings,
    probe: WaitProbe,
    /// Samples the GIL of every watched process, all from one thread.
    sampler: SamplerPool,
    discovery: Discovery,
    watched: HashMap<u32, Watched>,
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

/// Values of the agent's own counters kept for delta temporality: the exporter's,
/// lost episodes, then failed inserts per kernel map (from [`FIRST_FULL`] on).
const SELF_STATS: usize = FIRST_FULL + full::MAPS;

/// Index of the first map-full count in the self-telemetry values.
const FIRST_FULL: usize = 11;

/// Runs until SIGTERM/SIGINT (or `run_for`), exporting every interval.
pub fn run(settings: Settings) -> Result<(), RunError> {
    install_signal_handler();
    // Listen first: a port in use stops the start before the probe is loaded.
    let endpoints = match &settings.listen {
        Some(l) => Some(http::Endpoints::start(
            l.addr,
            &l.source,
            settings.interval,
        )?),
        None => None,
    };
    // The exporter next: a bad spool directory or endpoint is reported before BPF is loaded.
    let exporter = match &settings.export {
        Some(e) => {
            // A request older than a few intervals is stale; keep retrying it until then.
            let max_age = (settings.interval * 3).max(Duration::from_secs(30));
            tracing::info!(
                "exporting to {} ({:?}, {:?})",
                e.endpoint,
                e.protocol,
                e.compression
            );
            Some(Exporter::start(e, max_age, settings.interval)?)
        }
        None => None,
    };
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
    let mut daemon = Daemon {
        sampler: SamplerPool::start(settings.sample_hz),
        probe,
        discovery: Discovery::default(),
        watched: HashMap::new(),
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
            let done = STOP.load(Ordering::Relaxed)
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
                self.tick(false);
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
        self.watched.clear();
        if let Some(exporter) = self.exporter.take() {
            tracing::info!("{} intervals exported", self.intervals);
            exporter.shutdown(Duration::from_secs(5));
        }
    }

    /// Refreshes every watched process from procfs (per-thread CPU, GIL list);
    /// between intervals (`full` false) only the processes that used CPU.
    fn tick(&mut self, full: bool) {
        for w in self.watched.values_mut() {
            if w.watch.alive && !still_same(&w.identity) {
                w.watch.alive = false;
                // Exec'd into another program: count nothing more under it.
                if let Err(e) = self.probe.stop_counting(w.identity.pid) {
                    tracing::debug!("cannot stop counting process {}: {e}", w.identity.pid);
                }
            }
            if full {
                w.watch.refresh(&mut self.probe);
            } else {
                w.watch.refresh_if_busy(&mut self.probe);
            }
        }
    }

    /// The kernel counters of every watched process, read once for all (one pass
    /// over each BPF map, not one per process), once per interval: the daemon does
    /// not export blocked-by pairs, so holders need not be resolved every tick.
    fn read_counters(
        &mut self,
    ) -> std::collections::HashMap<u32, crate::probes::wait::WaitCounters> {
        let mut all = match self.probe.read_all() {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!("cannot read the kernel counters: {e}");
                HashMap::new()
            }
        };
        for (pid, w) in self.watched.iter_mut() {
            if let Some(counters) = all.get(pid) {
                w.watch.learn_holders(counters);
            }
        }
        all.retain(|pid, _| self.watched.contains_key(pid));
        all
    }

    /// Takes the kernel's episode records and resolves them while their threads
    /// live; dropped unread once the endpoint said it takes no traces.
    fn drain_episodes(&mut self) {
        let Some(episodes) = self.episodes.as_mut() else {
            return;
        };
        self.episode_buf.clear();
        self.probe.drain_episodes(&mut self.episode_buf);
        for w in self.watched.values_mut() {
            w.watch.drain_episodes(&mut self.episode_buf);
        }
        let refused = self
            .exporter
            .as_ref()
            .is_some_and(|e| e.stats().traces_refused.load(Ordering::Relaxed));
        if refused {
            return;
        }
        for record in &self.episode_buf {
            if let Some(w) = self.watched.get(&record.tgid) {
                episodes.record(record, &w.watch);
            }
        }
    }

    /// Lists /proc and attaches to new CPython processes.
    fn discover(&mut self) {
        let own = std::process::id();
        let listing = self.discovery.list();
        for &pid in &listing.pids {
            if self.watched.contains_key(&pid) {
                continue;
            }
            let Verdict::Attach(identity) = self.discovery.judge(pid, &self.settings.rules, own)
            else {
                continue;
            };
            match ProcessWatch::attach_with(pid, &mut self.probe, Some(&self.sampler)) {
                Ok(watch) => {
                    let version = watch.interp.file.version.to_string();
                    let facts = lookup::process_facts(pid, identity.start_ticks, version.clone());
                    let (resource, pod_pending) = self.resource_of(&facts);
                    tracing::info!(
                        "watching process {pid} (CPython {version}, {}) as {}",
                        watch.command,
                        resource::identifying(&resource)
                    );
                    let first = watch.first_snapshot();
                    self.watched.insert(
                        pid,
                        Watched {
                            watch,
                            identity,
                            prev: first.clone(),
                            first,
                            resource,
                            facts,
                            pod_pending,
                        },
                    );
                }
                Err(e) => self.discovery.retry_later(identity, &e),
            }
        }
        self.discovery.end_poll(&listing);
    }

    /// The resource of a process, and whether it waits for its pod's metadata
    /// (in a container, Kubernetes on, pod not seen yet).
    fn resource_of(&self, facts: &ProcessFacts) -> (Vec<(String, String)>, bool) {
        let container = resource::container_id_from_cgroup(&facts.cgroup);
        let pod = match (&self.kube, &container) {
            (Some(kube), Some(id)) => kube.lookup(id),
            _ => None,
        };
        let pending = self.kube.is_some() && container.is_some() && pod.is_none();
        let resource = resource::process_resource(
            facts,
            &self.host,
            self.settings.tenant.as_ref(),
            pod.as_ref(),
        );
        (resource, pending)
    }

    /// Gives processes whose pod was not known at attach time their pod metadata.
    fn complete_pods(&mut self) {
        let pending: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| w.pod_pending)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pending {
            let Some(facts) = self.watched.get(&pid).map(|w| w.facts.clone()) else {
                continue;
            };
            let (resource, still) = self.resource_of(&facts);
            if let Some(w) = self.watched.get_mut(&pid) {
                if !still {
                    tracing::info!("process {pid} is {}", resource::identifying(&resource));
                    w.resource = resource;
                }
                w.pod_pending = still;
            }
        }
    }

    /// Builds, exports (or prints) one interval, then releases exited processes.
    fn interval(&mut self) {
        self.complete_pods();
        let now = Instant::now();
        let interval_s = now.duration_since(self.last_interval).as_secs_f64();
        self.last_interval = now;
        let temporality = self.temporality();
        self.tick(true);
        self.drain_episodes();
        let mut counters = self.read_counters();
        let mut all: Vec<ProcessSeries> = Vec::with_capacity(self.watched.len());
        let mut span_resources = Vec::new();
        for (pid, w) in self.watched.iter_mut() {
            let cur = w
                .watch
                .snapshot_with(counters.remove(pid).unwrap_or_default());
            let window = temporality.window(&w.first, &w.prev);
            let mut series = series::process_series(&IntervalInput {
                interval: &w.watch.measurement(&w.prev, &cur),
                counted: &w.watch.measurement(window, &cur),
                counted_from: window.at,
                at: cur.at,
                thread_count: thread_count(w.watch.pid()),
                temporality,
                per_thread: self.settings.per_thread.filter(|_| {
                    !self
                        .budget
                        .as_ref()
                        .is_some_and(|b| b.level().per_thread_dropped)
                }),
                resource: &w.resource,
            });
            if let Some(episodes) = self.episodes.as_mut() {
                let kept = episodes.take(*pid, &w.watch);
                if !kept.is_empty() {
                    span_resources.push(otlp::resource_spans(&w.resource, &kept, &self.clock));
                }
                series
                    .points
                    .extend(episodes.points(*pid, temporality, window.at));
            }
            w.prev = cur;
            all.push(series);
        }
        let dropped = self.entries_dropped();
        let probe = &self.probe;
        self.full.report(&dropped, |map| probe.capacity(map));
        if self.exporter.is_some() {
            let encoding = self.encoding();
            let mut resources: Vec<_> = all
                .iter()
                .map(|s| otlp::resource_metrics(s, &self.clock, temporality, encoding, now))
                .collect();
            resources.push(self.self_telemetry(now, temporality, encoding));
            self.intervals += 1;
            self.held.add(resources, span_resources, now);
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
                e.publish(&all, (&resource, &points), temporality);
            }
        }
        if self.settings.summary && !all.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(summary::render(&all, interval_s).as_bytes());
            let _ = out.flush();
        }
        let gone: Vec<u32> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.watch.alive)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(episodes) = self.episodes.as_mut() {
                episodes.forget(pid);
            }
            if let Some(w) = self.watched.remove(&pid) {
                self.released_episodes_lost += w.watch.episodes_lost();
                if let Some(counts) = w.watch.entries_dropped() {
                    self.full.release(&counts);
                }
                if discover::start_ticks(pid) == Some(w.identity.start_ticks) {
                    tracing::info!(
                        "process {pid} now runs another program (exec); released its kernel state"
                    );
                } else {
                    tracing::info!("process {pid} exited; released its kernel state");
                }
                w.watch.detach(&mut self.probe);
            }
        }
    }

    /// Hands what is held to the exporter when it is due (or `now_anyway`, at a stop).
    fn send_held(&mut self, now: Instant, now_anyway: bool) {
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

    /// The export interval now: the configured one, stretched by the byte budget.
    fn interval_now(&self) -> Duration {
        let multiplier = self.budget.as_ref().map_or(1, |b| b.level().multiplier);
        self.settings.interval * multiplier
    }

    /// The request shape of this interval.
    fn encoding(&self) -> otlp::Encoding {
        let lean = self.settings.lean_encoding;
        otlp::Encoding {
            lean,
            describe: !lean || self.intervals.is_multiple_of(DESCRIBE_EVERY),
        }
    }

    fn temporality(&self) -> Temporality {
        self.settings
            .export
            .as_ref()
            .map_or(self.settings.temporality, |e| e.temporality)
    }

    /// Failed inserts per kernel map since the start: the futex probe's, then the
    /// musl probes' (live and released).
    fn entries_dropped(&mut self) -> [(&'static str, u64); full::MAPS] {
        let musl: Vec<full::Counts> = self
            .watched
            .values()
            .filter_map(|w| w.watch.entries_dropped())
            .collect();
        self.full.totals(self.probe.entries_dropped(), musl.iter())
    }

    /// The exporter's counters since the start (zeros without an exporter).
    fn export_counts(&mut self) -> [u64; SELF_STATS] {
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
                    .watched
                    .values()
                    .map(|w| w.watch.episodes_lost())
                    .sum::<u64>(),
            0,
        ];
        let mut values = [0; SELF_STATS];
        values[..FIRST_FULL].copy_from_slice(&exported);
        for (value, (_, n)) in values[FIRST_FULL..].iter_mut().zip(dropped) {
            *value = n;
        }
        values
    }

    /// The agent's own counters, under its own resource.
    fn self_telemetry(
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
    fn agent_points(&self, shown: [u64; SELF_STATS], start: Instant, now: Instant) -> Vec<Point> {
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
                value: Value::Int(self.watched.len() as i64),
                start: now,
            },
        ];
        // The musl maps only once a musl process was watched: elsewhere they do not exist.
        let maps = crate::probes::wait::FULL_MAPS
            .iter()
            .chain(crate::probes::condwait::FULL_MAPS.iter())
            .take(match self.full.musl_seen() {
                true => full::MAPS,
                false => full::MAPS / 2,
            });
        for (map, n) in maps.zip(&shown[FIRST_FULL..]) {
            points.push(Point {
                metric: &catalog::BPF_ENTRIES_DROPPED,
                attributes: vec![("gilscope.bpf.map", map.to_string())],
                value: Value::Int(*n as i64),
                start,
            });
        }
        points
    }

    /// The agent's own resource.
    fn agent_resource(&self) -> Vec<(String, String)> {
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

    fn last_interval_start(&self, now: Instant) -> Instant {
        now.checked_sub(self.interval_now())
            .unwrap_or(self.started)
            .max(self.started)
    }
}
