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

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use crate::core::counters::{
    BlockedKey, BlockedWait, EntriesDropped, KernelMap, ThreadWaits, WaitCounters, WaitEpisode,
};
use crate::cpython::layout::versions::GilLayout;
use crate::error::{Error, Result};
use crate::probes::layout::{self as k, map_full_slot, MAX_GILS};
use crate::probes::{bpf_error, map_error};

static WAIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gil_wait.bpf.o"));

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
    ebpf: Ebpf,
    /// The `episodes` ring buffer, taken out of `ebpf` so it can be drained.
    episodes: Option<RingBuf<MapData>>,
    episode_threshold_ns: u64,
}

/// Moves every episode record in an episode ring buffer into `out`.
pub(crate) fn drain_ring(ring: &mut RingBuf<MapData>, out: &mut Vec<WaitEpisode>) {
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<k::GilEpisode>() {
            // SAFETY: GilEpisode is repr(C) Pod (any bit pattern is valid) and the
            // item holds at least size_of::<GilEpisode>() bytes; read_unaligned
            // makes no assumption about the item's alignment.
            let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<k::GilEpisode>()) };
            out.push(record.into());
        }
    }
}

/// The value of a one-slot u64 array map (an episodes-lost counter); 0 if unreadable.
pub(crate) fn lost_count(ebpf: &Ebpf, name: &str) -> u64 {
    ebpf.map(name)
        .and_then(|m| Array::<&MapData, u64>::try_from(m).ok())
        .and_then(|a| a.get(&0, 0).ok())
        .unwrap_or(0)
}

/// The futex probe's maps by their slot of its `map_full` array.
const FULL_SLOTS: [(u32, KernelMap); map_full_slot::SLOTS] = [
    (map_full_slot::THREAD_WAITS, KernelMap::ThreadWaits),
    (map_full_slot::BLOCKED_BY, KernelMap::BlockedBy),
    (map_full_slot::INFLIGHT, KernelMap::Inflight),
    (map_full_slot::GIL_WAITS, KernelMap::GilWaits),
];

/// Failed inserts per map, from a map-full array (`slots`: which map each
/// slot counts); 0 where the array cannot be read.
pub(crate) fn full_counts(
    ebpf: &Ebpf,
    array: &str,
    slots: &[(u32, KernelMap); map_full_slot::SLOTS],
) -> EntriesDropped {
    let counts = ebpf
        .map(array)
        .and_then(|m| Array::<&MapData, u64>::try_from(m).ok());
    let mut out = EntriesDropped::default();
    if let Some(counts) = counts {
        for (slot, map) in slots {
            out.set(*map, counts.get(slot, 0).unwrap_or(0));
        }
    }
    out
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

/// The capacity (max_entries) the kernel gave hash map `name`, if it is one.
pub(crate) fn hash_capacity(ebpf: &Ebpf, name: &str) -> Option<u32> {
    match ebpf.map(name)? {
        aya::maps::Map::HashMap(data) => data.info().ok().map(|i| i.max_entries()),
        _ => None,
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
        let episodes = match threshold_ns {
            0 => None,
            _ => {
                let map = ebpf.take_map("episodes").ok_or_else(|| {
                    Error::Internal("map episodes missing from gil_wait.bpf.o".into())
                })?;
                Some(RingBuf::try_from(map).map_err(|e| map_error("episodes", &e))?)
            }
        };
        drop(btf);
        crate::probes::release_freed_heap();
        Ok(Self {
            ebpf,
            episodes,
            episode_threshold_ns: threshold_ns,
        })
    }

    /// Moves every episode the kernel recorded since the last call into `out`
    /// (of all watched processes; nothing when loaded without a threshold).
    pub fn drain_episodes(&mut self, out: &mut Vec<WaitEpisode>) {
        if let Some(ring) = self.episodes.as_mut() {
            drain_ring(ring, out);
        }
    }

    /// Episodes the kernel could not record because the ring buffer was full
    /// (cumulative since load): the agent fell behind.
    pub fn episodes_lost(&self) -> u64 {
        lost_count(&self.ebpf, "episodes_lost")
    }

    /// Inserts the kernel could not make because the map was full (cumulative
    /// since load), per map: `thread_waits` counts waits of threads that found
    /// no slot (each one uncounted), `blocked_by` waits not attributed to their
    /// holder, `inflight` waits not tracked at all, `gil_waits` take waits
    /// missing from the per-GIL figures.
    pub fn entries_dropped(&self) -> EntriesDropped {
        full_counts(&self.ebpf, "map_full", &FULL_SLOTS)
    }

    /// The number of entries the kernel gave `map`, for saying how full "full"
    /// is; `None` for a map not of this probe.
    pub fn capacity(&self, map: KernelMap) -> Option<u32> {
        hash_capacity(&self.ebpf, map.name())
    }

    /// The span threshold this probe was loaded with (0: no episodes), for the
    /// per-process probes (musl) that must record the same episodes.
    pub fn episode_threshold_ns(&self) -> u64 {
        self.episode_threshold_ns
    }

    fn map_mut<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Internal(format!("map {name} missing from gil_wait.bpf.o")))?;
        BpfHashMap::try_from(map).map_err(|e| map_error(name, &e))
    }

    fn map<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<BpfHashMap<&MapData, K, V>> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Internal(format!("map {name} missing from gil_wait.bpf.o")))?;
        BpfHashMap::try_from(map).map_err(|e| map_error(name, &e))
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
        };
        let mut targets = self.map_mut::<u32, k::GilTarget>("targets")?;
        targets
            .insert(tgid, target, 0)
            .map_err(|e| map_error("targets", &e))
    }

    /// Stops counting the sleeps of `tgid` at once but keeps what was counted, for a
    /// last report: a process that exec'd into another program must not have that
    /// program's sleeps counted under it. [`WaitProbe::unwatch`] clears the rest.
    pub fn stop_counting(&mut self, tgid: u32) -> Result<()> {
        let mut targets = self.map_mut::<u32, k::GilTarget>("targets")?;
        match targets.remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            // Already stopped (the kernel says ENOENT).
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(map_error("targets", &e)),
        }
    }

    /// Stops watching `tgid` and deletes every kernel entry it left (threads, holders, in-flight waits).
    pub fn unwatch(&mut self, tgid: u32) -> Result<()> {
        let tids: Vec<u32> = self.read(tgid)?.threads.into_keys().collect();
        self.forget_threads(&tids)?;
        self.forget_gils(tgid)?;
        self.stop_counting(tgid)
    }

    /// Deletes the per-thread entries of threads that exited.
    pub fn forget_threads(&mut self, tids: &[u32]) -> Result<()> {
        self.take_threads(tids).map(drop)
    }

    /// Deletes the per-thread entries of threads that exited and returns what
    /// they held (their counters and blocked-by pairs): a long-lived process
    /// whose threads come and go keeps their sum, not their slots.
    pub fn take_threads(&mut self, tids: &[u32]) -> Result<WaitCounters> {
        take_thread_entries::<k::ThreadWaits, k::FutexInflight>(
            &mut self.ebpf,
            ["thread_waits", "blocked_by", "inflight"],
            tids,
        )
    }

    fn forget_gils(&mut self, tgid: u32) -> Result<()> {
        let keys: Vec<k::GilKey> = self
            .map::<k::GilKey, k::GilVal>("gil_waits")?
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.tgid == tgid)
            .collect();
        let mut map = self.map_mut::<k::GilKey, k::GilVal>("gil_waits")?;
        for key in &keys {
            let _ = map.remove(key);
        }
        Ok(())
    }

    /// The current cumulative counters of every thread of `tgid`.
    pub fn read(&self, tgid: u32) -> Result<WaitCounters> {
        let waits = self.map::<u32, k::ThreadWaits>("thread_waits")?;
        let threads: HashMap<u32, ThreadWaits> = waits
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, w)| w.tgid == tgid)
            .map(|(tid, w)| (tid, w.into()))
            .collect();
        Ok(counters_of(
            tgid,
            threads,
            &self.map("blocked_by")?,
            &self.map("gil_waits")?,
        ))
    }

    /// The counters of every watched process, in one pass over each map: what a
    /// daemon watching many processes reads per tick, instead of one full scan per process.
    pub fn read_all(&self) -> Result<HashMap<u32, WaitCounters>> {
        let mut out: HashMap<u32, WaitCounters> = HashMap::new();
        let mut tgid_of: HashMap<u32, u32> = HashMap::new();
        for (tid, w) in self
            .map::<u32, k::ThreadWaits>("thread_waits")?
            .iter()
            .filter_map(|entry| entry.ok())
        {
            tgid_of.insert(tid, w.tgid);
            out.entry(w.tgid).or_default().threads.insert(tid, w.into());
        }
        for (k, v) in self
            .map::<k::BlockedKey, k::BlockedVal>("blocked_by")?
            .iter()
            .filter_map(|entry| entry.ok())
        {
            if let Some(tgid) = tgid_of.get(&k.waiter_tid) {
                out.entry(*tgid)
                    .or_default()
                    .blocked_by
                    .insert(k.into(), v.into());
            }
        }
        for (k, v) in self
            .map::<k::GilKey, k::GilVal>("gil_waits")?
            .iter()
            .filter_map(|entry| entry.ok())
        {
            out.entry(k.tgid)
                .or_default()
                .gils
                .insert(k.gil_addr, v.into());
        }
        Ok(out)
    }

    /// Number of entries in each map, to show that nothing leaks.
    pub fn entry_counts(&self) -> Result<[(&'static str, usize); 5]> {
        Ok([
            (
                "targets",
                self.map::<u32, k::GilTarget>("targets")?.keys().count(),
            ),
            (
                "thread_waits",
                self.map::<u32, k::ThreadWaits>("thread_waits")?
                    .keys()
                    .count(),
            ),
            (
                "blocked_by",
                self.map::<k::BlockedKey, k::BlockedVal>("blocked_by")?
                    .keys()
                    .count(),
            ),
            (
                "inflight",
                self.map::<u32, k::FutexInflight>("inflight")?
                    .keys()
                    .count(),
            ),
            (
                "gil_waits",
                self.map::<k::GilKey, k::GilVal>("gil_waits")?
                    .keys()
                    .count(),
            ),
        ])
    }
}

/// One process's thread counters joined with those threads' blocked-by pairs and the
/// process's per-GIL waits: the same shape from the futex and the condvar probe.
pub(crate) fn counters_of(
    tgid: u32,
    threads: HashMap<u32, ThreadWaits>,
    blocked: &BpfHashMap<&MapData, k::BlockedKey, k::BlockedVal>,
    gils: &BpfHashMap<&MapData, k::GilKey, k::GilVal>,
) -> WaitCounters {
    let blocked_by = blocked
        .iter()
        .filter_map(|entry| entry.ok())
        .filter(|(k, _)| threads.contains_key(&k.waiter_tid))
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let gils = gils
        .iter()
        .filter_map(|entry| entry.ok())
        .filter(|(k, _)| k.tgid == tgid)
        .map(|(k, v)| (k.gil_addr, v.into()))
        .collect();
    WaitCounters {
        threads,
        blocked_by,
        gils,
    }
}

/// Reads and deletes the entries of `tids` from a probe's three per-thread maps
/// (`names`: counters, blocked-by pairs, in-flight waits) and returns what they
/// held. Entries that are already gone are skipped; a map missing from the
/// object fails the call.
pub(crate) fn take_thread_entries<W: aya::Pod + Into<ThreadWaits>, I: aya::Pod>(
    ebpf: &mut Ebpf,
    names: [&str; 3],
    tids: &[u32],
) -> Result<WaitCounters> {
    let [waits_name, blocked_name, inflight_name] = names;
    let mut out = WaitCounters::default();
    if tids.is_empty() {
        return Ok(out);
    }
    let mut waits: BpfHashMap<&mut MapData, u32, W> = typed_map(ebpf, waits_name)?;
    for tid in tids {
        if let Ok(w) = waits.get(tid, 0) {
            out.threads.insert(*tid, w.into());
        }
        let _ = waits.remove(tid);
    }
    let wanted: std::collections::HashSet<u32> = tids.iter().copied().collect();
    let mut pairs: BpfHashMap<&mut MapData, k::BlockedKey, k::BlockedVal> =
        typed_map(ebpf, blocked_name)?;
    let found: Vec<(k::BlockedKey, k::BlockedVal)> = pairs
        .iter()
        .filter_map(|entry| entry.ok())
        .filter(|(k, _)| wanted.contains(&k.waiter_tid))
        .collect();
    for (key, val) in found {
        let _ = pairs.remove(&key);
        out.blocked_by
            .insert(BlockedKey::from(key), BlockedWait::from(val));
    }
    let mut inflight: BpfHashMap<&mut MapData, u32, I> = typed_map(ebpf, inflight_name)?;
    for tid in tids {
        let _ = inflight.remove(tid);
    }
    Ok(out)
}

/// A writable typed view of hash map `name` of `ebpf`.
fn typed_map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| Error::Internal(format!("map {name} missing from its BPF object")))?;
    BpfHashMap::try_from(map).map_err(|e| map_error(name, &e))
}
