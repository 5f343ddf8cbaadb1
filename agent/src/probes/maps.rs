//! The maps a GIL wait probe shares with the agent, taken out of the loaded
//! object once, at load, as typed handles. The futex probe (`gil_wait.bpf.c`)
//! and musl's condvar probe (`gil_condwait.bpf.c`) keep the same set under
//! different names and value types, so one [`WaitMaps`] serves both: reading a
//! process's counters, taking exited threads' entries out, and the map-full
//! and episode counters, and the holder-stack maps ([`HolderMaps`]).

use std::collections::{HashMap, HashSet};

use aya::maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, MapError, RingBuf};
use aya::Ebpf;

use crate::core::counters::{
    BlockedKey, BlockedWait, EntriesDropped, KernelMap, ThreadWaits, WaitCounters, WaitEpisode,
};
use crate::error::Result;
use crate::probes::holders::{HolderMapNames, HolderMaps};
use crate::probes::layout::{self as k, map_full_slot};
use crate::probes::{map_error, remove_where, take_map};

/// The names of one wait probe's maps in its object.
pub(crate) struct MapNames {
    /// The object, for errors.
    pub object: &'static str,
    /// Where each watched process's GILs are (key: tgid).
    pub targets: &'static str,
    /// Per-thread entries given to each process (key: tgid; kernel-written).
    pub made: &'static str,
    /// Episode records given to each process (key: tgid; kernel-written).
    pub episodes_made: &'static str,
    /// Per-thread counters, blocked-by pairs, waits in progress, per-GIL waits.
    pub waits: KernelMap,
    pub blocked_by: KernelMap,
    pub inflight: KernelMap,
    pub gil_waits: KernelMap,
    /// The u64 array of failed inserts (slots: `enum map_full_slot`).
    pub full: &'static str,
    /// The episode ring buffer, its size in bytes (`max_entries` in the
    /// object), and its lost-records counter.
    pub episodes: &'static str,
    pub episodes_bytes: u32,
    pub episodes_lost: &'static str,
    /// The GIL holders' stacks.
    pub holders: HolderMapNames,
}

/// A per-thread counters struct of a wait probe (`thread_waits`, `cond_waits`
/// values): which process the thread is of, and its counters in domain shape.
pub(crate) trait ThreadEntry: aya::Pod + Into<ThreadWaits> {
    /// The thread's process.
    fn tgid(&self) -> u32;
}

impl ThreadEntry for k::ThreadWaits {
    fn tgid(&self) -> u32 {
        self.tgid
    }
}

impl ThreadEntry for k::CondwaitWaits {
    fn tgid(&self) -> u32 {
        self.tgid
    }
}

/// A target struct of a wait probe (`targets`, `cond_targets` values): it
/// carries the process's share of the per-thread map (`admit_one` in
/// `ebpf/gil_shared.bpf.h`), which the agent raises by what it takes back.
pub(crate) trait TargetEntry: aya::Pod {
    fn thread_limit(&self) -> u32;
    fn set_thread_limit(&mut self, limit: u32);
    fn episode_limit(&self) -> u32;
    fn set_episode_limit(&mut self, limit: u32);
}

macro_rules! target_entry {
    ($t:ty) => {
        impl TargetEntry for $t {
            fn thread_limit(&self) -> u32 {
                self.thread_limit
            }
            fn set_thread_limit(&mut self, limit: u32) {
                self.thread_limit = limit;
            }
            fn episode_limit(&self) -> u32 {
                self.episode_limit
            }
            fn set_episode_limit(&mut self, limit: u32) {
                self.episode_limit = limit;
            }
        }
    };
}

target_entry!(k::GilTarget);
target_entry!(k::CondwaitTarget);

/// The share of a per-thread map of `capacity` entries one process may hold:
/// an eighth, so that one tenant's threads leave room for seven more, but
/// never fewer than 1,024 (a map sized for a handful of processes is theirs).
pub(crate) fn default_thread_share(capacity: u32) -> u32 {
    (capacity / 8).max(1024)
}

/// The episode records one process may send between two drains of a ring
/// buffer of `bytes`: an eighth of what it holds, so that one process with
/// many long waits leaves room for seven more.
pub(crate) fn default_episode_share(bytes: u32) -> u32 {
    let record = std::mem::size_of::<k::GilEpisode>() as u32 + 8;
    (bytes / record / 8).max(1)
}

/// The typed maps of one loaded wait probe. `T`: the target struct, `W`: the
/// per-thread counters, `I`: the in-flight wait.
pub(crate) struct WaitMaps<T, W, I> {
    names: &'static MapNames,
    targets: BpfHashMap<MapData, u32, T>,
    /// What `targets` holds for each counted process (its share as raised).
    counted: HashMap<u32, T>,
    /// The share a newly watched process gets ([`default_thread_share`]).
    thread_share: u32,
    made: BpfHashMap<MapData, u32, u32>,
    /// Episode records each process may send between two drains.
    episode_share: u32,
    episodes_made: BpfHashMap<MapData, u32, u32>,
    waits: BpfHashMap<MapData, u32, W>,
    blocked_by: BpfHashMap<MapData, k::BlockedKey, k::BlockedVal>,
    inflight: BpfHashMap<MapData, u32, I>,
    gil_waits: BpfHashMap<MapData, k::GilKey, k::GilVal>,
    full: Array<MapData, u64>,
    /// `None`: loaded without an episode threshold, nothing to drain.
    episodes: Option<RingBuf<MapData>>,
    episodes_lost: Array<MapData, u64>,
    /// The GIL holders' stacks and the waits behind them.
    pub holders: HolderMaps,
}

impl<T: TargetEntry, W: ThreadEntry, I: aya::Pod> WaitMaps<T, W, I> {
    /// Takes every map out of `ebpf` (the episode ring buffer only `with_episodes`).
    pub fn take(ebpf: &mut Ebpf, names: &'static MapNames, with_episodes: bool) -> Result<Self> {
        let object = names.object;
        let waits: BpfHashMap<MapData, u32, W> = take_map(ebpf, object, names.waits.name())?;
        let capacity = waits.map().info().map_or(0, |i| i.max_entries());
        let episodes: Option<RingBuf<MapData>> = match with_episodes {
            true => Some(take_map(ebpf, object, names.episodes)?),
            false => None,
        };
        Ok(Self {
            names,
            targets: take_map(ebpf, object, names.targets)?,
            counted: HashMap::new(),
            thread_share: default_thread_share(capacity),
            made: take_map(ebpf, object, names.made)?,
            episode_share: default_episode_share(names.episodes_bytes),
            episodes_made: take_map(ebpf, object, names.episodes_made)?,
            waits,
            blocked_by: take_map(ebpf, object, names.blocked_by.name())?,
            inflight: take_map(ebpf, object, names.inflight.name())?,
            gil_waits: take_map(ebpf, object, names.gil_waits.name())?,
            full: take_map(ebpf, object, names.full)?,
            episodes,
            episodes_lost: take_map(ebpf, object, names.episodes_lost)?,
            holders: HolderMaps::take(ebpf, object, &names.holders)?,
        })
    }

    /// Sets the share of the per-thread map each process watched from now on
    /// may hold (tests, and nodes that size it differently).
    pub fn set_thread_share(&mut self, share: u32) {
        self.thread_share = share.max(1);
    }

    /// Sets how many episode records each process watched from now on may
    /// send between two drains (tests).
    pub fn set_episode_share(&mut self, share: u32) {
        self.episode_share = share.max(1);
    }

    /// Starts (or updates) the kernel filter's entry of process `tgid`, with
    /// its share of the per-thread map (kept as raised on an update).
    pub fn set_target(&mut self, tgid: u32, mut target: T) -> Result<()> {
        let limit = self
            .counted
            .get(&tgid)
            .map_or(self.thread_share, |t| t.thread_limit());
        target.set_thread_limit(limit);
        let sent = self.episodes_made.get(&tgid, 0).unwrap_or(0);
        target.set_episode_limit(sent.saturating_add(self.episode_share));
        self.targets
            .insert(tgid, target, 0)
            .map_err(|e| map_error(self.names.targets, &e))?;
        self.counted.insert(tgid, target);
        Ok(())
    }

    /// Raises the share of `tgid` by `entries` it no longer holds (taken, or
    /// given by the kernel to another process's thread): its count of entries
    /// made is only ever added to, so the room comes back through the limit.
    fn give_back(&mut self, tgid: u32, entries: u32) {
        self.update_target(tgid, |t| {
            t.set_thread_limit(t.thread_limit().saturating_add(entries));
            entries > 0
        });
    }

    /// Changes the target entry of a counted process (not one stopped since)
    /// with `change` and writes it to the kernel again if `change` says it
    /// changed anything.
    fn update_target(&mut self, tgid: u32, change: impl FnOnce(&mut T) -> bool) {
        let Some(target) = self.counted.get_mut(&tgid) else {
            return;
        };
        if !change(target) {
            return;
        }
        let target = *target;
        if let Err(e) = self.targets.insert(tgid, target, 0) {
            tracing::debug!(
                "{}: {}",
                self.names.targets,
                map_error(self.names.targets, &e)
            );
        }
    }

    /// Removes the filter entry of `tgid`; one already gone is no error.
    pub fn remove_target(&mut self, tgid: u32) -> Result<()> {
        self.counted.remove(&tgid);
        match self.targets.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            // Already stopped (the kernel says ENOENT).
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(map_error(self.names.targets, &e)),
        }
    }

    /// The cumulative counters of every thread of `tgid`, with those threads'
    /// blocked-by pairs and the process's per-GIL waits.
    pub fn read(&self, tgid: u32) -> WaitCounters {
        let threads: HashMap<u32, ThreadWaits> = self
            .waits
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(_, w)| w.tgid() == tgid)
            .map(|(tid, w)| (tid, w.into()))
            .collect();
        let blocked_by = self
            .blocked_by
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(k, _)| k.waiter_tgid == tgid && threads.contains_key(&k.waiter_tid))
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let gils = self
            .gil_waits
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

    /// The counters of every process in the maps, in one pass over each.
    pub fn read_all(&self) -> HashMap<u32, WaitCounters> {
        let mut out: HashMap<u32, WaitCounters> = HashMap::new();
        for (tid, w) in self.waits.iter().filter_map(|entry| entry.ok()) {
            out.entry(w.tgid())
                .or_default()
                .threads
                .insert(tid, w.into());
        }
        for (k, v) in self.blocked_by.iter().filter_map(|entry| entry.ok()) {
            if let Some(counters) = out.get_mut(&k.waiter_tgid) {
                if counters.threads.contains_key(&k.waiter_tid) {
                    counters.blocked_by.insert(k.into(), v.into());
                }
            }
        }
        for (k, v) in self.gil_waits.iter().filter_map(|entry| entry.ok()) {
            let counters = out.entry(k.tgid).or_default();
            counters.gils.insert(k.gil_addr, v.into());
        }
        out
    }

    /// Reads and deletes the entries of threads `tids` of process `tgid`
    /// (counters, blocked-by pairs, in-flight waits) and returns what they
    /// held. Entries already gone are skipped, and so are those of a tid the
    /// kernel has since given to another process: they are that process's.
    pub fn take_threads(&mut self, tgid: u32, tids: &[u32]) -> WaitCounters {
        let mut out = WaitCounters::default();
        if tids.is_empty() {
            return out;
        }
        let wanted: HashSet<u32> = tids.iter().copied().collect();
        let mut ours: HashSet<u32> = HashSet::new();
        let mut released = 0u32;
        for tid in tids {
            match self.waits.get(tid, 0) {
                Ok(w) if w.tgid() != tgid => {
                    released += 1;
                    continue;
                }
                Ok(w) => {
                    out.threads.insert(*tid, w.into());
                    if self.waits.remove(tid).is_ok() {
                        released += 1;
                    }
                }
                Err(_) => {}
            }
            ours.insert(*tid);
        }
        if released > 0 {
            self.give_back(tgid, released);
        }
        let found: Vec<(k::BlockedKey, k::BlockedVal)> = self
            .blocked_by
            .iter()
            .filter_map(|entry| entry.ok())
            .filter(|(k, _)| k.waiter_tgid == tgid && wanted.contains(&k.waiter_tid))
            .collect();
        for (key, val) in found {
            let _ = self.blocked_by.remove(&key);
            out.blocked_by
                .insert(BlockedKey::from(key), BlockedWait::from(val));
        }
        // Pairs carry their process, so those of a tid reused since are still
        // ours to take. In-flight waits carry none: one is deleted only when
        // its tid's counters were this process's (or were never made).
        for tid in &ours {
            let _ = self.inflight.remove(tid);
        }
        out
    }

    /// Deletes the per-GIL entries of `tgid`, its count of per-thread entries
    /// made, and any blocked-by pair of it left behind (by a thread whose tid another process has since taken).
    pub fn forget_process(&mut self, tgid: u32) {
        let _ = self.made.remove(&tgid);
        let _ = self.episodes_made.remove(&tgid);
        remove_where(&mut self.blocked_by, |k| k.waiter_tgid == tgid);
        remove_where(&mut self.gil_waits, |k| k.tgid == tgid);
    }

    /// Failed inserts per map (cumulative since load); 0 where unreadable.
    pub fn entries_dropped(&self) -> EntriesDropped {
        let n = self.names;
        let slots: [(u32, KernelMap); map_full_slot::SLOTS] = [
            (map_full_slot::THREAD_WAITS, n.waits),
            (map_full_slot::BLOCKED_BY, n.blocked_by),
            (map_full_slot::INFLIGHT, n.inflight),
            (map_full_slot::GIL_WAITS, n.gil_waits),
            (map_full_slot::HOLDER_STACKS, n.holders.stacks),
            (map_full_slot::HOLDER_WAITS, n.holders.waits),
        ];
        let mut out = EntriesDropped::default();
        for (slot, map) in slots {
            out.set(map, self.full.get(&slot, 0).unwrap_or(0));
        }
        out
    }

    /// The entries the kernel gave `map`; `None` for a map not of this probe.
    pub fn capacity(&self, map: KernelMap) -> Option<u32> {
        let n = self.names;
        let data = match map {
            m if m == n.waits => self.waits.map(),
            m if m == n.blocked_by => self.blocked_by.map(),
            m if m == n.inflight => self.inflight.map(),
            m if m == n.gil_waits => self.gil_waits.map(),
            m => return self.holders.capacity(m),
        };
        data.info().ok().map(|i| i.max_entries())
    }

    /// Entries in each map (the filter's, the four per-thread ones, then the
    /// holder-stack ones), to show that nothing leaks.
    pub fn entry_counts(&self) -> [(&'static str, usize); 8] {
        let n = self.names;
        let [walks, stacks, holder_waits] = self.holders.entry_counts();
        [
            (n.targets, self.targets.keys().count()),
            (n.waits.name(), self.waits.keys().count()),
            (n.blocked_by.name(), self.blocked_by.keys().count()),
            (n.inflight.name(), self.inflight.keys().count()),
            (n.gil_waits.name(), self.gil_waits.keys().count()),
            walks,
            stacks,
            holder_waits,
        ]
    }

    /// Moves every episode record the kernel sent since the last call into `out`.
    pub fn drain_episodes(&mut self, out: &mut Vec<WaitEpisode>) {
        let Some(ring) = self.episodes.as_mut() else {
            return;
        };
        let mut senders = HashSet::new();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<k::GilEpisode>() {
                // SAFETY: GilEpisode is repr(C) Pod (any bit pattern is valid) and the
                // item holds at least size_of::<GilEpisode>() bytes; read_unaligned
                // makes no assumption about the item's alignment.
                let record =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<k::GilEpisode>()) };
                senders.insert(record.tgid);
                out.push(record.into());
            }
        }
        self.renew_episode_shares(&senders);
    }

    /// Gives each process that sent records since the last drain its share
    /// again: its limit becomes what it was given so far plus the share. A
    /// process that sent nothing costs nothing here.
    fn renew_episode_shares(&mut self, senders: &HashSet<u32>) {
        for tgid in senders {
            let sent = self.episodes_made.get(tgid, 0).unwrap_or(0);
            let limit = sent.saturating_add(self.episode_share);
            self.update_target(*tgid, |t| {
                let changed = t.episode_limit() != limit;
                t.set_episode_limit(limit);
                changed
            });
        }
    }

    /// Episodes lost to a full ring buffer or a spent share (cumulative since
    /// load); 0 if unreadable.
    pub fn episodes_lost(&self) -> u64 {
        self.episodes_lost.get(&0, 0).unwrap_or(0)
    }
}
