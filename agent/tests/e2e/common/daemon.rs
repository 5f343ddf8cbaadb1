//! Driving `gilscope run` from a test, and reading what it logged: the flags
//! and environment every daemon test starts from, and the numbers the daemon
//! writes at shutdown (intervals exported, export totals).

use std::path::PathBuf;
use std::process::Command;

use super::gilscope;
use super::receivers::scratch;

/// A tag unique to this test run (pid and clock), after `prefix`: a workload's
/// command line carries it so that a daemon watches only that workload on a
/// shared machine; service names and scratch directories are made from it too.
pub fn unique_tag(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:x}", std::process::id())
}

/// `gilscope run`, free of the caller's OTLP environment (endpoint, protocol,
/// timeout, TLS files, spool), so that only what a test adds decides where and
/// how it exports.
pub fn daemon() -> Command {
    let mut cmd = gilscope();
    cmd.arg("run");
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        "GILSCOPE_SPOOL_DIR",
    ] {
        cmd.env_remove(k);
    }
    cmd
}

/// The flags that export OTLP/HTTP straight into VictoriaMetrics on `port`.
pub fn into_victoria_metrics(port: u16) -> [String; 4] {
    [
        "--endpoint".into(),
        format!("http://127.0.0.1:{port}/opentelemetry"),
        "--protocol".into(),
        "http/protobuf".into(),
    ]
}

/// The standard OpenTelemetry environment that points the exporter at OTLP/gRPC
/// on `port` (a test of the environment path, where flags would hide it).
pub fn otlp_grpc_env(port: u16) -> [(&'static str, String); 2] {
    [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
    ]
}

/// A `gilscope.yaml` holding `text`, in the scratch directory of `tag`.
pub fn config_file(tag: &str, text: &str) -> PathBuf {
    let path = scratch(tag).join("gilscope.yaml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Runs the daemon `cmd` for `seconds` at a 1 s interval; (exit code, stderr).
pub fn run_for(cmd: &mut Command, seconds: u32) -> (Option<i32>, String) {
    let out = cmd
        .args(["--interval", "1s", "--duration", &format!("{seconds}s")])
        .output()
        .expect("run gilscope");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`run_for`], for a daemon that must exit 0; its stderr.
pub fn run_ok_for(cmd: &mut Command, seconds: u32) -> String {
    let (code, stderr) = run_for(cmd, seconds);
    assert_eq!(code, Some(0), "gilscope run failed: {stderr}");
    stderr
}

/// What a failed measurement of the daemon needs to be read: the first dozen
/// of `failures` (how many more there were), then the daemon's `log`; nothing
/// when nothing failed.
pub fn with_daemon_log(mut failures: Vec<String>, log: &str) -> Vec<String> {
    if failures.is_empty() {
        return failures;
    }
    let more = failures.len().saturating_sub(12);
    failures.truncate(12);
    if more > 0 {
        failures.push(format!("... and {more} more"));
    }
    failures.push(format!("gilscope stderr:\n{log}"));
    failures
}

/// A number that follows `before` in the last log line holding it
/// (`"... 12 intervals exported"`).
pub fn number_before(log: &str, before: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(before))?;
    let head = &line[..line.find(before)?];
    head.split_whitespace().last()?.parse().ok()
}

/// The intervals the daemon handed to the exporter, as it logs at shutdown (`-v`).
pub fn intervals_exported(log: &str) -> Option<u64> {
    number_before(log, "intervals exported")
}

/// The export totals the daemon logs at shutdown (at info level, so `-v`,
/// unless something was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportTotals {
    pub points_sent: u64,
    pub points_dropped: u64,
    pub requests_sent: u64,
    pub requests_dropped: u64,
    pub spans_sent: u64,
    pub spans_dropped: u64,
    /// Requests left in the spool directory for the next start.
    pub spooled: u64,
}

/// The last `export totals:` line of `log`: `N data points sent, N dropped;
/// N requests sent, N dropped; N spans sent, N dropped; N requests left in the spool`.
pub fn export_totals(log: &str) -> Option<ExportTotals> {
    let line = log.lines().rev().find(|l| l.contains("export totals:"))?;
    let after = &line[line.find("export totals:")? + "export totals:".len()..];
    let numbers: Vec<u64> = after
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    match numbers[..] {
        [points_sent, points_dropped, requests_sent, requests_dropped, spans_sent, spans_dropped, spooled] => {
            Some(ExportTotals {
                points_sent,
                points_dropped,
                requests_sent,
                requests_dropped,
                spans_sent,
                spans_dropped,
                spooled,
            })
        }
        _ => None,
    }
}
