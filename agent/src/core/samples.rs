//! What sampling the GIL's state from user space found: how often it was held
//! and by whom, how often it changed hands, and how long one thread kept it
//! without a hand-over. Pure tallies; the sampler that fills them reads the
//! target's memory (`cpython::gil_sampler`).

use std::collections::HashMap;
use std::time::Instant;

use crate::core::counters::HIST_SLOTS;

/// The hold stretches of one thread: log2 histogram of their lengths (slot i:
/// [2^i, 2^(i+1)) ns, as the wait histograms) and the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldStretches {
    pub hist: [u64; HIST_SLOTS],
    pub max_ns: u64,
}

impl Default for HoldStretches {
    fn default() -> Self {
        Self {
            hist: [0; HIST_SLOTS],
            max_ns: 0,
        }
    }
}

impl HoldStretches {
    /// The stretches that ended since `prev`. Their longest is not kept per interval:
    /// it is bounded by the top of the highest bucket that grew (and by the longest ever).
    pub fn since(&self, prev: &Self) -> Self {
        let mut hist = [0u64; HIST_SLOTS];
        for (slot, (now, before)) in hist.iter_mut().zip(self.hist.iter().zip(&prev.hist)) {
            *slot = now.saturating_sub(*before);
        }
        let top = hist.iter().rposition(|&n| n > 0);
        let max_ns = top.map_or(0, |slot| {
            let bucket_end = 1u64.checked_shl(slot as u32 + 1).unwrap_or(u64::MAX);
            self.max_ns.min(bucket_end)
        });
        Self { hist, max_ns }
    }
}

/// Cuts the sample stream into hold stretches: consecutive locked samples with the
/// same holder and an unchanged `switch_number`. A stretch's length is the time
/// from its first to its last sample (a lower bound: it may have started up to one
/// sample period earlier and ended up to one later); one sample alone is 0.
#[derive(Debug, Default)]
pub struct StretchTracker {
    /// (holder tid, switch_number, first sample ns, last sample ns)
    current: Option<(u32, u64, u64, u64)>,
    /// Finished stretches per holder tid, read once sampling stops.
    pub by_thread: HashMap<u32, HoldStretches>,
}

impl StretchTracker {
    /// Feeds one sample taken at `at_ns` (any monotonic origin).
    pub fn sample(&mut self, at_ns: u64, locked: bool, holder: u32, switch_number: u64) {
        match self.current {
            Some((tid, switches, start, _))
                if locked && tid == holder && switches == switch_number =>
            {
                self.current = Some((tid, switches, start, at_ns));
            }
            _ => {
                self.close();
                if locked {
                    self.current = Some((holder, switch_number, at_ns, at_ns));
                }
            }
        }
    }

    /// Ends the stretch in progress (the measurement is over).
    pub fn close(&mut self) {
        if let Some((tid, _, start, end)) = self.current.take() {
            let len = end.saturating_sub(start);
            let slot = (63 - len.max(1).leading_zeros() as usize).min(HIST_SLOTS - 1);
            let s = self.by_thread.entry(tid).or_default();
            s.hist[slot] += 1;
            s.max_ns = s.max_ns.max(len);
        }
    }
}

/// What the sampler saw over a measurement.
#[derive(Debug, Default, Clone)]
pub struct GilSamples {
    pub samples: u64,
    pub locked: u64,
    /// Locked samples per holder tid (unresolvable holders under tid 0).
    pub held_by: HashMap<u32, u64>,
    pub first_switch: Option<(Instant, u64)>,
    pub last_switch: Option<(Instant, u64)>,
    /// Reads that failed (the process exited, or memory moved).
    pub failed_reads: u64,
    /// Free-threaded builds: whether the GIL was on at the last sample.
    pub gil_enabled: Option<bool>,
    /// How often the GIL was switched on or off between samples.
    pub gil_enabled_changes: u64,
    /// Hold stretches per holder tid (unresolvable holders under tid 0).
    pub stretches: HashMap<u32, HoldStretches>,
}

impl GilSamples {
    /// Fraction of samples in which the GIL was held.
    pub fn utilization(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.locked as f64 / self.samples as f64
        }
    }

    /// GIL hand-overs between threads per second.
    pub fn switches_per_s(&self) -> f64 {
        match (self.first_switch, self.last_switch) {
            (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => {
                s1.wrapping_sub(s0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// What was sampled since `prev` (an earlier tally of the same sampler).
    pub fn since(&self, prev: &Self) -> Self {
        Self {
            samples: self.samples.saturating_sub(prev.samples),
            locked: self.locked.saturating_sub(prev.locked),
            held_by: self
                .held_by
                .iter()
                .map(|(tid, n)| (*tid, n.saturating_sub(*prev.held_by.get(tid).unwrap_or(&0))))
                .collect(),
            first_switch: prev.last_switch.or(self.first_switch),
            last_switch: self.last_switch,
            failed_reads: self.failed_reads.saturating_sub(prev.failed_reads),
            gil_enabled: self.gil_enabled,
            gil_enabled_changes: self
                .gil_enabled_changes
                .saturating_sub(prev.gil_enabled_changes),
            stretches: self
                .stretches
                .iter()
                .map(|(tid, s)| (*tid, prev.stretches.get(tid).map_or(*s, |p| s.since(p))))
                .collect(),
        }
    }

    /// Share of all samples in which `tid` held the GIL.
    pub fn hold_share(&self, tid: u32) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        *self.held_by.get(&tid).unwrap_or(&0) as f64 / self.samples as f64
    }
}
