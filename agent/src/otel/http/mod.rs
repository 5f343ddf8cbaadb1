//! The opt-in HTTP endpoints of `gilscope run` (`--listen`): `/metrics` for a
//! Prometheus-style scraper, `/healthz` and `/readyz` for Kubernetes probes.
//!
//! One thread of its own answers requests ([`server`]: bounded connections and
//! timeouts, so slow or stalled clients cannot starve the probes); it never
//! touches the measuring loop. The loop publishes a finished exposition once per
//! interval (a pointer swap under a mutex held for no longer than that) and its
//! liveness in atomics, so a slow or stuck client cannot delay a measurement, and
//! a stuck loop shows in `/healthz`.

mod server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};

use crate::error::RunError;
use crate::otel::prometheus::{Batch, Exposition};
use crate::otel::series::{Point, ProcessSeries};
use crate::otel::Temporality;

/// What the loop tells the probes: when it last went round, how far it got.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds after `started` at which the loop last went round.
    beat_ms: AtomicU64,
    probe_loaded: AtomicBool,
    discovered: AtomicBool,
    stopping: AtomicBool,
    /// Not alive when the loop has not gone round for this long.
    stale_after: Duration,
}

/// An answer to a probe: ready/alive or not, and why, in a few words.
pub type Verdict = Result<String, String>;

impl Health {
    /// A loop that has not gone round for `stale_after` is reported dead.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            beat_ms: AtomicU64::new(0),
            probe_loaded: AtomicBool::new(false),
            discovered: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stale_after,
        }
    }

    /// How long the loop may stay silent: twice the interval (a loop that cannot
    /// finish an interval in two is not keeping up), at least 30 s (a busy node
    /// must not get the agent restarted for one slow /proc walk).
    pub fn stale_after(interval: Duration) -> Duration {
        (interval * 2).max(Duration::from_secs(30))
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The loop went round at `at` and finished a discovery pass.
    pub fn beat(&self, at: Instant) {
        self.beat_ms.store(self.millis(at), Ordering::Relaxed);
        self.discovered.store(true, Ordering::Relaxed);
    }

    /// `/healthz` at `now`.
    pub fn liveness(&self, now: Instant) -> Verdict {
        let silent = Duration::from_millis(
            self.millis(now)
                .saturating_sub(self.beat_ms.load(Ordering::Relaxed)),
        );
        if silent > self.stale_after {
            Err(format!(
                "main loop stuck: last went round {:.1} s ago (limit {} s)\n",
                silent.as_secs_f64(),
                self.stale_after.as_secs()
            ))
        } else {
            Ok(format!(
                "ok: main loop went round {} ms ago\n",
                silent.as_millis()
            ))
        }
    }

    /// `/readyz`.
    pub fn readiness(&self) -> Verdict {
        if self.stopping.load(Ordering::Relaxed) {
            Err("shutting down\n".into())
        } else if !self.probe_loaded.load(Ordering::Relaxed) {
            Err("loading the BPF probe\n".into())
        } else if !self.discovered.load(Ordering::Relaxed) {
            Err("first /proc discovery pass not done yet\n".into())
        } else {
            Ok("ready\n".into())
        }
    }
}

/// What the loop shares with the request task.
#[derive(Debug)]
struct Shared {
    health: Health,
    /// The last interval's exposition; swapped whole, cloned out cheaply.
    metrics: Mutex<Page>,
}

/// One interval's `/metrics` page, and the same gzipped once a scraper asked for it
/// (so a scraper every few seconds costs one compression per interval, not per scrape).
#[derive(Debug, Default, Clone)]
struct Page {
    plain: Bytes,
    gzip: Option<Bytes>,
}

impl Shared {
    fn page(&self) -> MutexGuard<'_, Page> {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running endpoints: the server, the shared state and the cumulative
/// series behind `/metrics`.
pub struct Endpoints {
    shared: Arc<Shared>,
    exposition: Exposition,
    /// Stops serving when dropped.
    _server: server::Server,
    addr: SocketAddr,
}

impl Endpoints {
    /// Listens on `addr` (named `source` in errors); a port in use is one clear
    /// error at startup, not a daemon that runs without its probes.
    pub fn start(addr: SocketAddr, source: &str, interval: Duration) -> Result<Self, RunError> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "the port is in use (another gilscope run?): stop that or choose another port"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "no interface of this host has that address: use 0.0.0.0 or one of its addresses"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "ports below 1024 need CAP_NET_BIND_SERVICE: choose a higher port"
                }
                _ => "choose another address",
            };
            RunError::setting(source, format!("cannot listen on {addr}: {e}; {hint}"))
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let shared = Arc::new(Shared {
            health: Health::new(Health::stale_after(interval)),
            metrics: Mutex::new(Page::default()),
        });
        let answers = Arc::clone(&shared);
        let server = server::Server::start(
            listener,
            server::Limits::LISTEN,
            "gilscope-http",
            Arc::new(move |request: &Request<Incoming>| respond(request, &answers)),
        )
        .map_err(|e| RunError::setting(source, format!("cannot serve on {addr}: {e}")))?;
        tracing::info!("serving /metrics, /healthz and /readyz on http://{addr}");
        Ok(Self {
            shared,
            exposition: Exposition::default(),
            _server: server,
            addr,
        })
    }

    /// The address actually listened on (port 0 picks one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The BPF probe is loaded.
    pub fn probe_loaded(&self) {
        self.shared
            .health
            .probe_loaded
            .store(true, Ordering::Relaxed);
    }

    /// The loop went round (a discovery pass done).
    pub fn beat(&self) {
        self.shared.health.beat(Instant::now());
    }

    /// The loop is stopping: not ready any more.
    pub fn stopping(&self) {
        self.shared.health.stopping.store(true, Ordering::Relaxed);
    }

    /// Publishes an interval: every process's points and the agent's own
    /// (cumulative), as built for OTLP under `temporality`.
    pub fn publish(
        &mut self,
        processes: &[ProcessSeries],
        agent: (&[(String, String)], &[Point]),
        temporality: Temporality,
    ) {
        let batch: Vec<Batch<'_>> = processes
            .iter()
            .map(|s| (s.resource.as_slice(), s.points.as_slice(), temporality))
            // The agent's own points given here are always cumulative.
            .chain([(agent.0, agent.1, Temporality::Cumulative)])
            .collect();
        self.exposition.update(&batch);
        let page = Page {
            plain: Bytes::from(self.exposition.render()),
            gzip: None,
        };
        *self.shared.page() = page;
    }
}

type Response = hyper::Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";
/// The Prometheus text format, version 0.0.4.
const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

fn verdict(v: Verdict) -> Response {
    match v {
        Ok(why) => text(StatusCode::OK, PLAIN, why),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, why),
    }
}

/// `body` gzipped, if that works (it only fails on allocation).
fn gzipped(body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    enc.write_all(body).ok()?;
    enc.finish().ok()
}

/// Scrapers ask for gzip: a page is ~20 KB per watched process.
fn accepts_gzip(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.trim().split(';').next() == Some("gzip"))
}

/// The last page, gzipped when asked for (compressed at most once per page).
fn metrics(shared: &Shared, gzip: bool) -> Response {
    let page = shared.page().clone();
    let zipped = if !gzip {
        None
    } else if let Some(zipped) = page.gzip {
        Some(zipped)
    } else {
        // Compressed outside the lock: publishing a new page never waits for it.
        gzipped(&page.plain).map(Bytes::from).inspect(|zipped| {
            let mut slot = shared.page();
            // The same page (we hold it, so its address cannot have been reused).
            if slot.plain.as_ptr() == page.plain.as_ptr() && slot.gzip.is_none() {
                slot.gzip = Some(zipped.clone());
            }
        })
    };
    match zipped {
        Some(zipped) => {
            let mut r = text(StatusCode::OK, EXPOSITION, zipped);
            r.headers_mut()
                .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            r
        }
        None => text(StatusCode::OK, EXPOSITION, page.plain),
    }
}

fn respond(request: &Request<Incoming>, shared: &Shared) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/metrics" => metrics(shared, accepts_gzip(request)),
        "/healthz" => verdict(shared.health.liveness(Instant::now())),
        "/readyz" => verdict(shared.health.readiness()),
        "/" => text(
            StatusCode::OK,
            PLAIN,
            "gilscope run: /metrics (Prometheus text format), /healthz, /readyz\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_silent_for_longer_than_the_limit_is_not_alive() {
        let h = Health::new(Duration::from_secs(30));
        let t0 = h.started;
        h.beat(t0 + Duration::from_secs(5));
        assert!(h.liveness(t0 + Duration::from_secs(20)).is_ok());
        let dead = h.liveness(t0 + Duration::from_secs(36));
        assert!(
            dead.as_ref().is_err_and(|w| w.contains("stuck")),
            "{dead:?}"
        );
        h.beat(t0 + Duration::from_secs(36));
        assert!(h.liveness(t0 + Duration::from_secs(36)).is_ok());
        assert_eq!(
            Health::stale_after(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(
            Health::stale_after(Duration::from_secs(60)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn ready_after_the_probe_and_a_discovery_pass_until_stopping() {
        let h = Health::new(Duration::from_secs(30));
        assert_eq!(h.readiness(), Err("loading the BPF probe\n".to_string()));
        h.probe_loaded.store(true, Ordering::Relaxed);
        assert!(h.readiness().is_err_and(|w| w.contains("discovery")));
        h.beat(Instant::now());
        assert_eq!(h.readiness(), Ok("ready\n".to_string()));
        h.stopping.store(true, Ordering::Relaxed);
        assert_eq!(h.readiness(), Err("shutting down\n".to_string()));
    }
}
