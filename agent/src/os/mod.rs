//! What the operating system tells about a process: per-thread CPU from procfs,
//! its CPU cgroup, its PID namespace, the files it maps, and those files opened
//! as it sees them.

pub mod cgroup;
pub mod mapped_files;
pub mod pidns;
pub mod process;
pub mod signals;
pub mod target_file;
pub mod threads;
