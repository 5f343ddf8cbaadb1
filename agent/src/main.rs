//! The `gilscope` command: parses the arguments, sets up logging and runs the
//! command (each command's arguments live in `gilscope::cli::args`).

use std::process::ExitCode;

use clap::Parser;
use gilscope::cli::args::Cli;

/// Logs to stderr: warnings by default, more with -v/-vv, or as `GILSCOPE_LOG` says.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    cli.command.run()
}
