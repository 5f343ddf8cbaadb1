//! The kernel side keeps per-thread state only while a process is watched:
//! unwatching leaves no entry behind in any BPF map.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use gilscope::bpf::wait_probe::WaitProbe;
use gilscope::memory::RemoteMemory;
use gilscope::python::locate::{read_gil_state, require_interpreter};

#[test]
fn unwatching_a_process_removes_all_its_kernel_state() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python311() else {
        return;
    };
    let _machine = serial();
    let mut probe = WaitProbe::load().expect("load the wait probe");
    let mut target = Command::new(&python)
        .args([&workload("cpu_threads.py"), "3", "1.5"])
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
