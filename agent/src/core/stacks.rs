//! Python stacks as gilscope speaks of them: the code a thread was running,
//! named (function, file, line) and ordered root first, as flame graphs and
//! pprof want them. What the kernel captures is only addresses ([`RawFrame`]);
//! user space turns them into [`Frame`]s. Reading a stack from a running
//! process can fail (the chain loops, points at garbage, or moves under the
//! reader): [`StackCounts`] says how often, so a profile can state what it missed.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// The function of a frame whose code could not be named (its code object
/// was freed or unreadable), and of waits behind a holder whose stack was not
/// captured: one name, so a profile adds them up in one row.
pub const UNKNOWN_FUNCTION: &str = "<unknown>";

/// One Python frame: what a user acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frame {
    /// The qualified name (`Worker.run`; 3.8-3.10 keep only `run`).
    pub function: String,
    /// The source file as the code object names it (the process's own path).
    pub file: String,
    /// The line being run; `None` where the line table has none (or was cut).
    pub line: Option<u32>,
}

impl Frame {
    /// A frame standing for code that could not be named.
    pub fn unknown() -> Self {
        Self {
            function: UNKNOWN_FUNCTION.to_string(),
            file: String::new(),
            line: None,
        }
    }
}

/// A thread's Python stack at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Stack {
    /// Root (outermost call) first, the running frame last.
    pub frames: Vec<Frame>,
    /// The chain was deeper than the reader's bound: the outermost frames are missing.
    pub truncated: bool,
}

/// A frame as captured without naming it: the code object's address and the
/// frame's position field, as the stack reader (or a BPF program) found them,
/// symbolized in user space where the code object can be read and cached.
/// `instr` is a pointer into the code (3.11+) or, on 3.8-3.10, `f_lasti` in
/// its low 32 bits (a signed `int`; the kernel capture sign-extends it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawFrame {
    pub code: u64,
    pub instr: u64,
}

/// Why reading one stack ended without a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokenStack {
    /// The chain came back to a frame already seen.
    Loop,
    /// A frame or code object was unreadable or not what it must be.
    Garbage,
    /// The thread's innermost frame changed while the chain was read.
    Changed,
}

/// What the stack reader did since it was made: stacks read whole, and the
/// ones it gave up on, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackCounts {
    /// Stacks read whole (a truncated one counts here and in `truncated`).
    pub read: u64,
    pub loops: u64,
    pub garbage: u64,
    pub changed: u64,
    /// Stacks cut at the depth bound (still returned).
    pub truncated: u64,
    /// Code objects that could not be named (captured frames symbolized late).
    pub unknown_code: u64,
    /// Cached code objects found replaced at their address (and read again).
    pub code_reused: u64,
}

impl StackCounts {
    /// Counts one stack that could not be read.
    pub fn broken(&mut self, why: BrokenStack) {
        match why {
            BrokenStack::Loop => self.loops += 1,
            BrokenStack::Garbage => self.garbage += 1,
            BrokenStack::Changed => self.changed += 1,
        }
    }

    /// Stacks given up on, whatever the reason.
    pub fn failed(&self) -> u64 {
        self.loops + self.garbage + self.changed
    }
}

/// Running frames sampled per thread, counted by frame: where a thread was
/// each time it was looked at (a loop thread during a long iteration).
/// Cumulative, like the kernel's counters, so an interval is `since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameSamples {
    /// tid -> running frame -> samples.
    pub threads: HashMap<u32, BTreeMap<Frame, u64>>,
}

impl FrameSamples {
    /// One more sample of thread `tid`, running `frame`.
    pub fn add(&mut self, tid: u32, frame: Frame) {
        *self
            .threads
            .entry(tid)
            .or_default()
            .entry(frame)
            .or_default() += 1;
    }

    /// The samples taken since `prev` (the same threads, counted earlier).
    pub fn since(&self, prev: &Self) -> Self {
        let threads = self
            .threads
            .iter()
            .map(|(tid, frames)| {
                let before = prev.threads.get(tid);
                let frames = frames
                    .iter()
                    .map(|(f, n)| {
                        let was = before.and_then(|b| b.get(f)).copied().unwrap_or(0);
                        (f.clone(), n.saturating_sub(was))
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect::<BTreeMap<_, _>>();
                (*tid, frames)
            })
            .filter(|(_, frames)| !frames.is_empty())
            .collect();
        Self { threads }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_stacks_are_counted_by_reason() {
        let mut c = StackCounts::default();
        c.broken(BrokenStack::Loop);
        c.broken(BrokenStack::Garbage);
        c.broken(BrokenStack::Garbage);
        c.broken(BrokenStack::Changed);
        assert_eq!((c.loops, c.garbage, c.changed, c.failed()), (1, 2, 1, 4));
    }
}
