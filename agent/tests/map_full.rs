//! A kernel map that is full must not lose waits silently: the wait probe counts
//! every insert it could not make. Filled for real: `thread_waits` shrunk to 4
//! entries, a real CPython with 8 CPU-bound threads watched; the same workload
//! with the normal size loses nothing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use gilscope::bpf::wait_probe::WaitProbe;
use gilscope::memory::RemoteMemory;
use gilscope::python::locate::{read_gil_state, require_interpreter};

/// Runs cpu_threads.py with 8 threads for 1.5 s under `probe` and waits for it to exit.
fn watch_eight_cpu_threads(python: &std::path::Path, probe: &mut WaitProbe) {
    let mut target = Command::new(python)
        .args([&workload("cpu_threads.py"), "8", "1.5"])
        .stdout(Stdio::null())
        .spawn()
        .expect("python");
    let pid = target.id();
    std::thread::sleep(Duration::from_millis(200));
    let interp = require_interpreter(pid).expect("CPython");
    let mem = RemoteMemory::new(pid);
    let gil = interp.resolve_gil(&mem).expect("GIL address");
    read_gil_state(pid, &mem, &gil).expect("valid GIL");
    probe.watch(pid, &[gil.addr], &gil.layout).expect("watch");
    let _ = target.wait();
}

fn dropped(probe: &WaitProbe, map: &str) -> u64 {
    probe
        .entries_dropped()
        .iter()
        .find(|(name, _)| *name == map)
        .map_or_else(|| panic!("no counter for map {map}"), |(_, n)| *n)
}

fn entries(probe: &WaitProbe, map: &str) -> usize {
    probe
        .entry_counts()
        .expect("entry counts")
        .iter()
        .find(|(name, _)| *name == map)
        .map_or_else(|| panic!("no map {map}"), |(_, n)| *n)
}

#[test]
fn a_full_thread_map_counts_the_waits_it_could_not_hold() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python311() else {
        return;
    };
    let _machine = serial();
    let mut probe = WaitProbe::load_with_capacity(0, Some(4)).expect("load the wait probe");
    assert_eq!(probe.capacity("thread_waits"), Some(4));
    watch_eight_cpu_threads(&python, &mut probe);

    // Eight workers wait for the GIL every 5 ms slice; four found a slot.
    assert_eq!(entries(&probe, "thread_waits"), 4, "the map is full");
    let lost = dropped(&probe, "thread_waits");
    assert!(
        lost >= 20,
        "four threads without a slot waited for 1.5 s; only {lost} waits counted as dropped"
    );
    // The threads that have a slot are counted as ever.
    let counted = probe.read_all().expect("read");
    let waits: u64 = counted
        .values()
        .flat_map(|c| c.threads.values())
        .map(|w| w.take_waits)
        .sum();
    eprintln!("thread_waits full: {lost} waits dropped, {waits} counted");
    assert!(waits >= 20, "the four slotted threads' waits: {waits}");
    // Nothing else was full.
    for (map, n) in probe.entries_dropped() {
        if map != "thread_waits" {
            assert_eq!(n, 0, "map {map} had {n} failed inserts");
        }
    }
}

#[test]
fn with_the_normal_size_nothing_is_dropped() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python311() else {
        return;
    };
    let _machine = serial();
    let mut probe = WaitProbe::load().expect("load the wait probe");
    assert_eq!(probe.capacity("thread_waits"), Some(65536));
    watch_eight_cpu_threads(&python, &mut probe);
    assert!(
        entries(&probe, "thread_waits") >= 8,
        "every worker has its slot"
    );
    for (map, n) in probe.entries_dropped() {
        assert_eq!(n, 0, "map {map} had {n} failed inserts");
    }
}
