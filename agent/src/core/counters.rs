//! The counters the kernel keeps, as plain domain data: what crosses from the
//! probes layer into the measuring core. No kernel padding, no kernel-side
//! state; the probes convert their map values into these.

/// log2(ns) histogram slots: slot i counts durations in [2^i, 2^(i+1)) ns, the
/// same boundaries as an OpenTelemetry exponential histogram at scale 0.
pub const HIST_SLOTS: usize = 64;

/// Distinct GIL holders an episode names (the first ones seen during the wait).
pub const EPISODE_HOLDERS: usize = 4;

/// One long GIL wait of one thread, as the kernel recorded it when it ended:
/// the raw material of a contention span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitEpisode {
    /// The process.
    pub tgid: u32,
    /// The waiting thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The GIL waited for (a subinterpreter's own, or the main one).
    pub gil_addr: u64,
    /// `PyThreadState *` of the holders seen, in order; 0 = unused slot.
    pub holders: [u64; EPISODE_HOLDERS],
    /// Take futex calls (timed-out slices plus the last one).
    pub slices: u32,
    /// The wait began right after a wake from a non-GIL sleep (a retake).
    pub retake: bool,
}
