//! gilscope: does this Python process really run in parallel, or does the GIL
//! serialize it?
//!
//! The data path runs one way, one layer per module:
//! - [`cpython`] knows a target process: which file is the interpreter, where
//!   its GIL lives, how to read its memory, its thread names, and samples the
//!   GIL's state from user space;
//! - [`probes`] is the only code that talks to the kernel: it loads the BPF
//!   programs, tells them which GILs to watch, and reads their counters out as
//!   plain domain data;
//! - [`os`] reads what procfs and cgroups say about a process;
//! - [`core`] is pure: snapshots of cumulative counters in, a report and its
//!   diagnosis out;
//! - [`watch`] joins these for one process over its life, and for a set of
//!   processes;
//! - [`otel`] turns reports into OpenTelemetry metrics and spans, and exports them;
//! - [`cli`] holds the commands `check`, `top` and `run`, and their settings.

pub mod cli;
pub mod core;
pub mod cpython;
pub mod error;
pub mod os;
pub mod otel;
pub mod probes;
pub mod watch;

pub use error::{Error, Result, RunError};
