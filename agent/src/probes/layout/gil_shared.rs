//! Rust mirrors of `ebpf/gil_shared.h`: what both GIL wait probes (the futex
//! probe and musl's condvar probe) hand to the agent in the same shape.

use crate::core::counters::{self, BlockedWait, GilWait, HolderWait, WaitEpisode, EPISODE_HOLDERS};
use crate::core::holders::{RawStack, StackEnd};
use crate::core::stacks::RawFrame;

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
    /// `holder_stacks` (musl: `cond_holder_stacks`).
    pub const HOLDER_STACKS: u32 = 4;
    /// `holder_waits` (musl: `cond_holder_waits`).
    pub const HOLDER_WAITS: u32 = 5;
    /// Number of slots.
    pub const SLOTS: usize = 6;
}

/// Python frames captured of a holder's stack (`GILSCOPE_STACK_DEPTH` of
/// `ebpf/gilscope.h`).
pub const STACK_DEPTH: usize = 64;

/// The stack id of segments whose holder's frames could not be captured
/// (`STACK_UNKNOWN` of `gil_shared.h`; the domain's
/// [`crate::core::holders::UNKNOWN_STACK`]). `STACK_NONE` (0, a segment not
/// captured at all) is never a map key.
pub const STACK_UNKNOWN: u64 = crate::core::holders::UNKNOWN_STACK;

/// `flags` of a [`HolderStack`]: why it ends before the root.
pub const STACK_TRUNCATED: u32 = 1;
pub const STACK_BROKEN: u32 = 2;

/// How to walk one process's Python frames (maps `holder_walks`,
/// `cond_holder_walks`; key: tgid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameWalk {
    pub code_tag_mask: u64,
    pub tstate_frame: u32,
    pub cframe_frame: u32,
    pub frame_previous: u32,
    pub frame_code: u32,
    pub frame_instr: u32,
    pub frame_owner: u32,
    pub two_loads: u8,
    pub instr_is_int: u8,
    pub has_owner: u8,
    pub owner_skip_from: u8,
    pub _pad: u32,
}

/// One captured frame: code object address, raw position.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelFrame {
    pub code: u64,
    pub instr: u64,
}

/// A holder's stack, innermost frame first (maps `holder_stacks`,
/// `cond_holder_stacks`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HolderStack {
    pub depth: u32,
    pub flags: u32,
    pub frames: [KernelFrame; STACK_DEPTH],
}

/// (process, stack id) of maps `holder_stacks`, `holder_waits` and their
/// musl counterparts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HolderKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stack_id: u64,
}

/// GIL wait behind one holder stack.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HolderWaitVal {
    pub wait_ns: u64,
    pub segments: u64,
}

impl From<HolderStack> for RawStack {
    /// The frames in use (a depth beyond the array is clamped), and where the
    /// stack ends: a read failure outranks the depth limit.
    fn from(s: HolderStack) -> Self {
        let depth = (s.depth as usize).min(STACK_DEPTH);
        let end = if s.flags & STACK_BROKEN != 0 {
            StackEnd::Unreadable
        } else if s.flags & STACK_TRUNCATED != 0 {
            StackEnd::DepthLimit
        } else {
            StackEnd::Root
        };
        Self {
            frames: s.frames[..depth]
                .iter()
                .map(|f| RawFrame {
                    code: f.code,
                    instr: f.instr,
                })
                .collect(),
            end,
        }
    }
}

impl From<HolderWaitVal> for HolderWait {
    fn from(v: HolderWaitVal) -> Self {
        Self {
            wait_ns: v.wait_ns,
            segments: v.segments,
        }
    }
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
    /// The holder's stack id when the last slice began (`STACK_NONE`: not captured).
    pub holder_stack: u64,
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
            holder_stack: (e.holder_stack != 0).then_some(e.holder_stack),
        }
    }
}

/// (waiter, holder) pair of maps `blocked_by`, `cond_blocked_by`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BlockedKey {
    pub waiter_tid: u32,
    /// The waiter's process: a tid reused by another process is another key.
    pub waiter_tgid: u32,
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
unsafe impl aya::Pod for FrameWalk {}
unsafe impl aya::Pod for KernelFrame {}
unsafe impl aya::Pod for HolderStack {}
unsafe impl aya::Pod for HolderKey {}
unsafe impl aya::Pod for HolderWaitVal {}

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
                (
                    "FULL_HOLDER_STACKS",
                    i64::from(map_full_slot::HOLDER_STACKS),
                ),
                ("FULL_HOLDER_WAITS", i64::from(map_full_slot::HOLDER_WAITS)),
                ("FULL_SLOTS", map_full_slot::SLOTS as i64),
            ],
        );
    }

    #[test]
    fn stack_constants_match_the_btf_of_both_gil_wait_probes() {
        for object in ["gil_wait.bpf.o", "gil_condwait.bpf.o"] {
            btf::assert_enum(
                object,
                "stack_flag",
                &[
                    ("STACK_TRUNCATED", i64::from(STACK_TRUNCATED)),
                    ("STACK_BROKEN", i64::from(STACK_BROKEN)),
                ],
            );
            btf::assert_enum(
                object,
                "stack_id_special",
                &[("STACK_NONE", 0), ("STACK_UNKNOWN", STACK_UNKNOWN as i64)],
            );
        }
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
                [waiter_tid, waiter_tgid, holder_tstate]
            );
            assert_layout!(s, "blocked_val", BlockedVal, [wait_ns, segments]);
            assert_layout!(s, "gil_key", GilKey, [tgid, _pad, gil_addr]);
            assert_layout!(s, "gil_val", GilVal, [take_wait_ns, take_waits]);
            assert_layout!(
                s,
                "frame_walk",
                FrameWalk,
                [
                    code_tag_mask,
                    tstate_frame,
                    cframe_frame,
                    frame_previous,
                    frame_code,
                    frame_instr,
                    frame_owner,
                    two_loads,
                    instr_is_int,
                    has_owner,
                    owner_skip_from,
                    _pad
                ]
            );
            assert_layout!(s, "raw_frame", KernelFrame, [code, instr]);
            assert_layout!(s, "holder_stack", HolderStack, [depth, flags, frames]);
            assert_layout!(s, "holder_key", HolderKey, [tgid, _pad, stack_id]);
            assert_layout!(s, "holder_wait", HolderWaitVal, [wait_ns, segments]);
        }
        let s = btf::structs("gil_wait.bpf.o");
        assert_layout!(
            s,
            "gil_episode",
            GilEpisode,
            [
                tgid,
                tid,
                start_ns,
                end_ns,
                gil_addr,
                holders,
                slices,
                retake,
                holder_stack
            ]
        );
    }
}
