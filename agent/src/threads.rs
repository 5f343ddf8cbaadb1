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

    fn own_thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[test]
    fn sees_its_own_threads_with_cpu_time() {
        // The spinner burns 50 ms of its own CPU (however loaded the machine), says
        // so, and stays alive while it is sampled.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("spin-test".into())
            .spawn(move || {
                let mut x = 0u64;
                while own_thread_cpu_ns() < 50_000_000 {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                let _ = done_tx.send(());
                let _ = exit_rx.recv_timeout(std::time::Duration::from_secs(10));
                x
            })
            .expect("spawn");
        done_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("spinner finished");
        let threads = sample_threads(std::process::id()).expect("own /proc");
        let _ = exit_tx.send(());
        let _ = handle.join();
        let spinner = threads
            .values()
            .find(|t| t.os_name == "spin-test")
            .expect("the named thread is listed");
        assert!(spinner.on_cpu_ns >= 45_000_000, "{spinner:?}");
    }

    #[test]
    fn a_vanished_process_is_no_such_process() {
        let err = sample_threads(u32::MAX / 2).expect_err("no such pid");
        assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    }
}
