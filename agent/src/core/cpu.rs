//! CPU counters as the OS gives them: per thread (procfs) and per cgroup
//! level (throttling). Cumulative; two readings give an interval.

/// One thread at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSample {
    pub tid: u32,
    /// OS thread name (`comm`), at most 15 bytes.
    pub os_name: String,
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
}

/// Cumulative throttling counters of one cgroup level.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_ns: u64,
}
