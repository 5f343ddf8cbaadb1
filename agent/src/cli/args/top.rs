//! `gilscope top`: its arguments (clap derive: four flags with no environment
//! variables or file to layer) and starting the live view.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::cli::settings::parse_duration;
use crate::cli::top::{self, TopOptions};

/// `gilscope top`'s arguments.
#[derive(Args, Debug)]
#[command(
    after_help = "Keys: ↑↓/j/k select, Enter threads of the selected process, Esc back, \
s cycle the sort order (g util, w queue, p parallelism, c CPU, n pid), q quit.\n\
Examples:\n  gilscope top\n  gilscope top --pid 4242 --pid 4243\n  gilscope top --batch 5 > gil.log"
)]
pub struct TopArgs {
    /// Watch only this process (repeatable); default: every CPython process on the host.
    #[arg(long)]
    pid: Vec<u32>,
    /// Refresh interval: 1s, 500ms, 2s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// GIL state samples per second per process.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=1000))]
    sample_hz: u32,
    /// Also measure event-loop lag: uprobes on every watched process's poll
    /// functions, which cost a busy loop 8-14 µs per poll call (BENCHMARKS.md).
    #[arg(long)]
    event_loops: bool,
    /// Print this many plain-text frames to stdout instead of the interactive view.
    #[arg(long, value_name = "FRAMES")]
    batch: Option<u64>,
}

/// Checks the pids exist, then runs the live view until it is quit.
pub fn run(args: &TopArgs) -> anyhow::Result<ExitCode> {
    for &pid in &args.pid {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("gilscope: {}", crate::Error::NoSuchProcess { pid });
            return Ok(ExitCode::from(2));
        }
    }
    let opts = TopOptions {
        pids: (!args.pid.is_empty()).then(|| args.pid.clone()),
        interval: args.interval,
        sample_hz: args.sample_hz,
        event_loops: args.event_loops,
        batch: args.batch,
    };
    match top::run(&opts) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("gilscope: {e}");
            Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }))
        }
    }
}
