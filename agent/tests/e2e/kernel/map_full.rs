//! A kernel map that is full must not lose waits silently: the wait probe counts
//! every insert it could not make. Filled for real: `thread_waits` shrunk to 4
//! entries, a real CPython with 8 CPU-bound threads watched; the same workload
//! with the normal size loses nothing. `gilscope run --thread-capacity 4` says
//! so in one warning and exports the count on `/metrics`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::kernel::{checked_gil, start_watched, wait_probe_and_debian_311};
use crate::common::receivers::{free_port, Running};
use crate::common::*;
use gilscope::core::counters::KernelMap;
use gilscope::cpython::find::locate::require_measurable_libc;
use gilscope::probes::condwait::CondWaitProbe;
use gilscope::probes::wait::WaitProbe;

/// Runs cpu_threads.py with 8 threads for 1.5 s under `probe` and waits for it to exit.
fn watch_eight_cpu_threads(python: &std::path::Path, probe: &mut WaitProbe) {
    let mut target = start_watched(
        probe,
        python,
        &[&workload("cpu_threads.py"), "8", "1.5"],
        Duration::from_millis(200),
    );
    let _ = target.wait();
}

fn dropped(probe: &WaitProbe, map: KernelMap) -> u64 {
    probe.entries_dropped().get(map)
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
    assert_eq!(probe.capacity(KernelMap::ThreadWaits), Some(4));
    watch_eight_cpu_threads(&python, &mut probe);

    // Eight workers wait for the GIL every 5 ms slice; four found a slot.
    assert_eq!(entries(&probe, "thread_waits"), 4, "the map is full");
    let lost = dropped(&probe, KernelMap::ThreadWaits);
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
    assert!(waits > 0, "the slotted threads' waits are counted: {waits}");
    // inflight is sized for 4 threads too (it may have run full: 7 wait at once);
    // blocked_by keeps its built-in size and gil_waits is per process and GIL.
    assert_eq!(probe.capacity(KernelMap::Inflight), Some(4));
    assert!(entries(&probe, "inflight") <= 4);
    assert_eq!(probe.capacity(KernelMap::BlockedBy), Some(65536));
    for map in [KernelMap::BlockedBy, KernelMap::GilWaits] {
        assert_eq!(dropped(&probe, map), 0, "map {map:?} had failed inserts");
    }
    eprintln!("inflight dropped: {}", dropped(&probe, KernelMap::Inflight));
}

#[test]
fn with_the_normal_size_nothing_is_dropped() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    assert_eq!(probe.capacity(KernelMap::ThreadWaits), Some(65536));
    watch_eight_cpu_threads(&python, &mut probe);
    assert!(
        entries(&probe, "thread_waits") >= 8,
        "every worker has its slot"
    );
    for (map, n) in probe.entries_dropped().iter() {
        assert_eq!(n, 0, "map {} had {n} failed inserts", map.name());
    }
}

/// The value of `gilscope_bpf_entries_dropped_total` for `map` in a scrape.
fn scraped_dropped(text: &str, map: &str) -> Option<f64> {
    let label = format!("gilscope_bpf_map=\"{map}\"");
    text.lines()
        .filter(|l| l.starts_with("gilscope_bpf_entries_dropped_total{") && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_daemon_warns_once_per_full_map_and_exports_the_count() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python311() else {
        return;
    };
    let _machine = serial();
    let marker = format!("mapfull{}", std::process::id());
    let _work = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "8", "10", &marker])
            .stdout(Stdio::null())
            .spawn()
            .expect("python"),
    );
    let port = free_port();
    let log = std::env::temp_dir().join(format!("gilscope-{marker}.log"));
    let mut daemon = Running(
        gilscope()
            .args(["run", "--thread-capacity", "4"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--interval", "1s", "--duration", "7s"])
            .args(["--include-cmdline", &marker])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start gilscope run"),
    );
    // The count rises interval after interval while the daemon runs.
    let mut seen: Vec<f64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(7);
    while Instant::now() < deadline {
        let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok());
        if let Some(n) = body
            .as_deref()
            .and_then(|b| scraped_dropped(b, "thread_waits"))
        {
            if seen.last() != Some(&n) {
                seen.push(n);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = daemon.0.wait().expect("daemon exit");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "gilscope run failed: {text}");
    eprintln!("thread_waits dropped, as scraped: {seen:?}");
    assert!(
        seen.iter().filter(|n| **n > 0.0).count() >= 2,
        "the count was exported and rose: {seen:?}\n{text}"
    );
    let warnings = text
        .lines()
        .filter(|l| l.contains("kernel map thread_waits (4 entries) is full"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for thread_waits over 6 intervals:\n{text}"
    );
    for map in ["blocked_by", "inflight", "gil_waits"] {
        let n = text
            .lines()
            .filter(|l| l.contains(&format!("kernel map {map} ")))
            .count();
        assert!(n <= 1, "{map} warned {n} times:\n{text}");
    }
}

#[test]
fn a_full_condvar_map_on_musl_counts_what_it_could_not_hold() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = built_cpython("3.13-musl") else {
        return;
    };
    let _machine = serial();
    let mut target = Running(
        Command::new(&python)
            .args([&workload("cpu_threads.py"), "8", "1.5"])
            .stdout(Stdio::null())
            .spawn()
            .expect("python"),
    );
    let pid = target.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let (interp, gil) = checked_gil(pid);
    let site = require_measurable_libc(&interp)
        .expect("measurable musl build")
        .cond_wait
        .expect("musl: a condvar wait to probe");
    let mut probe =
        CondWaitProbe::attach_with_capacity(pid, &site, 0, Some(4)).expect("attach the probe");
    assert_eq!(probe.capacity(KernelMap::CondWaits), Some(4));
    probe.watch(pid, &[gil.addr], &gil.layout).expect("watch");
    let _ = target.0.wait();

    let threads = probe.read(pid).expect("read").threads.len();
    assert_eq!(threads, 4, "cond_waits holds its 4 entries");
    let dropped = probe.entries_dropped();
    eprintln!("musl: {dropped:?}");
    assert!(
        dropped.get(KernelMap::CondWaits) >= 20,
        "four threads without a slot: {dropped:?}"
    );
    assert_eq!(dropped.get(KernelMap::CondGilWaits), 0);
    assert_eq!(
        dropped.get(KernelMap::ThreadWaits),
        0,
        "the condvar probe counts only its own maps"
    );
}
