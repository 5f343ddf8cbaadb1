//! `gilscope run`: the node daemon. Watches every CPython process of the node
//! and exports what it sees as OpenTelemetry metrics every interval.
//!
//! One loop, one thread (plus one GIL sampler thread for all processes and the export worker):
//! every poll it lists /proc and attaches to new CPython processes
//! ([`discover`]); every second it refreshes per-thread CPU of the watched ones;
//! every interval it turns each process's snapshots into data points
//! ([`metrics`]) with its resource ([`resource`]), encodes them ([`otlp`]) and
//! queues them for the exporter ([`export`]), or prints the [`summary`] when no
//! endpoint is configured. Exited processes are reported once more, then their
//! kernel state is released.

pub mod config;
pub mod discover;
pub mod error;
pub mod export;
pub mod metrics;
pub mod otlp;
pub mod resource;
pub mod summary;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bpf::wait_probe::WaitProbe;
use crate::gil_sampler::SamplerPool;
use crate::watch::{ProcessWatch, Snapshot};

use config::{Settings, Temporality};
use discover::{Discovery, Identity, Verdict};
use error::RunError;
use export::{ExportStats, Exporter};
use metrics::{IntervalInput, Point, ProcessSeries, Value};
use otlp::Clock;
use resource::{Host, ProcessFacts};

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
}

/// Live threads of a process (0 once it is gone).
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The same process still runs under this pid (not exited, not exec'd into something else).
fn still_same(identity: &Identity) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", identity.pid)).is_ok_and(|exe| exe == identity.exe)
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
    started: Instant,
    /// Self-telemetry at the previous interval (for delta temporality).
    prev_stats: [u64; 8],
    last_interval: Instant,
}

/// Runs until SIGTERM/SIGINT (or `run_for`), exporting every interval.
pub fn run(settings: Settings) -> Result<(), RunError> {
    install_signal_handler();
    let probe = WaitProbe::load()?;
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
    let now = Instant::now();
    let mut daemon = Daemon {
        sampler: SamplerPool::start(settings.sample_hz),
        settings,
        probe,
        discovery: Discovery::default(),
        watched: HashMap::new(),
        host: Host::detect(),
        clock: Clock::new(),
        exporter,
        started: now,
        prev_stats: [0; 8],
        last_interval: now,
    };
    daemon.main_loop();
    Ok(())
}

impl Daemon {
    fn main_loop(&mut self) {
        let mut next_tick = Instant::now() + TICK;
        let mut next_export = Instant::now() + self.settings.interval;
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
            let now = Instant::now();
            if now >= next_tick {
                self.tick(false);
                next_tick = now + TICK;
            }
            if now >= next_export {
                self.interval();
                next_export += self.settings.interval;
                if next_export < now {
                    next_export = now + self.settings.interval;
                }
            }
            let wake = (Instant::now() + self.settings.poll).min(next_export);
            let nap = wake.saturating_duration_since(Instant::now());
            std::thread::sleep(nap.max(Duration::from_millis(1)));
        }
        // A last (partial) interval, so a stop does not lose the tail. The kernel
        // state goes with the probe when the process exits: no per-process detach.
        self.interval();
        self.watched.clear();
        if let Some(exporter) = self.exporter.take() {
            exporter.shutdown(Duration::from_secs(5));
        }
    }

    /// Refreshes every watched process from procfs (per-thread CPU, GIL list);
    /// between intervals (`full` false) only the processes that used CPU.
    fn tick(&mut self, full: bool) {
        for w in self.watched.values_mut() {
            if w.watch.alive && !still_same(&w.identity) {
                w.watch.alive = false;
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
    ) -> std::collections::HashMap<u32, crate::bpf::wait_probe::WaitCounters> {
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
                    let facts = ProcessFacts::read(pid, identity.start_ticks, version.clone());
                    let resource = resource::process_resource(
                        &facts,
                        &self.host,
                        self.settings.tenant.as_ref(),
                    );
                    tracing::info!(
                        "watching process {pid} (CPython {version}, {})",
                        watch.command
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
                        },
                    );
                }
                Err(e) => self.discovery.retry_later(identity, &e),
            }
        }
        self.discovery.end_poll(&listing);
    }

    /// Builds, exports (or prints) one interval, then releases exited processes.
    fn interval(&mut self) {
        let now = Instant::now();
        let interval_s = now.duration_since(self.last_interval).as_secs_f64();
        self.last_interval = now;
        let temporality = self.temporality();
        self.tick(true);
        let mut counters = self.read_counters();
        let mut all: Vec<ProcessSeries> = Vec::with_capacity(self.watched.len());
        for (pid, w) in self.watched.iter_mut() {
            let cur = w
                .watch
                .snapshot_with(counters.remove(pid).unwrap_or_default());
            let series = metrics::process_series(&IntervalInput {
                watch: &w.watch,
                first: &w.first,
                prev: &w.prev,
                cur: &cur,
                thread_count: thread_count(w.watch.pid()),
                temporality,
                per_thread: self.settings.per_thread,
                resource: &w.resource,
            });
            w.prev = cur;
            all.push(series);
        }
        if self.exporter.is_some() {
            let mut resources: Vec<_> = all
                .iter()
                .map(|s| otlp::resource_metrics(s, &self.clock, temporality))
                .collect();
            resources.push(self.self_telemetry(now, temporality));
            let batch_points = self
                .settings
                .export
                .as_ref()
                .map_or(config::DEFAULT_BATCH_POINTS, |e| e.batch_points);
            if let Some(exporter) = &self.exporter {
                for (request, points) in otlp::batch(resources, batch_points) {
                    exporter.submit(request, points);
                }
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
            if let Some(w) = self.watched.remove(&pid) {
                tracing::info!("process {pid} exited; released its kernel state");
                w.watch.detach(&mut self.probe);
            }
        }
    }

    fn temporality(&self) -> Temporality {
        self.settings
            .export
            .as_ref()
            .map_or(self.settings.temporality, |e| e.temporality)
    }

    /// The agent's own counters, under its own resource.
    fn self_telemetry(
        &mut self,
        now: Instant,
        temporality: Temporality,
    ) -> opentelemetry_proto::tonic::metrics::v1::ResourceMetrics {
        let stats = self.exporter.as_ref().map(Exporter::stats);
        let get = |f: fn(&ExportStats) -> &std::sync::atomic::AtomicU64| {
            stats.as_ref().map_or(0, |s| ExportStats::get(f(s)))
        };
        let values = [
            get(|s| &s.points_sent),
            get(|s| &s.points_dropped),
            get(|s| &s.requests_sent),
            get(|s| &s.requests_failed),
            get(|s| &s.requests_dropped),
            get(|s| &s.bytes_sent),
            get(|s| &s.retries),
            0,
        ];
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
        let counter = |metric, outcome: Option<&str>, v: u64| Point {
            metric,
            attributes: outcome
                .map(|o| vec![("outcome", o.to_string())])
                .unwrap_or_default(),
            value: Value::Int(v as i64),
            start,
        };
        let points = vec![
            counter(&metrics::EXPORT_POINTS, Some("sent"), shown[0]),
            counter(&metrics::EXPORT_POINTS, Some("dropped"), shown[1]),
            counter(&metrics::EXPORT_REQUESTS, Some("sent"), shown[2]),
            counter(&metrics::EXPORT_REQUESTS, Some("failed"), shown[3]),
            counter(&metrics::EXPORT_REQUESTS, Some("dropped"), shown[4]),
            counter(&metrics::EXPORT_BYTES, None, shown[5]),
            counter(&metrics::EXPORT_RETRIES, None, shown[6]),
            Point {
                metric: &metrics::PROCESSES_WATCHED,
                attributes: Vec::new(),
                value: Value::Int(self.watched.len() as i64),
                start: now,
            },
        ];
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
        otlp::resource_metrics_of(&resource, &points, now, &self.clock, temporality)
    }

    fn last_interval_start(&self, now: Instant) -> Instant {
        now.checked_sub(self.settings.interval)
            .unwrap_or(self.started)
            .max(self.started)
    }
}
