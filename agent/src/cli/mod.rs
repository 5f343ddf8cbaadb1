//! The commands: `check` (one process, one report), `top` (live view) and
//! `run` (the node daemon), with their settings and the report's text form.

pub mod args;
pub mod check;
pub mod flamegraph;
pub mod logging;
pub mod measured_by;
pub mod pprof;
pub mod render;
pub mod run;
pub mod settings;
pub mod top;
