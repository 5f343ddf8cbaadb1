//! A process that maps 40,000 small files (numpy memmaps, a storage engine, or
//! malice). Its `/proc/PID/maps` has over 40,000 lines. Before the listing was
//! read in linear time, the daemon spent 74 s of CPU in 75 s on it and exported
//! nothing for anyone.

use std::process::Command;
use std::time::{Duration, Instant};

use super::bystanders::{first_export, unix_now};
use super::{cpu_seconds, rss_mib, scene, spawn_ready, Daemon, Scene};
use crate::common::receivers::*;

/// Maps `n` one-page files from a new directory, prints "ready", then spins
/// two threads on the GIL for `seconds`. Through libc's `mmap`: Python's
/// `mmap.mmap` keeps a descriptor per mapping and would run out of them.
const MAP_MANY: &str = r#"
import ctypes, mmap, os, sys, threading, time
n, where, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
os.makedirs(where)
for i in range(n):
    fd = os.open(f"{where}/f{i:06d}", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4096)
    if libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0) in (None, ctypes.c_void_p(-1).value):
        sys.exit(f"mmap {i}: errno {ctypes.get_errno()}")
    os.close(fd)
end = time.monotonic() + seconds
def spin():
    while time.monotonic() < end: pass
threads = [threading.Thread(target=spin) for _ in range(2)]
[t.start() for t in threads]
print("ready", flush=True)
[t.join() for t in threads]
"#;

/// A directory in memory (40,000 files on disk would be slow), removed at the end.
struct ShmDir(std::path::PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_process_mapping_40000_files_is_measured_and_blinds_nobody() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("maps")
    else {
        return;
    };
    let dir = ShmDir(format!("/dev/shm/gilscope-maps-{}", std::process::id()).into());
    let files = dir.0.join("files");
    let (target, _) = spawn_ready(Command::new(&python).args([
        "-c",
        MAP_MANY,
        "40000",
        &files.display().to_string(),
        "40",
        &marker,
    ]));
    let pid = target.0.id();
    let lines = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| m.lines().count())
        .unwrap_or(0);
    assert!(lines > 40_000, "only {lines} mappings");

    let mut daemon = Daemon::start(&vm, &marker, &[]);
    let (cpu0, t0) = (cpu_seconds(daemon.pid()), Instant::now());
    // Measured, and truly: two threads on one GIL hold it all the time.
    let utilization = daemon.spinning_utilization(pid);
    assert!(utilization >= 0.9, "utilization {utilization:.2}");

    // A plain service started next to it is exported within two intervals (1 s).
    let started = unix_now();
    let newcomer = workload_process(&python, 20, &format!("{marker}-newcomer"), &marker);
    let first = first_export(&daemon, newcomer.0.id(), Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the newcomer was never exported:\n{}", daemon.log()));
    let after = first - started;
    eprintln!("40,000 mapped files: the newcomer was exported after {after:.2} s");
    assert!(after <= 2.0, "the newcomer was exported after {after:.2} s");

    std::thread::sleep(Duration::from_secs(5));
    daemon.assert_running();
    let cpu_share = (cpu_seconds(daemon.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    let rss = rss_mib(daemon.pid());
    eprintln!(
        "40,000 mapped files: daemon CPU {:.1}% of a core, RSS {rss:.1} MiB",
        cpu_share * 100.0
    );
    // Judging the process reads its maps a few times (tens of milliseconds
    // each); 74 s of CPU in 75 s was the quadratic listing.
    assert!(
        cpu_share < 0.25,
        "daemon CPU {:.1}% of a core",
        cpu_share * 100.0
    );
    assert!(rss <= 64.0, "daemon RSS {rss:.1} MiB");
    assert!(
        daemon.lines_about(pid).len() <= 1,
        "{:?}",
        daemon.lines_about(pid)
    );
    drop(target);
}
