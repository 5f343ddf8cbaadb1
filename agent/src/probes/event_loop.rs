//! Loads `ebpf/event_loop.bpf.c` and reads each watched thread's event-loop
//! iterations: uprobes on the entry and return of the libc poll-family
//! functions (`epoll_wait`, `poll`, `select` and their variants).
//!
//! The programs are loaded once and attached per watched process
//! ([`LoopProbe::watch`]), scoped to that process: the kernel installs the
//! breakpoints in the memory of watched processes only, so a process that is
//! not watched runs nothing, however often it polls (BENCHMARKS.md has the
//! numbers, and why neither syscall tracepoints nor fentry were chosen).
//! [`LoopProbe::unwatch`] detaches them and deletes every entry the process
//! left, [`LoopProbe::take_threads`] those of exited threads.
//!
//! A [`LoopProbe`] is a handle: clones share the one loaded probe, so each
//! session of a watcher keeps its own and no call site has to pass it along.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};

use crate::core::counters::{EntriesDropped, KernelMap, LongIteration, LoopCounters, LoopThread};
use crate::core::event_loop::LONG_ITERATION_NS;
use crate::cpython::find::poll::PollFunction;
use crate::error::{Error, Result};
use crate::probes::layout as k;
use crate::probes::take_map;
use crate::probes::{bpf_error, uprobe_error};

static LOOP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/event_loop.bpf.o"));

const OBJECT: &str = "event_loop.bpf.o";

/// The program on a poll-family function's entry (an iteration ends) ...
const ENTER: &str = "poll_enter";
/// ... and the one on its return (an iteration begins).
const RETURN: &str = "poll_return";

/// The attach cookie that marks an epoll function for [`RETURN`].
const EPOLL_COOKIE: u64 = 1;

/// The loaded event-loop probe; clones share it, and its programs are
/// unloaded when the last one is dropped.
#[derive(Clone)]
pub struct LoopProbe {
    loaded: Arc<Mutex<Loaded>>,
}

/// The programs, their maps and the uprobes attached per process.
struct Loaded {
    ebpf: Ebpf,
    /// Per-thread iterations (key: tid).
    threads: BpfHashMap<MapData, u32, k::LoopThread>,
    /// Failed inserts into `threads` (slot 0).
    full: Array<MapData, u64>,
    /// Long iterations as they end, and those the buffer had no room for.
    long: RingBuf<MapData>,
    long_lost: Array<MapData, u64>,
    /// The uprobes of each watched process: (program, link).
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

impl LoopProbe {
    /// Loads the programs (attached to nothing yet); fails with a permission
    /// error when not privileged.
    pub fn load() -> Result<Self> {
        let long = LONG_ITERATION_NS;
        let mut ebpf = EbpfLoader::new()
            .override_global("long_iteration_ns", &long, true)
            .load(LOOP_OBJECT)
            .map_err(|e| bpf_error("loading event_loop.bpf.o", &e))?;
        for name in [ENTER, RETURN] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|e| bpf_error(name, &e))?;
        }
        let loaded = Loaded {
            threads: take_map(&mut ebpf, OBJECT, KernelMap::LoopThreads.name())?,
            full: take_map(&mut ebpf, OBJECT, "loop_map_full")?,
            long: take_map(&mut ebpf, OBJECT, "long_iterations")?,
            long_lost: take_map(&mut ebpf, OBJECT, "long_iterations_lost")?,
            links: HashMap::new(),
            ebpf,
        };
        Ok(Self {
            loaded: Arc::new(Mutex::new(loaded)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting the iterations of every thread of process `pid` that
    /// calls one of `functions` (its libc's poll family). Watching a process
    /// again replaces its uprobes.
    pub fn watch(&self, pid: u32, functions: &[PollFunction]) -> Result<()> {
        let scope =
            UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(Error::NoSuchProcess { pid })?);
        let mut loaded = self.lock();
        loaded.detach(pid);
        let mut links = Vec::with_capacity(functions.len() * 2);
        let attached = functions.iter().try_for_each(|f| {
            let cookie = if f.epoll { EPOLL_COOKIE } else { 0 };
            for (name, cookie) in [(ENTER, None), (RETURN, Some(cookie))] {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(f.file_offset),
                    cookie,
                };
                let link = program(&mut loaded.ebpf, name)?
                    .attach(point, &f.host_path, scope)
                    .map_err(|e| {
                        uprobe_error(
                            &format!(
                                "attaching {name} to {} in {}",
                                f.symbol,
                                f.host_path.display()
                            ),
                            &e,
                        )
                    })?;
                links.push((name, link));
            }
            Ok::<(), Error>(())
        });
        loaded.links.insert(pid, links);
        if attached.is_err() {
            loaded.detach(pid);
        }
        attached
    }

    /// Stops counting `pid` at once but keeps what was counted (a process
    /// that exec'd into another program); [`LoopProbe::unwatch`] clears the rest.
    pub fn stop_counting(&self, pid: u32) {
        self.lock().detach(pid);
    }

    /// Stops watching `pid` and deletes the entries of its threads.
    pub fn unwatch(&self, pid: u32) {
        self.stop_counting(pid);
        let tids: Vec<u32> = self.read(pid).threads.into_keys().collect();
        self.take_threads(pid, &tids);
    }

    /// Deletes the entries of exited threads `tids` of process `tgid` and
    /// returns what they held. An entry of another process (the tid was
    /// reused) is left alone; entries already gone are skipped.
    pub fn take_threads(&self, tgid: u32, tids: &[u32]) -> HashMap<u32, LoopThread> {
        let mut out = HashMap::new();
        let mut loaded = self.lock();
        for tid in tids {
            match loaded.threads.get(tid, 0) {
                Ok(t) if t.tgid == tgid => {
                    out.insert(*tid, t.into());
                    let _ = loaded.threads.remove(tid);
                }
                _ => {}
            }
        }
        out
    }

    /// The iterations of every thread of `tgid` now.
    pub fn read(&self, tgid: u32) -> LoopCounters {
        let loaded = self.lock();
        let at_ns = monotonic_ns();
        LoopCounters {
            at_ns,
            threads: loaded
                .threads
                .iter()
                .filter_map(|entry| entry.ok())
                .filter(|(_, t)| t.tgid == tgid)
                .map(|(tid, t)| (tid, t.into()))
                .collect(),
            code: Default::default(),
        }
    }

    /// Takes the long iterations recorded since the last call (every watched
    /// process's; the caller sorts them out by `tgid`).
    pub fn drain_long_iterations(&self, out: &mut Vec<LongIteration>) {
        let mut loaded = self.lock();
        while let Some(item) = loaded.long.next() {
            if item.len() >= std::mem::size_of::<k::LongIterationRecord>() {
                // SAFETY: LongIterationRecord is repr(C) Pod (any bit pattern is
                // valid) and the item holds at least its size; read_unaligned
                // makes no assumption about the item's alignment.
                let record = unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<k::LongIterationRecord>())
                };
                out.push(record.into());
            }
        }
    }

    /// Long iterations lost to a full ring buffer (cumulative since load).
    pub fn long_iterations_lost(&self) -> u64 {
        self.lock().long_lost.get(&0, 0).unwrap_or(0)
    }

    /// Inserts the kernel could not make because `loop_threads` was full
    /// (cumulative since load): threads whose iterations were not counted.
    pub fn entries_dropped(&self) -> EntriesDropped {
        let n = self.lock().full.get(&0, 0).unwrap_or(0);
        let mut out = EntriesDropped::default();
        out.set(KernelMap::LoopThreads, n);
        out
    }

    /// Processes with uprobes attached and entries in `loop_threads`, to show
    /// that nothing leaks.
    pub fn entry_counts(&self) -> [(&'static str, usize); 2] {
        let loaded = self.lock();
        [
            ("watched processes", loaded.links.len()),
            (KernelMap::LoopThreads.name(), loaded.threads.keys().count()),
        ]
    }
}

impl Loaded {
    /// Detaches the uprobes of `pid`, if any (one already gone is no error).
    fn detach(&mut self, pid: u32) {
        for (name, link) in self.links.remove(&pid).unwrap_or_default() {
            if let Ok(p) = program(&mut self.ebpf, name) {
                if let Err(e) = p.detach(link) {
                    tracing::debug!("detaching {name} of process {pid}: {e}");
                }
            }
        }
    }
}

/// Program `name` of the loaded object, as a uprobe.
fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Internal(format!("{name} missing from {OBJECT}")))?
        .try_into()
        .map_err(|e| bpf_error(name, &e))
}

/// Loads the probe for a watcher that can do without it: a failure costs the
/// event-loop figures, not the GIL measurement, and is logged as a warning.
pub fn load_or_warn() -> Option<LoopProbe> {
    match LoopProbe::load() {
        Ok(probe) => Some(probe),
        Err(e) => {
            tracing::warn!("event-loop lag is not measured: {e}");
            None
        }
    }
}

/// CLOCK_MONOTONIC now in ns: the clock of `bpf_ktime_get_ns`, so iteration
/// starts can be compared with it (0 if unreadable, which Linux never is).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let ns = i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec());
            u64::try_from(ns).unwrap_or(0)
        })
        .unwrap_or(0)
}
