//! A tid the kernel gives to a new process while the old owner's counters are
//! still in the shared maps (the old thread exited, the daemon has not yet
//! taken its entries). The new process's thread counts from zero, and taking
//! the old process's exited threads leaves the new owner's entries alone.
//!
//! The reuse is made, not waited for: `/proc/sys/kernel/ns_last_pid` is set
//! to the tid before it, so the next process created gets it (the way CRIU
//! restores pids; needs CAP_SYS_ADMIN, as every test here).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::kernel::{checked_gil, wait_probe_and_debian_311};

/// Three threads spinning on the GIL for argv[1] seconds; prints their tids,
/// then "done" once they have exited, then sleeps (the process stays).
const OLD_OWNER: &str = r#"
import sys, threading, time
end = time.monotonic() + float(sys.argv[1])
def spin():
    while time.monotonic() < end: pass
ts = [threading.Thread(target=spin) for _ in range(3)]
[t.start() for t in ts]
print(" ".join(str(t.native_id) for t in ts), flush=True)
[t.join() for t in ts]
print("done", flush=True)
time.sleep(60)
"#;

/// Sleeps argv[1] seconds (to be watched), then spins on the GIL for argv[2]
/// seconds in its main thread and two more.
const NEW_OWNER: &str = r#"
import sys, threading, time
time.sleep(float(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2])
def spin():
    while time.monotonic() < end: pass
ts = [threading.Thread(target=spin) for _ in range(2)]
[t.start() for t in ts]
spin()
[t.join() for t in ts]
"#;

/// Starts `cmd` as process `pid` (free): sets the last pid handed out to the
/// one before it and spawns, retrying while another fork takes it first.
fn spawn_as(pid: u32, cmd: &mut Command) -> Child {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid (needs CAP_SYS_ADMIN)");
        let mut child = cmd.spawn().expect("spawn");
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("another process took pid {pid} fifty times");
}

#[test]
fn a_reused_tid_counts_from_zero_for_its_new_process() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    let mut old = Command::new(&python)
        .args(["-c", OLD_OWNER, "4"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let old_pid = old.id();
    let mut lines = BufReader::new(old.stdout.take().expect("piped")).lines();
    let tids: Vec<u32> = lines
        .next()
        .and_then(Result::ok)
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(tids.len(), 3, "the old owner's tids");
    let (_, gil) = checked_gil(old_pid);
    probe
        .watch(old_pid, &[gil.addr], &gil.layout)
        .expect("watch the old owner");
    assert!(
        matches!(lines.next(), Some(Ok(l)) if l == "done"),
        "the old owner's threads did not finish"
    );
    // Its threads have exited; their counters are still in the maps.
    let before = probe.read(old_pid).expect("read the old owner");
    let (tid, old_wait) = tids
        .iter()
        .filter_map(|t| Some((*t, before.threads.get(t)?.take_wait_ns)))
        .max_by_key(|(_, w)| *w)
        .expect("the old owner's threads were counted");
    // Three threads on one GIL for ~3.7 s watched: each waits ~2/3 of it.
    assert!(
        old_wait > 1_500_000_000,
        "the old thread {tid} waited only {old_wait} ns (else this proves nothing)"
    );
    let gone = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{tid}")).exists() {
        assert!(Instant::now() < gone, "tid {tid} was never released");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut new = spawn_as(
        tid,
        Command::new(&python)
            .args(["-c", NEW_OWNER, "0.5", "1.0"])
            .stdout(Stdio::null()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (_, gil) = checked_gil(tid);
    probe
        .watch(tid, &[gil.addr], &gil.layout)
        .expect("watch the new owner");
    let watched = Instant::now();
    let _ = new.wait();
    let watched_for = watched.elapsed().as_nanos() as u64;

    // Taking the old owner's exited threads takes nothing of the new owner's.
    let taken = probe
        .take_threads(old_pid, &tids)
        .expect("take the old owner's threads");
    assert!(
        !taken.threads.contains_key(&tid),
        "the old owner took the new owner's counters: {:?}",
        taken.threads.get(&tid)
    );
    let after = probe.read(tid).expect("read the new owner");
    let new_wait = after
        .threads
        .get(&tid)
        .map(|w| w.take_wait_ns)
        .unwrap_or_else(|| panic!("the new owner's main thread is not counted: {after:?}"));
    eprintln!(
        "tid {tid}: {old_wait} ns waited in process {old_pid}, {new_wait} ns in process {tid} \
         watched for {watched_for} ns"
    );
    // A thread waits at most the time it was watched; the old owner's wait
    // alone is more than that.
    assert!(
        new_wait < watched_for,
        "tid {tid} of the new process waited {new_wait} ns in {watched_for} ns watched: \
         it inherited the old owner's {old_wait} ns"
    );
    // Three threads on one GIL for 1 s: the main thread waits about 0.67 s.
    assert!(
        new_wait > 300_000_000,
        "the new owner's main thread waited only {new_wait} ns"
    );
    let _ = old.kill();
    let _ = old.wait();
}
