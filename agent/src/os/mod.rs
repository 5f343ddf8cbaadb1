//! What the operating system tells about a process: per-thread CPU from procfs,
//! its CPU cgroup, and its PID namespace.

pub mod cgroup;
pub mod pidns;
pub mod threads;
