//! Every setting of `gilscope run`, each defined once: flag, environment
//! variables (the `OTEL_*` ones as the OpenTelemetry specification names them),
//! key in the YAML file, default, help text and parser. [`ALL`] is the order of
//! `--help` and of the README table. Each setting's `help` is its documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::settings::def::{Default::*, Definition, List, Setting};
use crate::cli::settings::parse::{self, parse_bytes, parse_duration};
use crate::otel::export::{Compression, Protocol};
use crate::otel::Temporality;

/// Every setting, in the order `--help` and the README show them.
pub static ALL: &[&dyn Definition] = &[
    &CONFIG,
    &INTERVAL,
    &POLL,
    &SAMPLE_HZ,
    &EVENT_LOOPS,
    &THREAD_CAPACITY,
    &LISTEN,
    &SUMMARY,
    &DURATION,
    &MIN_AGE,
    &INCLUDE_EXE,
    &EXCLUDE_EXE,
    &INCLUDE_CMDLINE,
    &EXCLUDE_CMDLINE,
    &INCLUDE_CGROUP,
    &EXCLUDE_CGROUP,
    &PER_THREAD,
    &MAX_THREADS,
    &TENANT,
    &TENANT_FROM,
    &KUBERNETES,
    &NODE_NAME,
    &TENANT_FROM_NAMESPACE,
    &TENANT_LABEL,
    &ENDPOINT,
    &TRACES_ENDPOINT,
    &PROTOCOL,
    &HEADERS,
    &TIMEOUT,
    &COMPRESSION,
    &TEMPORALITY,
    &ENCODING,
    &BATCH_SIZE,
    &QUEUE_SIZE,
    &MAX_DELAY,
    &BYTE_BUDGET,
    &CERTIFICATE,
    &CLIENT_CERTIFICATE,
    &CLIENT_KEY,
    &SPOOL_DIR,
    &SPOOL_MAX_BYTES,
    &SPANS,
    &TRACES_EXPORTER,
    &SPAN_THRESHOLD,
    &SPAN_RATE,
    &SERVICE_NAME,
    &RESOURCE_ATTRIBUTES,
];

// --- The daemon ---

pub static CONFIG: Setting<PathBuf> = Setting::new("config", parse::path)
    .flag("config", "PATH")
    .short('c')
    .default(Unset("none"))
    .help("YAML config file (its keys: README, `gilscope run` settings).");

pub static INTERVAL: Setting<Duration> = Setting::new("interval", parse_duration)
    .flag("interval", "DURATION")
    .env(&["OTEL_METRIC_EXPORT_INTERVAL"])
    .env_format(parse::millis)
    .key("interval")
    .default(Value("10s"))
    .help("Export interval (the variable is in milliseconds).");

pub static POLL: Setting<Duration> = Setting::new("poll", parse_duration)
    .flag("poll", "DURATION")
    .key("poll")
    .default(Value("250ms"))
    .help("How often /proc is listed for new processes.");

pub static SAMPLE_HZ: Setting<u32> = Setting::new("sample_hz", parse::sample_hz)
    .flag("sample-hz", "HZ")
    .key("sample_hz")
    .default(Value("10"))
    .help("GIL state samples per second per process (1-1000).");

pub static EVENT_LOOPS: Setting<bool> = Setting::new("event_loops", parse::boolean)
    .switch("event-loops", "true")
    .key("event_loops")
    .default(Unset("false"))
    .help(
        "Measure event-loop lag (event_loop_blocked, the loop-lag series and spans): \
         uprobes on every watched process's poll functions, 8-14 µs per poll call of \
         a busy loop (BENCHMARKS.md).",
    );

pub static THREAD_CAPACITY: Setting<u32> = Setting::new("thread_capacity", parse::thread_capacity)
    .flag("thread-capacity", "THREADS")
    .key("thread_capacity")
    .default(Unset("65536"))
    .help(
        "Threads of all watched processes the kernel keeps wait counters for; \
         beyond it waits are counted in gilscope.bpf.entries.dropped.",
    );

pub static LISTEN: Setting<SocketAddr> = Setting::new("listen", parse::listen)
    .flag("listen", "HOST:PORT")
    .env(&["GILSCOPE_LISTEN"])
    .key("listen")
    .default(Unset("off"))
    .help("Serve /metrics (Prometheus), /healthz and /readyz here, e.g. 0.0.0.0:9464.");

pub static SUMMARY: Setting<bool> = Setting::new("summary", parse::boolean)
    .switch("summary", "true")
    .key("summary")
    .default(Unset("only when neither exporting nor listening"))
    .help("Print the per-interval summary on stdout even when exporting.");

pub static DURATION: Setting<Duration> = Setting::new("duration", parse_duration)
    .flag("duration", "DURATION")
    .default(Unset("until SIGTERM"))
    .help("Stop after this long.");

// --- Which processes ---

pub static MIN_AGE: Setting<Duration> = Setting::new("min_age", parse_duration)
    .flag("min-age", "DURATION")
    .key("min_age")
    .default(Unset("0s"))
    .help("Ignore processes younger than this.");

pub static INCLUDE_EXE: List<String> = List::new("include_exe", parse::text)
    .flag("include-exe", "GLOB")
    .key("include.executables")
    .default(Unset("every executable"))
    .help("Only watch executables matching one of these globs.");

pub static EXCLUDE_EXE: List<String> = List::new("exclude_exe", parse::text)
    .flag("exclude-exe", "GLOB")
    .key("exclude.executables")
    .default(Unset("none"))
    .help("Never watch executables matching one of these globs.");

pub static INCLUDE_CMDLINE: List<String> = List::new("include_cmdline", parse::text)
    .flag("include-cmdline", "REGEX")
    .key("include.cmdline")
    .default(Unset("every command line"))
    .help("Only watch command lines (arguments joined by spaces) matching one of these regexes.");

pub static EXCLUDE_CMDLINE: List<String> = List::new("exclude_cmdline", parse::text)
    .flag("exclude-cmdline", "REGEX")
    .key("exclude.cmdline")
    .default(Unset("none"))
    .help("Never watch command lines matching one of these regexes.");

pub static INCLUDE_CGROUP: List<String> = List::new("include_cgroup", parse::text)
    .flag("include-cgroup", "REGEX")
    .key("include.cgroup")
    .default(Unset("every cgroup"))
    .help("Only watch processes whose /proc/PID/cgroup matches one of these regexes.");

pub static EXCLUDE_CGROUP: List<String> = List::new("exclude_cgroup", parse::text)
    .flag("exclude-cgroup", "REGEX")
    .key("exclude.cgroup")
    .default(Unset("none"))
    .help("Never watch processes whose /proc/PID/cgroup matches one of these regexes.");

// --- What each process carries ---

pub static PER_THREAD: Setting<bool> = Setting::new("per_thread", parse::boolean)
    .switch("per-thread", "true")
    .key("per_thread.enabled")
    .default(Value("false"))
    .help("Also export per-thread series (thread.id, thread.name).");

pub static MAX_THREADS: Setting<usize> = Setting::new("max_threads", parse::count)
    .flag("max-threads", "N")
    .key("per_thread.max_threads")
    .default(Value("20"))
    .help("Per-thread series kept per process (the busiest threads).");

pub static TENANT: Setting<String> = Setting::new("tenant", parse::text)
    .flag("tenant", "VALUE")
    .key("tenant.value")
    .default(Unset("none"))
    .help("tenant.id for every process.");

pub static TENANT_FROM: Setting<String> = Setting::new("tenant_from", parse::text)
    .flag("tenant-from", "KEY")
    .key("tenant.resource_attribute")
    .default(Unset("none"))
    .help("tenant.id from this key of each target's OTEL_RESOURCE_ATTRIBUTES.");

pub static KUBERNETES: Setting<bool> = Setting::new("kubernetes", parse::boolean)
    .switch("kubernetes", "true")
    .key("kubernetes.enabled")
    .default(Unset("on in a pod (KUBERNETES_SERVICE_HOST set)"))
    .help(
        "Add pod metadata (k8s.*) from the Kubernetes API; outside a pod through the kubeconfig.",
    );

pub static NODE_NAME: Setting<String> = Setting::new("node_name", parse::text)
    .key("kubernetes.node_name")
    .default(Env("NODE_NAME"))
    .help("This node's name (downward API fieldRef spec.nodeName); needed for pod metadata.");

pub static TENANT_FROM_NAMESPACE: Setting<bool> =
    Setting::new("tenant_from_namespace", parse::boolean)
        .key("kubernetes.tenant_from_namespace")
        .default(Unset("off; on when tenant_label is set"))
        .help("Take tenant.id from a label of the pod's namespace.");

pub static TENANT_LABEL: Setting<String> = Setting::new("tenant_label", parse::text)
    .key("kubernetes.tenant_label")
    .default(Value("tenant"))
    .help("The namespace label whose value becomes tenant.id; naming one switches that on.");

// --- Export ---

pub static ENDPOINT: Setting<String> = Setting::new("endpoint", parse::endpoint)
    .flag("endpoint", "URL")
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ])
    .key("export.endpoint")
    .default(Unset("none: a summary on stdout"))
    .help(
        "OTLP endpoint (gRPC: http://host:4317; HTTP: a base URL, /v1/metrics is appended, \
         except to the METRICS_ variable, which is the full URL).",
    );

pub static TRACES_ENDPOINT: Setting<String> = Setting::new("traces_endpoint", parse::text)
    .env(&["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
    .default(Unset("the endpoint (HTTP: /v1/traces)"))
    .help("Full URL the contention spans are sent to.");

pub static PROTOCOL: Setting<Protocol> = Setting::new("protocol", parse::protocol)
    .flag("protocol", "PROTOCOL")
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .key("export.protocol")
    .default(Value("grpc"))
    .help("grpc or http/protobuf.");

pub static HEADERS: List<(String, String)> = List::new("headers", parse::header)
    .pairs()
    .flag("header", "KEY=VALUE")
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ])
    .split_env(crate::otel::resource::parse_key_values)
    .key("export.headers")
    .default(Unset("none"))
    .help("Extra request headers (the variable: k=v,k2=v2, percent-encoded).");

pub static TIMEOUT: Setting<Duration> = Setting::new("timeout", parse_duration)
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ])
    .env_format(parse::millis)
    .key("export.timeout")
    .default(Value("10s"))
    .help("How long one export request may take (the variables are in milliseconds).");

pub static COMPRESSION: Setting<Compression> = Setting::new("compression", parse::compression)
    .flag("compression", "COMPRESSION")
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ])
    .key("export.compression")
    .default(Value("gzip"))
    .help("gzip, zstd or none.");

pub static TEMPORALITY: Setting<Temporality> = Setting::new("temporality", parse::temporality)
    .flag("temporality", "TEMPORALITY")
    .env(&["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"])
    .key("export.temporality")
    .default(Value("cumulative"))
    .help("cumulative or delta (only what changed in the interval).");

pub static ENCODING: Setting<bool> = Setting::new("encoding", parse::lean)
    .flag("encoding", "ENCODING")
    .key("export.encoding")
    .default(Value("lean"))
    .help(
        "Request shape: lean (one timestamp per interval, descriptions now and then, \
         counters to ~1 µs, gauges to 12 bits) or standard (what an SDK sends).",
    );

pub static BATCH_SIZE: Setting<usize> = Setting::new("batch_size", parse::at_least_one)
    .key("export.batch_size")
    .default(Value("512"))
    .help("Data points (or spans) per request.");

pub static QUEUE_SIZE: Setting<usize> = Setting::new("queue_size", parse::at_least_one)
    .key("export.queue_size")
    .default(Value("64"))
    .help("Requests waiting to be sent before new ones are dropped (or spooled).");

pub static MAX_DELAY: Setting<Duration> = Setting::new("max_delay", parse_duration)
    .flag("max-delay", "DURATION")
    .key("export.max_delay")
    .default(Unset("0s: send every interval"))
    .help(
        "Hold finished intervals up to this long unless a batch fills first: \
         fewer, better-compressed requests for thin links.",
    );

pub static BYTE_BUDGET: Setting<u64> = Setting::new("byte_budget", parse_bytes)
    .flag("byte-budget", "BYTES")
    .env(&["GILSCOPE_BYTE_BUDGET"])
    .key("export.byte_budget_per_minute")
    .default(Unset("no limit"))
    .help(
        "Export bytes allowed per minute (65536, 64KiB, 1MB): over it, per-thread series \
         go first, then the interval doubles (up to 8x).",
    );

pub static CERTIFICATE: Setting<PathBuf> = Setting::new("certificate", parse::path)
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ])
    .key("export.certificate")
    .default(Unset("Mozilla's roots"))
    .help("CA bundle (PEM) trusted for https:// endpoints instead of the built-in roots.");

pub static CLIENT_CERTIFICATE: Setting<PathBuf> = Setting::new("client_certificate", parse::path)
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    ])
    .key("export.client_certificate")
    .default(Unset("none"))
    .help("Client certificate (PEM) for mutual TLS, with the client key.");

pub static CLIENT_KEY: Setting<PathBuf> = Setting::new("client_key", parse::path)
    .env(&[
        "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    ])
    .key("export.client_key")
    .default(Unset("none"))
    .help("Client private key (PEM) for mutual TLS, with the client certificate.");

pub static SPOOL_DIR: Setting<PathBuf> = Setting::new("spool_dir", parse::path)
    .flag("spool-dir", "DIR")
    .env(&["GILSCOPE_SPOOL_DIR"])
    .key("export.spool.dir")
    .default(Unset("off"))
    .help(
        "Keep requests the collector cannot take in time in this directory and send them, \
         oldest first, when it is back.",
    );

pub static SPOOL_MAX_BYTES: Setting<u64> = Setting::new("spool_max_bytes", parse_bytes)
    .flag("spool-max-bytes", "BYTES")
    .key("export.spool.max_bytes")
    .default(Value("256MiB"))
    .help("Disk the spool may use (268435456, 256MiB, 1GiB); the oldest requests go first.");

// --- Contention spans ---

pub static SPANS: Setting<bool> = Setting::new("spans", parse::boolean)
    .switch("no-spans", "false")
    .key("spans.enabled")
    .default(Value("true"))
    .help("Export GIL contention spans (when exporting); --no-spans turns them off.");

pub static TRACES_EXPORTER: Setting<String> = Setting::new("traces_exporter", parse::text)
    .env(&["OTEL_TRACES_EXPORTER"])
    .default(Value("otlp"))
    .help("none: no contention spans.");

pub static SPAN_THRESHOLD: Setting<Duration> =
    Setting::new("span_threshold", parse::span_threshold)
        .flag("span-threshold", "DURATION")
        .key("spans.threshold")
        .default(Value("50ms"))
        .help("A GIL wait at least this long (1ms or more) is a contention span.");

pub static SPAN_RATE: Setting<f64> = Setting::new("span_rate", parse::span_rate)
    .flag("span-rate", "PER_SECOND")
    .key("spans.rate_per_second")
    .default(Value("10"))
    .help("Contention spans per second per process, also the burst.");

// --- The agent's own resource ---

pub static SERVICE_NAME: Setting<String> = Setting::new("service_name", parse::text)
    .env(&["OTEL_SERVICE_NAME"])
    .default(Unset(
        "service.name of OTEL_RESOURCE_ATTRIBUTES, else gilscope",
    ))
    .help("service.name of the agent's own resource.");

pub static RESOURCE_ATTRIBUTES: Setting<Vec<(String, String)>> =
    Setting::new("resource_attributes", parse::key_values)
        .env(&["OTEL_RESOURCE_ATTRIBUTES"])
        .default(Unset("none"))
        .help("Attributes of the agent's own resource (k=v,k2=v2, percent-encoded).");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::settings::def::{Def, Default, Given, Origin, Source};

    fn defs() -> impl Iterator<Item = &'static Def> {
        ALL.iter().map(|s| s.def())
    }

    /// No two settings share a name, a flag, a variable or a file key.
    #[test]
    fn every_name_flag_variable_and_key_belongs_to_one_setting() {
        let mut seen = std::collections::HashSet::new();
        for def in defs() {
            let flag = def.flag.map(|f| format!("--{}", f.long));
            let keys = def.env.iter().map(|v| v.to_string());
            for name in [
                Some(format!("name {}", def.name)),
                flag,
                def.key.map(String::from),
            ]
            .into_iter()
            .flatten()
            .chain(keys)
            {
                assert!(seen.insert(name.clone()), "{name} is defined twice");
            }
            assert!(!def.help.is_empty(), "{} has no help", def.name);
            assert!(
                def.flag.is_some() || !def.env.is_empty() || def.key.is_some(),
                "{} cannot be given",
                def.name
            );
        }
    }

    fn default_of<T>(s: &Setting<T>) -> T {
        let Default::Value(text) = s.def.default else {
            panic!("{} has no default value", s.def.name);
        };
        let source = Source {
            origin: Origin::Default,
            name: s.def.name.into(),
        };
        let given = Given {
            text: text.into(),
            source,
        };
        s.parse(&given).expect("the default parses")
    }

    /// Defaults that other layers also know stay the same number.
    #[test]
    fn defaults_agree_with_the_layers_that_use_them() {
        use crate::cli::settings::DEFAULT_BATCH_POINTS;
        assert_eq!(default_of(&BATCH_SIZE), DEFAULT_BATCH_POINTS);
        assert_eq!(
            default_of(&SPOOL_MAX_BYTES),
            crate::otel::export::spool::DEFAULT_MAX_BYTES
        );
        assert_eq!(
            default_of(&TENANT_LABEL),
            crate::otel::kube::DEFAULT_TENANT_LABEL
        );
        assert_eq!(
            THREAD_CAPACITY.def.default_text(),
            crate::probes::wait::BUILT_IN_THREADS.to_string()
        );
    }
}
