//! `gilscope run`: its flags are the settings' (`cli::settings::defs`);
//! this resolves them with the file and the environment and starts the daemon.

use std::process::ExitCode;

use crate::cli::settings::{resolve, Flags};

/// Examples and exit codes under `gilscope run --help`.
pub const AFTER_HELP: &str = "Examples:
  gilscope run                                     # summary on stdout every 10 s
  gilscope run --endpoint http://localhost:4317    # OTLP/gRPC, gzip
  OTEL_EXPORTER_OTLP_ENDPOINT=http://vm:8428/opentelemetry OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf gilscope run
  gilscope run --config /etc/gilscope.yaml

Flags beat environment variables, which beat the config file, which beats the defaults. \
Exit codes: 0 stopped by a signal or --duration, 2 bad configuration or missing privilege, \
1 internal failure.";

/// Resolves the settings (one line naming the bad one, exit 2) and runs the daemon.
pub fn run(flags: &Flags) -> anyhow::Result<ExitCode> {
    let settings = match resolve(flags, &|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gilscope run: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match crate::cli::run::run(settings) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("gilscope run: {e}");
            Ok(ExitCode::from(if e.is_user_error() { 2 } else { 1 }))
        }
    }
}
