//! The daemon's side of the exporter: a bounded queue that never blocks the
//! measuring loop (a full queue drops the request, counted), the worker thread
//! behind it, and a shutdown that sends what it can within a grace period.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::payload::Payload;
use super::retry::MAX_BACKOFF;
use super::spool::{Spool, SpoolSettings};
use super::stats::ExportStats;
use super::warnings::Warnings;
use super::worker::Worker;
use super::{ExportSettings, Transport};
use crate::error::RunError;

/// One queued request.
pub(super) struct Job {
    pub payload: Payload,
    /// Data points (metrics) or spans (traces) in the request.
    pub items: usize,
    pub queued_at: Instant,
}

/// The exporter: a bounded queue and the thread that drains it.
pub struct Exporter {
    tx: Option<SyncSender<Job>>,
    stats: Arc<ExportStats>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// One attempt's timeout: how long a send in flight at shutdown may still take.
    send_timeout: Duration,
}

impl Exporter {
    /// Checks the settings (endpoint, headers) and starts the worker. A request is
    /// retried until it is `max_age` old; warnings come at most once per `log_every`.
    pub fn start(
        settings: &ExportSettings,
        max_age: Duration,
        log_every: Duration,
    ) -> Result<Self, RunError> {
        let transport = Transport::new(settings)?;
        let (tx, rx) = sync_channel(settings.queue_requests);
        let stats = Arc::new(ExportStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let spool = match &settings.spool {
            Some(s) => Some(open_spool(s, &stats)?),
            None => None,
        };
        let spool_dir = settings
            .spool
            .as_ref()
            .map(|s| (s.dir.display().to_string(), s.max_bytes));
        let worker = Worker {
            rx,
            transport,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            max_age,
            max_backoff: log_every.clamp(Duration::from_secs(1), MAX_BACKOFF),
            warnings: Warnings::new(&settings.endpoint, log_every, spool_dir),
        };
        let handle = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || match spool {
                Some(spool) => worker.run_spooled(spool),
                None => worker.run(),
            })
            .map_err(|e| RunError::setting("exporter", format!("cannot start its thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            stats,
            stop,
            handle: Some(handle),
            send_timeout: settings.timeout,
        })
    }

    /// Counters of what was sent and dropped.
    pub fn stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Queues a request of `items` data points or spans; when the queue is full
    /// it is dropped and counted.
    pub fn submit(&self, payload: Payload, items: usize) {
        let Some(tx) = &self.tx else { return };
        let job = Job {
            payload,
            items,
            queued_at: Instant::now(),
        };
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.stats.dropped(job.payload.kind(), job.items as u64);
            }
        }
    }

    /// Sends what is queued for up to `grace`, then stops retrying and joins the worker.
    pub fn shutdown(mut self, grace: Duration) {
        self.tx.take();
        let deadline = Instant::now() + grace;
        if let Some(handle) = self.handle.take() {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop.store(true, Ordering::Relaxed);
            // Queued requests are now counted as dropped without a try; a send in
            // flight ends within its timeout (gRPC adds a second of slack), and
            // only then are the totals below exact.
            let deadline = Instant::now() + self.send_timeout + Duration::from_secs(2);
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!("export still in flight at shutdown; not waiting for it");
            }
        }
        log_totals(&self.stats);
    }
}

/// Opens the spool; files a previous run left damaged are counted as dropped
/// requests, what it left intact is sent first.
fn open_spool(s: &SpoolSettings, stats: &ExportStats) -> Result<Spool, RunError> {
    let (spool, damaged) = Spool::open(s).map_err(|e| {
        RunError::setting(
            "spool",
            format!(
                "{e}; the spool directory (--spool-dir, GILSCOPE_SPOOL_DIR, \
                 export.spool.dir) must be a writable directory"
            ),
        )
    })?;
    if let Some(first) = damaged.first() {
        tracing::warn!(
            "{} damaged spool file(s) from a previous run skipped and counted as dropped requests (first: {first})",
            damaged.len()
        );
        ExportStats::add(&stats.requests_dropped, damaged.len() as u64);
    }
    if !spool.is_empty() {
        tracing::info!(
            "spool {} holds {} request(s) ({} bytes) from a previous run; sending them first",
            s.dir.display(),
            spool.len(),
            spool.bytes()
        );
    }
    Ok(spool)
}

/// The export totals at shutdown: a warning when anything was dropped.
fn log_totals(s: &ExportStats) {
    let (dropped, spans_dropped) = (
        ExportStats::get(&s.points_dropped),
        ExportStats::get(&s.spans_dropped),
    );
    let totals = format!(
        "export totals: {} data points sent, {dropped} dropped; {} requests sent, {} dropped; \
         {} spans sent, {spans_dropped} dropped; {} requests left in the spool",
        ExportStats::get(&s.points_sent),
        ExportStats::get(&s.requests_sent),
        ExportStats::get(&s.requests_dropped),
        ExportStats::get(&s.spans_sent),
        ExportStats::get(&s.spool_requests),
    );
    if dropped + spans_dropped > 0 {
        tracing::warn!("{totals}");
    } else {
        tracing::info!("{totals}");
    }
}
