//! The `gilscope` command: parses the arguments, sets up logging
//! (`gilscope::cli::logging`) and runs the command (each command's arguments
//! live in `gilscope::cli::args`).

use std::process::ExitCode;

use clap::Parser;
use gilscope::cli::args::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    gilscope::cli::logging::init(cli.verbose);
    cli.command.run()
}
