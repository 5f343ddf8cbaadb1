//! Thread ids across PID namespaces.
//!
//! A process in a container runs in its own PID namespace: the tids CPython keeps
//! in its thread states (`native_thread_id`, or glibc's `struct pthread`) are the
//! container's, while the kernel counters (BPF) and `/proc/PID/task` use the
//! host's. Without a mapping, a container's GIL holders and Python thread names
//! land on tids that do not exist (or on the wrong threads). The `NSpid:` line of
//! `/proc/PID/task/TID/status` lists a thread's id in every namespace from ours
//! down to its own, so the first and the last entry are the two ids of the same
//! thread. Processes in our own namespace (one entry) are mapped as they are, at
//! no cost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Smallest gap between two rescans of the task list after a miss (a thread that
/// already exited is a miss every time and must not make every lookup scan).
const RESCAN_GAP: Duration = Duration::from_millis(200);
/// Entries kept at most; past this the map starts over (tids of exited threads pile up).
const MAX_ENTRIES: usize = 1 << 14;

/// The ids of one task in every PID namespace from the reader's down to its own,
/// from the `NSpid:` line of a `status` file; empty when there is none.
pub fn parse_nspid(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            rest.split_whitespace()
                .map_while(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` lives in a PID namespace below ours (its tids differ from the host's).
pub fn in_nested_namespace(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_nspid(&s).len() > 1)
        .unwrap_or(false)
}

/// Turns the tids a process reports about itself into the host's tids.
#[derive(Debug)]
pub struct TidMap {
    pid: u32,
    /// False for a process in our namespace: every tid maps to itself.
    nested: bool,
    to_host: HashMap<u32, u32>,
    scanned: Option<Instant>,
}

impl TidMap {
    /// The map for process `pid` (host pid), empty until the first lookup.
    pub fn of(pid: u32) -> Self {
        Self {
            pid,
            nested: in_nested_namespace(pid),
            to_host: HashMap::new(),
            scanned: None,
        }
    }

    /// A map that changes nothing (tests, and processes known to share our namespace).
    pub fn identity() -> Self {
        Self {
            pid: 0,
            nested: false,
            to_host: HashMap::new(),
            scanned: None,
        }
    }

    /// Whether the process reports tids of its own namespace.
    pub fn is_nested(&self) -> bool {
        self.nested
    }

    /// The host tid of the thread the process calls `tid`; `None` when no live
    /// thread of the process has that id in its namespace (exited, or garbage).
    pub fn host_tid(&mut self, tid: u32) -> Option<u32> {
        if !self.nested {
            return Some(tid);
        }
        if let Some(host) = self.to_host.get(&tid) {
            return Some(*host);
        }
        if self.scanned.is_none_or(|at| at.elapsed() >= RESCAN_GAP) {
            self.rescan();
        }
        self.to_host.get(&tid).copied()
    }

    /// Reads every thread's `NSpid:` line (a thread that exits meanwhile is skipped).
    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        if self.to_host.len() > MAX_ENTRIES {
            self.to_host.clear();
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            let ids = parse_nspid(&status);
            if let (Some(host), Some(own)) = (ids.first(), ids.last()) {
                self.to_host.insert(*own, *host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lists_the_ids_from_outer_to_inner() {
        let status = "Name:\tpython3\nTgid:\t4242\nPid:\t4245\nNSpid:\t4245\t3\nNSsid:\t1\n";
        assert_eq!(parse_nspid(status), vec![4245, 3]);
        assert_eq!(parse_nspid("NSpid:\t17\n"), vec![17]);
        assert!(parse_nspid("Name:\tx\n").is_empty());
    }

    #[test]
    fn a_process_of_our_namespace_maps_to_itself() {
        let me = std::process::id();
        let mut map = TidMap::of(me);
        assert!(!map.is_nested());
        assert_eq!(map.host_tid(12345), Some(12345));
        assert_eq!(TidMap::identity().host_tid(7), Some(7));
    }
}
