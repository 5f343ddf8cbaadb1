//! `gilscope`'s command line: one module per command holding its arguments and
//! what it does with them. `main` only parses, sets up logging and runs.

pub mod check;
pub mod run;
pub mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cli::settings::Flags;

/// Shows whether Python services really run in parallel or are serialized by the GIL.
#[derive(Parser, Debug)]
#[command(name = "gilscope", version, about)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure one CPython process ("is my concurrency real?") and print a report.
    Check(check::CheckArgs),
    /// Live view of every CPython process on the host (or --pid), refreshed each interval.
    Top(top::TopArgs),
    /// Watch every CPython process on this node and export OpenTelemetry metrics.
    #[command(after_help = run::AFTER_HELP)]
    Run(Flags),
}

impl Command {
    /// Runs the command. Exit codes: 0 done, 2 the user can fix it (a bad
    /// setting, no such process, missing privilege), 1 internal failure.
    pub fn run(self) -> ExitCode {
        let result = match self {
            Command::Check(args) => check::run(&args),
            Command::Top(args) => top::run(&args),
            Command::Run(flags) => run::run(&flags),
        };
        result.unwrap_or_else(|e| {
            eprintln!("gilscope: {e:#}");
            ExitCode::from(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
