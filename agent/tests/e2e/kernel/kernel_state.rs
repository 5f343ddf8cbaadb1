//! The kernel side keeps per-thread state only while a process is watched:
//! unwatching leaves no entry behind in any BPF map.

use std::time::Duration;

use crate::common::kernel::{start_watched, wait_probe_and_debian_311};
use crate::common::*;

#[test]
fn unwatching_a_process_removes_all_its_kernel_state() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    let mut target = start_watched(
        &mut probe,
        &python,
        &[&workload("cpu_threads.py"), "3", "1.5"],
        Duration::from_millis(200),
    );
    let pid = target.id();
    let _ = target.wait();

    let counters = probe.read(pid).expect("read");
    assert!(
        counters.threads.len() >= 3,
        "three workers waited: {:?}",
        counters.threads.keys()
    );
    assert!(!counters.blocked_by.is_empty());
    probe.unwatch(pid).expect("unwatch");
    for (map, entries) in probe.entry_counts().expect("counts") {
        assert_eq!(entries, 0, "map {map} still holds {entries} entries");
    }
}

#[test]
fn threads_that_exit_or_sleep_through_the_unwatch_leave_nothing_behind() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    // 300 short threads that exit (their last switch is not a sleep), then a thread
    // asleep in time.sleep while the process is unwatched.
    let script = "import threading, time\n\
                  time.sleep(0.3)\n\
                  for _ in range(300):\n    t = threading.Thread(target=sum, args=(range(100),)); t.start(); t.join()\n\
                  threading.Thread(target=time.sleep, args=(2,)).start()\n\
                  time.sleep(3)\n";
    let mut target = start_watched(
        &mut probe,
        &python,
        &["-c", script],
        Duration::from_millis(150),
    );
    let pid = target.id();
    std::thread::sleep(Duration::from_millis(1500));
    probe.unwatch(pid).expect("unwatch while threads sleep");
    let _ = target.wait();
    for (map, entries) in probe.entry_counts().expect("counts") {
        assert_eq!(entries, 0, "map {map} still holds {entries} entries");
    }
}
