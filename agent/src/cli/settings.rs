//! Settings of `gilscope run`: a YAML file, the standard `OTEL_*` variables and
//! flags, merged in that order of strength (flags > environment > file > defaults).
//!
//! Everything here is parsing and checking; nothing is started. A bad value is
//! reported once, naming where it came from (`--interval`, `OTEL_EXPORTER_OTLP_PROTOCOL`,
//! `gilscope.yaml: export.compression`), so the daemon never starts half-configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::RunError;
use crate::otel::export::spool::{SpoolSettings, DEFAULT_MAX_BYTES};
use crate::otel::export::tls::{load_certificates, load_private_key, TlsSettings};
use crate::otel::export::{Compression, ExportSettings, Protocol};
use crate::otel::resource::{parse_key_values, TenantRule};
use crate::otel::spans::SpanSettings;
use crate::otel::Temporality;
use crate::watch::discover::{RulePatterns, Rules};

/// Default export interval (`OTEL_METRIC_EXPORT_INTERVAL` has the same default in spirit: 10 s here, not 60 s,
/// because GIL contention comes in bursts).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How often /proc is listed for new processes: new ones are seen within this.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);
/// GIL state samples per second per process (hold share, utilization, switches).
pub const DEFAULT_SAMPLE_HZ: u32 = 10;
/// Data points per OTLP request.
pub const DEFAULT_BATCH_POINTS: usize = 512;
/// Requests waiting to be sent before new ones are dropped (and counted).
pub const DEFAULT_QUEUE_REQUESTS: usize = 64;
/// Per-thread series kept per process when per-thread export is on.
pub const DEFAULT_MAX_THREADS: usize = 20;
/// A GIL wait at least this long is a contention episode (a span): ten switch
/// intervals, far beyond the 5-20 ms waits of ordinary sharing.
pub const DEFAULT_SPAN_THRESHOLD: Duration = Duration::from_millis(50);
/// Contention spans per second per process (also the burst).
pub const DEFAULT_SPAN_RATE: f64 = 10.0;
/// The most threads the kernel's per-thread maps may be sized for (entries cost
/// memory only when used, but a typo must not ask the kernel for billions).
const MAX_THREAD_CAPACITY: u32 = 1 << 22;
/// Shorter thresholds turn ordinary 5 ms switch-interval waits into spans.
const MIN_SPAN_THRESHOLD: Duration = Duration::from_millis(1);

/// The YAML file, as written by a user. Unknown keys are errors (a typo must not
/// silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Export interval (`10s`, `500ms`).
    pub interval: Option<String>,
    /// /proc polling period for discovery.
    pub poll: Option<String>,
    pub sample_hz: Option<u32>,
    /// Threads the kernel keeps wait counters for, on the whole node.
    pub thread_capacity: Option<u32>,
    pub export: Option<ExportFile>,
    pub include: Option<RuleFile>,
    pub exclude: Option<RuleFile>,
    /// Processes younger than this are not watched yet.
    pub min_age: Option<String>,
    pub per_thread: Option<PerThreadFile>,
    pub tenant: Option<TenantFile>,
    /// Print the per-interval summary even when exporting.
    pub summary: Option<bool>,
    /// `host:port` of the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`).
    pub listen: Option<String>,
    pub spans: Option<SpansFile>,
    pub kubernetes: Option<KubernetesFile>,
}

/// `spans:` — GIL contention episodes as OTLP spans.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpansFile {
    pub enabled: Option<bool>,
    /// Shortest wait that is an episode (`50ms`).
    pub threshold: Option<String>,
    pub rate_per_second: Option<f64>,
}

/// `kubernetes:` — pod metadata from the API server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// Default: on when `KUBERNETES_SERVICE_HOST` is set (running in a pod).
    pub enabled: Option<bool>,
    /// Default: the `NODE_NAME` environment variable (downward API `spec.nodeName`).
    pub node_name: Option<String>,
    /// Take `tenant.id` from a namespace label (default off).
    pub tenant_from_namespace: Option<bool>,
    /// The namespace label for `tenant.id` (default `tenant`); setting it switches that on.
    pub tenant_label: Option<String>,
}

/// The `export:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<String>,
    pub compression: Option<String>,
    pub temporality: Option<String>,
    pub batch_size: Option<usize>,
    pub queue_size: Option<usize>,
    /// Byte budget per minute (`64KiB`, `100000`); over it detail is given up.
    pub byte_budget_per_minute: Option<String>,
    /// `lean` (default) or `standard` request shape (see `otlp::Encoding`).
    pub encoding: Option<String>,
    /// Hold finished intervals up to this long (`1m`) unless a batch fills first.
    pub max_delay: Option<String>,
    /// CA bundle (PEM) to trust for `https://` endpoints.
    pub certificate: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub client_certificate: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub client_key: Option<PathBuf>,
    pub spool: Option<SpoolFile>,
}

/// `export.spool:` — where requests wait on disk while the collector is away.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFile {
    pub dir: Option<PathBuf>,
    /// Bytes (`268435456`) or with a unit (`256MiB`, `1GiB`, `500MB`).
    pub max_bytes: Option<serde_norway::Value>,
}

/// `include:` / `exclude:`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Globs on the executable path (`/usr/bin/python3*`, `*/python3.11`).
    #[serde(default)]
    pub executables: Vec<String>,
    /// Regular expressions on the command line (arguments joined by spaces).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Regular expressions on `/proc/PID/cgroup` (container ids, pod slices, units).
    #[serde(default)]
    pub cgroup: Vec<String>,
}

/// `per_thread:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerThreadFile {
    pub enabled: Option<bool>,
    pub max_threads: Option<usize>,
}

/// `tenant:` — exactly one of `value` or `resource_attribute`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    pub value: Option<String>,
    pub resource_attribute: Option<String>,
}

/// Everything `gilscope run` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub poll: Duration,
    pub sample_hz: u32,
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

/// Values given as flags; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub interval: Option<Duration>,
    pub poll: Option<Duration>,
    pub sample_hz: Option<u32>,
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Vec<String>,
    pub compression: Option<String>,
    pub temporality: Option<String>,
    pub include_exe: Vec<String>,
    pub exclude_exe: Vec<String>,
    pub include_cmdline: Vec<String>,
    pub exclude_cmdline: Vec<String>,
    pub include_cgroup: Vec<String>,
    pub exclude_cgroup: Vec<String>,
    pub min_age: Option<Duration>,
    pub per_thread: bool,
    pub max_threads: Option<usize>,
    pub thread_capacity: Option<u32>,
    pub tenant: Option<String>,
    pub tenant_from: Option<String>,
    pub summary: bool,
    pub run_for: Option<Duration>,
    /// `--kubernetes`: pod metadata even outside a pod (with a kubeconfig).
    pub kubernetes: bool,
    /// `--byte-budget` (a byte count with an optional unit).
    pub byte_budget: Option<String>,
    /// `--max-delay`: hold finished intervals up to this long before sending.
    pub max_delay: Option<Duration>,
    /// `--encoding` (lean or standard).
    pub encoding: Option<String>,
    pub listen: Option<String>,
    pub no_spans: bool,
    pub span_threshold: Option<Duration>,
    pub span_rate: Option<f64>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
}

/// Parses `268435456`, `256MiB`, `1GiB`, `500MB`, `64KiB` (a bare number is bytes;
/// KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024, and a bare `k` is refused as ambiguous).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 268435456, 256MiB, 1GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("size '{text}' must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// Parses `10`, `10s`, `500ms`, `2m`, `1.5s`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (examples: 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("duration '{text}' must be positive"));
    }
    // A huge number ("1111...1h") is finite but overflows a Duration: an error, not a panic.
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("duration '{text}' is too long (at most ~584 billion years)"))
}

/// Reads and parses the YAML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, RunError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses config text (an empty file is all defaults).
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, RunError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| RunError::ConfigParse {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn protocol(source: &str, text: &str) -> Result<Protocol, RunError> {
    match text.trim() {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
        other => Err(RunError::setting(
            source,
            format!("protocol '{other}' is not supported (use grpc or http/protobuf)"),
        )),
    }
}

fn compression(source: &str, text: &str) -> Result<Compression, RunError> {
    match text.trim() {
        "gzip" => Ok(Compression::Gzip),
        "zstd" => Ok(Compression::Zstd),
        "none" | "" => Ok(Compression::None),
        other => Err(RunError::setting(
            source,
            format!("compression '{other}' is not supported (use gzip, zstd or none)"),
        )),
    }
}

fn temporality(source: &str, text: &str) -> Result<Temporality, RunError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "cumulative" => Ok(Temporality::Cumulative),
        // lowmemory means delta for counters and histograms: all of ours that have a temporality.
        "delta" | "lowmemory" => Ok(Temporality::Delta),
        other => Err(RunError::setting(
            source,
            format!("temporality '{other}' is not supported (use cumulative or delta)"),
        )),
    }
}

fn duration(source: &str, text: &str) -> Result<Duration, RunError> {
    parse_duration(text).map_err(|why| RunError::setting(source, why))
}

fn lean(source: &str, text: &str) -> Result<bool, RunError> {
    match text.trim() {
        "lean" => Ok(true),
        "standard" => Ok(false),
        other => Err(RunError::setting(
            source,
            format!("encoding '{other}' is not supported (use lean or standard)"),
        )),
    }
}

fn bytes(source: &str, text: &str) -> Result<u64, RunError> {
    parse_bytes(text).map_err(|why| RunError::setting(source, why))
}

fn millis(source: &str, text: &str) -> Result<Duration, RunError> {
    let ms: f64 = text.trim().parse().map_err(|_| {
        RunError::setting(source, format!("'{text}' is not a number of milliseconds"))
    })?;
    if !ms.is_finite() || ms <= 0.0 {
        return Err(RunError::setting(
            source,
            "must be a positive number of milliseconds",
        ));
    }
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| RunError::setting(source, format!("'{text}' milliseconds is too long")))
}

/// The first set variable among `names`, with its name.
fn first_env<'a>(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'a str],
) -> Option<(&'a str, String)> {
    names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
}

/// The HTTP metrics URL: a base endpoint gets `/v1/metrics` appended.
fn http_metrics_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/metrics") {
        base.to_string()
    } else {
        format!("{base}/v1/metrics")
    }
}

/// The HTTP traces URL next to a metrics URL or base endpoint.
fn http_traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/v1/metrics").unwrap_or(base);
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// `host:port` (`0.0.0.0:9464`, `[::]:9464`, `localhost:9464`) to one address.
fn listen_addr(source: &str, text: &str) -> Result<Listen, RunError> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    let bad = |why: String| RunError::setting(source, why);
    if text
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(bad(format!(
            "'{text}' is not host:port (examples: 0.0.0.0:9464, 127.0.0.1:9464, [::]:9464)"
        )));
    }
    let addr = text
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve '{text}': {e}")))?
        .next()
        .ok_or_else(|| bad(format!("'{text}' resolves to no address")))?;
    Ok(Listen {
        addr,
        source: source.to_string(),
    })
}

/// The TLS files: `OTEL_EXPORTER_OTLP_METRICS_*` > `OTEL_EXPORTER_OTLP_*` > the file.
/// Spans go over the same connection settings, so the `TRACES_` variants are not read.
fn tls_settings(
    env: &dyn Fn(&str) -> Option<String>,
    ef: &ExportFile,
    at: &dyn Fn(&str) -> String,
) -> Result<TlsSettings, RunError> {
    let pick = |suffix: &str, key: &str, file: &Option<PathBuf>| {
        let metrics = format!("OTEL_EXPORTER_OTLP_METRICS_{suffix}");
        let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
        match first_env(env, &[metrics.as_str(), general.as_str()]) {
            Some((name, path)) => Some((name.to_string(), PathBuf::from(path.trim()))),
            None => file.clone().map(|p| (at(key), p)),
        }
    };
    let ca = pick("CERTIFICATE", "export.certificate", &ef.certificate);
    let cert = pick(
        "CLIENT_CERTIFICATE",
        "export.client_certificate",
        &ef.client_certificate,
    );
    let key = pick("CLIENT_KEY", "export.client_key", &ef.client_key);
    let ca_pem = match ca {
        Some((source, path)) => Some(load_certificates(&source, &path)?),
        None => None,
    };
    let client = match (cert, key) {
        (Some((cs, cp)), Some((ks, kp))) => {
            Some((load_certificates(&cs, &cp)?, load_private_key(&ks, &kp)?))
        }
        (Some((source, _)), None) | (None, Some((source, _))) => {
            return Err(RunError::setting(
                source,
                "mutual TLS needs both a client certificate and its key \
                 (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY)",
            ))
        }
        (None, None) => None,
    };
    Ok(TlsSettings { ca_pem, client })
}

/// The spool: `--spool-dir` > `GILSCOPE_SPOOL_DIR` > `export.spool.dir`; off when none is set.
fn spool_settings(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&SpoolFile>,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<SpoolSettings>, RunError> {
    let dir = flags
        .spool_dir
        .clone()
        .or_else(|| {
            env("GILSCOPE_SPOOL_DIR")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| file.and_then(|f| f.dir.clone()));
    let Some(dir) = dir else {
        return Ok(None);
    };
    let max_bytes = match (
        flags.spool_max_bytes,
        file.and_then(|f| f.max_bytes.as_ref()),
    ) {
        (Some(b), _) => b,
        (None, Some(v)) => {
            let text = match v {
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            parse_bytes(&text)
                .map_err(|why| RunError::setting(at("export.spool.max_bytes"), why))?
        }
        (None, None) => DEFAULT_MAX_BYTES,
    };
    Ok(Some(SpoolSettings { dir, max_bytes }))
}

/// Merges file, environment and flags into [`Settings`].
pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, RunError> {
    let file = match &flags.config {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    resolve_parsed(flags, file, env)
}

/// [`resolve`] with the config file already parsed (`flags.config` only names
/// it in errors): public so the fuzz harness can feed file text without a file.
pub fn resolve_parsed(
    flags: &Flags,
    file: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, RunError> {
    let fname = flags
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let at = |key: &str| format!("{fname}: {key}");

    let interval = match (
        &flags.interval,
        env("OTEL_METRIC_EXPORT_INTERVAL"),
        &file.interval,
    ) {
        (Some(d), _, _) => *d,
        (None, Some(ms), _) if !ms.trim().is_empty() => millis("OTEL_METRIC_EXPORT_INTERVAL", &ms)?,
        (None, _, Some(text)) => duration(&at("interval"), text)?,
        _ => DEFAULT_INTERVAL,
    };
    let poll = match (&flags.poll, &file.poll) {
        (Some(d), _) => *d,
        (None, Some(text)) => duration(&at("poll"), text)?,
        _ => DEFAULT_POLL,
    };
    let sample_hz = flags
        .sample_hz
        .or(file.sample_hz)
        .unwrap_or(DEFAULT_SAMPLE_HZ);
    if !(1..=1000).contains(&sample_hz) {
        return Err(RunError::setting(
            "sample_hz",
            format!("{sample_hz} is out of range (1-1000)"),
        ));
    }

    let thread_capacity = flags.thread_capacity.or(file.thread_capacity);
    if let Some(n) = thread_capacity {
        if !(1..=MAX_THREAD_CAPACITY).contains(&n) {
            return Err(RunError::setting(
                "thread_capacity",
                format!("{n} is out of range (1-{MAX_THREAD_CAPACITY})"),
            ));
        }
    }

    // Rules: flags add to the file's lists.
    let inc = file.include.clone().unwrap_or_default();
    let exc = file.exclude.clone().unwrap_or_default();
    let min_age = match (&flags.min_age, &file.min_age) {
        (Some(d), _) => *d,
        (None, Some(text)) => duration(&at("min_age"), text)?,
        _ => Duration::ZERO,
    };
    let rules = Rules::new(
        &RulePatterns {
            include_exe: [inc.executables, flags.include_exe.clone()].concat(),
            exclude_exe: [exc.executables, flags.exclude_exe.clone()].concat(),
            include_cmdline: [inc.cmdline, flags.include_cmdline.clone()].concat(),
            exclude_cmdline: [exc.cmdline, flags.exclude_cmdline.clone()].concat(),
            include_cgroup: [inc.cgroup, flags.include_cgroup.clone()].concat(),
            exclude_cgroup: [exc.cgroup, flags.exclude_cgroup.clone()].concat(),
        },
        min_age,
    )?;

    let pt = file.per_thread.unwrap_or_default();
    let per_thread = (flags.per_thread || pt.enabled.unwrap_or(false)).then(|| {
        flags
            .max_threads
            .or(pt.max_threads)
            .unwrap_or(DEFAULT_MAX_THREADS)
    });

    let tenant = match (&flags.tenant, &flags.tenant_from, &file.tenant) {
        (Some(v), _, _) => Some(TenantRule::Fixed(v.clone())),
        (None, Some(k), _) => Some(TenantRule::ResourceAttribute(k.clone())),
        (None, None, Some(t)) => match (&t.value, &t.resource_attribute) {
            (Some(v), None) => Some(TenantRule::Fixed(v.clone())),
            (None, Some(k)) => Some(TenantRule::ResourceAttribute(k.clone())),
            _ => {
                return Err(RunError::setting(
                    at("tenant"),
                    "give exactly one of `value` or `resource_attribute`",
                ))
            }
        },
        _ => None,
    };

    let kf = file.kubernetes.unwrap_or_default();
    let in_pod = env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.trim().is_empty());
    let asked = flags.kubernetes || kf.enabled == Some(true);
    let kubernetes = if asked || (in_pod && kf.enabled != Some(false)) {
        let node = kf
            .node_name
            .clone()
            .or_else(|| env("NODE_NAME"))
            .filter(|n| !n.trim().is_empty());
        match node {
            Some(node_name) => {
                let tenant_on = kf
                    .tenant_from_namespace
                    .unwrap_or(kf.tenant_label.is_some());
                let tenant_label = tenant_on.then(|| {
                    kf.tenant_label
                        .clone()
                        .unwrap_or_else(|| crate::otel::kube::DEFAULT_TENANT_LABEL.to_string())
                });
                Some(crate::otel::kube::KubeSettings {
                    node_name: node_name.trim().to_string(),
                    tenant_label,
                    api_url: None,
                })
            }
            None if asked => {
                return Err(RunError::setting(
                    at("kubernetes.node_name"),
                    "Kubernetes metadata needs this node's name: set NODE_NAME from the \
                     downward API (fieldRef spec.nodeName) or kubernetes.node_name",
                ))
            }
            None => {
                tracing::warn!(
                    "running in a pod but NODE_NAME is not set: no Kubernetes metadata \
                     (set NODE_NAME from the downward API fieldRef spec.nodeName)"
                );
                None
            }
        }
    } else {
        None
    };
    let tenant = match (&kubernetes, tenant) {
        (Some(k), t) if k.tenant_label.is_some() => {
            if t.is_some() {
                return Err(RunError::setting(
                    at("kubernetes.tenant_label"),
                    "tenant.id would come from two places: give `tenant`/--tenant/--tenant-from \
                     or the namespace label, not both",
                ));
            }
            k.tenant_label.clone().map(TenantRule::NamespaceLabel)
        }
        (_, t) => t,
    };

    let ef = file.export.unwrap_or_default();
    let byte_budget = match (
        &flags.byte_budget,
        first_env(env, &["GILSCOPE_BYTE_BUDGET"]),
        &ef.byte_budget_per_minute,
    ) {
        (Some(b), _, _) => Some(bytes("--byte-budget", b)?),
        (None, Some((name, b)), _) => Some(bytes(name, &b)?),
        (None, None, Some(b)) => Some(bytes(&at("export.byte_budget_per_minute"), b)?),
        _ => None,
    };
    let lean_encoding = match (&flags.encoding, &ef.encoding) {
        (Some(e), _) => lean("--encoding", e)?,
        (None, Some(e)) => lean(&at("export.encoding"), e)?,
        _ => true,
    };
    let max_delay = match (flags.max_delay, &ef.max_delay) {
        (Some(d), _) => d,
        (None, Some(d)) => duration(&at("export.max_delay"), d)?,
        _ => Duration::ZERO,
    };
    let temporality = match (
        &flags.temporality,
        first_env(env, &["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"]),
        &ef.temporality,
    ) {
        (Some(t), _, _) => temporality("--temporality", t)?,
        (None, Some((name, t)), _) => temporality(name, &t)?,
        (None, None, Some(t)) => temporality(&at("export.temporality"), t)?,
        _ => Temporality::Cumulative,
    };
    let protocol = match (
        &flags.protocol,
        first_env(
            env,
            &[
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ],
        ),
        &ef.protocol,
    ) {
        (Some(p), _, _) => protocol("--protocol", p)?,
        (None, Some((name, p)), _) => protocol(name, &p)?,
        (None, None, Some(p)) => protocol(&at("export.protocol"), p)?,
        _ => Protocol::Grpc,
    };
    // The signal-specific variable is a full URL; everything else is a base.
    let endpoint = match (
        &flags.endpoint,
        env("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").filter(|v| !v.trim().is_empty()),
        env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty()),
        &ef.endpoint,
    ) {
        (Some(e), ..) => Some((e.clone(), false)),
        (None, Some(e), ..) => Some((e, true)),
        (None, None, Some(e), _) => Some((e, false)),
        (None, None, None, Some(e)) => Some((e.clone(), false)),
        _ => None,
    };
    let export = match endpoint {
        None => None,
        Some((url, full)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(RunError::setting(
                    "endpoint",
                    format!("'{url}' must start with http:// or https://"),
                ));
            }
            let tls = if url.starts_with("https://") {
                Some(tls_settings(env, &ef, &at)?)
            } else {
                None
            };
            let spool = spool_settings(flags, env, ef.spool.as_ref(), &at)?;
            let traces_endpoint = match (
                protocol,
                env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()),
            ) {
                (_, Some(t)) => t,
                (Protocol::Grpc, None) => url.clone(),
                (Protocol::HttpProtobuf, None) => http_traces_url(&url),
            };
            let endpoint = match protocol {
                Protocol::Grpc => url,
                Protocol::HttpProtobuf if full => url,
                Protocol::HttpProtobuf => http_metrics_url(&url),
            };
            let mut headers: Vec<(String, String)> = ef.headers.into_iter().collect();
            if let Some((_, h)) = first_env(
                env,
                &[
                    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                    "OTEL_EXPORTER_OTLP_HEADERS",
                ],
            ) {
                headers.extend(parse_key_values(&h));
            }
            for h in &flags.headers {
                let (k, v) = h.split_once('=').ok_or_else(|| {
                    RunError::setting("--header", format!("'{h}' is not KEY=VALUE"))
                })?;
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            let timeout = match (
                first_env(
                    env,
                    &[
                        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
                        "OTEL_EXPORTER_OTLP_TIMEOUT",
                    ],
                ),
                &ef.timeout,
            ) {
                (Some((name, ms)), _) => millis(name, &ms)?,
                (None, Some(t)) => duration(&at("export.timeout"), t)?,
                _ => Duration::from_secs(10),
            };
            let compression = match (
                &flags.compression,
                first_env(
                    env,
                    &[
                        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
                        "OTEL_EXPORTER_OTLP_COMPRESSION",
                    ],
                ),
                &ef.compression,
            ) {
                (Some(c), _, _) => compression("--compression", c)?,
                (None, Some((name, c)), _) => compression(name, &c)?,
                (None, None, Some(c)) => compression(&at("export.compression"), c)?,
                // Thin links are the point: compress unless told not to.
                _ => Compression::Gzip,
            };
            let batch_points = ef.batch_size.unwrap_or(DEFAULT_BATCH_POINTS);
            let queue_requests = ef.queue_size.unwrap_or(DEFAULT_QUEUE_REQUESTS);
            if batch_points == 0 || queue_requests == 0 {
                return Err(RunError::setting(
                    at("export"),
                    "batch_size and queue_size must be at least 1",
                ));
            }
            Some(ExportSettings {
                endpoint,
                traces_endpoint,
                protocol,
                headers,
                timeout,
                compression,
                temporality,
                batch_points,
                queue_requests,
                spool,
                tls,
            })
        }
    };

    let listen = match (
        &flags.listen,
        first_env(env, &["GILSCOPE_LISTEN"]),
        &file.listen,
    ) {
        (Some(a), _, _) => Some(listen_addr("--listen", a)?),
        (None, Some((name, a)), _) => Some(listen_addr(name, &a)?),
        (None, None, Some(a)) => Some(listen_addr(&at("listen"), a)?),
        _ => None,
    };
    let spans =
        spans(flags, env, file.spans.unwrap_or_default(), &at)?.filter(|_| export.is_some());

    let mut agent_attributes = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|v| parse_key_values(&v))
        .unwrap_or_default();
    let agent_service_name = env("OTEL_SERVICE_NAME")
        .filter(|v| !v.trim().is_empty())
        .or_else(|| {
            agent_attributes
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "gilscope".to_string());
    agent_attributes.retain(|(k, _)| k != "service.name");

    Ok(Settings {
        interval,
        poll,
        sample_hz,
        thread_capacity,
        rules,
        per_thread,
        tenant,
        // Nothing else to show what was measured: the summary on stdout.
        summary: flags.summary
            || file.summary.unwrap_or(false)
            || (export.is_none() && listen.is_none()),
        export,
        temporality,
        agent_service_name,
        agent_attributes,
        run_for: flags.run_for,
        listen,
        spans,
        byte_budget,
        lean_encoding,
        max_delay,
        kubernetes,
    })
}

/// The `spans:` settings: flags > `OTEL_TRACES_EXPORTER=none` (off) > file > defaults.
/// Checked even when spans end up off, so a bad value is never silently ignored.
fn spans(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    file: SpansFile,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<SpanSettings>, RunError> {
    let threshold = match (&flags.span_threshold, &file.threshold) {
        (Some(d), _) => ("--span-threshold".to_string(), *d),
        (None, Some(t)) => (at("spans.threshold"), duration(&at("spans.threshold"), t)?),
        _ => (String::new(), DEFAULT_SPAN_THRESHOLD),
    };
    if threshold.1 < MIN_SPAN_THRESHOLD {
        return Err(RunError::setting(
            threshold.0,
            format!(
                "{:?} is below 1ms: every ordinary 5 ms GIL hand-over would be a span",
                threshold.1
            ),
        ));
    }
    let rate = match (flags.span_rate, file.rate_per_second) {
        (Some(r), _) => ("--span-rate".to_string(), r),
        (None, Some(r)) => (at("spans.rate_per_second"), r),
        _ => (String::new(), DEFAULT_SPAN_RATE),
    };
    if !rate.1.is_finite() || rate.1 <= 0.0 {
        return Err(RunError::setting(
            rate.0,
            format!(
                "{} spans per second: must be positive (to send none, set spans.enabled: false)",
                rate.1
            ),
        ));
    }
    let env_off = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    let enabled = !flags.no_spans && !env_off && file.enabled.unwrap_or(true);
    Ok(enabled.then_some(SpanSettings {
        threshold: threshold.1,
        rate_per_second: rate.1,
    }))
}

#[cfg(test)]
mod tests {
    /// Found by fuzzing (fuzz/, target `config`): a finite duration too long for
    /// a `Duration` panicked in `Duration::from_secs_f64` and stopped the daemon.
    #[test]
    fn a_duration_too_long_for_a_duration_is_an_error_not_a_panic() {
        let huge = format!("{}h", "1".repeat(40));
        let err = super::parse_duration(&huge).expect_err("too long");
        assert!(err.contains("too long"), "{err}");
        let env = |key: &str| (key == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1e300".to_string());
        let err = super::resolve(&super::Flags::default(), &env).expect_err("too long");
        assert!(err.to_string().contains("too long"), "{err}");
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fuzz/config/min-age-overflow"
        ))
        .expect("fixture");
        // The fuzz input: YAML up to the first NUL (environment entries follow).
        let text = String::from_utf8_lossy(&data);
        let yaml = text.split('\0').next().unwrap_or_default();
        let file = super::parse_file(std::path::Path::new("f.yaml"), yaml).expect("yaml");
        assert!(super::resolve_parsed(&super::Flags::default(), file, &|_| None).is_err());
    }

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn with_file(text: &str) -> Result<Settings, RunError> {
        let dir = std::env::temp_dir().join(format!("gilscope-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("c{}.yaml", text.len()));
        std::fs::write(&path, text).expect("write config");
        resolve(
            &Flags {
                config: Some(path),
                ..Flags::default()
            },
            &no_env,
        )
    }

    #[test]
    fn thread_capacity_comes_from_the_flag_then_the_file_and_is_bounded() {
        assert_eq!(
            resolve(&Flags::default(), &no_env)
                .expect("defaults")
                .thread_capacity,
            None,
            "the built-in size unless asked"
        );
        assert_eq!(
            with_file("thread_capacity: 200000\n")
                .expect("file")
                .thread_capacity,
            Some(200_000)
        );
        let flag = Flags {
            thread_capacity: Some(4),
            ..Flags::default()
        };
        assert_eq!(
            resolve(&flag, &no_env).expect("flag").thread_capacity,
            Some(4)
        );
        for bad in ["thread_capacity: 0\n", "thread_capacity: 100000000\n"] {
            let err = with_file(bad).expect_err(bad).to_string();
            assert!(
                err.contains("thread_capacity") && err.contains("out of range"),
                "{err}"
            );
        }
    }

    #[test]
    fn kubernetes_is_on_in_a_pod_and_tenant_from_namespace_only_when_asked() {
        let in_pod = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_string()),
            "NODE_NAME" => Some("node-a".to_string()),
            _ => None,
        };
        let s = resolve(&Flags::default(), &in_pod).expect("in a pod");
        let k = s.kubernetes.expect("on by default in a pod");
        assert_eq!(k.node_name, "node-a");
        assert_eq!(
            k.tenant_label, None,
            "tenant from namespaces is off by default"
        );
        assert_eq!(s.tenant, None);
        assert!(resolve(&Flags::default(), &no_env)
            .expect("outside")
            .kubernetes
            .is_none());
        // Asked for without a node name: a configuration error, not a silent no-op.
        let asked = Flags {
            kubernetes: true,
            ..Flags::default()
        };
        assert!(resolve(&asked, &no_env).is_err());
        let s = with_file(
            "kubernetes:\n  enabled: true\n  node_name: n1\n  tenant_from_namespace: true\n",
        )
        .expect("tenant on");
        assert_eq!(
            s.tenant,
            Some(TenantRule::NamespaceLabel("tenant".into())),
            "default label name"
        );
        let s = with_file("kubernetes:\n  enabled: true\n  node_name: n1\n  tenant_label: team\n")
            .expect("own label");
        assert_eq!(s.tenant, Some(TenantRule::NamespaceLabel("team".into())));
        assert!(with_file(
            "tenant:\n  value: acme\nkubernetes:\n  enabled: true\n  node_name: n1\n  tenant_label: team\n"
        )
        .is_err());
    }

    #[test]
    fn nothing_configured_means_a_summary_on_stdout_every_ten_seconds() {
        let s = resolve(&Flags::default(), &no_env).expect("defaults");
        assert!(s.export.is_none());
        assert!(s.summary);
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.agent_service_name, "gilscope");
    }

    #[test]
    fn otel_variables_configure_the_exporter() {
        let env = |k: &str| -> Option<String> {
            match k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".into()),
                "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
                "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=s%3Dcret,x-team=py".into()),
                "OTEL_EXPORTER_OTLP_TIMEOUT" => Some("2500".into()),
                "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("zstd".into()),
                "OTEL_METRIC_EXPORT_INTERVAL" => Some("1000".into()),
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE" => Some("Delta".into()),
                "OTEL_SERVICE_NAME" => Some("node-agent".into()),
                "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=prod".into()),
                _ => None,
            }
        };
        let s = resolve(&Flags::default(), &env).expect("env");
        let e = s.export.expect("exporting");
        assert_eq!(e.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(e.traces_endpoint, "http://collector:4318/v1/traces");
        assert_eq!(e.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            e.headers,
            vec![
                ("api-key".to_string(), "s=cret".to_string()),
                ("x-team".to_string(), "py".to_string())
            ]
        );
        assert_eq!(e.timeout, Duration::from_millis(2500));
        assert_eq!(e.compression, Compression::Zstd);
        assert_eq!(e.temporality, Temporality::Delta);
        assert_eq!(s.interval, Duration::from_secs(1));
        assert_eq!(s.agent_service_name, "node-agent");
        assert!(!s.summary);
    }

    #[test]
    fn flags_beat_the_environment() {
        let env = |k: &str| (k == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1000".to_string());
        let flags = Flags {
            interval: Some(Duration::from_secs(3)),
            endpoint: Some("http://localhost:4317".into()),
            ..Flags::default()
        };
        let s = resolve(&flags, &env).expect("flags");
        assert_eq!(s.interval, Duration::from_secs(3));
        let e = s.export.expect("exporting");
        assert_eq!(e.protocol, Protocol::Grpc);
        assert_eq!(e.compression, Compression::Gzip);
    }

    #[test]
    fn a_config_file_sets_rules_tenant_and_export() {
        let s = with_file(
            "interval: 2s\n\
             export:\n  endpoint: http://vm:8428/opentelemetry\n  protocol: http/protobuf\n\
             include:\n  executables: ['*/python3*']\n\
             exclude:\n  cmdline: ['pip install']\n\
             min_age: 1s\n\
             tenant:\n  value: acme\n\
             per_thread:\n  enabled: true\n  max_threads: 5\n",
        )
        .expect("valid file");
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(
            s.export.expect("export").endpoint,
            "http://vm:8428/opentelemetry/v1/metrics"
        );
        assert_eq!(s.tenant, Some(TenantRule::Fixed("acme".into())));
        assert_eq!(s.per_thread, Some(5));
        assert_eq!(s.rules.min_age, Duration::from_secs(1));
        assert_eq!(s.byte_budget, None);
        assert!(s.lean_encoding);
        let s = with_file("export:\n  encoding: standard\n").expect("standard");
        assert!(!s.lean_encoding);
        let err = with_file("export:\n  encoding: tiny\n").expect_err("tiny");
        assert!(err.to_string().contains("lean or standard"), "{err}");
    }

    #[test]
    fn the_byte_budget_comes_from_flag_environment_or_file() {
        let s = with_file("export:\n  byte_budget_per_minute: 64KiB\n").expect("file");
        assert_eq!(s.byte_budget, Some(65536));
        let env = |k: &str| (k == "GILSCOPE_BYTE_BUDGET").then(|| "2KB".to_string());
        assert_eq!(
            resolve(&Flags::default(), &env).expect("env").byte_budget,
            Some(2000)
        );
        let flags = Flags {
            byte_budget: Some("1000".into()),
            ..Flags::default()
        };
        assert_eq!(resolve(&flags, &env).expect("flag").byte_budget, Some(1000));
        let err = resolve(
            &Flags {
                byte_budget: Some("lots".into()),
                ..Flags::default()
            },
            &no_env,
        )
        .expect_err("not a number");
        assert!(err.to_string().starts_with("--byte-budget:"), "{err}");
    }

    #[test]
    fn a_misspelled_key_is_named_in_the_error() {
        let err = with_file("intervall: 2s\n").expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("intervall"), "{text}");
        assert!(text.contains("is not valid"), "{text}");
    }

    #[test]
    fn bad_values_name_their_source() {
        let err =
            with_file("export:\n  endpoint: http://x:4317\n  compression: lz4\n").expect_err("lz4");
        assert!(err.to_string().contains("export.compression"), "{err}");
        assert!(err.to_string().contains("gzip, zstd or none"), "{err}");
        let err = with_file("include:\n  cmdline: ['(unclosed']\n").expect_err("regex");
        assert!(err.to_string().contains("(unclosed"), "{err}");
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_string());
        let flags = Flags {
            endpoint: Some("http://x:4318".into()),
            ..Flags::default()
        };
        let err = resolve(&flags, &env).expect_err("json");
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
        let tls = Flags {
            endpoint: Some("https://collector:4317".into()),
            ..Flags::default()
        };
        let bad_ca =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_CERTIFICATE").then(|| "/nonexistent/ca.pem".into());
        let err = resolve(&tls, &bad_ca).expect_err("missing CA");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        let half =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_CLIENT_KEY").then(|| "/nonexistent/key.pem".into());
        let err = resolve(&tls, &half).expect_err("key without cert");
        assert!(
            err.to_string().contains("both a client certificate"),
            "{err}"
        );
        let https = resolve(&tls, &no_env).expect("https with the built-in roots");
        assert_eq!(
            https.export.and_then(|e| e.tls),
            Some(TlsSettings::default())
        );
        let err = resolve(&flags, &env).expect_err("json");
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL:"),
            "{err}"
        );
    }

    #[test]
    fn the_listen_address_comes_from_flag_environment_or_file() {
        assert!(resolve(&Flags::default(), &no_env)
            .expect("defaults")
            .listen
            .is_none());
        let env = |k: &str| (k == "GILSCOPE_LISTEN").then(|| "127.0.0.1:9464".to_string());
        let s = resolve(&Flags::default(), &env).expect("env");
        let l = s.listen.expect("listening");
        assert_eq!(l.addr, "127.0.0.1:9464".parse().expect("addr"));
        assert_eq!(l.source, "GILSCOPE_LISTEN");
        // Serving /metrics is a way to show the figures: no summary on stdout then.
        assert!(!s.summary);
        let flags = Flags {
            listen: Some("0.0.0.0:9000".into()),
            ..Flags::default()
        };
        let l = resolve(&flags, &env)
            .expect("flag")
            .listen
            .expect("listening");
        assert_eq!((l.addr.port(), l.source.as_str()), (9000, "--listen"));
        let s = with_file("listen: '[::]:9464'\n").expect("file");
        assert_eq!(s.listen.expect("listening").addr.port(), 9464);
        for bad in ["9464", "0.0.0.0", "0.0.0.0:http", "0.0.0.0:70000"] {
            let flags = Flags {
                listen: Some(bad.into()),
                ..Flags::default()
            };
            let err = resolve(&flags, &no_env).expect_err(bad);
            assert!(err.to_string().starts_with("--listen: "), "{err}");
            assert!(err.to_string().contains("host:port"), "{err}");
        }
    }

    #[test]
    fn spans_are_on_when_exporting_and_layer_flags_over_the_file() {
        assert_eq!(
            resolve(&Flags::default(), &no_env).expect("defaults").spans,
            None
        );
        let s = with_file("export:\n  endpoint: http://x:4317\n").expect("file");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: DEFAULT_SPAN_THRESHOLD,
                rate_per_second: DEFAULT_SPAN_RATE
            })
        );
        let text =
            "export:\n  endpoint: http://x:4317\nspans:\n  threshold: 20ms\n  rate_per_second: 2\n";
        let s = with_file(text).expect("file");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: Duration::from_millis(20),
                rate_per_second: 2.0
            })
        );
        let flags = Flags {
            endpoint: Some("http://x:4317".into()),
            span_threshold: Some(Duration::from_millis(100)),
            span_rate: Some(0.5),
            ..Flags::default()
        };
        let s = resolve(&flags, &no_env).expect("flags");
        assert_eq!(
            s.spans,
            Some(SpanSettings {
                threshold: Duration::from_millis(100),
                rate_per_second: 0.5
            })
        );
        let off = |k: &str| (k == "OTEL_TRACES_EXPORTER").then(|| "none".to_string());
        assert_eq!(resolve(&flags, &off).expect("env").spans, None);
        let no = Flags {
            no_spans: true,
            ..flags.clone()
        };
        assert_eq!(resolve(&no, &no_env).expect("flag").spans, None);
        let s = with_file("export:\n  endpoint: http://x:4317\nspans:\n  enabled: false\n")
            .expect("file");
        assert_eq!(s.spans, None);
    }

    #[test]
    fn bad_span_settings_name_their_source() {
        let err = with_file("spans:\n  threshold: 100us\n").expect_err("unit");
        assert!(err.to_string().contains("spans.threshold"), "{err}");
        let err = with_file("spans:\n  threshold: 0.5ms\n").expect_err("too short");
        assert!(err.to_string().contains("below 1ms"), "{err}");
        let err = with_file("spans:\n  rate_per_second: 0\n").expect_err("zero rate");
        assert!(err.to_string().contains("spans.rate_per_second"), "{err}");
        assert!(err.to_string().contains("enabled: false"), "{err}");
        let err = with_file("spans:\n  rate: 3\n").expect_err("unknown key");
        assert!(err.to_string().contains("rate"), "{err}");
    }

    #[test]
    fn max_delay_is_zero_unless_asked_for() {
        let flags = Flags {
            endpoint: Some("http://x:4317".into()),
            ..Flags::default()
        };
        assert_eq!(
            resolve(&flags, &no_env).expect("default").max_delay,
            Duration::ZERO
        );
        let s = with_file("export:\n  endpoint: http://x:4317\n  max_delay: 1m\n").expect("file");
        assert_eq!(s.max_delay, Duration::from_secs(60));
        let f = Flags {
            max_delay: Some(Duration::from_secs(5)),
            ..flags
        };
        assert_eq!(
            resolve(&f, &no_env).expect("flag").max_delay,
            Duration::from_secs(5)
        );
        let err = with_file("export:\n  max_delay: soon\n").expect_err("bad");
        assert!(err.to_string().contains("export.max_delay"), "{err}");
    }

    #[test]
    fn the_spool_is_off_unless_a_directory_is_given() {
        let flags = Flags {
            endpoint: Some("http://x:4317".into()),
            ..Flags::default()
        };
        let s = resolve(&flags, &no_env).expect("no spool");
        assert_eq!(s.export.and_then(|e| e.spool), None);
        let env = |k: &str| (k == "GILSCOPE_SPOOL_DIR").then(|| "/var/lib/gilscope".to_string());
        let s = resolve(&flags, &env).expect("env spool");
        assert_eq!(
            s.export.and_then(|e| e.spool),
            Some(SpoolSettings {
                dir: "/var/lib/gilscope".into(),
                max_bytes: DEFAULT_MAX_BYTES
            })
        );
        let s = with_file(
            "export:\n  endpoint: http://x:4317\n  spool:\n    dir: /tmp/s\n    max_bytes: 64MiB\n",
        )
        .expect("file spool");
        assert_eq!(
            s.export.and_then(|e| e.spool).map(|s| s.max_bytes),
            Some(64 * 1024 * 1024)
        );
        let err = with_file(
            "export:\n  endpoint: http://x:4317\n  spool:\n    dir: /tmp/s\n    max_bytes: lots\n",
        )
        .expect_err("bad size");
        assert!(err.to_string().contains("export.spool.max_bytes"), "{err}");
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert!(parse_bytes("64k").is_err(), "KB or KiB?");
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
    }
}
