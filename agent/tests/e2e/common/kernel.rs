//! What the tests of the kernel side share: a wait probe loaded while the test
//! holds the machine, and a CPython process whose GIL it watches, found and
//! checked as gilscope finds it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gilscope::cpython::find::locate::{read_gil_state, require_interpreter, GilSite, Interpreter};
use gilscope::cpython::remote::memory::RemoteMemory;
use gilscope::probes::wait::WaitProbe;

use super::{can_use_bpf, debian_python311, serial, Machine};

/// The start of a test of the wait probe itself: the machine held, Debian's
/// stripped 3.11 to run, and the probe loaded with its built-in map sizes.
/// `None` without BPF or that interpreter (a skip, or a failure under CI=true).
/// Bind the machine first, so that it is released after the probe is gone.
pub fn wait_probe_and_debian_311() -> Option<(Machine, PathBuf, WaitProbe)> {
    if !can_use_bpf() {
        return None;
    }
    let python = debian_python311()?;
    let machine = serial();
    let probe = WaitProbe::load().expect("load the wait probe");
    Some((machine, python, probe))
}

/// Starts `python ARGS`, gives its interpreter `settle` to start, then has
/// `probe` watch its GIL.
pub fn start_watched(
    probe: &mut WaitProbe,
    python: &Path,
    args: &[&str],
    settle: Duration,
) -> Child {
    let target = Command::new(python)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("python");
    let pid = target.id();
    std::thread::sleep(settle);
    let (_, gil) = checked_gil(pid);
    probe.watch(pid, &[gil.addr], &gil.layout).expect("watch");
    target
}

/// The interpreter of the running CPython `pid` and its GIL, found as gilscope
/// finds them and checked to read as a valid GIL state.
pub fn checked_gil(pid: u32) -> (Interpreter, GilSite) {
    let interp = require_interpreter(pid).expect("CPython");
    let mem = RemoteMemory::new(pid);
    let gil = interp.resolve_gil(&mem).expect("GIL address");
    read_gil_state(pid, &mem, &gil).expect("valid GIL");
    (interp, gil)
}
