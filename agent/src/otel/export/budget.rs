//! The optional byte budget of `gilscope run`: keeps what the exporter sends per
//! minute under a limit by giving up detail in a fixed order, and gives it back
//! when there is room again.
//!
//! After every interval the daemon hands [`Budget::observe`] the exporter's
//! cumulative count of bytes sent. Over a sliding minute (never reaching back
//! past the last change of level) the rate is compared with the limit. Over it,
//! the budget degrades one step: first per-thread series are dropped (when they
//! are on), then the export interval is doubled, up to [`MAX_MULTIPLIER`] times
//! the configured one. Well under it (the step back would still fit with room to
//! spare), it recovers one step. Each change is one log line, and
//! [`Budget::level`] is exported as `gilscope.export.degradation`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest the interval is stretched, as a multiple of the configured one.
pub const MAX_MULTIPLIER: u32 = 8;

/// The window the rate is measured over.
const WINDOW: Duration = Duration::from_secs(60);

/// A step back is taken only if the rate it would bring stays under this share
/// of the budget, so the budget does not flap between two levels.
const RECOVER_SHARE: f64 = 0.7;

/// How much detail is given up. Exported as one number: 0 nothing, 1 per-thread
/// series dropped, N >= 2 per-thread series dropped and the interval N times the
/// configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub per_thread_dropped: bool,
    /// 1, 2, 4 or 8.
    pub multiplier: u32,
}

impl Level {
    const NONE: Level = Level {
        per_thread_dropped: false,
        multiplier: 1,
    };

    /// The value of the `gilscope.export.degradation` gauge.
    pub fn gauge(self) -> i64 {
        match (self.per_thread_dropped, self.multiplier) {
            (false, 1) => 0,
            (true, 1) => 1,
            (_, m) => i64::from(m),
        }
    }
}

/// Tracks the bytes sent and decides the level of degradation.
#[derive(Debug)]
pub struct Budget {
    bytes_per_minute: u64,
    /// Per-thread series were asked for (otherwise the first step is skipped).
    per_thread_configured: bool,
    level: Level,
    /// (when, cumulative bytes sent) at each interval since the last change.
    samples: VecDeque<(Instant, u64)>,
    /// Per step down: the rate just before it and the first rate measured after
    /// it; their ratio says what the step back up would cost.
    steps: Vec<(f64, Option<f64>)>,
}

impl Budget {
    /// A budget of `bytes_per_minute` (the exporter's encoded request bytes).
    pub fn new(bytes_per_minute: u64, per_thread_configured: bool) -> Self {
        Self {
            bytes_per_minute,
            per_thread_configured,
            level: Level::NONE,
            samples: VecDeque::new(),
            steps: Vec::new(),
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Bytes a minute over the samples kept, once they span at least two of
    /// the current intervals (one interval alone says little about a minute).
    fn rate(&self, interval: Duration) -> Option<f64> {
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        let span = t1.duration_since(t0);
        let needed = (interval * self.level.multiplier * 2).min(WINDOW);
        if span < needed || span.is_zero() {
            return None;
        }
        Some(b1.saturating_sub(b0) as f64 / span.as_secs_f64() * 60.0)
    }

    /// Records the exporter's cumulative `bytes_sent` at `now`, after an interval
    /// of the configured length `interval` (before stretching); changes the level
    /// by at most one step and returns the new level when it changed.
    pub fn observe(&mut self, now: Instant, bytes_sent: u64, interval: Duration) -> Option<Level> {
        self.samples.push_back((now, bytes_sent));
        // Keep one sample at or beyond the window's start, so the window is full.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= WINDOW {
            self.samples.pop_front();
        }
        let rate = self.rate(interval)?;
        if let Some((_, after @ None)) = self.steps.last_mut() {
            *after = Some(rate);
        }
        let limit = self.bytes_per_minute as f64;
        let next = if rate > limit {
            self.step_down(rate)
        } else {
            self.step_up(rate, limit)
        }?;
        let old = self.level;
        self.level = next;
        // A new level is judged on its own bytes only.
        self.samples.clear();
        self.samples.push_back((now, bytes_sent));
        self.log(old, rate, interval);
        Some(next)
    }

    fn step_down(&mut self, rate: f64) -> Option<Level> {
        let l = self.level;
        let next = if self.per_thread_configured && !l.per_thread_dropped {
            Level {
                per_thread_dropped: true,
                ..l
            }
        } else if l.multiplier < MAX_MULTIPLIER {
            Level {
                per_thread_dropped: self.per_thread_configured,
                multiplier: l.multiplier * 2,
            }
        } else {
            return None;
        };
        self.steps.push((rate, None));
        Some(next)
    }

    fn step_up(&mut self, rate: f64, limit: f64) -> Option<Level> {
        let l = self.level;
        if l == Level::NONE {
            return None;
        }
        // The rate the step back would bring: this one scaled by what the step
        // down saved when it was taken (twice, for a halved interval, if unknown).
        let factor = match self.steps.last() {
            Some((before, Some(after))) if *after > 0.0 => (before / after).max(1.0),
            _ => 2.0,
        };
        if rate * factor > limit * RECOVER_SHARE {
            return None;
        }
        self.steps.pop();
        Some(if l.multiplier > 1 {
            Level {
                multiplier: l.multiplier / 2,
                ..l
            }
        } else {
            Level::NONE
        })
    }

    fn log(&self, old: Level, rate: f64, interval: Duration) {
        let what = |l: Level| match (l.per_thread_dropped, l.multiplier) {
            (false, 1) => "full detail".to_string(),
            (true, 1) => "per-thread series dropped".to_string(),
            (p, m) => format!(
                "{}interval {:?} ({m}x)",
                if p { "per-thread series dropped, " } else { "" },
                interval * m
            ),
        };
        let worse = self.level.gauge() > old.gauge();
        tracing::warn!(
            "byte budget {} B/min: sent {:.0} B/min, {} -> {} (gilscope.export.degradation = {}){}",
            self.bytes_per_minute,
            rate,
            what(old),
            what(self.level),
            self.level.gauge(),
            if worse { "" } else { "; recovering" }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    /// Feeds `n` intervals of `bytes_each` bytes; returns the levels after each.
    fn feed(b: &mut Budget, t: &mut Instant, total: &mut u64, n: usize, bytes_each: u64) {
        for _ in 0..n {
            *t += TEN * b.level().multiplier;
            *total += bytes_each;
            b.observe(*t, *total, TEN);
        }
    }

    #[test]
    fn degrades_per_thread_first_then_the_interval_up_to_the_cap_and_recovers() {
        // 6 intervals a minute; 12 kB an interval with per-thread series, 6 kB without.
        let mut b = Budget::new(10_000, true);
        let mut t = Instant::now();
        let mut total = 0;
        b.observe(t, 0, TEN);
        feed(&mut b, &mut t, &mut total, 2, 12_000);
        assert_eq!(b.level().gauge(), 1, "per-thread series go first");
        // 6 kB an interval is still 36 kB/min: the interval doubles, and doubles again.
        feed(&mut b, &mut t, &mut total, 2, 6_000);
        assert_eq!(b.level().gauge(), 2);
        feed(&mut b, &mut t, &mut total, 2, 6_000);
        assert_eq!(b.level().gauge(), 4);
        // 6 kB every 40 s is 9 kB/min: under budget, and halving would not fit.
        feed(&mut b, &mut t, &mut total, 6, 6_000);
        assert_eq!(b.level().gauge(), 4, "holds while it fits");
        // The load drops: 500 B an interval recovers step by step.
        feed(&mut b, &mut t, &mut total, 40, 500);
        assert_eq!(b.level().gauge(), 0, "{:?}", b.level());
    }

    #[test]
    fn without_per_thread_series_the_first_step_is_the_interval() {
        let mut b = Budget::new(1_000, false);
        let mut t = Instant::now();
        let mut total = 0;
        b.observe(t, 0, TEN);
        feed(&mut b, &mut t, &mut total, 2, 5_000);
        assert_eq!(
            b.level(),
            Level {
                per_thread_dropped: false,
                multiplier: 2
            }
        );
        // Never past the cap, however far over.
        feed(&mut b, &mut t, &mut total, 30, 50_000);
        assert_eq!(b.level().multiplier, MAX_MULTIPLIER);
    }

    #[test]
    fn a_budget_that_fits_changes_nothing() {
        let mut b = Budget::new(100_000, true);
        let mut t = Instant::now();
        let mut total = 0;
        b.observe(t, 0, TEN);
        feed(&mut b, &mut t, &mut total, 20, 5_000);
        assert_eq!(b.level().gauge(), 0);
    }
}
