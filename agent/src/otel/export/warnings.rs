//! What the operator is told about export trouble: one warning per `log_every`
//! for each kind of trouble (a failing collector, rejected items, a full or
//! broken spool), summing up what happened since the last, never one per request.

use std::time::{Duration, Instant};

use super::stats::ExportStats;

/// Trouble since the last message, and what the messages name.
pub(super) struct Warnings {
    endpoint: String,
    log_every: Duration,
    /// The spool's directory and cap, for messages.
    spool_dir: Option<(String, u64)>,
    failing_since_log: u64,
    /// Data points dropped since the last message.
    dropped_since_log: u64,
    /// Requests and data points the full spool dropped since the last message.
    evicted_since_log: (u64, u64),
    /// A spool write or read failure since the last message.
    spool_problem: Option<String>,
    /// Partial successes since the last message: requests, items rejected, the collector's reason.
    partial_since_log: (u64, u64, Option<String>),
    last_log: Option<Instant>,
    last_error: Option<String>,
    failing: bool,
}

impl Warnings {
    /// Nothing to say yet about `endpoint`; at most one message per `log_every`.
    pub fn new(endpoint: &str, log_every: Duration, spool_dir: Option<(String, u64)>) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            log_every,
            spool_dir,
            failing_since_log: 0,
            dropped_since_log: 0,
            evicted_since_log: (0, 0),
            spool_problem: None,
            partial_since_log: (0, 0, None),
            last_log: None,
            last_error: None,
            failing: false,
        }
    }

    /// The endpoint, for messages said at once.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An attempt failed with `message`.
    pub fn failed(&mut self, message: String) {
        self.failing_since_log += 1;
        self.last_error = Some(message);
        self.failing = true;
    }

    /// An attempt succeeded: said at once if the collector had been failing.
    pub fn succeeded(&mut self) {
        if self.failing {
            tracing::warn!("export to {} works again", self.endpoint);
            self.failing = false;
        }
    }

    /// The collector took a request but `rejected` of its items, or said something.
    pub fn partial(&mut self, rejected: u64, message: String) {
        let p = &mut self.partial_since_log;
        p.0 += 1;
        p.1 += rejected;
        if !message.is_empty() {
            p.2 = Some(message);
        }
    }

    /// Data points dropped (requests of spans are counted, not said).
    pub fn dropped_points(&mut self, points: u64) {
        self.dropped_since_log += points;
    }

    /// The full spool pushed out a request of `points` data points (0 for spans).
    pub fn evicted(&mut self, points: u64) {
        self.evicted_since_log.0 += 1;
        self.evicted_since_log.1 += points;
    }

    /// The spool could not be written or read.
    pub fn spool_problem(&mut self, problem: String) {
        self.spool_problem = Some(problem);
    }

    /// Says what happened since the last message, if anything did and
    /// `log_every` has passed (or this is the `last` word).
    pub fn log(&mut self, stats: &ExportStats, last: bool) {
        let quiet = self.failing_since_log == 0
            && self.partial_since_log.0 == 0
            && self.dropped_since_log == 0
            && self.evicted_since_log.0 == 0
            && self.spool_problem.is_none();
        if quiet {
            return;
        }
        if !last && self.last_log.is_some_and(|t| t.elapsed() < self.log_every) {
            return;
        }
        let total = ExportStats::get(&stats.points_dropped);
        if self.failing_since_log > 0 || self.dropped_since_log > 0 {
            self.log_failing(stats, total);
        }
        if self.partial_since_log.0 > 0 {
            let (requests, rejected, reason) = std::mem::take(&mut self.partial_since_log);
            tracing::warn!(
                "{} accepted {requests} request(s) only in part: it rejected {rejected} data points or spans \
                 since the last message, counted as dropped ({total} data points dropped in all): {}",
                self.endpoint,
                reason.as_deref().unwrap_or("no reason given"),
            );
        }
        if self.evicted_since_log.0 > 0 {
            let (dir, cap) = self.spool_dir.clone().unwrap_or_default();
            tracing::warn!(
                "spool {dir} is full ({cap} bytes): dropped its {} oldest requests ({} data points) since the last \
                 message ({total} data points dropped in all); raise --spool-max-bytes to keep a longer outage",
                self.evicted_since_log.0,
                self.evicted_since_log.1,
            );
        }
        if let Some(problem) = self.spool_problem.take() {
            tracing::warn!("{problem}");
        }
        self.failing_since_log = 0;
        self.dropped_since_log = 0;
        self.evicted_since_log = (0, 0);
        self.last_log = Some(Instant::now());
    }

    /// The failing-collector message: the last error, what it cost, where the backlog waits.
    fn log_failing(&self, stats: &ExportStats, total: u64) {
        let error = self.last_error.as_deref().unwrap_or("unknown error");
        match &self.spool_dir {
            Some((dir, _)) => tracing::warn!(
                "export to {} failing: {error}; {} failed attempts, {} data points dropped since the last message \
                 ({total} dropped in all); {} requests ({} bytes) wait in the spool {dir}",
                self.endpoint,
                self.failing_since_log,
                self.dropped_since_log,
                ExportStats::get(&stats.spool_requests),
                ExportStats::get(&stats.spool_bytes),
            ),
            None => tracing::warn!(
                "export to {} failing: {error}; {} failed attempts, {} data points dropped since the last message \
                 ({total} dropped in all); retrying with backoff",
                self.endpoint,
                self.failing_since_log,
                self.dropped_since_log,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::test_log::captured_log;
    use tracing_subscriber::fmt::format::DefaultFields;

    #[test]
    fn a_partial_success_is_said_in_one_plain_sentence_once_per_period() {
        let stats = ExportStats::default();
        let mut w = Warnings::new("http://collector:4318", Duration::from_secs(60), None);
        let text = captured_log(DefaultFields::new(), || {
            w.partial(5, "5 points too old".into());
            w.log(&stats, false);
            // Within the period: counted, not said.
            w.partial(1, String::new());
            w.log(&stats, false);
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(
                "http://collector:4318 accepted 1 request(s) only in part: it rejected 5 data \
                 points or spans since the last message, counted as dropped (0 data points \
                 dropped in all): 5 points too old"
            ),
            "{text}"
        );
        assert!(!text.contains("  "), "runs of spaces in: {text}");
    }
}
