//! Rust mirrors of `ebpf/gil_condwait.h`: musl's condvar probe's own structs
//! (the shared ones are in [`super::gil_shared`]).

use crate::core::counters::{ThreadWaits, EPISODE_HOLDERS, HIST_SLOTS};
use crate::probes::layout::MAX_GILS;

/// Where one process's GILs are, for the condvar-wait probe (map
/// `cond_targets`, key: tgid); it matches a wait's condvar against each GIL's
/// `cond` and `switch_cond`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CondwaitTarget {
    /// 0: unused slot.
    pub gil_addrs: [u64; MAX_GILS],
    pub cond_off: u32,
    pub switch_cond_off: u32,
    pub last_holder_off: u32,
    /// Entries of `cond_waits` this process may hold (its share).
    pub thread_limit: u32,
    /// Episode records it may have sent so far (`cond_episodes_made` + its share).
    pub episode_limit: u32,
    pub _pad: u32,
}

/// Cumulative condvar-wait counters of one thread (map `cond_waits`, key:
/// tid), merged by the agent into the same per-thread figures as the futex
/// probe's `thread_waits`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CondwaitWaits {
    pub tgid: u32,
    /// Kernel-side state: `cond_blocked_by` entries this thread made (capped).
    pub blocked_pairs: u32,
    pub take_wait_ns: u64,
    pub take_waits: u64,
    pub take_slices: u64,
    pub drop_wait_ns: u64,
    pub drop_waits: u64,
    pub take_hist: [u64; HIST_SLOTS],
}

impl Default for CondwaitWaits {
    fn default() -> Self {
        Self {
            tgid: 0,
            blocked_pairs: 0,
            take_wait_ns: 0,
            take_waits: 0,
            take_slices: 0,
            drop_wait_ns: 0,
            drop_waits: 0,
            take_hist: [0; HIST_SLOTS],
        }
    }
}

impl From<CondwaitWaits> for ThreadWaits {
    /// A thread's condvar-wait counters in the futex probe's shape: condvar
    /// wait calls are its take futex calls; the rest it does not see.
    fn from(w: CondwaitWaits) -> Self {
        Self {
            take_wait_ns: w.take_wait_ns,
            take_waits: w.take_waits,
            take_futex_calls: w.take_slices,
            drop_wait_ns: w.drop_wait_ns,
            drop_waits: w.drop_waits,
            take_hist: w.take_hist,
            ..Self::default()
        }
    }
}

/// A condvar wait in progress (map `cond_inflight`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CondwaitInflight {
    pub wait_start_ns: u64,
    pub slice_start_ns: u64,
    pub last_exit_ns: u64,
    pub holder_tstate: u64,
    pub gil_addr: u64,
    pub kind: u32,
    pub continuing: u32,
    /// Take slices merged into this wait so far.
    pub slices: u32,
    pub _pad: u32,
    /// Distinct holders seen at the start of its slices (0: unused slot).
    pub holders: [u64; EPISODE_HOLDERS],
    /// Id of the holder's stack when this slice began (0: not captured).
    pub holder_stack: u64,
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for CondwaitTarget {}
unsafe impl aya::Pod for CondwaitWaits {}
unsafe impl aya::Pod for CondwaitInflight {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn rust_mirrors_match_the_btf_of_the_condwait_probe() {
        let s = btf::structs("gil_condwait.bpf.o");
        assert_layout!(
            s,
            "condwait_target",
            CondwaitTarget,
            [
                gil_addrs,
                cond_off,
                switch_cond_off,
                last_holder_off,
                thread_limit,
                episode_limit,
                _pad
            ]
        );
        assert_layout!(
            s,
            "condwait_waits",
            CondwaitWaits,
            [
                tgid,
                blocked_pairs,
                take_wait_ns,
                take_waits,
                take_slices,
                drop_wait_ns,
                drop_waits,
                take_hist
            ]
        );
        assert_layout!(
            s,
            "condwait_inflight",
            CondwaitInflight,
            [
                wait_start_ns,
                slice_start_ns,
                last_exit_ns,
                holder_tstate,
                gil_addr,
                kind,
                continuing,
                slices,
                _pad,
                holders,
                holder_stack
            ]
        );
    }
}
