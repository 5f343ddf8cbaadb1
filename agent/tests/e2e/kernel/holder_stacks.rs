//! Every GIL wait is attributed to the code the holder was running, captured
//! by the kernel when the wait began. Truth by construction
//! (tests/workloads/holders.py): two threads spin in `spin_alpha` and
//! `spin_beta`, a third sleeps 1 ms in a loop (`nap`), so the waits are spent
//! behind the two spinners' code objects, about half each. The workload prints
//! its code objects' addresses; the captured stacks' leaf frames must be those
//! objects, at positions inside their bytecode. Each process's frame walk is
//! the stack reader's (`cpython::stacks::stack_layout`), as the agent's.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;
use gilscope::core::counters::WaitCounters;
use gilscope::core::holders::{HolderStacks, StackEnd, UNKNOWN_STACK};
use gilscope::cpython::find::locate::{
    read_gil_state, require_interpreter, require_measurable_libc, GilSite, Interpreter,
};
use gilscope::cpython::layout::frames::FrameWalk;
use gilscope::cpython::remote::memory::RemoteMemory;
use gilscope::cpython::stacks::stack_layout;
use gilscope::probes::condwait::CondWaitProbe;
use gilscope::probes::wait::WaitProbe;

/// Seconds the workload's threads run.
const SECONDS: &str = "3";

/// pyenv's build of `version` (e.g. "3.12.1"), if installed.
fn pyenv(version: &str) -> Option<PathBuf> {
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let minor = version.rsplit_once('.').map_or(version, |(m, _)| m);
    let path = Path::new(&root).join(format!("versions/{version}/bin/python{minor}"));
    if path.exists() {
        Some(path)
    } else {
        missing(&format!("pyenv CPython {version} is not installed"));
        None
    }
}

/// A function of the workload: its code object and bytecode length.
#[derive(Debug, Clone, Copy)]
struct Code {
    addr: u64,
    bytes: u64,
}

/// What one run of the workload left in the probe.
struct Run {
    python: PathBuf,
    /// Where a code object's bytecode starts (`co_code_adaptive`).
    code_start: u64,
    codes: HashMap<String, Code>,
    holders: HolderStacks,
    waits: WaitCounters,
}

/// Parses `NAME code=0xADDR bytes=N`.
fn parse_code(line: &str) -> Option<(String, Code)> {
    let mut parts = line.split_whitespace();
    let name = parts.next()?.to_string();
    let addr = parts.next()?.strip_prefix("code=0x")?;
    let bytes = parts.next()?.strip_prefix("bytes=")?;
    let code = Code {
        addr: u64::from_str_radix(addr, 16).ok()?,
        bytes: bytes.parse().ok()?,
    };
    Some((name, code))
}

/// What a run found of the process before its threads started.
struct Started {
    pid: u32,
    codes: HashMap<String, Code>,
    code_start: u64,
}

/// Runs holders.py under `python`: `attach` starts watching once the
/// interpreter is up (before any workload thread starts), with the process's
/// frame walk. Returns once the workload exited.
fn run_workload(python: &Path, attach: impl FnOnce(&Interpreter, &GilSite, &FrameWalk)) -> Started {
    let mut child = Command::new(python)
        .args([&workload("holders.py"), SECONDS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let mut codes = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("workload output");
        if line == "ready" {
            break;
        }
        let (name, code) = parse_code(&line).unwrap_or_else(|| panic!("bad line {line:?}"));
        codes.insert(name, code);
    }
    let interp = require_interpreter(pid).expect("CPython");
    let mem = RemoteMemory::new(pid);
    let gil = interp.resolve_gil(&mem).expect("GIL address");
    read_gil_state(pid, &mem, &gil).expect("valid GIL");
    let layout = stack_layout(&interp, &mem).expect("a trusted stack layout");
    let code_start = layout
        .code
        .code_start
        .expect("3.11+ frames point into co_code_adaptive");
    attach(&interp, &gil, &layout.walk);
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("start the workload");
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "workload failed: {status}");
    Started {
        pid,
        codes,
        code_start,
    }
}

/// The checks of one run; failures as text.
fn check_truth(run: &Run) -> Vec<String> {
    let mut failures = Vec::new();
    let total = run.holders.total_wait_ns();
    let blocked: u64 = run.waits.blocked_by.values().map(|b| b.wait_ns).sum();
    // Both are added from the same take segments when they end.
    if total == 0 || total != blocked {
        failures.push(format!(
            "holder-stack wait {total} ns != blocked-by wait {blocked} ns"
        ));
    }
    let mut by_leaf: HashMap<&str, u64> = HashMap::new();
    let mut whole = 0u64;
    for (id, wait) in &run.holders.waits {
        if *id == UNKNOWN_STACK {
            *by_leaf.entry("unknown").or_default() += wait.wait_ns;
            continue;
        }
        let Some(stack) = run.holders.stacks.get(id) else {
            failures.push(format!("stack {id:#x} has waits but no frames"));
            continue;
        };
        let leaf = stack.frames.first().copied().unwrap_or_default();
        let name = run
            .codes
            .iter()
            .find(|(_, c)| c.addr == leaf.code)
            .map_or("other", |(n, _)| n.as_str());
        *by_leaf.entry(name).or_default() += wait.wait_ns;
        if let Some(code) = run.codes.get(name) {
            // prev_instr (3.11, 3.12) may point one code unit before the first.
            let start = leaf.code + run.code_start;
            if leaf.instr + 2 < start || leaf.instr >= start + code.bytes {
                failures.push(format!(
                    "{name}: position {:#x} outside its bytecode [{start:#x}, +{})",
                    leaf.instr, code.bytes
                ));
            }
            // Thread._bootstrap, _bootstrap_inner, run, then the function:
            // exactly four Python frames (3.12+'s entry shims skipped).
            if stack.end == StackEnd::Root && stack.frames.len() == 4 {
                whole += wait.wait_ns;
            }
        }
    }
    let share = |name: &str| by_leaf.get(name).copied().unwrap_or(0) as f64 / total.max(1) as f64;
    let (alpha, beta) = (share("spin_alpha"), share("spin_beta"));
    eprintln!(
        "{}: total {:.3} s, stacks {}, shares {:?}, alpha/(alpha+beta) {:.3}, whole stacks {:.3}",
        run.python.display(),
        total as f64 / 1e9,
        run.holders.stacks.len(),
        by_leaf
            .iter()
            .map(|(n, w)| (*n, format!("{:.3}", *w as f64 / total.max(1) as f64)))
            .collect::<Vec<_>>(),
        alpha / (alpha + beta).max(f64::MIN_POSITIVE),
        whole as f64 / total.max(1) as f64,
    );
    // Tolerances from 25 runs per build (3.11, 3.12, 3.13, musl 3.13; 3 s
    // each): the spinners carried 0.933-0.99 of the wait; nap the rest but
    // for <= 0.5 % elsewhere (thread start-up, UNKNOWN_STACK); a waiter's
    // slice is charged to the holder when it began, and a slice begun during
    // one of nap's microsecond holds sleeps on behind the next spinner (up to
    // the 5 ms interval), hence nap's few percent. Between the two spinners
    // the split was 0.472-0.544: +-0.1 is twice the worst seen, and still
    // fails a capture that names one of them, the wrong code, or garbage.
    if alpha + beta < 0.9 {
        failures.push(format!(
            "only {:.3} of the wait is behind the spinners: {by_leaf:?}",
            alpha + beta
        ));
    }
    if share("other") + share("unknown") > 0.02 {
        failures.push(format!("wait behind no workload function: {by_leaf:?}"));
    }
    let half = alpha / (alpha + beta).max(f64::MIN_POSITIVE);
    if !(0.4..=0.6).contains(&half) {
        failures.push(format!("spin_alpha's part of the spinners' {half:.3}"));
    }
    // Behind the workload's functions, whole stacks (observed >= 0.995).
    let named = alpha + beta + share("nap");
    if (whole as f64) < 0.98 * named * total as f64 {
        failures.push(format!(
            "whole four-frame stacks carry only {whole} of {total} ns"
        ));
    }
    failures
}

/// The futex probe on a glibc build; releasing the process leaves no entry.
fn futex_truth(python: &Path) -> Vec<String> {
    let mut probe = WaitProbe::load().expect("load the wait probe");
    let started = run_workload(python, |interp, gil, walk| {
        probe
            .watch(interp.pid, &[gil.addr], &gil.layout)
            .expect("watch");
        probe
            .capture_holders(interp.pid, walk)
            .expect("capture holders");
    });
    let pid = started.pid;
    let run = Run {
        python: python.to_path_buf(),
        code_start: started.code_start,
        codes: started.codes,
        holders: probe.read_holders(pid).expect("holders"),
        waits: probe.read(pid).expect("counters"),
    };
    let mut failures = check_truth(&run);
    probe.unwatch(pid).expect("unwatch");
    for (map, entries) in probe.entry_counts().expect("counts") {
        if entries != 0 {
            failures.push(format!("map {map} still holds {entries} entries"));
        }
    }
    failures
}

/// musl's condvar probe (the futex probe cannot see GIL waits there).
fn condwait_truth(python: &Path) -> Vec<String> {
    let mut probe = None;
    let started = run_workload(python, |interp, gil, walk| {
        let site = require_measurable_libc(interp)
            .expect("libc")
            .cond_wait
            .expect("musl's condvar wait");
        let mut p = CondWaitProbe::attach(interp.pid, &site).expect("attach");
        p.watch(interp.pid, &[gil.addr], &gil.layout)
            .expect("watch");
        p.capture_holders(interp.pid, walk)
            .expect("capture holders");
        probe = Some(p);
    });
    let probe = probe.expect("attached");
    let pid = started.pid;
    let run = Run {
        python: python.to_path_buf(),
        code_start: started.code_start,
        codes: started.codes,
        holders: probe.read_holders(pid).expect("holders"),
        waits: probe.read(pid).expect("counters"),
    };
    check_truth(&run)
}

fn assert_truth(what: &str, truth: impl Fn() -> Vec<String>) {
    let failures = twice_on_noise(what, truth);
    assert!(failures.is_empty(), "{what}: {failures:#?}");
}

#[test]
fn waits_are_attributed_to_the_holders_code_on_pyenv_311() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv("3.11.7") else {
        return;
    };
    let _machine = serial();
    assert_truth("3.11", || futex_truth(&python));
}

#[test]
fn waits_are_attributed_to_the_holders_code_on_pyenv_312() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv("3.12.1") else {
        return;
    };
    let _machine = serial();
    assert_truth("3.12", || futex_truth(&python));
}

#[test]
fn waits_are_attributed_to_the_holders_code_on_pyenv_313() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv("3.13.0") else {
        return;
    };
    let _machine = serial();
    assert_truth("3.13", || futex_truth(&python));
}

#[test]
fn waits_are_attributed_to_the_holders_code_on_musl_313() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = built_cpython("3.13-musl") else {
        return;
    };
    let _machine = serial();
    assert_truth("musl 3.13", || condwait_truth(&python));
}
