//! The child processes of a measured process: worker pools.
//!
//! `multiprocessing` and `ProcessPoolExecutor` run the work in child CPython
//! processes, so whether a pool pays off is only visible when the children are
//! measured next to the parent. [`Children`] is a [`Fleet`] of the measured
//! process's descendants (a forked worker is watchable at once, a spawned one
//! once its interpreter is up); their figures are kept after they exit.

use std::time::{Duration, Instant};

use crate::core::report::ChildReport;
use crate::probes::wait::WaitProbe;
use crate::watch::fleet::{Fleet, Member, Scope};
use crate::watch::session::Snapshot;

/// Children watched at most (the kernel filter and the tick stay small).
pub const MAX_CHILDREN: usize = 64;
/// procfs is scanned for new children this often (every process's stat is read).
const SCAN_EVERY: Duration = Duration::from_millis(300);

const NS: f64 = 1e9;

/// The watched descendants of one process.
pub struct Children {
    fleet: Fleet,
    started: Instant,
    last_scan: Option<Instant>,
}

impl Children {
    /// Nothing is read until the first [`Children::tick`].
    pub fn new(root: u32) -> Self {
        Self {
            fleet: Fleet::new(
                Scope::Descendants {
                    root,
                    max: MAX_CHILDREN,
                },
                None,
            ),
            started: Instant::now(),
            last_scan: None,
        }
    }

    /// Finds new CPython descendants (every [`SCAN_EVERY`]) and refreshes the watched ones.
    pub fn tick(&mut self, probe: &mut WaitProbe) {
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            self.last_scan = Some(Instant::now());
            for pid in self.fleet.discover(probe, |_, _| ()) {
                tracing::debug!("watching child {pid}");
            }
        }
        self.fleet.tick(probe);
    }

    /// How many children are watched.
    pub fn count(&self) -> usize {
        self.fleet.members().len()
    }

    /// Reads the final counters, clears the kernel state, and reports each child.
    pub fn finish(mut self, probe: &mut WaitProbe) -> Vec<ChildReport> {
        let counters = self.fleet.read_counters(probe);
        let mut reports = Vec::with_capacity(self.count());
        self.fleet.end_interval(probe, counters, |m, last| {
            reports.push(report(m, last, self.started));
        });
        self.fleet.finish(probe);
        reports
    }
}

/// What one child did from when watching began to `last`.
fn report(m: &Member<()>, last: &Snapshot, started: Instant) -> ChildReport {
    let watch = &m.session;
    // From the first snapshot, with threads retired meanwhile rebased: exact.
    let done = watch.measurement(&m.first, last);
    let cpu_ns: u64 = done
        .cpu_end
        .iter()
        .map(|(tid, end)| {
            let start = done.cpu_start.get(tid).map_or(0, |s| s.on_cpu_ns);
            end.on_cpu_ns.saturating_sub(start)
        })
        .sum();
    let watched_s = watch.watched_s().max(1e-3);
    let waits = done.waits.threads.values();
    let gil_wait_ns: u64 = waits
        .clone()
        .map(|w| w.take_wait_ns + w.mutex_wait_ns)
        .sum();
    let futex_ns: u64 = waits.map(|w| w.other_wait_ns).sum();
    let cpu_s = cpu_ns as f64 / NS;
    ChildReport {
        pid: watch.pid(),
        command: watch.command.clone(),
        version: watch.interp.file.version.to_string(),
        started_after_s: watch.since.saturating_duration_since(started).as_secs_f64(),
        watched_s,
        exited: !watch.alive,
        threads: watch.cpu_last.len(),
        cpu_s,
        busy_share: cpu_s / watched_s,
        gil_wait_s: gil_wait_ns as f64 / NS,
        futex_wait_s: futex_ns as f64 / NS,
    }
}
