//! `gilscope check`: its arguments (clap derive: a handful of flags with no
//! environment variables or file to layer) and writing the report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::cli::check::{self, CheckOptions, Target};
use crate::cli::settings::parse_duration;
use crate::cli::{flamegraph, pprof, render};
use crate::core::report::{Ending, Report};
use crate::watch::launch::ChildStdout;

/// `gilscope check`'s arguments.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  gilscope check --pid 4242\n  gilscope check --json -- python3 app.py\n\n\
Exit codes: 0 measured, 2 user error (no such pid, not CPython, missing privilege), 1 internal failure."
)]
pub struct CheckArgs {
    /// Measure this running process.
    #[arg(long, conflicts_with = "command")]
    pid: Option<u32>,
    /// How long to measure: 10s, 500ms, 2m (default 10s for --pid; until exit for a command).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Print one JSON document (schema gilscope.check/v1) instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the report to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Also write the GIL contention profile as an SVG flame graph: the
    /// holders' stacks weighted by the wait spent behind them.
    #[arg(long, value_name = "FILE.svg")]
    flamegraph: Option<PathBuf>,
    /// Also write the GIL contention profile as gzipped pprof (go tool pprof,
    /// speedscope, Pyroscope): sample type gil_wait, in nanoseconds.
    #[arg(long, value_name = "FILE.pb.gz")]
    pprof: Option<PathBuf>,
    /// Also probe take_gil/drop_gil with uprobes: exact, but slows GIL-churning programs.
    #[arg(long)]
    precise: bool,
    /// GIL state samples per second (hold share, utilization).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    sample_hz: u32,
    /// Do not measure event-loop lag (its uprobes on the poll functions cost a
    /// busy loop 8-14 µs per poll call; see BENCHMARKS.md).
    #[arg(long)]
    no_event_loops: bool,
    /// The command to start and measure, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl CheckArgs {
    /// What to measure and how, or `None` when neither or both of a pid and a command are given.
    fn options(&self) -> Option<CheckOptions> {
        let target = match (self.pid, self.command.is_empty()) {
            (Some(pid), true) => Target::Pid(pid),
            (None, false) => Target::Command(self.command.clone()),
            _ => return None,
        };
        let duration = match (&target, self.duration) {
            (_, Some(d)) => Some(d),
            (Target::Pid(_), None) => Some(Duration::from_secs(10)),
            (Target::Command(_), None) => None,
        };
        Some(CheckOptions {
            target,
            duration,
            precise: self.precise,
            sample_hz: self.sample_hz,
            event_loops: !self.no_event_loops,
            progress: std::io::stderr().is_terminal(),
            child_stdout: if self.json && self.output.is_none() {
                ChildStdout::ToStderr
            } else {
                ChildStdout::Inherit
            },
        })
    }
}

/// Measures and writes the report (table or JSON, stdout or `--output`).
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(opts) = args.options() else {
        eprintln!("gilscope check: give either --pid PID or a command after --");
        return Ok(ExitCode::from(2));
    };
    let report = match check::run(&opts) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("gilscope: {e}");
            return Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }));
        }
    };
    if report.ended == Ending::ProcessExited {
        eprintln!(
            "gilscope: process {} exited after {:.1} s; the report covers that time",
            report.pid, report.duration_s
        );
    }
    let text = if args.json {
        render::json(&report) + "\n"
    } else {
        render::text(&report)
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    write_pictures(args, &report)
}

/// Writes `--flamegraph` and `--pprof`, if asked; a profile that was not
/// captured (the interpreter's frame layout untrusted) fails with a reason.
fn write_pictures(args: &CheckArgs, report: &Report) -> anyhow::Result<ExitCode> {
    if args.flamegraph.is_none() && args.pprof.is_none() {
        return Ok(ExitCode::SUCCESS);
    }
    let Some(profile) = &report.contention_profile else {
        eprintln!(
            "gilscope: no contention profile to draw: the GIL holders' code of process {} \
             could not be captured (see the log with -v)",
            report.pid
        );
        return Ok(ExitCode::from(1));
    };
    let started = Instant::now();
    let write = |path: &PathBuf, bytes: std::io::Result<Vec<u8>>| {
        bytes
            .and_then(|b| std::fs::write(path, b))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &args.flamegraph {
        let subtitle = format!(
            "pid {}, CPython {}, {:.1} s, {:.2} s of GIL wait",
            report.pid, report.interpreter.version, report.duration_s, profile.wait_s
        );
        write(path, flamegraph::svg(profile, &subtitle))?;
    }
    if let Some(path) = &args.pprof {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        write(
            path,
            pprof::gzipped(&pprof::profile(profile, report.duration_s, now_ns)),
        )?;
    }
    tracing::info!(
        "contention profile pictures written in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
