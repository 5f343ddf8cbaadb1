//! When to try a failed request again: what a failure says about retrying
//! ([`SendError`]), exponential backoff with jitter, and the collector's own
//! word (`Retry-After`, `RetryInfo`) within a cap.

use std::time::{Duration, Instant};

/// A failed attempt: may it be retried?
#[derive(Debug, Default)]
pub(super) struct SendError {
    pub transient: bool,
    /// The endpoint does not serve this signal at all (gRPC UNIMPLEMENTED, HTTP 404/405/415).
    pub unsupported: bool,
    /// How long the collector asked us to wait (HTTP `Retry-After`, gRPC `RetryInfo`).
    pub retry_after: Option<Duration>,
    pub message: String,
}

/// First retry delay; doubled per attempt up to the interval (1-30 s): a
/// collector that is back is found within about one interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest backoff, whatever the interval.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait a collector's `Retry-After`/`RetryInfo` can impose; without
/// a spool a request is dropped sooner if the wait would outlive its `max_age`.
const MAX_THROTTLE: Duration = Duration::from_secs(300);

/// Exponential backoff from [`FIRST_BACKOFF`] up to a maximum.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The first wait is [`FIRST_BACKOFF`]; none is longer than `max`.
    pub fn new(max: Duration) -> Self {
        Self {
            next: FIRST_BACKOFF,
            max,
        }
    }

    /// How long to wait after a failure: what the collector asked for (OTLP
    /// throttling; capped), else the jittered backoff, which doubles for next time.
    pub fn after_failure(&mut self, asked: Option<Duration>) -> Duration {
        let wait = match asked {
            Some(d) => d.min(MAX_THROTTLE),
            None => jitter(self.next),
        };
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// A success: the next failure starts from the first wait again.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// Up to a quarter of `d` added at random, so agents on many nodes do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0)
        ^ nanos;
    let quarter = d.as_millis() as u64 / 4 + 1;
    d + Duration::from_millis(seed % quarter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_the_collector_is_heeded_within_its_own() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let waits: Vec<Duration> = (0..5).map(|_| b.after_failure(None)).collect();
        for (wait, base) in waits.iter().zip([500, 1000, 2000, 2000, 2000]) {
            let base = Duration::from_millis(base);
            assert!(*wait >= base && *wait <= base + base / 4 + Duration::from_millis(1));
        }
        assert_eq!(
            b.after_failure(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            b.after_failure(Some(Duration::from_secs(3600))),
            MAX_THROTTLE
        );
        b.reset();
        assert!(b.after_failure(None) < Duration::from_millis(700));
    }
}
