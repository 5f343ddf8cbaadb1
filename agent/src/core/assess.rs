//! One measurement, judged: the analysis, the estimate and the diagnosis
//! together, computed the same way for a `check` report, a `top` row and a
//! daemon interval.

use crate::core::analyse::{analyse, estimate, lock_contention, Measurement};
use crate::core::diagnose::{diagnose, Facts};
use crate::core::event_loop::event_loops;
use crate::core::profile::ContentionProfile;
use crate::core::report::{
    ChildReport, Diagnosis, Estimate, EventLoopReport, LockContention, ProcessReport, ThreadReport,
};

/// What a measurement says.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub process: ProcessReport,
    pub threads: Vec<ThreadReport>,
    pub estimate: Estimate,
    /// PyMutex parking, where it was probed.
    pub lock_contention: Option<LockContention>,
    /// The event loops found, most blocked first.
    pub event_loops: Vec<EventLoopReport>,
    /// Most severe first.
    pub diagnosis: Vec<Diagnosis>,
    /// The code the GIL was held by while others waited (`None`: not captured).
    pub profile: Option<ContentionProfile>,
}

/// Analyses `m`, estimates the speedup without the GIL and diagnoses it; the
/// children (pool workers) measured alongside take part in the diagnosis.
pub fn assess(m: &Measurement, children: &[ChildReport]) -> Assessment {
    let (process, threads) = analyse(m);
    let estimate = estimate(&process, &threads);
    let lock_contention = m.locks.as_ref().map(lock_contention);
    let profile = m.holders.as_ref().map(ContentionProfile::of);
    let loops = m.loops.as_ref().map(event_loops).unwrap_or_default();
    let diagnosis = diagnose(&Facts {
        process: &process,
        threads: &threads,
        locks: lock_contention.as_ref(),
        children,
        profile: profile.as_ref(),
        loops: &loops,
    });
    Assessment {
        process,
        threads,
        estimate,
        lock_contention,
        event_loops: loops,
        diagnosis,
        profile,
    }
}
