//! What the operating system tells about a process: per-thread CPU from procfs,
//! its CPU cgroup, and its PID namespace.

pub mod cgroup;
pub mod pidns;
pub mod process;
pub mod signals;
pub mod threads;
