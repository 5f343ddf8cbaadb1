//! Retiring the exited threads of one watched process: takes their entries out
//! of the kernel maps and the GIL sampler and hands what those held to the
//! process's [`Retirement`] (the pure bookkeeping, in `core::retire`), so a
//! process that starts a thread per request does not fill the kernel maps
//! every watched process shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::core::cpu::ThreadSample;
use crate::core::retire::Retirement;
use crate::cpython::gil_sampler::SampledProcess;
use crate::probes::condwait::{self, CondWaitProbe};
use crate::probes::event_loop::LoopProbe;
use crate::probes::wait::WaitProbe;

/// Where the figures of one process's threads are kept: what a retirement
/// takes exited threads out of.
pub struct Sources<'a> {
    pub probe: &'a mut WaitProbe,
    /// musl: the condvar probe of the process.
    pub condwait: Option<&'a mut CondWaitProbe>,
    /// The event-loop probe, where it is loaded.
    pub loops: Option<&'a LoopProbe>,
    /// The process's GIL sampler, if it is sampled.
    pub sampler: Option<&'a SampledProcess>,
    /// Last procfs figures by tid (retired threads are removed).
    pub cpu: &'a mut BTreeMap<u32, ThreadSample>,
    /// Python thread names by tid (retired threads are removed).
    pub names: &'a mut HashMap<u32, String>,
    /// Holder thread state -> tid (retired threads' are removed: a freed thread
    /// state is reused by a later thread and must be resolved afresh).
    pub holders: &'a mut HashMap<u64, u32>,
}

/// Retires the threads of process `pid` that are due now, looking at most every
/// [`RETIRE_EVERY`](crate::core::retire::RETIRE_EVERY): deletes their kernel
/// entries (the futex probe's, the event-loop probe's and, on musl, the
/// condvar probe's), folds what those held, their last CPU and the sampler's
/// tallies into the row, and forgets their names and holder mappings.
pub fn retire_due(exits: &mut Retirement, pid: u32, now: Instant, src: Sources) {
    let due = exits.look(now);
    if due.is_empty() {
        return;
    }
    let mut taken = match src.probe.take_threads(pid, &due) {
        Ok(taken) => taken,
        Err(e) => {
            tracing::debug!("cannot release the exited threads of process {pid}: {e}");
            return;
        }
    };
    if let Some(c) = src.condwait {
        match c.take_threads(pid, &due) {
            Ok(cond) => condwait::merge_into(&mut taken, &cond),
            Err(e) => tracing::debug!("condvar probe of {pid}: {e}"),
        }
    }
    exits.fold(&due, src.cpu, &taken, now);
    if let Some(loops) = src.loops {
        exits.fold_loops(&loops.take_threads(pid, &due));
    }
    if let Some(sampler) = src.sampler {
        let (held, stretches) = sampler.take_threads(&due);
        exits.fold_samples(held, &stretches);
    }
    let gone: HashSet<u32> = due.iter().copied().collect();
    src.names.retain(|tid, _| !gone.contains(tid));
    src.holders.retain(|_, tid| !gone.contains(tid));
    tracing::debug!(
        "process {pid}: {} exited threads folded into one row ({} so far)",
        due.len(),
        exits.retired()
    );
}
