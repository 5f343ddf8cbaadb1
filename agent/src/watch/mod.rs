//! Watching CPython processes: one process for as long as it lives, a set of
//! them (the host, chosen pids, a process's children), and the rules that
//! decide which processes are watched.

pub mod children;
pub mod discover;
pub mod fleet;
pub mod launch;
pub mod retire;
pub mod session;
