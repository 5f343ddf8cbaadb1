//! One CPython process under watch, for as long as it lives: the one way every
//! front end measures a process (`check`, `top`, `run`, and the pool workers
//! of a checked process).
//!
//! A [`Session`] finds the interpreter and GIL of a process (running, or a
//! command it starts: [`attach`]), registers it with the shared [`WaitProbe`]
//! (the kernel filter), and on every refresh keeps the GIL list current
//! (subinterpreters come and go), the last-seen CPU of every thread (so threads
//! that exit keep their figures), the thread names, and the holder thread
//! states resolved to tids while they are still alive. Threads that exited
//! long ago are folded into one row and their kernel entries released
//! ([`crate::core::retire`]). Two [`Snapshot`]s make a [`Measurement`].

pub mod attach;
mod holders;
mod loops;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::analyse::{CpuEnvironment, Measurement, PreciseCounters};
use crate::core::counters::WaitEpisode;
use crate::core::counters::{EntriesDropped, LoopCounters, WaitCounters};
use crate::core::cpu::{ThreadSample, Throttling};
use crate::core::holders::HolderStacks;
use crate::core::report::{Ending, Mode};
use crate::core::retire::{self, Retirement};
use crate::core::samples::GilSamples;
use crate::cpython::find::locate::{self, GilSite, Interpreter};
use crate::cpython::gil_sampler::{SampledProcess, SamplerPool};
use crate::cpython::layout::versions::ThreadIdField;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::thread_names::ThreadNameReader;
use crate::cpython::tstate::TstateResolver;
use crate::error::Result;
use crate::os::cgroup::{affinity_cpus, throttled_between, CpuCgroup};
use crate::os::process::{command_line, process_cpu_ticks};
use crate::os::threads::sample_threads_named;
use crate::probes::condwait::{self, CondWaitProbe};
use crate::probes::event_loop::LoopProbe;
use crate::probes::wait::WaitProbe;
use crate::probes::MAX_GILS;
use crate::watch::retire::{retire_due, Sources};

pub use attach::{interpreter_info, OwnProbes, PreciseAttachment, Sampling, SessionOptions};
pub use names::NameRefresh;

/// Process CPU (clock ticks, all threads, exited ones included) below which a
/// [`Session::refresh_if_busy`] skips the per-thread read: a thread that
/// exits unseen can only take less than this with it (50 ms at 100 Hz).
const UNSEEN_CPU_TICKS: u64 = 5;

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
    /// The GIL wait behind each holder stack since watching began (empty
    /// where not captured).
    pub holders: HolderStacks,
    /// Event-loop iterations per thread (`None`: the event-loop probe is not loaded).
    pub loops: Option<LoopCounters>,
}

/// A watched process and what has been seen of it so far.
pub struct Session {
    pub interp: Interpreter,
    pub gil: GilSite,
    /// When watching began.
    pub since: Instant,
    /// The command line, for people (`python3 worker.py`).
    pub command: String,
    /// procfs counters when watching began (empty: counted from the process's birth).
    pub cpu_start: BTreeMap<u32, ThreadSample>,
    /// The last procfs counters of every thread seen, including exited ones.
    pub cpu_last: BTreeMap<u32, ThreadSample>,
    /// When the process was last seen alive.
    pub last_seen: Instant,
    pub alive: bool,
    resolver: Arc<TstateResolver>,
    /// This process on a sampler thread (a shared pool's, or `own_pool`'s).
    sampler: Option<SampledProcess>,
    own_pool: Option<SamplerPool>,
    /// The sampler's last tally once sampling stopped ([`Session::final_snapshot`]).
    final_samples: Option<GilSamples>,
    names: names::ThreadNames,
    /// The live threads at the last refresh (a change means names to read).
    live_tids: Vec<u32>,
    /// The process's CPU (clock ticks) at the last per-thread read.
    cpu_ticks_read: u64,
    cgroup: Option<CpuCgroup>,
    throttling_start: Vec<Throttling>,
    affinity: usize,
    holder_tids: HashMap<u64, u32>,
    /// The GILs the kernel filter holds now.
    watched_gils: Vec<u64>,
    /// Every GIL seen, the main interpreter's first (a report lists them all).
    gils_seen: Vec<u64>,
    mem: RemoteMemory,
    own: OwnProbes,
    /// The event-loop probe (shared by every session), where it is loaded.
    loops: Option<LoopProbe>,
    /// Exited threads: which are gone, and the row the retired ones were folded into.
    exits: Retirement,
    /// Whether exited threads are retired (not when per-thread uprobe counters
    /// of `--precise` or the lock probe must stay by tid).
    retiring: bool,
    /// The kernel's capture of the GIL holders' code, where asked and possible.
    holders: Option<holders::HolderCapture>,
    /// The loop threads' code sampled during long iterations, where asked.
    loop_code: Option<loops::LoopCode>,
}

impl Session {
    /// A session on a process whose GIL the kernel already watches (`gils`).
    fn new(
        interp: Interpreter,
        gil: GilSite,
        own: OwnProbes,
        cpu_start: BTreeMap<u32, ThreadSample>,
        gils: Vec<u64>,
        opts: &SessionOptions,
    ) -> Self {
        let pid = interp.pid;
        let mem = RemoteMemory::new(pid);
        let pthread_tid_off = match gil.thread_id {
            ThreadIdField::PthreadOnly(_) => locate::glibc_pthread_tid_offset(pid),
            ThreadIdField::NativeThreadId(_) => None,
        };
        let resolver = Arc::new(TstateResolver::new(mem, gil.thread_id, pthread_tid_off));
        let own_pool = match opts.sampling {
            Sampling::Own(hz) => Some(SamplerPool::start(hz)),
            _ => None,
        };
        let pool = match opts.sampling {
            Sampling::Shared(pool) => Some(pool),
            _ => own_pool.as_ref(),
        };
        let sampler = pool.map(|p| p.add(pid, gil, Arc::clone(&resolver)));
        let cgroup = CpuCgroup::of(pid);
        let throttling_start = cgroup
            .as_ref()
            .map(CpuCgroup::throttling)
            .unwrap_or_default();
        let now = Instant::now();
        Self {
            names: names::ThreadNames::new(ThreadNameReader::new(&interp, mem), opts.names),
            live_tids: cpu_start.keys().copied().collect(),
            cpu_ticks_read: process_cpu_ticks(pid).unwrap_or(0),
            resolver,
            sampler,
            own_pool,
            final_samples: None,
            cgroup,
            throttling_start,
            affinity: affinity_cpus(pid),
            command: command_line(pid),
            retiring: own.precise.is_none() && own.locks.is_none(),
            own,
            loops: attach::watch_loops(opts.loops, &interp),
            interp,
            gil,
            since: now,
            cpu_last: cpu_start.clone(),
            cpu_start,
            last_seen: now,
            alive: true,
            holder_tids: HashMap::new(),
            gils_seen: gils.clone(),
            watched_gils: gils,
            mem,
            exits: Retirement::default(),
            holders: None,
            loop_code: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.interp.pid
    }

    /// The probes attached to this process alone (musl condvar, `--precise`, locks).
    pub fn own_probes(&self) -> &OwnProbes {
        &self.own
    }

    /// The process's CPU cgroup, if found.
    pub fn cgroup(&self) -> Option<&CpuCgroup> {
        self.cgroup.as_ref()
    }

    /// Counts from the process's birth: what it did before watching began is
    /// measured too (a pool worker that started after its parent was checked).
    pub fn count_from_birth(&mut self) {
        self.cpu_start.clear();
    }

    /// A full refresh, then the kernel counters read to resolve new holders
    /// while their threads live: one step of a measurement that reports
    /// blocked-by pairs (`check` and its pool workers).
    pub fn tick(&mut self, probe: &mut WaitProbe) {
        self.refresh(probe);
        if !self.alive {
            return;
        }
        self.sample_long_iterations();
        self.read_holders(probe); // named while alive: a command exits before its last read

        if let Ok(counters) = self.read_waits(probe) {
            self.learn_holders(&counters);
            if self.retiring {
                // Threads that lived and died between two procfs reads are known
                // only to the kernel: they must be retired too.
                self.exits.note(
                    counters.threads.keys().copied(),
                    &self.live_tids,
                    Instant::now(),
                );
            }
        }
    }

    /// Refreshes every `tick` until `step` gives a reason to stop (it is asked
    /// after each refresh). `step` also marks the end of a process that is gone.
    pub fn follow(
        &mut self,
        probe: &mut WaitProbe,
        tick: Duration,
        mut step: impl FnMut(&mut Self, &mut WaitProbe) -> Option<Ending>,
    ) -> Ending {
        loop {
            self.tick(probe);
            if let Some(ending) = step(self, probe) {
                return ending;
            }
            std::thread::sleep(tick);
        }
    }

    /// [`Session::refresh`] when the process used CPU since the last
    /// per-thread read (at least [`UNSEEN_CPU_TICKS`]), else only its GIL list and
    /// one file for the whole process. A periodic refresh exists so that exiting
    /// threads keep their CPU; an idle process has none to lose, and reading a
    /// file per thread of a thousand idle threads every tick was the daemon's
    /// largest cost. The caller still calls [`Session::refresh`] before a snapshot.
    pub fn refresh_if_busy(&mut self, probe: &mut WaitProbe) {
        if !self.alive {
            return;
        }
        match process_cpu_ticks(self.pid()) {
            Some(ticks) if ticks.saturating_sub(self.cpu_ticks_read) < UNSEEN_CPU_TICKS => {
                self.last_seen = Instant::now();
                self.update_gils(probe);
            }
            // Busy, gone or unreadable: the full refresh decides.
            _ => self.refresh(probe),
        }
    }

    /// Reads per-thread CPU (and names when due), keeps the GIL list current,
    /// retires threads that exited long ago; marks the process gone when procfs
    /// no longer has it. The kernel counters are not read here: a watcher of
    /// many processes reads them once for all ([`WaitProbe::read_all`]).
    pub fn refresh(&mut self, probe: &mut WaitProbe) {
        if !self.alive {
            return;
        }
        let pid = self.pid();
        let cpu_ticks = process_cpu_ticks(pid);
        // With a thousand threads, reading every name every refresh was most of the cost.
        let no_names = BTreeMap::new();
        let known = if self.names.all_due() {
            &no_names
        } else {
            &self.cpu_last
        };
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
        self.affinity = affinity_cpus(pid);
        let now = Instant::now();
        if self.retiring {
            self.exits
                .note(self.cpu_last.keys().copied(), &self.live_tids, now);
            self.retire(probe, now);
        }
        self.update_gils(probe);
        self.names.refresh(changed);
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
                condwait: self.own.condwait.as_mut(),
                loops: self.loops.as_ref(),
                sampler: self.sampler.as_ref(),
                cpu: &mut self.cpu_last,
                names: self.names.names_mut(),
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
                match self.own.condwait.as_mut() {
                    Some(c) => c.watch(pid, &gils, &self.gil.layout),
                    None => Ok(()),
                }
            });
            match updated {
                Ok(()) => self.watched_gils = gils,
                Err(e) => tracing::debug!("cannot update the GILs of process {pid}: {e}"),
            }
        }
        for gil in &self.watched_gils {
            if !self.gils_seen.contains(gil) {
                self.gils_seen.push(*gil);
            }
        }
    }

    /// Folds the condvar probe's GIL waits into the futex probe's (musl only).
    fn fold_condwait(&self, waits: &mut WaitCounters) {
        if let Some(c) = &self.own.condwait {
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
        if let Some(name) = self.names.get(tid) {
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
    pub fn drain_episodes(&mut self, out: &mut Vec<WaitEpisode>) {
        if let Some(c) = self.own.condwait.as_mut() {
            c.drain_episodes(out);
        }
    }

    /// musl: episodes the condvar probe could not record (ring full, or share spent).
    pub fn episodes_lost(&self) -> u64 {
        self.own
            .condwait
            .as_ref()
            .map_or(0, CondWaitProbe::episodes_lost)
    }

    /// musl: inserts the condvar probe could not make because a map was full
    /// (`None`: no condvar probe, not musl).
    pub fn entries_dropped(&self) -> Option<EntriesDropped> {
        self.own
            .condwait
            .as_ref()
            .map(CondWaitProbe::entries_dropped)
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
            holders: HolderStacks::default(),
            loops: self.loops.as_ref().map(|_| LoopCounters::default()),
        }
    }

    /// The cumulative counters now (refresh first for fresh CPU).
    pub fn snapshot(&mut self, probe: &WaitProbe) -> Snapshot {
        let waits = probe.read(self.pid()).unwrap_or_default();
        let holders = self.read_holders(probe);
        self.snapshot_of(waits, holders)
    }

    /// The last snapshot of a measurement: sampling stops first, so the hold
    /// stretch in progress counts as ended and every sample is in the tally.
    pub fn final_snapshot(&mut self, probe: &WaitProbe) -> Result<Snapshot> {
        if let Some(sampler) = self.sampler.take() {
            self.final_samples = Some(sampler.stop());
        }
        let waits = probe.read(self.pid())?;
        let holders = self.read_holders(probe);
        Ok(self.snapshot_of(waits, holders))
    }

    /// [`Session::snapshot`] from kernel counters the caller already read
    /// (the condvar probe's, on musl, are folded in here); the holder stacks,
    /// where captured, are read from `probe` per process.
    pub fn snapshot_with(&mut self, waits: WaitCounters, probe: &WaitProbe) -> Snapshot {
        let holders = self.read_holders(probe);
        self.snapshot_of(waits, holders)
    }

    fn snapshot_of(&mut self, mut waits: WaitCounters, holders: HolderStacks) -> Snapshot {
        self.fold_condwait(&mut waits);
        self.learn_holders(&waits);
        let mut loops = self.read_loops();
        let now = Instant::now();
        if self.retiring {
            // Threads that lived and died between two procfs reads are known only here.
            let looping = loops.iter().flat_map(|l| l.threads.keys().copied());
            let tids = waits.threads.keys().copied().chain(looping);
            self.exits.note(tids, &self.live_tids, now);
        }
        if let Some(l) = loops.as_mut() {
            self.exits.apply_loops(l, &self.live_tids);
        }
        let mut threads = self.cpu_last.clone();
        let mut gil = match (&self.sampler, &self.final_samples) {
            (Some(sampler), _) => sampler.snapshot(),
            (None, Some(last)) => last.clone(),
            (None, None) => GilSamples::default(),
        };
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
            holders,
            loops,
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
            gil_addrs: self.gils_seen.clone(),
            python_names: self.names.all().clone(),
            holders: self
                .holders
                .as_ref()
                .map(|h| h.named(&cur.holders.since(&prev.holders))),
            loops: Self::loops_between(prev, cur),
            cpu_env: CpuEnvironment {
                affinity_cpus: self.affinity,
                cpu_limit_cores: self.cgroup.as_ref().and_then(CpuCgroup::quota_cores),
                throttling: throttled_between(&prev.throttling, &cur.throttling),
            },
        }
    }

    /// The `--precise` counters since the session began (`None` without `--precise`).
    pub fn precise_counters(&self) -> Result<Option<PreciseCounters>> {
        match &self.own.precise {
            Some(p) => Ok(Some(PreciseCounters {
                threads: p.probe.read(self.pid())?,
                holds_exact: !p.sites.drop_gil.is_empty(),
            })),
            None => Ok(None),
        }
    }

    /// Marks the process gone (it exec'd into another program): nothing more
    /// is counted under it, and the next interval is its last.
    pub fn stop_counting(&mut self, probe: &mut WaitProbe) {
        self.alive = false;
        if let Err(e) = probe.stop_counting(self.pid()) {
            tracing::debug!("cannot stop counting process {}: {e}", self.pid());
        }
        self.stop_loops(false);
    }

    /// Stops watching: sampling ends and the kernel state of the process is
    /// cleared. Returns the probes it owned (their counters can still be read);
    /// the session's figures stay readable.
    pub fn release(&mut self, probe: &mut WaitProbe) -> OwnProbes {
        let pid = self.pid();
        if let Some(sampler) = self.sampler.take() {
            self.final_samples = Some(sampler.stop());
        }
        // The session's own sampler thread, if any, ends here.
        drop(self.own_pool.take());
        if let Err(e) = probe.unwatch(pid) {
            tracing::debug!("could not clear the kernel state of process {pid}: {e}");
        }
        self.stop_loops(true);
        std::mem::take(&mut self.own)
    }
}
