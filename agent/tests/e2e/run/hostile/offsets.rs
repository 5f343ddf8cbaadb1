//! A 3.13 process that writes garbage into its own `_Py_DebugOffsets` (the
//! block at the start of `_PyRuntime` that tells debuggers, and gilscope,
//! where its GIL and threads are). Written before the daemon looks, the
//! process is refused in one line naming the field that failed; written
//! while it is watched, its GIL (found at attach) is still measured truly,
//! and nothing the block now says sizes a read.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::bystanders::{assert_refused, Bystander};
use super::{scene, spawn_ready, Daemon, Scene};
use crate::common::*;

/// Two threads spinning on the GIL; the block overwritten (past its cookie,
/// version and free-threaded flag: 112 bytes of 0xA5) at once with argv[1]
/// "before", or on a line from stdin with "after" (then it prints "written").
const GARBAGE: &str = r#"
import ctypes, sys, threading, time
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
def garbage():
    ctypes.memset(runtime + 24, 0xA5, 112)
if sys.argv[1] == "before":
    garbage()
end = time.monotonic() + 120
def spin():
    while time.monotonic() < end: pass
threads = [threading.Thread(target=spin) for _ in range(2)]
[t.start() for t in threads]
print("ready", flush=True)
if sys.argv[1] == "after":
    sys.stdin.readline()
    garbage()
    print("written", flush=True)
[t.join() for t in threads]
"#;

#[test]
fn garbage_in_a_processs_own_debug_offsets_is_refused_or_ignored() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("offsets")
    else {
        return;
    };
    let Some((_, python313, _)) = pyenv_matrix()
        .into_iter()
        .find(|(line, _, _)| line == "3.13")
    else {
        return;
    };
    let start = |when: &str| {
        spawn_ready(
            Command::new(&python313)
                .args(["-c", GARBAGE, when, &marker])
                .stdin(Stdio::piped()),
        )
    };
    let (before, _) = start("before");
    let (mut after, mut after_out) = start("after");
    let bystander = Bystander::start(&python, &marker);
    let mut daemon = Daemon::start(&vm, &marker, &[]);
    assert_refused(
        &daemon,
        before.0.id(),
        "implausible debug offset runtime_state.interpreters_head",
    );

    let pid = after.0.id();
    daemon.wait_value("cpython.gil.utilization", pid);
    let stdin = after.0.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"go\n").expect("tell it to write");
    assert!(
        matches!(after_out.next(), Some(Ok(l)) if l == "written"),
        "the garbage was not written"
    );
    // Five intervals after the garbage, then the mean of the last ones.
    std::thread::sleep(Duration::from_secs(8));
    let utilization = daemon.spinning_utilization(pid);
    assert!(
        utilization >= 0.9,
        "after the garbage, utilization {utilization:.2}"
    );
    let warned: Vec<String> = daemon
        .lines_about(pid)
        .into_iter()
        .filter(|l| !l.contains("watching process"))
        .collect();
    assert!(warned.len() <= 1, "{warned:?}");
    bystander.check(&mut daemon, &python, &marker, "garbage debug offsets");
    drop(before);
    drop(after);
}
