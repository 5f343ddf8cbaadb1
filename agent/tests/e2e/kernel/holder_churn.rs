//! A process that churns its own GIL's `last_holder` word: nearly every value
//! the wait probe reads there is a new, meaningless holder. Each waiting thread
//! makes at most `GILSCOPE_HOLDERS_PER_WAITER` (256) (waiter, holder) pairs in
//! the `blocked_by` map all watched processes share; the rest of its waits go
//! to holder 0 (unknown), so the map stays open to every other tenant.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::kernel::{checked_gil, wait_probe_and_debian_311};
use gilscope::core::counters::KernelMap;
use gilscope::cpython::layout::versions::{layout_for, GilLocation, PyVersion};

/// ebpf/gil_shared.h.
const HOLDERS_PER_WAITER: usize = 256;

/// Three CPU-bound threads, each writing a new random value into the GIL's
/// `last_holder` (at `_PyRuntime + argv[1]`) on every loop while it holds it.
const CHURN: &str = r#"
import ctypes, random, sys, threading, time
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
holder = ctypes.c_uint64.from_address(runtime + int(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2])
def churn(seed):
    r = random.Random(seed)
    while time.monotonic() < end:
        holder.value = r.getrandbits(63) | 1
threads = [threading.Thread(target=churn, args=(i,)) for i in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
"#;

#[test]
fn a_process_churning_its_gil_holder_gets_a_bounded_share_of_blocked_by() {
    let Some((_machine, python, mut probe)) = wait_probe_and_debian_311() else {
        return;
    };
    let layout = layout_for(PyVersion {
        major: 3,
        minor: 11,
    })
    .expect("3.11 layout");
    let GilLocation::Embedded(gil_offset) = layout.gil else {
        panic!("3.11 embeds its GIL in _PyRuntime");
    };
    let offset = (gil_offset + layout.gil_layout.last_holder).to_string();
    let mut target = Command::new(&python)
        .args(["-c", CHURN, &offset, "6"])
        .stdout(Stdio::null())
        .spawn()
        .expect("python");
    let pid = target.id();
    std::thread::sleep(Duration::from_millis(300));
    let (_, gil) = checked_gil(pid);
    probe.watch(pid, &[gil.addr], &gil.layout).expect("watch");
    let _ = target.wait();

    let counters = probe.read(pid).expect("read");
    let mut pairs: HashMap<u32, usize> = HashMap::new();
    let mut unknown_ns: HashMap<u32, u64> = HashMap::new();
    for (key, wait) in &counters.blocked_by {
        *pairs.entry(key.waiter_tid).or_default() += 1;
        if key.holder_tstate == 0 {
            *unknown_ns.entry(key.waiter_tid).or_default() += wait.wait_ns;
        }
    }
    eprintln!("pairs per waiter: {pairs:?}; wait behind holder 0 (ns): {unknown_ns:?}");
    // Each of three CPU-bound threads waits about 2/3 of 5.7 s in 5 ms slices:
    // some 750 slices, nearly all behind a new holder value. (The main thread,
    // starting them, may wait once or twice too.)
    for (tid, n) in &pairs {
        assert!(
            *n <= HOLDERS_PER_WAITER + 1,
            "thread {tid} made {n} pairs, more than {HOLDERS_PER_WAITER} holders and the unknown one"
        );
    }
    let capped = pairs
        .iter()
        .filter(|(tid, n)| **n >= HOLDERS_PER_WAITER && unknown_ns.get(tid) > Some(&0))
        .count();
    assert!(
        capped == 3,
        "the churn must push waiters past the cap (else this test proves nothing): {pairs:?}"
    );
    assert_eq!(probe.entries_dropped().get(KernelMap::BlockedBy), 0);
}
