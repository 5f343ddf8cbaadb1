//! What the kernel captured of the GIL holders' code: per process, the GIL
//! wait spent behind each distinct Python stack a holder was running, and
//! those stacks, raw, for user space to symbolize. The wait probes capture the
//! holder's stack when a take wait (slice) begins and weight it by that
//! slice's duration when it ends: exact, not sampled.

use std::collections::HashMap;

use crate::core::counters::HolderWait;
use crate::core::stacks::{RawFrame, Stack};

/// A captured stack's id within its process: a hash of its frames, so the
/// same stack captured twice (by either probe) has the same id.
pub type StackId = u64;

/// The id of waits behind a holder whose stack could not be captured: no
/// holder known, no Python frame, its first frame unreadable, or the kernel's
/// stack map full. Never names a stored stack.
pub const UNKNOWN_STACK: StackId = 1;

/// Where a captured stack stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StackEnd {
    /// At the thread's outermost frame: the stack is whole.
    Root,
    /// At the capture depth: the outer frames are missing.
    DepthLimit,
    /// Where a read failed (the holder's frames changed under the reader):
    /// the outer frames are missing.
    Unreadable,
}

/// One GIL holder's Python stack as the kernel captured it, innermost (leaf)
/// frame first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    pub frames: Vec<RawFrame>,
    pub end: StackEnd,
}

/// The holder stacks of one process: cumulative wait behind each, and the
/// stacks those waits name (a wait's stack may be missing if it was not yet
/// readable; [`UNKNOWN_STACK`] never has one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HolderStacks {
    /// Stack id -> GIL wait of all the process's waiters behind it.
    pub waits: HashMap<StackId, HolderWait>,
    /// Stack id -> the stack.
    pub stacks: HashMap<StackId, RawStack>,
}

impl HolderStacks {
    /// What accumulated since `prev` (a stack absent from `prev` counts whole);
    /// the stacks named by the waits that grew are kept.
    pub fn since(&self, prev: &Self) -> Self {
        let waits: HashMap<StackId, HolderWait> = self
            .waits
            .iter()
            .map(|(id, w)| (*id, prev.waits.get(id).map_or(*w, |p| w.since(p))))
            .filter(|(_, w)| *w != HolderWait::default())
            .collect();
        let stacks = self
            .stacks
            .iter()
            .filter(|(id, _)| waits.contains_key(id))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        Self { waits, stacks }
    }

    /// Adds another probe's figures of the same process (musl's condvar probe
    /// to the futex probe's): waits are summed, stacks united (equal ids are
    /// equal stacks).
    pub fn add(&mut self, other: &Self) {
        for (id, w) in &other.waits {
            self.waits.entry(*id).or_default().add(w);
        }
        for (id, s) in &other.stacks {
            self.stacks.entry(*id).or_insert_with(|| s.clone());
        }
    }

    /// All GIL wait behind the process's holders, in ns.
    pub fn total_wait_ns(&self) -> u64 {
        self.waits
            .values()
            .fold(0u64, |sum, w| sum.saturating_add(w.wait_ns))
    }
}

/// The wait behind one holder stack, named: what a contention profile is
/// made of. `stack` is `None` for waits behind a holder whose stack was not
/// captured ([`UNKNOWN_STACK`], or a stack the kernel could not store).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedHolderWait {
    pub stack: Option<Stack>,
    pub wait: HolderWait,
}

/// The named holder waits of one measurement, and how many captured frames
/// could not be named (their code object was gone or unreadable when user
/// space read it): a profile says what it could not see.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HolderWaits {
    pub stacks: Vec<NamedHolderWait>,
    pub frames_unnamed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(code: u64) -> RawStack {
        RawStack {
            frames: vec![RawFrame { code, instr: 0 }],
            end: StackEnd::Root,
        }
    }

    fn wait(wait_ns: u64, segments: u64) -> HolderWait {
        HolderWait { wait_ns, segments }
    }

    #[test]
    fn an_interval_keeps_only_the_stacks_whose_wait_grew() {
        let mut prev = HolderStacks::default();
        prev.waits.insert(7, wait(100, 1));
        prev.stacks.insert(7, stack(0xa));
        let mut cur = prev.clone();
        cur.waits.insert(9, wait(40, 2));
        cur.stacks.insert(9, stack(0xb));
        cur.waits.insert(UNKNOWN_STACK, wait(5, 1));
        let d = cur.since(&prev);
        assert_eq!(d.waits.len(), 2, "stack 7 did not grow: {:?}", d.waits);
        assert_eq!(d.waits[&9], wait(40, 2));
        assert_eq!(d.waits[&UNKNOWN_STACK], wait(5, 1));
        assert_eq!(d.stacks.keys().collect::<Vec<_>>(), [&9]);
        assert_eq!(cur.total_wait_ns(), 145);
    }

    #[test]
    fn two_probes_figures_add_up_and_share_stacks() {
        let mut futex = HolderStacks::default();
        futex.waits.insert(7, wait(100, 1));
        futex.stacks.insert(7, stack(0xa));
        let mut cond = HolderStacks::default();
        cond.waits.insert(7, wait(50, 2));
        cond.stacks.insert(7, stack(0xa));
        cond.waits.insert(8, wait(1, 1));
        cond.stacks.insert(8, stack(0xb));
        futex.add(&cond);
        assert_eq!(futex.waits[&7], wait(150, 3));
        assert_eq!(futex.stacks.len(), 2);
    }
}
