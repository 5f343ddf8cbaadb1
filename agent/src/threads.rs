//! Per-thread CPU and run-queue delay of a process, from procfs.
//!
//! `/proc/PID/task/TID/schedstat` gives on-CPU and run-queue-wait nanoseconds
//! (cumulative since the thread started); `comm` gives the OS thread name.
//! A thread or process that vanishes between listing and reading is skipped,
//! not an error: threads come and go all the time.

use std::collections::BTreeMap;

use procfs::process::Process;

use crate::error::{Error, Result};

/// One thread at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSample {
    pub tid: u32,
    /// OS thread name (`comm`), at most 15 bytes.
    pub os_name: String,
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
}

/// Reads every live thread of `pid`; `NoSuchProcess` once the process is gone.
pub fn sample_threads(pid: u32) -> Result<BTreeMap<u32, ThreadSample>> {
    let gone = |e: procfs::ProcError| match e {
        procfs::ProcError::NotFound(_) => Error::NoSuchProcess { pid },
        procfs::ProcError::PermissionDenied(_) => Error::Permission {
            what: format!("reading /proc/{pid}/task"),
        },
        other => Error::Internal(format!("reading /proc/{pid}/task: {other}")),
    };
    let process = Process::new(pid as i32).map_err(gone)?;
    let tasks = process.tasks().map_err(gone)?;
    let mut threads = BTreeMap::new();
    for task in tasks.flatten() {
        let Ok(schedstat) = task.schedstat() else {
            continue; // exited since the listing
        };
        let tid = task.tid as u32;
        let os_name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        threads.insert(
            tid,
            ThreadSample {
                tid,
                os_name,
                on_cpu_ns: schedstat.sum_exec_runtime,
                runqueue_ns: schedstat.run_delay,
            },
        );
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_threads_with_cpu_time() {
        let handle = std::thread::Builder::new()
            .name("spin-test".into())
            .spawn(|| {
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while start.elapsed().as_millis() < 50 {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
                x
            })
            .expect("spawn");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let threads = sample_threads(std::process::id()).expect("own /proc");
        let spinner = threads
            .values()
            .find(|t| t.os_name == "spin-test")
            .expect("the named thread is listed");
        assert!(spinner.on_cpu_ns >= 30_000_000, "{spinner:?}");
        let _ = handle.join();
    }

    #[test]
    fn a_vanished_process_is_no_such_process() {
        let err = sample_threads(u32::MAX / 2).expect_err("no such pid");
        assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    }
}
