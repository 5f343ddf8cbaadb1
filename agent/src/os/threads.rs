//! Per-thread CPU and run-queue delay of a process, from procfs.
//!
//! `/proc/PID/task/TID/schedstat` gives on-CPU and run-queue-wait nanoseconds
//! (cumulative since the thread started); `comm` gives the OS thread name.
//! A thread or process that vanishes between listing and reading is skipped,
//! not an error: threads come and go all the time.

use std::collections::BTreeMap;

use crate::core::cpu::ThreadSample;
use crate::error::{Error, Result};

/// Reads every live thread of `pid`; `NoSuchProcess` once the process is gone.
pub fn sample_threads(pid: u32) -> Result<BTreeMap<u32, ThreadSample>> {
    sample_threads_named(pid, &BTreeMap::new())
}

/// As [`sample_threads`], but a thread already in `known` keeps its name from
/// there instead of reading `comm` again: a watcher of a thousand threads reads
/// one file per thread per refresh, not two.
pub fn sample_threads_named(
    pid: u32,
    known: &BTreeMap<u32, ThreadSample>,
) -> Result<BTreeMap<u32, ThreadSample>> {
    let task_dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&task_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
        std::io::ErrorKind::PermissionDenied => Error::Permission {
            what: format!("reading {task_dir}"),
        },
        _ => Error::Internal(format!("reading {task_dir}: {e}")),
    })?;
    let mut threads = BTreeMap::new();
    for entry in tasks.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((on_cpu_ns, runqueue_ns)) = read_short(&format!("{task_dir}/{tid}/schedstat"))
            .and_then(|text| parse_schedstat(&text))
        else {
            continue; // exited since the listing
        };
        let os_name = match known.get(&tid) {
            Some(seen) => seen.os_name.clone(),
            // A thread that exits between its schedstat and its comm is gone
            // like one that exited before: an empty name would stick to it.
            None => match read_short(&format!("{task_dir}/{tid}/comm")) {
                Some(name) => name.trim_end().to_string(),
                None => continue,
            },
        };
        threads.insert(
            tid,
            ThreadSample {
                tid,
                os_name,
                on_cpu_ns,
                runqueue_ns,
            },
        );
    }
    Ok(threads)
}

/// A procfs file of one short line, in one `read` (no `statx`, no second read
/// for the end of file as `read_to_string` does: this runs for every thread
/// every refresh). `None` when it cannot be opened (the thread exited).
fn read_short(path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut buf = [0u8; 128];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// On-CPU and run-queue nanoseconds from a `schedstat` line ("runtime delay slices").
/// Public so the fuzz harness (`fuzz/`) can feed it bytes.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace();
    let on_cpu = fields.next()?.parse().ok()?;
    let delay = fields.next()?.parse().ok()?;
    Some((on_cpu, delay))
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
    fn schedstat_gives_cpu_and_run_queue_time() {
        assert_eq!(
            parse_schedstat("123456789 4242 17\n"),
            Some((123_456_789, 4242))
        );
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn known_threads_keep_their_names_and_new_ones_are_read() {
        let pid = std::process::id();
        let fresh = sample_threads(pid).expect("own /proc");
        let mut known = fresh.clone();
        let (&tid, _) = known.iter().next().expect("a thread");
        if let Some(t) = known.get_mut(&tid) {
            t.os_name = "kept-name".into();
        }
        let again = sample_threads_named(pid, &known).expect("own /proc");
        assert_eq!(again[&tid].os_name, "kept-name");
        let read = sample_threads_named(pid, &BTreeMap::new()).expect("own /proc");
        assert_eq!(read[&tid].os_name, fresh[&tid].os_name);
    }

    #[test]
    fn a_vanished_process_is_no_such_process() {
        let err = sample_threads(u32::MAX / 2).expect_err("no such pid");
        assert!(matches!(err, Error::NoSuchProcess { .. }), "{err}");
    }
}
