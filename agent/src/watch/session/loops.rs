//! A session's event loops: the event-loop probe's counters of the process,
//! and, where the session names code, what the loop threads run while an
//! iteration is long.
//!
//! Naming the code is sampling, on the slow side only: at each tick the
//! loop threads' iterations in progress are read (one map pass over this
//! process's polling threads), and only a thread whose iteration has run for
//! at least [`LONG_ITERATION_NS`] has its Python stack read, once, from
//! outside. A healthy loop costs one map read per tick and no stack read.

use crate::core::counters::LoopCounters;
use crate::core::event_loop::LONG_ITERATION_NS;
use crate::core::retire;
use crate::core::stacks::{Frame, FrameSamples};
use crate::cpython::stacks::StackReader;

use super::{Session, Snapshot};

/// The running frames of loop threads sampled during long iterations.
#[derive(Default)]
pub(super) struct LoopCode {
    /// Made at the first long iteration seen (most loops never need one);
    /// `None` after it could not be made, which is logged once.
    reader: Option<StackReader>,
    gave_up: bool,
    samples: FrameSamples,
}

impl Session {
    /// Samples the loop threads' code from now on (where the event-loop
    /// probe watches this process).
    pub(super) fn name_loop_code(&mut self) {
        if self.loops.is_some() {
            self.loop_code = Some(LoopCode::default());
        }
    }

    /// One sampling round (see the module doc): the running frame of each
    /// loop thread whose iteration in progress is long.
    pub(super) fn sample_long_iterations(&mut self) {
        let (Some(probe), Some(code)) = (self.loops.as_ref(), self.loop_code.as_mut()) else {
            return;
        };
        let now = probe.read(self.interp.pid);
        let long: Vec<u32> = now
            .threads
            .iter()
            .filter(|(_, t)| t.counted.epolls > 0 && t.counted.epolls * 2 >= t.counted.polls)
            .filter(|(_, t)| {
                t.running_since_ns
                    .is_some_and(|start| now.at_ns.saturating_sub(start) >= LONG_ITERATION_NS)
            })
            .map(|(tid, _)| *tid)
            .collect();
        if long.is_empty() || code.gave_up {
            return;
        }
        if code.reader.is_none() {
            match StackReader::new(&self.interp, self.mem) {
                Ok(reader) => code.reader = Some(reader),
                Err(e) => {
                    tracing::info!(
                        "process {}: the code of long loop iterations is not named: {e}",
                        self.interp.pid
                    );
                    code.gave_up = true;
                    return;
                }
            }
        }
        let Some(reader) = code.reader.as_mut() else {
            return;
        };
        for tid in long {
            // A thread that is gone or whose stack moved under the reader is
            // not sampled (counted by the reader); the iteration goes on.
            if let Some(Ok(stack)) = reader.stack_of_tid(tid) {
                let running = stack.frames.last().cloned().unwrap_or_else(Frame::unknown);
                code.samples.add(tid, running);
            }
        }
    }

    /// The loop counters now (`None` without the probe), with the code
    /// sampled so far.
    pub(super) fn read_loops(&self) -> Option<LoopCounters> {
        let mut loops = self.loops.as_ref()?.read(self.interp.pid);
        if let Some(code) = &self.loop_code {
            loops.code = code.samples.clone();
        }
        Some(loops)
    }

    /// The loops' figures between two snapshots, threads retired in between
    /// counted in the exited-threads row.
    pub(super) fn loops_between(prev: &Snapshot, cur: &Snapshot) -> Option<LoopCounters> {
        cur.loops.as_ref().map(|c| {
            let prev = prev.loops.clone().unwrap_or_default();
            c.since(&retire::rebase_loops(&prev, c))
        })
    }

    /// Ends the event-loop probe's counting for this process; `unwatch` also
    /// detaches its uprobes and deletes its entries.
    pub(super) fn stop_loops(&self, unwatch: bool) {
        match &self.loops {
            Some(loops) if unwatch => loops.unwatch(self.interp.pid),
            Some(loops) => loops.stop_counting(self.interp.pid),
            None => {}
        }
    }
}
