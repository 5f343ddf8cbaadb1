//! gilscope's end-to-end tests, in one binary (one link instead of one per
//! file): real BPF programs in this kernel, real CPython processes, real
//! receivers and stores. A module per command, and the shared helpers in
//! [`common`]. Tests that measure hold [`common::serial`], so only one workload
//! runs at a time whatever the test threads.

mod common;

mod architecture;

mod check;
mod deploy;
mod fuzz;
mod interpreters;
mod kernel;
mod run;
mod top;
