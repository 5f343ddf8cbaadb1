//! One CPython process under watch, for as long as it lives.
//!
//! A [`ProcessWatch`] finds the interpreter and GIL of a running process,
//! registers it with the shared [`WaitProbe`] (the kernel filter), and on every
//! [`ProcessWatch::tick`] keeps the GIL list current (subinterpreters come and
//! go), the last-seen CPU of every thread (so threads that exit keep their
//! figures) and the holder thread states resolved to tids while they are still
//! alive. `check` uses it for the child processes of the measured one (worker
//! pools); the live views use it for every process they show.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::analyse::{CpuEnvironment, Measurement};
use crate::core::counters::{EntriesDropped, WaitCounters};
use crate::core::cpu::{ThreadSample, Throttling};
use crate::core::report::{InterpreterInfo, Mode};
use crate::core::retire::{self, Retirement};
use crate::core::samples::GilSamples;
use crate::cpython::find::locate::{self, GilSite, Interpreter};
use crate::cpython::gil_sampler::{SampledProcess, SamplerPool, TstateResolver};
use crate::cpython::layout::versions::ThreadIdField;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::thread_names::ThreadNameReader;
use crate::error::Result;
use crate::os::cgroup::{affinity_cpus, throttled_between, CpuCgroup};
use crate::os::threads::{sample_threads, sample_threads_named};
use crate::probes::condwait::{self, CondWaitProbe};
use crate::probes::wait::WaitProbe;
use crate::probes::MAX_GILS;
use crate::watch::retire::{retire_due, Sources};

/// Process CPU (clock ticks, all threads, exited ones included) below which a
/// [`ProcessWatch::refresh_if_busy`] skips the per-thread read: a thread that
/// exits unseen can only take less than this with it (50 ms at 100 Hz).
const UNSEEN_CPU_TICKS: u64 = 5;

/// How often thread names (OS and Python) are read again although no thread
/// came or went: catches a thread renamed after it started, within this long.
const NAMES_EVERY: Duration = Duration::from_secs(30);

/// Cumulative counters of one process at one instant; two of them give an interval.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    /// Last-seen procfs counters of every thread, exited ones included.
    pub threads: BTreeMap<u32, ThreadSample>,
    pub waits: WaitCounters,
    pub gil: GilSamples,
    /// Throttling of each cgroup level, leaf first (empty: no cgroup found).
    pub throttling: Vec<Throttling>,
}

/// What a report says about the interpreter, from what was found and sampled.
pub fn interpreter_info(
    interp: &Interpreter,
    gil: &GilSite,
    samples: &GilSamples,
) -> InterpreterInfo {
    InterpreterInfo {
        executable: interp.executable.display().to_string(),
        library: interp
            .is_library
            .then(|| interp.path_in_process.display().to_string()),
        version: interp.file.version.to_string(),
        stripped: interp.file.stripped,
        gil_enabled: samples.gil_enabled.unwrap_or(!gil.free_threaded),
        gil_enabled_changed: samples.gil_enabled_changes > 0,
        free_threaded: gil.free_threaded,
        libc: interp.libc.name(),
    }
}

/// A watched process and what has been seen of it so far.
pub struct ProcessWatch {
    pub interp: Interpreter,
    pub gil: GilSite,
    /// When watching began.
    pub since: Instant,
    /// The command line, for people (`python3 worker.py`).
    pub command: String,
    /// procfs counters when watching began.
    pub cpu_start: BTreeMap<u32, ThreadSample>,
    /// The last procfs counters of every thread seen, including exited ones.
    pub cpu_last: BTreeMap<u32, ThreadSample>,
    /// When the process was last seen alive.
    pub last_seen: Instant,
    pub alive: bool,
    resolver: Arc<TstateResolver>,
    /// This process on a sampler thread (the caller's shared pool, or `own_pool`).
    sampler: Option<SampledProcess>,
    /// The sampler thread of this process alone ([`ProcessWatch::attach_sampled`]).
    own_pool: Option<SamplerPool>,
    name_reader: ThreadNameReader,
    /// Python `threading` names by tid, the last seen of each thread.
    python_names: HashMap<u32, String>,
    /// The live threads at the last refresh (a change means names to read).
    live_tids: Vec<u32>,
    /// Read every name at the next refresh: threads came or went at the last one
    /// (a new thread may name itself just after it appears).
    names_pending: bool,
    /// When every name was last read.
    names_read_at: Instant,
    /// The process's CPU (clock ticks) at the last per-thread read.
    cpu_ticks_read: u64,
    cgroup: Option<CpuCgroup>,
    throttling_start: Vec<Throttling>,
    holder_tids: HashMap<u64, u32>,
    watched_gils: Vec<u64>,
    mem: RemoteMemory,
    /// musl only: GIL waits come from the libc condvar wait, not from futex addresses.
    condwait: Option<CondWaitProbe>,
    /// Exited threads: which are gone, and the row the retired ones were folded into.
    exits: Retirement,
}

/// A process's command line as one short line (NULs to spaces, at most 200 chars).
pub fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut text: String = String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 200 {
        text = text.chars().take(199).collect::<String>() + "…";
    }
    text
}

impl ProcessWatch {
    /// Starts watching a running CPython process whose GIL already exists.
    pub fn attach(pid: u32, probe: &mut WaitProbe) -> Result<Self> {
        Self::attach_with(pid, probe, None)
    }

    /// As [`ProcessWatch::attach`], and samples the GIL state at `sample_hz`
    /// (hold shares, utilization, switches) when given, on a thread of its own.
    pub fn attach_sampled(pid: u32, probe: &mut WaitProbe, sample_hz: Option<u32>) -> Result<Self> {
        let own_pool = sample_hz.map(SamplerPool::start);
        let mut watch = Self::attach_with(pid, probe, own_pool.as_ref())?;
        watch.own_pool = own_pool;
        Ok(watch)
    }

    /// As [`ProcessWatch::attach`], and samples the GIL state on `pool`'s thread
    /// when given: a watcher of many processes samples them all from one thread.
    pub fn attach_with(
        pid: u32,
        probe: &mut WaitProbe,
        pool: Option<&SamplerPool>,
    ) -> Result<Self> {
        let interp = locate::require_interpreter(pid)?;
        let mem = RemoteMemory::new(pid);
        let gil = interp.resolve_gil(&mem)?;
        locate::read_gil_state(pid, &mem, &gil)?;
        let cpu_start = sample_threads(pid)?;
        let gils = locate::all_gils(&mem, &gil, MAX_GILS);
        probe.watch(pid, &gils, &gil.layout)?;
        let condwait = match crate::cpython::find::libc::require_measurable(&interp)?.cond_wait {
            Some(site) => {
                let mut c =
                    CondWaitProbe::attach_with_episodes(pid, &site, probe.episode_threshold_ns())?;
                c.watch(pid, &gils, &gil.layout)?;
                Some(c)
            }
            None => None,
        };
        let pthread_tid_off = match gil.thread_id {
            ThreadIdField::PthreadOnly(_) => locate::glibc_pthread_tid_offset(pid),
            ThreadIdField::NativeThreadId(_) => None,
        };
        let now = Instant::now();
        let resolver = Arc::new(TstateResolver::new(mem, gil.thread_id, pthread_tid_off));
        let sampler = pool.map(|p| p.add(pid, gil, Arc::clone(&resolver)));
        let cgroup = CpuCgroup::of(pid);
        let throttling_start = cgroup
            .as_ref()
            .map(CpuCgroup::throttling)
            .unwrap_or_default();
        Ok(Self {
            name_reader: ThreadNameReader::new(&interp, &gil, mem),
            python_names: HashMap::new(),
            live_tids: cpu_start.keys().copied().collect(),
            names_pending: true,
            names_read_at: Instant::now(),
            cpu_ticks_read: process_cpu_ticks(pid).unwrap_or(0),
            resolver,
            sampler,
            own_pool: None,
            cgroup,
            throttling_start,
            command: command_line(pid),
            interp,
            gil,
            since: now,
            cpu_last: cpu_start.clone(),
            cpu_start,
            last_seen: now,
            alive: true,
            holder_tids: HashMap::new(),
            watched_gils: gils,
            mem,
            condwait,
            exits: Retirement::default(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.interp.pid
    }

    /// Refreshes GILs, per-thread CPU and holder names; marks the process gone
    /// when procfs no longer has it.
    pub fn tick(&mut self, probe: &mut WaitProbe) {
        self.refresh(probe);
        if !self.alive {
            return;
        }
        if let Ok(counters) = self.read_waits(probe) {
            self.learn_holders(&counters);
        }
    }

    /// [`ProcessWatch::refresh`] when the process used CPU since the last
    /// per-thread read (at least [`UNSEEN_CPU_TICKS`]), else only its GIL list and
    /// one file for the whole process. A periodic refresh exists so that exiting
    /// threads keep their CPU; an idle process has none to lose, and reading a
    /// file per thread of a thousand idle threads every tick was the daemon's
    /// largest cost. The caller still calls [`ProcessWatch::refresh`] before a
    /// snapshot.
    pub fn refresh_if_busy(&mut self, probe: &mut WaitProbe) {
        if !self.alive {
            return;
        }
        let pid = self.pid();
        match process_cpu_ticks(pid) {
            Some(ticks) if ticks.saturating_sub(self.cpu_ticks_read) < UNSEEN_CPU_TICKS => {
                self.last_seen = Instant::now();
                self.update_gils(probe);
            }
            // Busy, gone or unreadable: the full refresh decides.
            _ => self.refresh(probe),
        }
    }

    /// [`ProcessWatch::tick`] without reading the kernel counters: a caller that
    /// watches many processes reads them once for all ([`WaitProbe::read_all`])
    /// and hands each its own through [`ProcessWatch::learn_holders`].
    pub fn refresh(&mut self, probe: &mut WaitProbe) {
        if !self.alive {
            return;
        }
        let pid = self.pid();
        let cpu_ticks = process_cpu_ticks(pid);
        // Names are read only when threads come or go (and now and then): with a
        // thousand threads, reading every name every refresh was most of the cost.
        let all_names = self.names_pending || self.names_read_at.elapsed() >= NAMES_EVERY;
        let no_names = BTreeMap::new();
        let known = if all_names { &no_names } else { &self.cpu_last };
        let changed = match sample_threads_named(pid, known) {
            Ok(threads) => {
                let changed = !threads.keys().eq(self.live_tids.iter());
                if changed {
                    self.live_tids = threads.keys().copied().collect();
                }
                self.cpu_last.extend(threads);
                self.last_seen = Instant::now();
                // Read before the threads: CPU used meanwhile counts as unseen.
                if let Some(ticks) = cpu_ticks {
                    self.cpu_ticks_read = ticks;
                }
                changed
            }
            Err(_) => {
                self.alive = false;
                return;
            }
        };
        let now = Instant::now();
        self.exits
            .note(self.cpu_last.keys().copied(), &self.live_tids, now);
        self.retire(probe, now);
        self.update_gils(probe);
        if all_names || changed {
            self.python_names.extend(self.name_reader.read());
        }
        if all_names {
            self.names_read_at = Instant::now();
        }
        self.names_pending = changed;
    }

    /// Folds threads that exited a while ago into the exited-threads row and
    /// deletes their kernel entries ([`crate::watch::retire`]): a process that starts a
    /// thread per request must not fill the kernel maps every process shares.
    fn retire(&mut self, probe: &mut WaitProbe, now: Instant) {
        let pid = self.pid();
        retire_due(
            &mut self.exits,
            pid,
            now,
            Sources {
                probe,
                condwait: self.condwait.as_mut(),
                sampler: self.sampler.as_ref(),
                cpu: &mut self.cpu_last,
                names: &mut self.python_names,
                holders: &mut self.holder_tids,
            },
        );
    }

    /// Exited threads retired so far (folded into the exited-threads row).
    pub fn threads_retired(&self) -> u64 {
        self.exits.retired()
    }

    /// Keeps the kernel filter on the current GILs (subinterpreters come and go).
    fn update_gils(&mut self, probe: &mut WaitProbe) {
        let pid = self.pid();
        let gils = locate::all_gils(&self.mem, &self.gil, MAX_GILS);
        if gils != self.watched_gils && !gils.is_empty() {
            let updated = probe.watch(pid, &gils, &self.gil.layout).and_then(|()| {
                match self.condwait.as_mut() {
                    Some(c) => c.watch(pid, &gils, &self.gil.layout),
                    None => Ok(()),
                }
            });
            match updated {
                Ok(()) => self.watched_gils = gils,
                Err(e) => tracing::debug!("cannot update the GILs of process {pid}: {e}"),
            }
        }
    }

    /// Folds the condvar probe's GIL waits into the futex probe's (musl only).
    fn fold_condwait(&self, waits: &mut WaitCounters) {
        if let Some(c) = &self.condwait {
            match c.read(self.pid()) {
                Ok(cond) => condwait::merge_into(waits, &cond),
                Err(e) => tracing::debug!("condvar probe of {}: {e}", self.pid()),
            }
        }
    }

    /// The wait counters of this process, with the condvar probe's folded in on musl.
    fn read_waits(&self, probe: &WaitProbe) -> Result<WaitCounters> {
        let mut waits = probe.read(self.pid())?;
        self.fold_condwait(&mut waits);
        Ok(waits)
    }

    /// Resolves the holder thread states seen in `counters` while they still exist.
    pub fn learn_holders(&mut self, counters: &WaitCounters) {
        for key in counters.blocked_by.keys() {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.holder_tids.entry(key.holder_tstate)
            {
                if let Some(tid) = self.resolver.tid_of(key.holder_tstate) {
                    slot.insert(tid);
                }
            }
        }
    }

    /// The tid behind a thread state while it still exists (contention spans
    /// name their holders as soon as the kernel reports them).
    pub fn tid_of_tstate(&self, tstate: u64) -> Option<u32> {
        self.resolver.tid_of(tstate)
    }

    /// A thread's name for people: its Python `threading` name, else its OS name.
    pub fn thread_name(&self, tid: u32) -> String {
        if let Some(name) = self.python_names.get(&tid) {
            return name.clone();
        }
        if let Some(sample) = self.cpu_last.get(&tid) {
            return sample.os_name.clone();
        }
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid()))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default()
    }

    /// musl: moves the condvar probe's episode records into `out` (the futex
    /// probe's come from [`WaitProbe::drain_episodes`] for all processes at once).
    pub fn drain_episodes(&mut self, out: &mut Vec<crate::core::counters::WaitEpisode>) {
        if let Some(c) = self.condwait.as_mut() {
            c.drain_episodes(out);
        }
    }

    /// musl: episodes the condvar probe could not record (its ring buffer was full).
    pub fn episodes_lost(&self) -> u64 {
        self.condwait
            .as_ref()
            .map_or(0, CondWaitProbe::episodes_lost)
    }

    /// musl: inserts the condvar probe could not make because a map was full
    /// (`None`: no condvar probe, not musl).
    pub fn entries_dropped(&self) -> Option<EntriesDropped> {
        self.condwait.as_ref().map(CondWaitProbe::entries_dropped)
    }

    /// Holder thread state -> tid, as far as known.
    pub fn holder_tids(&self) -> &HashMap<u64, u32> {
        &self.holder_tids
    }

    /// How long the process has been watched (until it was last seen alive).
    pub fn watched_s(&self) -> f64 {
        self.last_seen.duration_since(self.since).as_secs_f64()
    }

    /// The counters when watching began (kernel counters start at zero then).
    pub fn first_snapshot(&self) -> Snapshot {
        Snapshot {
            at: self.since,
            threads: self.cpu_start.clone(),
            waits: WaitCounters::default(),
            gil: GilSamples::default(),
            throttling: self.throttling_start.clone(),
        }
    }

    /// The cumulative counters now (call [`ProcessWatch::tick`] first for fresh CPU).
    pub fn snapshot(&mut self, probe: &WaitProbe) -> Snapshot {
        let waits = probe.read(self.pid()).unwrap_or_default();
        self.snapshot_with(waits)
    }

    /// [`ProcessWatch::snapshot`] from kernel counters the caller already read
    /// (the condvar probe's, on musl, are folded in here).
    pub fn snapshot_with(&mut self, mut waits: WaitCounters) -> Snapshot {
        self.fold_condwait(&mut waits);
        self.learn_holders(&waits);
        let now = Instant::now();
        // Threads that lived and died between two procfs reads are known only here.
        self.exits
            .note(waits.threads.keys().copied(), &self.live_tids, now);
        let mut threads = self.cpu_last.clone();
        let mut gil = self
            .sampler
            .as_ref()
            .map(SampledProcess::snapshot)
            .unwrap_or_default();
        self.exits
            .apply(&mut threads, &mut waits, &mut gil, &self.live_tids);
        Snapshot {
            at: if self.alive { now } else { self.last_seen },
            threads,
            waits,
            gil,
            throttling: self
                .cgroup
                .as_ref()
                .map(CpuCgroup::throttling)
                .unwrap_or_default(),
        }
    }

    /// Everything that happened between two snapshots, ready for [`crate::core::analyse`].
    pub fn measurement(&self, prev: &Snapshot, cur: &Snapshot) -> Measurement {
        // Threads retired in between count from `prev` in the exited-threads row.
        let (cpu_start, prev_waits, prev_gil) = retire::rebase(
            &prev.threads,
            &prev.waits,
            &prev.gil,
            &cur.threads,
            &cur.waits,
            &cur.gil,
        );
        let gil = cur.gil.since(&prev_gil);
        Measurement {
            pid: self.pid(),
            wall_s: cur.at.saturating_duration_since(prev.at).as_secs_f64(),
            mode: Mode::Default,
            interpreter: interpreter_info(&self.interp, &self.gil, &cur.gil),
            cpu_start,
            cpu_end: cur.threads.clone(),
            waits: cur.waits.since(&prev_waits),
            precise: None,
            gil,
            holder_tids: self.holder_tids.clone(),
            locks: None,
            gil_addrs: self.watched_gils.clone(),
            python_names: self.python_names.clone(),
            cpu_env: CpuEnvironment {
                affinity_cpus: affinity_cpus(self.pid()),
                cpu_limit_cores: self.cgroup.as_ref().and_then(CpuCgroup::quota_cores),
                throttling: throttled_between(&prev.throttling, &cur.throttling),
            },
        }
    }

    /// Stops watching and clears the kernel state of the process.
    pub fn detach(self, probe: &mut WaitProbe) {
        let pid = self.pid();
        if let Some(sampler) = self.sampler {
            sampler.stop();
        }
        if let Err(e) = probe.unwatch(pid) {
            tracing::debug!("could not clear the kernel state of process {pid}: {e}");
        }
    }
}

/// CPU of the whole process (utime + stime of every thread, exited ones
/// included) in clock ticks, from `/proc/PID/stat`; `None` when unreadable.
fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, past the
/// `comm` field (which may hold spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut after = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After ')' comes field 3 (state): utime is the 12th from there.
    let utime: u64 = after.nth(11)?.parse().ok()?;
    let stime: u64 = after.next()?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// Every live descendant of `root` (children, grandchildren, ...), from procfs.
///
/// The kernel here has no `/proc/PID/task/TID/children`, so this reads the
/// parent pid of every process; a process that vanishes meanwhile is skipped.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = all
        .filter_map(|p| p.ok())
        .filter_map(|p| p.stat().ok())
        .filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
        .filter_map(|s| Some((u32::try_from(s.pid).ok()?, u32::try_from(s.ppid).ok()?)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && pid != root && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_process_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let found = descendants(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
    }

    #[test]
    fn process_cpu_is_utime_plus_stime_past_an_odd_command_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(8));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        assert!(process_cpu_ticks(std::process::id()).is_some());
    }

    #[test]
    fn command_lines_are_joined_with_spaces() {
        let own = command_line(std::process::id());
        assert!(!own.contains('\0'));
        assert!(!own.is_empty());
    }
}
