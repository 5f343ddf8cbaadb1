//! The export thread: takes requests off the queue and sends them, one at a
//! time, in order. Without a spool a failing request is retried in memory
//! until it is too old; with one it goes to disk at once, everything queued
//! behind it follows while the backlog lasts, and the oldest is retried
//! (oldest first, so each series reaches the backend in order).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::payload::Payload;
use super::queue::Job;
use super::retry::{Backoff, SendError};
use super::spool::{Kind, Spool, SpoolError};
use super::stats::ExportStats;
use super::warnings::Warnings;
use super::Transport;

/// The thread's state: its end of the queue, the transport, what it counts and says.
pub(super) struct Worker {
    pub rx: Receiver<Job>,
    pub transport: Transport,
    pub stats: Arc<ExportStats>,
    /// Set at shutdown, past the grace: no more tries.
    pub stop: Arc<AtomicBool>,
    /// A request is retried until it is this old (without a spool).
    pub max_age: Duration,
    pub max_backoff: Duration,
    pub warnings: Warnings,
}

/// What one attempt came to.
enum Tried {
    /// Sent, or given up on for good (and counted).
    Done,
    /// Failed in a way worth retrying; the collector may have said when.
    Transient(Option<Duration>),
}

/// The spooled loop's state: the spool, when its oldest request may be tried
/// again, and whether the queue is closed.
struct Backlog {
    spool: Spool,
    backoff: Backoff,
    next_try: Instant,
    closed: bool,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn log(&mut self, last: bool) {
        self.warnings.log(&self.stats, last);
    }

    /// Without a spool: each request is retried in memory until it is `max_age` old.
    pub fn run(mut self) {
        while let Ok(job) = self.rx.recv() {
            if self.stopping() {
                // Shutting down past the grace: what is still queued is not tried.
                self.drop_job(&job);
                continue;
            }
            self.deliver(job);
        }
        self.log(true);
    }

    fn deliver(&mut self, job: Job) {
        let mut backoff = Backoff::new(self.max_backoff);
        while let Tried::Transient(asked) = self.try_once(&job) {
            let wait = backoff.after_failure(asked);
            let too_old = job.queued_at.elapsed() + wait > self.max_age;
            if too_old || self.stopping() {
                self.drop_job(&job);
                self.log(false);
                return;
            }
            self.log(false);
            ExportStats::add(&self.stats.retries, 1);
            let until = Instant::now() + wait;
            while Instant::now() < until && !self.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// With a spool: a request that fails goes to disk, and while anything waits
    /// there, new requests go behind it; the oldest is retried with backoff.
    pub fn run_spooled(mut self, spool: Spool) {
        let mut b = Backlog {
            spool,
            backoff: Backoff::new(self.max_backoff),
            next_try: Instant::now(),
            closed: false,
        };
        loop {
            self.publish(&b.spool);
            let more = if b.spool.is_empty() {
                self.send_next(&mut b)
            } else {
                self.work_off(&mut b)
            };
            if !more {
                break;
            }
        }
        self.publish(&b.spool);
        self.log(true);
    }

    /// Nothing on disk: the next queued request is tried at once and goes to
    /// disk if that fails. False once the queue is closed and empty.
    fn send_next(&mut self, b: &mut Backlog) -> bool {
        if b.closed {
            return false;
        }
        let Ok(job) = self.rx.recv() else {
            return false;
        };
        if self.stopping() {
            // Past the grace: no more tries, the rest waits on disk for the next start.
            self.spill(&mut b.spool, &job);
            return true;
        }
        if let Tried::Transient(asked) = self.try_once(&job) {
            self.spill(&mut b.spool, &job);
            self.log(false);
            b.next_try = Instant::now() + b.backoff.after_failure(asked);
        }
        true
    }

    /// A backlog on disk: what is queued goes behind it (memory stays small),
    /// and its oldest request is retried when due. False when stopping: what is
    /// left stays on disk for the next start.
    fn work_off(&mut self, b: &mut Backlog) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(job) => self.spill(&mut b.spool, &job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    b.closed = true;
                    break;
                }
            }
        }
        if self.stopping() {
            return false;
        }
        let now = Instant::now();
        if now < b.next_try {
            let wait = (b.next_try - now).min(Duration::from_millis(100));
            if b.closed {
                std::thread::sleep(wait);
            } else if let Ok(job) = self.rx.recv_timeout(wait) {
                self.spill(&mut b.spool, &job);
            }
            self.log(false);
        } else {
            self.retry_oldest(b, now);
        }
        true
    }

    /// Tries the oldest spooled request again; a file that is no OTLP request
    /// is dropped, counted and reported.
    fn retry_oldest(&mut self, b: &mut Backlog, now: Instant) {
        let Some(read) = b.spool.read_oldest() else {
            return;
        };
        let decoded = read.and_then(|(entry, body)| {
            let path = b.spool.path(entry.seq);
            Payload::decode(entry.kind, &body)
                .map(|payload| (entry, payload))
                .map_err(|e| SpoolError::Corrupt {
                    path,
                    why: format!("not an OTLP request: {e}"),
                })
        });
        match decoded {
            Err(e) => {
                if let Some(entry) = b.spool.pop() {
                    self.stats.dropped(entry.kind, entry.items);
                    if entry.kind == Kind::Metrics {
                        self.warnings.dropped_points(entry.items);
                    }
                }
                self.warnings.spool_problem(e.to_string());
                self.log(false);
            }
            Ok((entry, payload)) => {
                let job = Job {
                    payload,
                    items: entry.items as usize,
                    queued_at: now,
                };
                match self.try_once(&job) {
                    Tried::Done => {
                        b.spool.pop();
                        b.backoff.reset();
                    }
                    Tried::Transient(asked) => {
                        ExportStats::add(&self.stats.retries, 1);
                        self.log(false);
                        b.next_try = Instant::now() + b.backoff.after_failure(asked);
                    }
                }
            }
        }
    }

    /// The spool's size, for self-telemetry.
    fn publish(&self, spool: &Spool) {
        self.stats
            .spool_requests
            .store(spool.len() as u64, Ordering::Relaxed);
        self.stats
            .spool_bytes
            .store(spool.bytes(), Ordering::Relaxed);
    }

    /// Writes a request to the spool; what the cap pushes out (or a failed write) is dropped.
    fn spill(&mut self, spool: &mut Spool, job: &Job) {
        let kind = job.payload.kind();
        match spool.push(kind, job.items as u64, &job.payload.encode_to_vec()) {
            Ok(evicted) => {
                for e in evicted {
                    self.stats.dropped(e.kind, e.items);
                    let points = if e.kind == Kind::Metrics { e.items } else { 0 };
                    self.warnings.evicted(points);
                }
            }
            Err(e) => {
                self.drop_job(job);
                self.warnings
                    .spool_problem(format!("cannot write to the spool: {e}"));
            }
        }
        self.publish(spool);
    }

    /// One attempt at a request. Success, a permanent error and a signal the
    /// endpoint does not take are settled (and counted) here.
    fn try_once(&mut self, job: &Job) -> Tried {
        let (kind, items) = (job.payload.kind(), job.items as u64);
        if kind == Kind::Traces && self.stats.traces_refused() {
            self.stats.dropped(kind, items);
            return Tried::Done;
        }
        let size = job.payload.encoded_len() as u64;
        match self.transport.send(&job.payload) {
            Ok(accepted) => {
                self.stats.delivered(kind, items, size, accepted.rejected);
                self.warnings.succeeded();
                if accepted.rejected > 0 || !accepted.message.is_empty() {
                    self.warnings
                        .partial(accepted.rejected.min(items), accepted.message);
                    self.log(false);
                }
                Tried::Done
            }
            Err(e) if e.unsupported && kind == Kind::Traces => {
                // Not a failure of the collector: it takes metrics only. Say so once.
                tracing::warn!(
                    "{} does not accept traces ({}); contention spans are not sent to it",
                    self.warnings.endpoint(),
                    e.message
                );
                self.stats.traces_refused.store(true, Ordering::Relaxed);
                self.stats.dropped(kind, items);
                Tried::Done
            }
            Err(e) => self.failed(job, e),
        }
    }

    /// A failed attempt: counted, retried if it may be, else dropped.
    fn failed(&mut self, job: &Job, e: SendError) -> Tried {
        ExportStats::add(&self.stats.requests_failed, 1);
        self.warnings.failed(e.message);
        if e.transient {
            Tried::Transient(e.retry_after)
        } else {
            self.drop_job(job);
            self.log(false);
            Tried::Done
        }
    }

    fn drop_job(&mut self, job: &Job) {
        let kind = job.payload.kind();
        self.stats.dropped(kind, job.items as u64);
        if kind == Kind::Metrics {
            self.warnings.dropped_points(job.items as u64);
        }
    }
}
