//! One process cannot take every tenant's room in the per-thread map: each
//! watched process holds at most its share of `thread_waits` (here set to 32),
//! the rest of its threads are counted as refused inserts, and a process
//! watched next to it still has every thread counted with its true waits. The
//! room a process's exited threads leave comes back to it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::kernel::{checked_gil, start_watched, wait_probe_and_debian_311};
use crate::common::*;
use gilscope::core::counters::KernelMap;

/// The share set for the test.
const SHARE: usize = 32;

/// Slack over the share: the kernel checks and adds without a lock, so each
/// CPU may admit one thread past it at the same instant (2 CPUs here; 4 allowed).
const RACE: usize = 4;

/// 200 threads that sleep 20 ms at a time for argv[1] seconds (each sleep is
/// a block the wait probe sees), "ready" once they all run.
const MANY_SLEEPERS: &str = r#"
import sys, threading, time
end = time.monotonic() + float(sys.argv[1])
def sleeper():
    while time.monotonic() < end:
        time.sleep(0.02)
ts = [threading.Thread(target=sleeper) for _ in range(200)]
[t.start() for t in ts]
print("ready", flush=True)
[t.join() for t in ts]
"#;

#[test]
fn a_process_with_many_threads_holds_only_its_share_of_the_thread_map() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    probe.set_thread_share(SHARE as u32);
    let mut many = Command::new(&python)
        .args(["-c", MANY_SLEEPERS, "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let many_pid = many.id();
    let mut lines = BufReader::new(many.stdout.take().expect("piped")).lines();
    assert!(
        matches!(lines.next(), Some(Ok(l)) if l == "ready"),
        "the sleepers did not start"
    );
    let (_, gil) = checked_gil(many_pid);
    probe
        .watch(many_pid, &[gil.addr], &gil.layout)
        .expect("watch the sleepers");
    // A plain 3-thread CPU-bound service watched next to it, for 2 s.
    let mut service = start_watched(
        &mut probe,
        &python,
        &[&workload("cpu_threads.py"), "3", "2"],
        Duration::from_millis(200),
    );
    let service_pid = service.id();
    let _ = service.wait();

    let held = probe.read(many_pid).expect("read the sleepers");
    let refused = probe.entries_dropped().get(KernelMap::ThreadWaits);
    eprintln!(
        "201 threads, share {SHARE}: {} entries held, {refused} inserts refused",
        held.threads.len()
    );
    assert!(
        held.threads.len() >= SHARE && held.threads.len() <= SHARE + RACE,
        "the sleepers hold {} entries, their share is {SHARE}",
        held.threads.len()
    );
    assert!(
        refused > 0,
        "the sleepers past their share were not counted as refused"
    );

    let counters = probe.read(service_pid).expect("read the service");
    let workers: Vec<u64> = counters
        .threads
        .iter()
        .filter(|(tid, _)| **tid != service_pid)
        .map(|(_, w)| w.take_wait_ns)
        .collect();
    // Three threads on one GIL for ~1.8 s watched: each waits about 2/3 of it.
    assert_eq!(
        workers.len(),
        3,
        "the service's threads: {:?}",
        counters.threads
    );
    for wait in &workers {
        assert!(
            *wait > 600_000_000,
            "a worker of the service waited only {wait} ns: {workers:?}"
        );
    }

    // Taken back, the entries are the sleepers' to use again.
    let tids: Vec<u32> = held.threads.keys().copied().collect();
    probe
        .take_threads(many_pid, &tids)
        .expect("take the sleepers' entries");
    std::thread::sleep(Duration::from_millis(500));
    let again = probe.read(many_pid).expect("read the sleepers again");
    eprintln!(
        "after taking {} entries back: {} held",
        tids.len(),
        again.threads.len()
    );
    assert!(
        again.threads.len() >= SHARE && again.threads.len() <= SHARE + RACE,
        "after giving back, the sleepers hold {} entries",
        again.threads.len()
    );
    let _ = many.kill();
    let _ = many.wait();
}
