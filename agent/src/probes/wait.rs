//! Loads `ebpf/gil_wait.bpf.c` (a BTF tracepoint on sched_switch) and reads its counters.
//!
//! One loaded probe serves any number of processes: [`WaitProbe::watch`] adds a
//! process (its GIL address) to the in-kernel filter, [`WaitProbe::unwatch`]
//! removes it together with every per-thread entry it left behind. With an
//! episode threshold ([`WaitProbe::load_with_episodes`]) the kernel also sends
//! one [`WaitEpisode`] per long GIL wait, drained by [`WaitProbe::drain_episodes`].
//! A wait the kernel could not count because a map was full is counted instead
//! ([`WaitProbe::entries_dropped`]), so the loss can be reported.

use std::collections::HashMap;

use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::core::counters::{EntriesDropped, KernelMap, WaitCounters, WaitEpisode};
use crate::core::holders::HolderStacks;
use crate::cpython::layout::frames::FrameWalk;
use crate::cpython::layout::versions::GilLayout;
use crate::error::{Error, Result};
use crate::probes::bpf_error;
use crate::probes::holders::HolderMapNames;
use crate::probes::layout::{self as k, MAX_GILS};
use crate::probes::maps::{MapNames, WaitMaps};

static WAIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gil_wait.bpf.o"));

/// The futex probe's maps.
static MAPS: MapNames = MapNames {
    object: "gil_wait.bpf.o",
    targets: "targets",
    made: "thread_made",
    episodes_made: "episodes_made",
    waits: KernelMap::ThreadWaits,
    blocked_by: KernelMap::BlockedBy,
    inflight: KernelMap::Inflight,
    gil_waits: KernelMap::GilWaits,
    full: "map_full",
    episodes: "episodes",
    episodes_bytes: 256 * 1024,
    episodes_lost: "episodes_lost",
    holders: HolderMapNames {
        walks: "holder_walks",
        stacks: KernelMap::HolderStacks,
        waits: KernelMap::HolderWaits,
    },
};

/// Entries of the per-thread maps as built (`max_entries` in gil_wait.bpf.c and
/// gil_condwait.bpf.c).
pub(crate) const BUILT_IN_THREADS: u32 = 65_536;

/// The scheduler tracepoint the probe hooks: a thread going to sleep and resuming.
const SCHED_TRACEPOINT: &str = "sched_switch";

/// A take wait that resumes within this long of its last timed-out slice is the same wait.
const CONTINUATION_GAP_NS: u64 = 1_000_000;

/// A take wait is a retake (GIL residual latency of a blocking call) only when it
/// begins within this long of the wake from a non-GIL sleep. Back from a syscall,
/// CPython calls `take_gil` within microseconds; a thread that starts waiting later
/// took the GIL free and ran in between (it must have run a switch interval, 5 ms,
/// before being asked to drop it), so that return had no residual latency.
const RETAKE_WINDOW_NS: u64 = 1_000_000;

/// The loaded and attached wait probe (GIL waits and every other sleep).
pub struct WaitProbe {
    /// Keeps the program loaded and attached (its maps are in `maps`).
    _ebpf: Ebpf,
    maps: WaitMaps<k::GilTarget, k::ThreadWaits, k::FutexInflight>,
    episode_threshold_ns: u64,
}

/// Logs one warning per map that had failed inserts: for the one-shot commands
/// (`check`), whose report would otherwise look complete while waits are missing.
pub fn warn_dropped(counts: &EntriesDropped) {
    for (map, n) in counts.iter().filter(|(_, n)| *n > 0) {
        tracing::warn!(
            "kernel map {} was full: {n} inserts failed, so some waits are missing from this report",
            map.name()
        );
    }
}

impl WaitProbe {
    /// Loads and attaches; fails with a permission error when not privileged.
    pub fn load() -> Result<Self> {
        Self::load_with_episodes(0)
    }

    /// As [`WaitProbe::load`], and the kernel records every merged take wait of at
    /// least `threshold_ns` as a [`WaitEpisode`] (0: none, the ring buffer stays empty).
    pub fn load_with_episodes(threshold_ns: u64) -> Result<Self> {
        Self::load_with_capacity(threshold_ns, None)
    }

    /// As [`WaitProbe::load_with_episodes`], with the per-thread maps sized for
    /// `threads` threads of all watched processes (`None`: the built-in 65,536):
    /// `thread_waits` and `inflight` get `threads` entries, `blocked_by` (pairs
    /// of waiter and holder) at least as many as built in. For a node with more
    /// threads (`gilscope run --thread-capacity`), and for tests that must fill
    /// the map; a thread beyond it is counted in [`WaitProbe::entries_dropped`]
    /// instead of its waits.
    pub fn load_with_capacity(threshold_ns: u64, threads: Option<u32>) -> Result<Self> {
        let gap = CONTINUATION_GAP_NS;
        let window = RETAKE_WINDOW_NS;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("continuation_gap_ns", &gap, true)
            .override_global("retake_window_ns", &window, true)
            .override_global("episode_threshold_ns", &threshold_ns, true);
        if let Some(threads) = threads.map(|n| n.max(1)) {
            loader
                .map_max_entries("thread_waits", threads)
                .map_max_entries("inflight", threads)
                .map_max_entries("blocked_by", threads.max(BUILT_IN_THREADS));
        }
        let mut ebpf = loader
            .load(WAIT_OBJECT)
            .map_err(|e| bpf_error("loading gil_wait.bpf.o", &e))?;
        let btf = Btf::from_sys_fs().map_err(|e| {
            Error::Bpf(format!(
                "kernel BTF (/sys/kernel/btf/vmlinux) is needed for BTF tracepoints: {e}"
            ))
        })?;
        let program: &mut BtfTracePoint = ebpf
            .program_mut("sched_switch")
            .ok_or_else(|| Error::Internal("sched_switch missing from gil_wait.bpf.o".into()))?
            .try_into()
            .map_err(|e| bpf_error("sched_switch", &e))?;
        program
            .load(SCHED_TRACEPOINT, &btf)
            .map_err(|e| bpf_error("loading the sched_switch probe", &e))?;
        program
            .attach()
            .map_err(|e| bpf_error("attaching the sched_switch probe", &e))?;
        let maps = WaitMaps::take(&mut ebpf, &MAPS, threshold_ns > 0)?;
        drop(btf);
        crate::probes::release_freed_heap();
        Ok(Self {
            _ebpf: ebpf,
            maps,
            episode_threshold_ns: threshold_ns,
        })
    }

    /// Moves every episode the kernel recorded since the last call into `out`
    /// (of all watched processes; nothing when loaded without a threshold).
    pub fn drain_episodes(&mut self, out: &mut Vec<WaitEpisode>) {
        self.maps.drain_episodes(out);
    }

    /// Episodes the kernel could not record (cumulative since load): the ring
    /// buffer was full (the agent fell behind), or their process had sent its
    /// share since the last drain.
    pub fn episodes_lost(&self) -> u64 {
        self.maps.episodes_lost()
    }

    /// Inserts the kernel could not make because the map was full (cumulative
    /// since load), per map: `thread_waits` counts waits of threads that found
    /// no slot (each one uncounted), `blocked_by` waits not attributed to their
    /// holder, `inflight` waits not tracked at all, `gil_waits` take waits
    /// missing from the per-GIL figures, `holder_stacks` wait segments whose
    /// holder's stack went to the unknown stack, `holder_waits` segments
    /// missing from the holder-stack figures.
    pub fn entries_dropped(&self) -> EntriesDropped {
        self.maps.entries_dropped()
    }

    /// The number of entries the kernel gave `map`, for saying how full "full"
    /// is; `None` for a map not of this probe.
    pub fn capacity(&self, map: KernelMap) -> Option<u32> {
        self.maps.capacity(map)
    }

    /// The span threshold this probe was loaded with (0: no episodes), for the
    /// per-process probes (musl) that must record the same episodes.
    pub fn episode_threshold_ns(&self) -> u64 {
        self.episode_threshold_ns
    }

    /// Starts (or updates) counting the sleeps of process `tgid`, classifying futex waits
    /// on any of its GILs (at most [`MAX_GILS`]; the first is the main interpreter's).
    pub fn watch(&mut self, tgid: u32, gils: &[u64], layout: &GilLayout) -> Result<()> {
        let mut gil_addrs = [0u64; MAX_GILS];
        for (slot, addr) in gil_addrs.iter_mut().zip(gils) {
            *slot = *addr;
        }
        let narrow = |v: u64| {
            u32::try_from(v).map_err(|_| Error::Internal(format!("GIL offset {v} too large")))
        };
        let target = k::GilTarget {
            gil_addrs,
            gil_size: narrow(layout.size)?,
            cond_off: narrow(layout.cond)?,
            mutex_off: narrow(layout.mutex)?,
            switch_cond_off: narrow(layout.switch_cond)?,
            last_holder_off: narrow(layout.last_holder)?,
            locked_off: narrow(layout.locked)?,
            ..k::GilTarget::default()
        };
        self.maps.set_target(tgid, target)
    }

    /// Sets how many episode records each process watched from now on may send
    /// between two drains (default: an eighth of the ring buffer), so that one
    /// process with many long waits cannot fill it for every tenant.
    pub fn set_episode_share(&mut self, share: u32) {
        self.maps.set_episode_share(share);
    }

    /// Sets how many entries of the per-thread map each process watched from
    /// now on may hold (default: an eighth of the map, at least 1,024), so
    /// that one process with many threads cannot take every tenant's room.
    pub fn set_thread_share(&mut self, share: u32) {
        self.maps.set_thread_share(share);
    }

    /// Stops counting the sleeps of `tgid` at once but keeps what was counted, for a
    /// last report: a process that exec'd into another program must not have that
    /// program's sleeps counted under it. [`WaitProbe::unwatch`] clears the rest.
    pub fn stop_counting(&mut self, tgid: u32) -> Result<()> {
        self.maps.remove_target(tgid)
    }

    /// Starts (or updates) capturing, for process `tgid`, the Python stack of
    /// the GIL holder each time a take wait (slice) begins, walked with `walk`
    /// (its CPython build's), so [`WaitProbe::read_holders`] can say which
    /// code the waits were spent behind. Costs nothing on the GIL's fast path:
    /// the walk runs only in a waiter about to sleep.
    pub fn capture_holders(&mut self, tgid: u32, walk: &FrameWalk) -> Result<()> {
        self.maps.holders.set_walk(tgid, walk)
    }

    /// The GIL wait of `tgid` behind each holder stack captured so far
    /// (cumulative since [`WaitProbe::capture_holders`]), and those stacks.
    /// Stacks are per process, not per thread: retiring threads leaves them.
    pub fn read_holders(&self, tgid: u32) -> Result<HolderStacks> {
        Ok(self.maps.holders.read(tgid))
    }

    /// Stops watching `tgid` and deletes every kernel entry it left (threads,
    /// holders, in-flight waits, holder stacks and the waits behind them).
    pub fn unwatch(&mut self, tgid: u32) -> Result<()> {
        let tids: Vec<u32> = self.maps.read(tgid).threads.into_keys().collect();
        self.maps.take_threads(tgid, &tids);
        self.maps.forget_process(tgid);
        self.maps.holders.forget(tgid);
        self.stop_counting(tgid)
    }

    /// Deletes the per-thread entries of threads that exited and returns what
    /// they held (their counters and blocked-by pairs): a long-lived process
    /// whose threads come and go keeps their sum, not their slots.
    pub fn take_threads(&mut self, tgid: u32, tids: &[u32]) -> Result<WaitCounters> {
        Ok(self.maps.take_threads(tgid, tids))
    }

    /// The current cumulative counters of every thread of `tgid`.
    pub fn read(&self, tgid: u32) -> Result<WaitCounters> {
        Ok(self.maps.read(tgid))
    }

    /// The counters of every watched process, in one pass over each map: what a
    /// daemon watching many processes reads per tick, instead of one full scan per process.
    pub fn read_all(&self) -> Result<HashMap<u32, WaitCounters>> {
        Ok(self.maps.read_all())
    }

    /// Number of entries in each map, to show that nothing leaks.
    pub fn entry_counts(&self) -> Result<[(&'static str, usize); 8]> {
        Ok(self.maps.entry_counts())
    }
}
