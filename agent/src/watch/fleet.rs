//! Every CPython process on the host (or a chosen few), measured interval by interval.
//!
//! [`LiveSet::refresh`] finds CPython processes in procfs (once per process:
//! a process that is not CPython, or not a supported one, is remembered and not
//! looked at again), watches the new ones, forgets the ones that exited (their
//! kernel state is released), and reports what each did since the previous
//! refresh. `gilscope top` draws these reports; nothing here prints.

use std::collections::{BTreeMap, HashMap};

use crate::core::analyse::{analyse, estimate};
use crate::core::diagnose::{diagnose, Facts};
use crate::core::report::{Diagnosis, Estimate, ProcessReport, ThreadReport};
use crate::cpython::gil_sampler::SamplerPool;
use crate::error::{Error, Result};
use crate::probes::wait::WaitProbe;
use crate::watch::session::{ProcessWatch, Snapshot};

/// Attempts on a process whose interpreter is still starting (GIL not there yet).
const MAX_ATTEMPTS: u32 = 10;

/// What one process did over the last interval.
#[derive(Debug, Clone)]
pub struct ProcessView {
    pub pid: u32,
    pub command: String,
    pub version: String,
    pub process: ProcessReport,
    pub threads: Vec<ThreadReport>,
    pub diagnosis: Vec<Diagnosis>,
    pub estimate: Estimate,
}

struct Live {
    watch: ProcessWatch,
    last: Snapshot,
}

/// Why a pid is not watched, remembered per process start time (pids are reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Skipped {
    start_time: u64,
    attempts: u32,
    final_: bool,
}

/// The watched processes and the one wait probe they share.
pub struct LiveSet {
    probe: WaitProbe,
    only: Option<Vec<u32>>,
    /// One sampler thread for every watched process (not one thread each).
    sampler: SamplerPool,
    live: BTreeMap<u32, Live>,
    skipped: HashMap<u32, Skipped>,
    own_pid: u32,
}

fn start_time(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}

/// Cheap first look: does anything mapped look like a CPython interpreter?
fn looks_like_python(pid: u32) -> bool {
    crate::cpython::find::locate::candidate_files(pid).is_ok_and(|files| {
        files.iter().any(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python") || n.starts_with("libpython"))
        })
    })
}

impl LiveSet {
    /// Loads the wait probe. `only`: watch just these pids (`--pid`), else every
    /// CPython process on the host.
    pub fn new(only: Option<Vec<u32>>, sample_hz: u32) -> Result<Self> {
        Ok(Self {
            probe: WaitProbe::load()?,
            only,
            sampler: SamplerPool::start(sample_hz),
            live: BTreeMap::new(),
            skipped: HashMap::new(),
            own_pid: std::process::id(),
        })
    }

    fn candidates(&self) -> Vec<u32> {
        match &self.only {
            Some(pids) => pids.clone(),
            None => procfs::process::all_processes()
                .map(|all| {
                    all.filter_map(|p| p.ok())
                        .map(|p| p.pid() as u32)
                        .filter(|&pid| pid != self.own_pid)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn try_watch(&mut self, pid: u32) {
        let Some(start) = start_time(pid) else {
            return;
        };
        let entry = self.skipped.entry(pid).or_insert(Skipped {
            start_time: start,
            attempts: 0,
            final_: false,
        });
        if entry.start_time != start {
            *entry = Skipped {
                start_time: start,
                attempts: 0,
                final_: false,
            };
        }
        if entry.final_ || entry.attempts >= MAX_ATTEMPTS {
            return;
        }
        entry.attempts += 1;
        if self.only.is_none() && !looks_like_python(pid) {
            entry.final_ = true;
            return;
        }
        match ProcessWatch::attach_with(pid, &mut self.probe, Some(&self.sampler)) {
            Ok(watch) => {
                self.skipped.remove(&pid);
                let last = watch.first_snapshot();
                self.live.insert(pid, Live { watch, last });
            }
            Err(e @ (Error::NotPython { .. } | Error::UnsupportedVersion { .. })) => {
                tracing::debug!("not watching {pid}: {e}");
                entry.final_ = true;
            }
            Err(e) => tracing::debug!("process {pid} not watchable yet: {e}"),
        }
    }

    /// Watches new processes, drops exited ones, and reports the interval since
    /// the previous refresh for every watched process, busiest GIL first.
    pub fn refresh(&mut self) -> Vec<ProcessView> {
        for pid in self.candidates() {
            if !self.live.contains_key(&pid) {
                self.try_watch(pid);
            }
        }
        for live in self.live.values_mut() {
            live.watch.refresh(&mut self.probe);
        }
        // One pass over the kernel maps for every process, not one per process.
        let mut counters = self.probe.read_all().unwrap_or_default();
        let mut views = Vec::with_capacity(self.live.len());
        let mut gone = Vec::new();
        for (pid, live) in self.live.iter_mut() {
            if !live.watch.alive {
                gone.push(*pid);
                continue;
            }
            let now = live
                .watch
                .snapshot_with(counters.remove(pid).unwrap_or_default());
            let m = live.watch.measurement(&live.last, &now);
            live.last = now;
            let (process, threads) = analyse(&m);
            let diagnosis = diagnose(&Facts {
                process: &process,
                threads: &threads,
                locks: None,
                children: &[],
            });
            views.push(ProcessView {
                pid: *pid,
                command: live.watch.command.clone(),
                version: m.interpreter.version.clone(),
                estimate: estimate(&process, &threads),
                process,
                threads,
                diagnosis,
            });
        }
        for pid in gone {
            if let Some(live) = self.live.remove(&pid) {
                live.watch.detach(&mut self.probe);
            }
        }
        self.skipped
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
        views.sort_by(|a, b| {
            b.process
                .gil_queue_length
                .total_cmp(&a.process.gil_queue_length)
                .then(a.pid.cmp(&b.pid))
        });
        views
    }

    /// Stops watching everything and releases the kernel state.
    pub fn close(mut self) {
        let live = std::mem::take(&mut self.live);
        for (_, l) in live {
            l.watch.detach(&mut self.probe);
        }
    }
}
