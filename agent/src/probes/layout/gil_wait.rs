//! Rust mirrors of `ebpf/gil_wait.h`: the futex probe's own structs (the
//! shared ones are in [`super::gil_shared`]).

use crate::core::counters::{self, EPISODE_HOLDERS, HIST_SLOTS};
use crate::probes::layout::MAX_GILS;

/// Where one process's GILs live (map `targets`, key: tgid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilTarget {
    /// 0: unused slot.
    pub gil_addrs: [u64; MAX_GILS],
    pub gil_size: u32,
    pub cond_off: u32,
    pub mutex_off: u32,
    pub switch_cond_off: u32,
    pub last_holder_off: u32,
    pub locked_off: u32,
    /// Entries of `thread_waits` this process may hold (its share).
    pub thread_limit: u32,
    /// Episode records it may have sent so far (`episodes_made` + its share).
    pub episode_limit: u32,
}

/// Cumulative blocking counters of one thread (map `thread_waits`, key: tid):
/// GIL waits, other futex waits, sleeps by syscall family, and retake waits.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadWaits {
    pub tgid: u32,
    /// Kernel-side state: `blocked_by` entries this thread made (capped).
    pub blocked_pairs: u32,
    pub take_wait_ns: u64,
    pub take_waits: u64,
    pub take_futex_calls: u64,
    pub mutex_wait_ns: u64,
    pub mutex_waits: u64,
    pub drop_wait_ns: u64,
    pub drop_waits: u64,
    pub other_wait_ns: u64,
    pub other_waits: u64,
    pub take_hist: [u64; HIST_SLOTS],
    pub poll_wait_ns: u64,
    pub poll_waits: u64,
    pub read_wait_ns: u64,
    pub read_waits: u64,
    pub sleep_wait_ns: u64,
    pub sleep_waits: u64,
    pub block_other_ns: u64,
    pub block_others: u64,
    /// Wakes from non-GIL sleeps: each must retake the GIL.
    pub block_returns: u64,
    /// Kernel-side state (time of the last such wake), not a counter.
    pub retake_armed_ns: u64,
    /// Take waits that began right after such a wake (the rest found the GIL free).
    pub retake_waits: u64,
    pub retake_wait_ns: u64,
    pub retake_hist: [u64; HIST_SLOTS],
}

impl Default for ThreadWaits {
    fn default() -> Self {
        Self {
            tgid: 0,
            blocked_pairs: 0,
            take_wait_ns: 0,
            take_waits: 0,
            take_futex_calls: 0,
            mutex_wait_ns: 0,
            mutex_waits: 0,
            drop_wait_ns: 0,
            drop_waits: 0,
            other_wait_ns: 0,
            other_waits: 0,
            take_hist: [0; HIST_SLOTS],
            poll_wait_ns: 0,
            poll_waits: 0,
            read_wait_ns: 0,
            read_waits: 0,
            sleep_wait_ns: 0,
            sleep_waits: 0,
            block_other_ns: 0,
            block_others: 0,
            block_returns: 0,
            retake_armed_ns: 0,
            retake_waits: 0,
            retake_wait_ns: 0,
            retake_hist: [0; HIST_SLOTS],
        }
    }
}

impl From<ThreadWaits> for counters::ThreadWaits {
    /// The counters alone: not the key-like `tgid`, the padding, or the
    /// kernel's retake state (`retake_armed_ns`).
    fn from(w: ThreadWaits) -> Self {
        Self {
            take_wait_ns: w.take_wait_ns,
            take_waits: w.take_waits,
            take_futex_calls: w.take_futex_calls,
            mutex_wait_ns: w.mutex_wait_ns,
            mutex_waits: w.mutex_waits,
            drop_wait_ns: w.drop_wait_ns,
            drop_waits: w.drop_waits,
            other_wait_ns: w.other_wait_ns,
            other_waits: w.other_waits,
            take_hist: w.take_hist,
            poll_wait_ns: w.poll_wait_ns,
            poll_waits: w.poll_waits,
            read_wait_ns: w.read_wait_ns,
            read_waits: w.read_waits,
            sleep_wait_ns: w.sleep_wait_ns,
            sleep_waits: w.sleep_waits,
            block_other_ns: w.block_other_ns,
            block_others: w.block_others,
            block_returns: w.block_returns,
            retake_waits: w.retake_waits,
            retake_wait_ns: w.retake_wait_ns,
            retake_hist: w.retake_hist,
        }
    }
}

/// What a thread is blocked on right now (map `inflight`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FutexInflight {
    pub wait_start_ns: u64,
    pub segment_start_ns: u64,
    pub last_exit_ns: u64,
    pub holder_tstate: u64,
    pub deadline_ns: u64,
    pub gil_addr: u64,
    /// `enum wait_kind`.
    pub kind: u32,
    pub continuing: u32,
    /// 1: a take wait right after a wake from a non-GIL sleep.
    pub retake: u32,
    /// Take futex calls merged into this wait so far.
    pub slices: u32,
    /// Distinct holders seen at the start of its slices (0: unused slot).
    pub holders: [u64; EPISODE_HOLDERS],
    /// Id of the holder's stack when this segment began (0: not captured).
    pub holder_stack: u64,
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for GilTarget {}
unsafe impl aya::Pod for ThreadWaits {}
unsafe impl aya::Pod for FutexInflight {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn rust_mirrors_match_the_btf_of_the_wait_probe() {
        let s = btf::structs("gil_wait.bpf.o");
        assert_layout!(
            s,
            "gil_target",
            GilTarget,
            [
                gil_addrs,
                gil_size,
                cond_off,
                mutex_off,
                switch_cond_off,
                last_holder_off,
                locked_off,
                thread_limit,
                episode_limit
            ]
        );
        assert_layout!(
            s,
            "thread_waits",
            ThreadWaits,
            [
                tgid,
                blocked_pairs,
                take_wait_ns,
                take_waits,
                take_futex_calls,
                mutex_wait_ns,
                mutex_waits,
                drop_wait_ns,
                drop_waits,
                other_wait_ns,
                other_waits,
                take_hist,
                poll_wait_ns,
                poll_waits,
                read_wait_ns,
                read_waits,
                sleep_wait_ns,
                sleep_waits,
                block_other_ns,
                block_others,
                block_returns,
                retake_armed_ns,
                retake_waits,
                retake_wait_ns,
                retake_hist
            ]
        );
        assert_layout!(
            s,
            "futex_inflight",
            FutexInflight,
            [
                wait_start_ns,
                segment_start_ns,
                last_exit_ns,
                holder_tstate,
                deadline_ns,
                gil_addr,
                kind,
                continuing,
                retake,
                slices,
                holders,
                holder_stack
            ]
        );
    }
}
