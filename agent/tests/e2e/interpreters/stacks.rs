//! The Python stacks of a running process, read from outside with
//! `cpython::stacks::StackReader`, on every interpreter of the matrix: pyenv
//! 3.8-3.13 and `objcopy --strip-all` copies of each libpython, Debian's
//! stripped static 3.11, the free-threaded 3.13t, musl's 3.13 and Debian sid's
//! 3.14 (and, in `containers`, a CPython in its own PID and mount namespace).
//!
//! The truth is tests/workloads/known_stacks.py: its threads sit in known
//! functions at lines marked in the file itself (`# MARK: NAME`). Every sample
//! of every thread must name each of its frames — function, file, line —
//! exactly as the workload placed them (the spinning thread's line anywhere in
//! its loop), on the tid the thread reported for itself; and no sample may be
//! lost (these threads never leave their frames, so none can change under the
//! reader).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gilscope::core::stacks::{Frame, Stack};
use gilscope::cpython::find::locate::find_interpreter;
use gilscope::cpython::remote::memory::RemoteMemory;
use gilscope::cpython::stacks::StackReader;

use crate::common::*;

/// Samples taken of each process.
const SAMPLES: usize = 20;

/// Line of each `# MARK: NAME` comment of the workload.
pub fn marks(script: &Path) -> HashMap<String, u32> {
    let text = std::fs::read_to_string(script).expect("read the workload");
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let name = line.split("# MARK: ").nth(1)?.trim().to_string();
            Some((name, u32::try_from(i + 1).ok()?))
        })
        .collect()
}

/// What one frame of the workload must be: its function and a line range.
struct Want {
    function: &'static str,
    /// The same function as 3.8-3.10 name it (no qualified names before 3.11).
    unqualified: &'static str,
    lines: (&'static str, &'static str),
}

const fn at(function: &'static str, unqualified: &'static str, mark: &'static str) -> Want {
    Want {
        function,
        unqualified,
        lines: (mark, mark),
    }
}

/// The workload's own frames of each role, root first.
fn truth(role: &str) -> Vec<Want> {
    match role {
        "main" => vec![
            at("<module>", "<module>", "CALL-MAIN"),
            at("main", "main", "CALL-WAIT"),
            at("wait_for_workers", "wait_for_workers", "SLEEP-MAIN"),
        ],
        "spinner" => vec![
            at("run_spinner", "run_spinner", "CALL-ONE"),
            at("level_one", "level_one", "CALL-TWO"),
            at("level_two", "level_two", "CALL-SPIN"),
            Want {
                function: "spin",
                unqualified: "spin",
                lines: ("SPIN-START", "SPIN-END"),
            },
        ],
        _ => vec![
            at("Sleeper.run", "run", "CALL-NAPS"),
            at("Sleeper.naps", "naps", "SLEEP-NAP"),
        ],
    }
}

/// How a stack of `role` fails the truth (empty: it holds).
pub fn stack_failures(
    role: &str,
    stack: &Stack,
    script: &str,
    marks: &HashMap<String, u32>,
    qualified: bool,
) -> Vec<String> {
    let want = truth(role);
    let mut failures = Vec::new();
    let frames = &stack.frames;
    if stack.truncated || frames.len() < want.len() {
        return vec![format!("{role}: stack {frames:?}")];
    }
    let (outer, own) = frames.split_at(frames.len() - want.len());
    for (w, got) in want.iter().zip(own) {
        let function = if qualified { w.function } else { w.unqualified };
        let (lo, hi) = (marks[w.lines.0], marks[w.lines.1]);
        let line_ok = got.line.is_some_and(|l| (lo..=hi).contains(&l));
        if got.function != function || got.file != script || !line_ok {
            failures.push(format!(
                "{role}: frame {got:?}, want {function} in {script} at {lo}..={hi}"
            ));
        }
    }
    // Threads start in threading.py's bootstrap; the main thread in the module.
    let bootstrap_ok = |f: &Frame| f.file.ends_with("threading.py") && f.line.is_some();
    let outer_ok = match role {
        "main" => outer.is_empty(),
        _ => {
            !outer.is_empty()
                && outer.iter().all(bootstrap_ok)
                && outer[0].function.ends_with("_bootstrap")
        }
    };
    if !outer_ok {
        failures.push(format!("{role}: frames before the workload's: {outer:?}"));
    }
    failures
}

/// The workload, killed on drop; `tids` are what its threads said they are.
struct Running {
    child: Child,
    tids: HashMap<String, u32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(case: &Case, script: &str) -> Running {
    let mut cmd = Command::new(&case.python);
    cmd.arg(script)
        .arg("120")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = &case.lib_dir {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    let mut child = cmd.spawn().expect("start the workload");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running {
        child,
        tids: HashMap::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.tids.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{}: the workload never got ready", case.label));
        let mut parts = line.split_whitespace();
        if let (Some("ready"), Some(role), Some(tid)) = (parts.next(), parts.next(), parts.next()) {
            let tid = tid.parse().expect("a tid");
            running.tids.insert(role.to_string(), tid);
        }
    }
    // Let each thread reach the frame it stays in.
    std::thread::sleep(Duration::from_millis(300));
    running
}

/// Samples every thread's stack of one interpreter; returns what did not hold.
fn check_case(case: &Case, script: &str, marks: &HashMap<String, u32>) -> Vec<String> {
    let running = start(case, script);
    let pid = running.child.id();
    let interp = find_interpreter(pid)
        .unwrap_or_else(|e| panic!("{}: {e}", case.label))
        .unwrap_or_else(|| panic!("{}: no interpreter in {pid}", case.label));
    let mut reader = StackReader::new(&interp, RemoteMemory::new(pid))
        .unwrap_or_else(|e| panic!("{}: {e}", case.label));
    let minor: u32 = case
        .line
        .strip_prefix("3.")
        .and_then(|m| m.parse().ok())
        .expect("a 3.X line");
    let qualified = minor >= 11;
    let mut failures = Vec::new();
    let mut last = HashMap::new();
    let mut reading = Duration::ZERO;
    for _ in 0..SAMPLES {
        let t0 = Instant::now();
        let stacks = reader.thread_stacks();
        reading += t0.elapsed();
        if stacks.len() != 3 {
            failures.push(format!("{} threads read: {stacks:?}", stacks.len()));
        }
        for (role, tid) in &running.tids {
            match stacks.get(tid) {
                Some(s) => failures.extend(stack_failures(role, s, script, marks, qualified)),
                None => failures.push(format!("no stack for {role} (tid {tid}): {stacks:?}")),
            }
        }
        last = stacks;
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = reader.counts();
    if counts.read != 3 * SAMPLES as u64 || counts.failed() != 0 {
        failures.push(format!("samples lost: {counts:?}"));
    }
    if let Some(spinner) = running.tids.get("spinner").and_then(|t| last.get(t)) {
        let shown: Vec<String> = spinner
            .frames
            .iter()
            .map(|f| format!("{}:{}", f.function, f.line.unwrap_or(0)))
            .collect();
        eprintln!(
            "{}: spinner {} ({:.0} µs a round of 3 threads)",
            case.label,
            shown.join(" > "),
            reading.as_secs_f64() * 1e6 / SAMPLES as f64
        );
    }
    failures.dedup();
    failures
        .into_iter()
        .take(8)
        .map(|f| format!("{}: {f}", case.label))
        .collect()
}

/// The interpreters of the matrix plus the free-threaded and musl builds.
fn matrix() -> Vec<Case> {
    let mut cases = interpreter_matrix("stacks");
    for (name, label) in [
        ("3.13t", "CPython 3.13t (free-threaded)"),
        ("3.13-musl", "CPython 3.13 (musl, static)"),
    ] {
        if let Some(python) = built_cpython(name) {
            cases.push(Case {
                label: label.into(),
                python,
                lib_dir: None,
                line: "3.13".into(),
            });
        }
    }
    cases
}

/// The workload's path as the interpreter names it in code objects.
pub fn script() -> (String, HashMap<String, u32>) {
    let script = workload("known_stacks.py");
    let marks = marks(&PathBuf::from(&script));
    assert!(marks.len() >= 10, "the workload's marks: {marks:?}");
    (script, marks)
}

#[test]
fn every_threads_stack_is_read_from_outside_on_every_interpreter() {
    let (script, marks) = script();
    let mut failures = Vec::new();
    for case in matrix() {
        let _machine = serial();
        failures.extend(check_case(&case, &script, &marks));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The tid of `pid`'s task `tid` in the process's own PID namespace (the last
/// entry of its `NSpid:` line).
fn namespace_tid(pid: u32, tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Which workload thread a stack is, by its innermost function.
fn role_of(stack: &Stack) -> &'static str {
    match stack.frames.last().map(|f| f.function.as_str()) {
        Some("spin") => "spinner",
        Some("Sleeper.naps") => "sleeper",
        _ => "main",
    }
}

/// In a container the interpreter, the script and the tids CPython records
/// are the container's: the stacks must name the container's paths
/// (`/app/known_stacks.py`) on the host's tids of the right threads.
fn check_container(container: &crate::common::container::Container, label: &str) -> Vec<String> {
    let pid = container.pid;
    let (_, marks) = script();
    let script = "/app/known_stacks.py";
    let interp = find_interpreter(pid)
        .unwrap_or_else(|e| panic!("{label}: {e}"))
        .unwrap_or_else(|| panic!("{label}: no interpreter in {pid}"));
    let mut reader = StackReader::new(&interp, RemoteMemory::new(pid))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    // Until the threads reach their frames (no output to wait for here).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stacks = reader.thread_stacks();
        let roles: Vec<&str> = stacks.values().map(role_of).collect();
        if roles.contains(&"spinner") && roles.contains(&"sleeper") && stacks.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{label}: {stacks:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = reader.counts();
    let mut failures = Vec::new();
    for _ in 0..SAMPLES {
        let stacks = reader.thread_stacks();
        let mut roles: Vec<&str> = stacks.values().map(role_of).collect();
        roles.sort_unstable();
        if roles != ["main", "sleeper", "spinner"] {
            failures.push(format!("{label}: threads {stacks:?}"));
        }
        for (tid, stack) in &stacks {
            let role = role_of(stack);
            failures.extend(stack_failures(role, stack, script, &marks, true));
            // A host tid of this process, not the namespace's own number.
            let own = namespace_tid(pid, *tid);
            let right_thread = if role == "main" {
                *tid == pid && own == Some(1)
            } else {
                own.is_some_and(|o| o != *tid)
            };
            if !right_thread {
                failures.push(format!("{label}: {role} on tid {tid} (own {own:?})"));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = reader.counts();
    if counts.read - before.read != 3 * SAMPLES as u64 || counts.failed() != before.failed() {
        failures.push(format!("{label}: samples lost: {counts:?}"));
    }
    failures.dedup();
    failures.into_iter().take(8).collect()
}

#[test]
fn stacks_are_read_from_a_python_in_its_own_pid_and_mount_namespace() {
    use crate::common::container::{build_rootfs, start_app, Isolation};
    let Some(python) = pyenv_python311() else {
        return;
    };
    let rootfs = build_rootfs(&python, "stacks");
    let mut failures = Vec::new();
    for isolation in [Isolation::PivotRoot, Isolation::Chroot] {
        let _machine = serial();
        let container = start_app(&rootfs, isolation, &["/app/known_stacks.py", "60"]);
        failures.extend(check_container(&container, &format!("{isolation:?}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
