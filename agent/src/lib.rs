//! gilscope: does this Python process really run in parallel, or does the GIL
//! serialize it?
//!
//! The data path runs one way: [`python`] finds the interpreter and its GIL in a
//! process, [`bpf`] counts GIL waits in the kernel where threads block (never on
//! the uncontended fast path), [`gil_sampler`] and [`threads`] sample the GIL
//! holder and per-thread CPU from user space, [`analyse`] turns counters into a
//! [`report::Report`], [`diagnose`] says what it means, and [`render`] prints it.
//! [`check`] wires these together for `gilscope check`; [`run`] is the node
//! daemon that watches every CPython process and exports OpenTelemetry metrics.

pub mod analyse;
pub mod bpf;
pub mod cgroup;
pub mod check;
pub mod children;
pub mod diagnose;
pub mod error;
pub mod gil_sampler;
pub mod launch;
pub mod live;
pub mod memory;
pub mod pidns;
pub mod python;
pub mod render;
pub mod report;
pub mod retire;
pub mod run;
pub mod threads;
pub mod top;
pub mod watch;

pub use error::{Error, Result};
