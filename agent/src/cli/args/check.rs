//! `gilscope check`: its arguments (clap derive: a handful of flags with no
//! environment variables or file to layer) and writing the report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::cli::check::{self, CheckOptions, Target};
use crate::cli::render;
use crate::cli::settings::parse_duration;
use crate::core::report::Ending;
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
    /// Also probe take_gil/drop_gil with uprobes: exact, but slows GIL-churning programs.
    #[arg(long)]
    precise: bool,
    /// GIL state samples per second (hold share, utilization).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u32).range(10..=10_000))]
    sample_hz: u32,
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
    Ok(ExitCode::SUCCESS)
}
