//! What `gilscope run` gets: its settings resolved, checked and typed. Plain
//! data; how each one is given lives in `cli::settings::defs`.

use std::time::Duration;

use crate::otel::export::ExportSettings;
use crate::otel::resource::TenantRule;
use crate::otel::spans::SpanSettings;
use crate::otel::Temporality;
use crate::watch::discover::Rules;

/// Data points per OTLP request (`export.batch_size`); the daemon also holds
/// finished intervals by it when not exporting.
pub const DEFAULT_BATCH_POINTS: usize = 512;

/// Everything `gilscope run` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub poll: Duration,
    pub sample_hz: u32,
    /// Measure event-loop lag (uprobes on every watched process's poll functions).
    pub event_loops: bool,
    /// Size of the kernel's per-thread maps (`None`: the built-in 65,536), see
    /// [`WaitProbe::load_with_capacity`](crate::probes::wait::WaitProbe::load_with_capacity).
    pub thread_capacity: Option<u32>,
    pub rules: Rules,
    /// `Some(cap)`: per-thread series, at most `cap` threads a process.
    pub per_thread: Option<usize>,
    pub tenant: Option<TenantRule>,
    /// `None`: nothing configured, print the summary to stdout.
    pub export: Option<ExportSettings>,
    /// Print the summary to stdout (always when not exporting).
    pub summary: bool,
    pub temporality: Temporality,
    /// The agent's own resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    pub agent_service_name: String,
    pub agent_attributes: Vec<(String, String)>,
    /// Stop after this long (tests and benchmarks); `None`: until SIGTERM.
    pub run_for: Option<Duration>,
    /// Pod metadata from the Kubernetes API; `None`: off.
    pub kubernetes: Option<crate::otel::kube::KubeSettings>,
    /// Encoded export bytes allowed per minute ([`crate::otel::export::budget`]); `None`: no limit.
    pub byte_budget: Option<u64>,
    /// The lean request shape (default) rather than the standard one ([`crate::otel::otlp::Encoding`]).
    pub lean_encoding: bool,
    /// Finished intervals are held up to this long, unless a batch fills first, so a
    /// thin link gets fewer, larger (better compressed) requests; zero: send each interval.
    pub max_delay: Duration,
    /// `None`: no contention spans (not exporting, or turned off).
    pub spans: Option<SpanSettings>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (off when `None`).
    pub listen: Option<Listen>,
}

/// Where the HTTP endpoints listen, and which setting said so (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: std::net::SocketAddr,
    pub source: String,
}
