//! The child processes of a measured process: worker pools.
//!
//! `multiprocessing` and `ProcessPoolExecutor` run the work in child CPython
//! processes, so whether a pool pays off is only visible when the children are
//! measured next to the parent. Every tick, [`Children`] looks for new
//! descendants of the measured pid, watches those that are CPython (a forked
//! worker is watchable at once; a spawned one once its interpreter is up), and
//! keeps their figures after they exit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::report::ChildReport;
use crate::error::Error;
use crate::probes::wait::WaitProbe;
use crate::watch::session::{descendants, ProcessWatch};

/// Children watched at most (the kernel filter and the tick stay small).
pub const MAX_CHILDREN: usize = 64;
/// Attempts to attach to a child that is not (yet) a CPython with a GIL.
const MAX_ATTEMPTS: u32 = 20;
/// procfs is scanned for new children this often (every process's stat is read).
const SCAN_EVERY: Duration = Duration::from_millis(300);

/// The watched descendants of one process.
pub struct Children {
    root: u32,
    watches: Vec<ProcessWatch>,
    attempts: HashMap<u32, u32>,
    /// Children found on the first scan existed before measuring began: their
    /// earlier CPU is not counted. Later ones are counted from birth.
    first_scan: bool,
    started: Instant,
    last_scan: Option<Instant>,
}

const NS: f64 = 1e9;

impl Children {
    /// Nothing is read until the first [`Children::tick`].
    pub fn new(root: u32) -> Self {
        Self {
            root,
            watches: Vec::new(),
            attempts: HashMap::new(),
            first_scan: true,
            started: Instant::now(),
            last_scan: None,
        }
    }

    /// Finds new CPython descendants and refreshes the watched ones.
    pub fn tick(&mut self, probe: &mut WaitProbe) {
        if self.last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
            self.last_scan = Some(Instant::now());
            self.scan(probe);
        }
        for watch in &mut self.watches {
            watch.tick(probe);
        }
    }

    fn scan(&mut self, probe: &mut WaitProbe) {
        for pid in descendants(self.root) {
            if self.watches.len() >= MAX_CHILDREN {
                break;
            }
            if self.watches.iter().any(|w| w.pid() == pid) {
                continue;
            }
            let attempts = self.attempts.entry(pid).or_default();
            if *attempts >= MAX_ATTEMPTS {
                continue;
            }
            *attempts += 1;
            match ProcessWatch::attach(pid, probe) {
                Ok(mut watch) => {
                    if !self.first_scan {
                        watch.cpu_start.clear();
                    }
                    tracing::debug!("watching child {pid}: {}", watch.command);
                    self.watches.push(watch);
                }
                Err(
                    Error::UnsupportedVersion { .. }
                    | Error::Permission { .. }
                    | Error::UprobePermission { .. },
                ) => {
                    *attempts = MAX_ATTEMPTS;
                }
                Err(e) => tracing::debug!("child {pid} not watchable yet: {e}"),
            }
        }
        self.first_scan = false;
    }

    /// How many children are watched.
    pub fn count(&self) -> usize {
        self.watches.len()
    }

    /// Reads the final counters, clears the kernel state, and reports each child.
    pub fn finish(self, probe: &mut WaitProbe) -> Vec<ChildReport> {
        let mut out = Vec::with_capacity(self.watches.len());
        for mut watch in self.watches {
            let pid = watch.pid();
            let waits = probe.read(pid).unwrap_or_default();
            watch.learn_holders(&waits);
            let cpu_ns: u64 = watch
                .cpu_last
                .iter()
                .map(|(tid, end)| {
                    let start = watch.cpu_start.get(tid).map_or(0, |s| s.on_cpu_ns);
                    end.on_cpu_ns.saturating_sub(start)
                })
                .sum();
            let watched_s = watch.watched_s().max(1e-3);
            let gil_wait_ns: u64 = waits
                .threads
                .values()
                .map(|w| w.take_wait_ns + w.mutex_wait_ns)
                .sum();
            let futex_ns: u64 = waits.threads.values().map(|w| w.other_wait_ns).sum();
            let cpu_s = cpu_ns as f64 / NS;
            out.push(ChildReport {
                pid,
                command: watch.command.clone(),
                version: watch.interp.file.version.to_string(),
                started_after_s: watch
                    .since
                    .saturating_duration_since(self.started)
                    .as_secs_f64(),
                watched_s,
                exited: !watch.alive,
                threads: watch.cpu_last.len(),
                cpu_s,
                busy_share: cpu_s / watched_s,
                gil_wait_s: gil_wait_ns as f64 / NS,
                futex_wait_s: futex_ns as f64 / NS,
            });
            watch.detach(probe);
        }
        out
    }
}
