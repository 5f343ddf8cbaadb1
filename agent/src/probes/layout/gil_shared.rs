//! Rust mirrors of `ebpf/gil_shared.h`: what both GIL wait probes (the futex
//! probe and musl's condvar probe) hand to the agent in the same shape.

use crate::core::counters::{self, BlockedWait, GilWait, WaitEpisode, EPISODE_HOLDERS};

/// Slots of the map-full counters (`enum map_full_slot`; u64 array maps
/// `map_full` and, on musl, `cond_map_full`): inserts that failed because a
/// per-thread map was full, so a wait went uncounted and someone must be told.
pub mod map_full_slot {
    /// `thread_waits` (musl: `cond_waits`).
    pub const THREAD_WAITS: u32 = 0;
    /// `blocked_by` (musl: `cond_blocked_by`).
    pub const BLOCKED_BY: u32 = 1;
    /// `inflight` (musl: `cond_inflight`).
    pub const INFLIGHT: u32 = 2;
    /// `gil_waits` (musl: `cond_gil_waits`).
    pub const GIL_WAITS: u32 = 3;
    /// Number of slots.
    pub const SLOTS: usize = 4;
}

/// One GIL contention episode (ring buffers `episodes`, `cond_episodes`): a
/// merged take wait of at least the configured threshold, so long waits can
/// leave the node as spans with their waiter and holders instead of only as
/// histogram counts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilEpisode {
    pub tgid: u32,
    /// The waiting thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    pub end_ns: u64,
    pub gil_addr: u64,
    /// `PyThreadState *` of the holders seen, in order; 0 = unused slot.
    pub holders: [u64; EPISODE_HOLDERS],
    /// Take futex calls (timed-out slices plus the last one).
    pub slices: u32,
    /// 1: began right after a wake from a non-GIL sleep.
    pub retake: u32,
}

impl From<GilEpisode> for WaitEpisode {
    fn from(e: GilEpisode) -> Self {
        Self {
            tgid: e.tgid,
            tid: e.tid,
            start_ns: e.start_ns,
            end_ns: e.end_ns,
            gil_addr: e.gil_addr,
            holders: e.holders,
            slices: e.slices,
            retake: e.retake != 0,
        }
    }
}

/// (waiter, holder) pair of maps `blocked_by`, `cond_blocked_by`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BlockedKey {
    pub waiter_tid: u32,
    pub _pad: u32,
    pub holder_tstate: u64,
}

/// GIL wait a waiter spent behind one holder.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockedVal {
    pub wait_ns: u64,
    pub segments: u64,
}

/// (process, GIL) of maps `gil_waits`, `cond_gil_waits`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GilKey {
    pub tgid: u32,
    pub _pad: u32,
    pub gil_addr: u64,
}

/// Take-side wait on one GIL.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilVal {
    pub take_wait_ns: u64,
    pub take_waits: u64,
}

impl From<BlockedKey> for counters::BlockedKey {
    fn from(k: BlockedKey) -> Self {
        Self {
            waiter_tid: k.waiter_tid,
            holder_tstate: k.holder_tstate,
        }
    }
}

impl From<BlockedVal> for BlockedWait {
    fn from(v: BlockedVal) -> Self {
        Self {
            wait_ns: v.wait_ns,
            segments: v.segments,
        }
    }
}

impl From<GilVal> for GilWait {
    fn from(v: GilVal) -> Self {
        Self {
            take_wait_ns: v.take_wait_ns,
            take_waits: v.take_waits,
        }
    }
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for GilEpisode {}
unsafe impl aya::Pod for BlockedKey {}
unsafe impl aya::Pod for BlockedVal {}
unsafe impl aya::Pod for GilKey {}
unsafe impl aya::Pod for GilVal {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn map_full_slots_match_the_btf_of_the_wait_probe() {
        btf::assert_enum(
            "gil_wait.bpf.o",
            "map_full_slot",
            &[
                ("FULL_THREAD_WAITS", i64::from(map_full_slot::THREAD_WAITS)),
                ("FULL_BLOCKED_BY", i64::from(map_full_slot::BLOCKED_BY)),
                ("FULL_INFLIGHT", i64::from(map_full_slot::INFLIGHT)),
                ("FULL_GIL_WAITS", i64::from(map_full_slot::GIL_WAITS)),
                ("FULL_SLOTS", map_full_slot::SLOTS as i64),
            ],
        );
    }

    /// Both probes compile the same header; each object is checked for the
    /// shared structs it carries (`gil_episode` reaches the BTF only where a
    /// variable names it: the futex probe's).
    #[test]
    fn shared_mirrors_match_the_btf_of_both_gil_wait_probes() {
        for object in ["gil_wait.bpf.o", "gil_condwait.bpf.o"] {
            let s = btf::structs(object);
            assert_layout!(
                s,
                "blocked_key",
                BlockedKey,
                [waiter_tid, _pad, holder_tstate]
            );
            assert_layout!(s, "blocked_val", BlockedVal, [wait_ns, segments]);
            assert_layout!(s, "gil_key", GilKey, [tgid, _pad, gil_addr]);
            assert_layout!(s, "gil_val", GilVal, [take_wait_ns, take_waits]);
        }
        let s = btf::structs("gil_wait.bpf.o");
        assert_layout!(
            s,
            "gil_episode",
            GilEpisode,
            [tgid, tid, start_ns, end_ns, gil_addr, holders, slices, retake]
        );
    }
}
