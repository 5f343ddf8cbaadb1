//! The `gilscope` command: parses arguments and hands over to the library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gilscope::cli::check::{self, CheckOptions, Target};
use gilscope::cli::render;
use gilscope::cli::settings::{parse_duration, resolve, Flags};
use gilscope::watch::launch::ChildStdout;

/// Shows whether Python services really run in parallel or are serialized by the GIL.
#[derive(Parser, Debug)]
#[command(name = "gilscope", version, about)]
struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure one CPython process ("is my concurrency real?") and print a report.
    Check(CheckArgs),
    /// Live view of every CPython process on the host (or --pid), refreshed each interval.
    Top(TopArgs),
    /// Watch every CPython process on this node and export OpenTelemetry metrics.
    #[command(after_help = RUN_AFTER_HELP)]
    Run(Flags),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Keys: ↑↓/j/k select, Enter threads of the selected process, Esc back, \
s cycle the sort order (g util, w queue, p parallelism, c CPU, n pid), q quit.\n\
Examples:\n  gilscope top\n  gilscope top --pid 4242 --pid 4243\n  gilscope top --batch 5 > gil.log"
)]
struct TopArgs {
    /// Watch only this process (repeatable); default: every CPython process on the host.
    #[arg(long)]
    pid: Vec<u32>,
    /// Refresh interval: 1s, 500ms, 2s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// GIL state samples per second per process.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=1000))]
    sample_hz: u32,
    /// Print this many plain-text frames to stdout instead of the interactive view.
    #[arg(long, value_name = "FRAMES")]
    batch: Option<u64>,
}

/// Examples and exit codes under `gilscope run --help`.
const RUN_AFTER_HELP: &str = "Examples:
  gilscope run                                     # summary on stdout every 10 s
  gilscope run --endpoint http://localhost:4317    # OTLP/gRPC, gzip
  OTEL_EXPORTER_OTLP_ENDPOINT=http://vm:8428/opentelemetry OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf gilscope run
  gilscope run --config /etc/gilscope.yaml

Flags beat environment variables, which beat the config file, which beats the defaults. \
Exit codes: 0 stopped by a signal or --duration, 2 bad configuration or missing privilege, \
1 internal failure.";

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  gilscope check --pid 4242\n  gilscope check --json -- python3 app.py\n\n\
Exit codes: 0 measured, 2 user error (no such pid, not CPython, missing privilege), 1 internal failure."
)]
struct CheckArgs {
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "gilscope=warn",
        1 => "gilscope=info",
        _ => "gilscope=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GILSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.pid, args.command.is_empty()) {
        (Some(pid), true) => Target::Pid(pid),
        (None, false) => Target::Command(args.command.clone()),
        _ => {
            eprintln!("gilscope check: give either --pid PID or a command after --");
            return Ok(ExitCode::from(2));
        }
    };
    let duration = match (&target, args.duration) {
        (_, Some(d)) => Some(d),
        (Target::Pid(_), None) => Some(Duration::from_secs(10)),
        (Target::Command(_), None) => None,
    };
    let opts = CheckOptions {
        target,
        duration,
        precise: args.precise,
        sample_hz: args.sample_hz,
        progress: std::io::stderr().is_terminal(),
        child_stdout: if args.json && args.output.is_none() {
            ChildStdout::ToStderr
        } else {
            ChildStdout::Inherit
        },
    };
    let report = match check::run(&opts) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("gilscope: {e}");
            return Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }));
        }
    };
    if report.ended == gilscope::core::report::Ending::ProcessExited {
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

fn run_top(args: TopArgs) -> anyhow::Result<ExitCode> {
    for &pid in &args.pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("gilscope: {}", gilscope::Error::NoSuchProcess { pid });
            return Ok(ExitCode::from(2));
        }
    }
    let opts = gilscope::cli::top::TopOptions {
        pids: (!args.pid.is_empty()).then(|| args.pid.clone()),
        interval: args.interval,
        sample_hz: args.sample_hz,
        batch: args.batch,
    };
    match gilscope::cli::top::run(&opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("gilscope: {e}");
            Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }))
        }
    }
}

fn run_daemon(flags: &Flags) -> anyhow::Result<ExitCode> {
    let settings = match resolve(flags, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gilscope run: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match gilscope::cli::run::run(settings) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("gilscope run: {e}");
            Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Check(args) => run_check(args),
        Command::Top(args) => run_top(args),
        Command::Run(flags) => run_daemon(&flags),
    };
    result.unwrap_or_else(|e| {
        eprintln!("gilscope: {e:#}");
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
