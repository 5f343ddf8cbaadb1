//! musl: uprobes on the libc condvar wait of one process, from
//! `ebpf/gil_condwait.bpf.c`, giving the GIL waits the futex probe cannot see
//! there (musl's waiters sleep on their own stack, not on the GIL).
//!
//! The counters come back as a [`WaitCounters`] of the same shape the futex
//! probe produces, and [`merge_into`] folds them into the futex probe's, so a
//! musl report has the same fields, filled the same way, as a glibc one. Long
//! waits come out as [`WaitEpisode`] records too, as from the futex probe.

use std::num::NonZeroU32;

use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};

use crate::core::counters::{EntriesDropped, KernelMap, WaitCounters, WaitEpisode};
use crate::core::holders::HolderStacks;
use crate::cpython::find::libc::CondWaitSite;
use crate::cpython::layout::frames::FrameWalk;
use crate::cpython::layout::versions::GilLayout;
use crate::error::{Error, Result};
use crate::probes::holders::HolderMapNames;
use crate::probes::layout as k;
use crate::probes::maps::{MapNames, WaitMaps};
use crate::probes::{bpf_error, uprobe_error};

static CONDWAIT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gil_condwait.bpf.o"));

/// The condvar probe's maps (the counterparts of the futex probe's).
static MAPS: MapNames = MapNames {
    object: "gil_condwait.bpf.o",
    targets: "cond_targets",
    made: "cond_thread_made",
    episodes_made: "cond_episodes_made",
    waits: KernelMap::CondWaits,
    blocked_by: KernelMap::CondBlockedBy,
    inflight: KernelMap::CondInflight,
    gil_waits: KernelMap::CondGilWaits,
    full: "cond_map_full",
    episodes: "cond_episodes",
    episodes_bytes: 64 * 1024,
    episodes_lost: "cond_episodes_lost",
    holders: HolderMapNames {
        walks: "cond_holder_walks",
        stacks: KernelMap::CondHolderStacks,
        waits: KernelMap::CondHolderWaits,
    },
};

/// A take slice that starts within this long of its timed-out predecessor is the same wait
/// (the same figure as the futex probe's).
const CONTINUATION_GAP_NS: u64 = 1_000_000;

/// The attached condvar-wait probes of one process; detached when dropped.
pub struct CondWaitProbe {
    /// Keeps the programs loaded and attached (their maps are in `maps`).
    _ebpf: Ebpf,
    maps: WaitMaps<k::CondwaitTarget, k::CondwaitWaits, k::CondwaitInflight>,
    /// Where the probe went, for `measured_by`.
    pub site: CondWaitSite,
}

impl CondWaitProbe {
    /// Attaches entry and return probes to musl's condvar wait at `site`, for
    /// process `pid` only. Nothing is counted until [`CondWaitProbe::watch`].
    pub fn attach(pid: u32, site: &CondWaitSite) -> Result<Self> {
        Self::attach_with_episodes(pid, site, 0)
    }

    /// As [`CondWaitProbe::attach`], and every merged take wait of at least
    /// `threshold_ns` is recorded as a [`WaitEpisode`] (0: none).
    pub fn attach_with_episodes(pid: u32, site: &CondWaitSite, threshold_ns: u64) -> Result<Self> {
        Self::attach_with_capacity(pid, site, threshold_ns, None)
    }

    /// As [`CondWaitProbe::attach_with_episodes`], with the per-thread maps sized
    /// for `threads` threads of this process (`None`: the built-in 65,536), as
    /// [`WaitProbe::load_with_capacity`](crate::probes::wait::WaitProbe::load_with_capacity)
    /// does: for tests that must fill them.
    pub fn attach_with_capacity(
        pid: u32,
        site: &CondWaitSite,
        threshold_ns: u64,
        threads: Option<u32>,
    ) -> Result<Self> {
        let gap = CONTINUATION_GAP_NS;
        let mut loader = EbpfLoader::new();
        loader
            .override_global("continuation_gap_ns", &gap, true)
            .override_global("episode_threshold_ns", &threshold_ns, true);
        if let Some(threads) = threads.map(|n| n.max(1)) {
            loader
                .map_max_entries("cond_waits", threads)
                .map_max_entries("cond_inflight", threads)
                .map_max_entries(
                    "cond_blocked_by",
                    threads.max(crate::probes::wait::BUILT_IN_THREADS),
                );
        }
        let mut ebpf = loader
            .load(CONDWAIT_OBJECT)
            .map_err(|e| bpf_error("loading gil_condwait.bpf.o", &e))?;
        attach_uprobes(&mut ebpf, pid, site)?;
        let maps = WaitMaps::take(&mut ebpf, &MAPS, threshold_ns > 0)?;
        crate::probes::release_freed_heap();
        Ok(Self {
            _ebpf: ebpf,
            maps,
            site: site.clone(),
        })
    }

    /// Moves every episode recorded since the last call into `out`.
    pub fn drain_episodes(&mut self, out: &mut Vec<WaitEpisode>) {
        self.maps.drain_episodes(out);
    }

    /// Episodes lost to a full ring buffer or a spent share (cumulative).
    pub fn episodes_lost(&self) -> u64 {
        self.maps.episodes_lost()
    }

    /// Inserts lost to a full map (cumulative), per map: the musl counterparts of
    /// [`WaitProbe::entries_dropped`](crate::probes::wait::WaitProbe::entries_dropped).
    /// A take wait that finds `cond_waits` full counts once per slice.
    pub fn entries_dropped(&self) -> EntriesDropped {
        self.maps.entries_dropped()
    }

    /// The number of entries the kernel gave `map` (e.g. `cond_waits`); `None`
    /// for a map not of this probe.
    pub fn capacity(&self, map: KernelMap) -> Option<u32> {
        self.maps.capacity(map)
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

    /// Starts (or updates) counting condvar waits of `tgid` on any of its GILs
    /// (at most [`MAX_GILS`](crate::probes::MAX_GILS)).
    pub fn watch(&mut self, tgid: u32, gils: &[u64], layout: &GilLayout) -> Result<()> {
        let narrow = |v: u64| {
            u32::try_from(v).map_err(|_| Error::Internal(format!("GIL offset {v} too large")))
        };
        let mut target = k::CondwaitTarget {
            cond_off: narrow(layout.cond)?,
            switch_cond_off: narrow(layout.switch_cond)?,
            last_holder_off: narrow(layout.last_holder)?,
            ..k::CondwaitTarget::default()
        };
        for (slot, addr) in target.gil_addrs.iter_mut().zip(gils) {
            *slot = *addr;
        }
        self.maps.set_target(tgid, target)
    }

    /// The cumulative counters of `tgid`, shaped like the futex probe's.
    pub fn read(&self, tgid: u32) -> Result<WaitCounters> {
        Ok(self.maps.read(tgid))
    }

    /// Starts capturing the GIL holder's Python stack at each take slice of
    /// `tgid`, as [`WaitProbe::capture_holders`](crate::probes::wait::WaitProbe::capture_holders)
    /// does for the futex probe.
    pub fn capture_holders(&mut self, tgid: u32, walk: &FrameWalk) -> Result<()> {
        self.maps.holders.set_walk(tgid, walk)
    }

    /// The GIL wait behind each holder stack of `tgid` and those stacks, shaped
    /// like the futex probe's (add them with [`HolderStacks::add`]: equal ids
    /// are equal stacks). Released with the probe (it serves this process alone).
    pub fn read_holders(&self, tgid: u32) -> Result<HolderStacks> {
        Ok(self.maps.holders.read(tgid))
    }

    /// Deletes the entries of threads that exited and returns what they held,
    /// shaped like the futex probe's (see [`WaitProbe::take_threads`](crate::probes::wait::WaitProbe::take_threads)).
    pub fn take_threads(&mut self, tgid: u32, tids: &[u32]) -> Result<WaitCounters> {
        Ok(self.maps.take_threads(tgid, tids))
    }
}

/// Attaches the entry and return probes of `ebpf` to the condvar wait at `site`,
/// for process `pid` only.
fn attach_uprobes(ebpf: &mut Ebpf, pid: u32, site: &CondWaitSite) -> Result<()> {
    let pid = NonZeroU32::new(pid).ok_or(Error::NoSuchProcess { pid })?;
    for program in ["cond_enter", "cond_return"] {
        let probe: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| Error::Internal(format!("{program} missing from gil_condwait.bpf.o")))?
            .try_into()
            .map_err(|e| bpf_error(program, &e))?;
        probe.load().map_err(|e| bpf_error(program, &e))?;
        probe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                &site.host_path,
                UProbeScope::OneProcess(pid),
            )
            .map_err(|e| {
                let what = format!(
                    "attaching {program} to {} in {}",
                    site.symbol,
                    site.host_path.display()
                );
                uprobe_error(&what, &e)
            })?;
    }
    Ok(())
}

/// Folds the condvar probe's GIL waits into the futex probe's counters of the
/// same process. On musl the futex probe saw the same sleeps as "other futex"
/// waits (their futex word is on the waiter's stack), so that time and those
/// calls are taken off `other_wait_ns`/`other_waits` rather than counted twice.
pub fn merge_into(futex: &mut WaitCounters, cond: &WaitCounters) {
    for (tid, c) in &cond.threads {
        let w = futex.threads.entry(*tid).or_default();
        let gil_ns = c.take_wait_ns + c.drop_wait_ns;
        let gil_calls = c.take_futex_calls + c.drop_waits;
        w.other_wait_ns = w.other_wait_ns.saturating_sub(gil_ns);
        w.other_waits = w.other_waits.saturating_sub(gil_calls);
        // The condvar probe counts only GIL waits: every other figure is 0.
        w.add(c);
    }
    for (key, v) in &cond.blocked_by {
        futex.blocked_by.entry(*key).or_default().add(v);
    }
    for (gil, v) in &cond.gils {
        futex.gils.entry(*gil).or_default().add(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::ThreadWaits;

    #[test]
    fn condvar_waits_replace_the_same_sleeps_counted_as_other_futex_waits() {
        let mut futex = WaitCounters::default();
        futex.threads.insert(
            7,
            ThreadWaits {
                other_wait_ns: 1_000,
                other_waits: 5,
                ..ThreadWaits::default()
            },
        );
        let mut cond = WaitCounters::default();
        let mut hist = [0u64; crate::core::counters::HIST_SLOTS];
        hist[9] = 2;
        cond.threads.insert(
            7,
            ThreadWaits {
                take_wait_ns: 700,
                take_waits: 2,
                take_futex_calls: 3,
                drop_wait_ns: 100,
                drop_waits: 1,
                take_hist: hist,
                ..ThreadWaits::default()
            },
        );
        cond.threads.insert(
            8,
            ThreadWaits {
                take_wait_ns: 50,
                take_waits: 1,
                ..ThreadWaits::default()
            },
        );
        merge_into(&mut futex, &cond);
        let w = futex.threads[&7];
        assert_eq!(
            (w.take_wait_ns, w.take_waits, w.drop_wait_ns),
            (700, 2, 100)
        );
        assert_eq!((w.other_wait_ns, w.other_waits), (200, 1));
        assert_eq!(w.take_hist[9], 2);
        assert_eq!(
            futex.threads[&8].take_wait_ns, 50,
            "threads only the condvar probe saw"
        );
    }
}
