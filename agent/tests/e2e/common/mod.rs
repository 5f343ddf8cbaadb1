//! Shared helpers of the end-to-end tests: finding interpreters and workloads,
//! running `gilscope check`, and deciding whether a missing capability is a skip
//! (a developer's laptop) or a failure (CI=true).

#![allow(dead_code)]

pub mod container;
pub mod daemon;
pub mod kernel;
pub mod kube_api;
pub mod quota;
pub mod receivers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// Measurements of CPU and GIL wait are only true when one workload runs at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The machine held by one measuring test: this process's lock, and a file
/// lock that other test processes (other checkouts on the same machine) honour.
pub struct Machine {
    _in_process: MutexGuard<'static, ()>,
    _across_processes: Option<std::fs::File>,
}

/// Holds the machine for one measuring test.
pub fn serial() -> Machine {
    let in_process = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("gilscope-e2e-machine.lock"))
        .ok();
    if let Some(f) = &file {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; released when it is closed.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    }
    Machine {
        _in_process: in_process,
        _across_processes: file,
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (loudly) outside CI, fails under CI=true.
pub fn missing(what: &str) -> bool {
    if in_ci() {
        panic!("CI=true and {what}: this test must run in CI");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// True when BPF programs can be loaded here (root and kernel BTF).
pub fn can_use_bpf() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing("not root: loading BPF programs needs root (or CAP_BPF+CAP_PERFMON)");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return missing("no kernel BTF at /sys/kernel/btf/vmlinux");
    }
    true
}

/// pyenv's CPython 3.11 (shared libpython with symbols).
pub fn pyenv_python311() -> Option<PathBuf> {
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let mut found: Vec<PathBuf> = std::fs::read_dir(Path::new(&root).join("versions"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("3.11."))
        .map(|e| e.path().join("bin/python3.11"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => Some(p),
        None => {
            missing(&format!("no pyenv CPython 3.11 under {root}/versions"));
            None
        }
    }
}

/// pyenv's CPython 3.11 in the venv of tests/apps/install.sh, where the PyPI
/// packages the tests run (uvloop, FastAPI, uvicorn) are installed.
pub fn apps_python311() -> Option<PathBuf> {
    let root = std::env::var("GILSCOPE_APPS").unwrap_or_else(|_| "/var/cache/gilscope/apps".into());
    let python = Path::new(&root).join("venv/bin/python");
    let has_apps = Command::new(&python)
        .args(["-c", "import uvloop, fastapi, uvicorn"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_apps {
        Some(python)
    } else {
        missing(&format!(
            "no venv with uvloop, fastapi and uvicorn at {}: run bash tests/apps/install.sh",
            python.display()
        ));
        None
    }
}

/// Debian's stripped, static, LTO-built /usr/bin/python3.11.
pub fn debian_python311() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/python3.11");
    if path.exists() {
        Some(path)
    } else {
        missing("Debian's /usr/bin/python3.11 is not installed (apt-get install python3.11)");
        None
    }
}

/// The path `tests/interpreters/SCRIPT ARGS...` prints, if the script succeeds and
/// the path exists; otherwise [`missing`] with `hint` (how to get it).
fn path_printed_by(script: &str, args: &[&str], hint: &str) -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/interpreters")
        .join(script);
    let out = Command::new("bash").arg(script).args(args).output().ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.exists() {
        Some(path)
    } else {
        missing(hint);
        None
    }
}

/// Asks tests/interpreters/fetch-debian-python.sh for a path it prints (`what`:
/// `--print-path` or `--print-debug-file`) of interpreter `name`, if fetched.
fn fetched_debian_python(what: &str, name: &str) -> Option<PathBuf> {
    path_printed_by(
        "fetch-debian-python.sh",
        &[what, name],
        &format!(
            "Debian sid's CPython {name} is not fetched: run bash tests/interpreters/fetch-debian-python.sh {name}"
        ),
    )
}

/// An interpreter built by tests/interpreters/build-cpython.sh (`3.13t`, `3.13-musl`).
pub fn built_cpython(name: &str) -> Option<PathBuf> {
    path_printed_by(
        "build-cpython.sh",
        &["--print-path", name],
        &format!(
            "CPython {name} is not built: run bash tests/interpreters/build-cpython.sh {name}"
        ),
    )
}

/// Debian sid's CPython 3.14 (static, stripped, LTO; needs sid's glibc): the
/// launcher script that runs it through sid's loader, so the process's
/// executable is `ld-linux-x86-64.so.2` and the interpreter a mapped file.
pub fn debian_python314() -> Option<PathBuf> {
    fetched_debian_python("--print-path", "3.14")
}

/// The DWARF of Debian sid's stripped `python3.14` (from python3.14-dbg, same build id).
pub fn debian_python314_debug_file() -> Option<PathBuf> {
    fetched_debian_python("--print-debug-file", "3.14")
}

/// Both 3.11 interpreters of the acceptance matrix that exist here.
pub fn interpreters311() -> Vec<PathBuf> {
    pyenv_python311()
        .into_iter()
        .chain(debian_python311())
        .collect()
}

/// A workload script in tests/workloads.
pub fn workload(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/workloads")
        .join(name);
    path.canonicalize()
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The gilscope binary under test.
pub fn gilscope() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gilscope"))
}

/// Runs `gilscope check --json ARGS`, asserts exit 0, returns the document.
pub fn check_json(args: &[&str]) -> Value {
    check_json_with(gilscope().arg("check").arg("--json").args(args))
}

/// `gilscope check FLAGS -- PYTHON tests/workloads/SCRIPT ARGS...`, to run as it is
/// or with more settings (environment, pipes).
pub fn check_command(flags: &[&str], python: &Path, script: &str, args: &[&str]) -> Command {
    let mut cmd = gilscope();
    cmd.arg("check")
        .args(flags)
        .arg("--")
        .arg(python)
        .arg(workload(script))
        .args(args);
    cmd
}

/// `gilscope check --json -- PYTHON tests/workloads/SCRIPT ARGS...`, asserts exit 0.
pub fn check_workload(python: &Path, script: &str, args: &[&str]) -> Value {
    check_json_with(&mut check_command(&["--json"], python, script, args))
}

/// As [`check_workload`], measured again (at most three times in all) while
/// `holds` is false and the run queue shows that other processes took the
/// cores: the workload's `runnable` threads explain `max(0, runnable - cores)`
/// walls of run-queue wait, and more than 0.25 wall beyond that is a
/// neighbour's. A claim that fails on a quiet machine fails at once; the
/// claim itself is never loosened.
pub fn check_workload_uncrowded(
    python: &Path,
    script: &str,
    args: &[&str],
    runnable: f64,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    let mut doc = check_workload(python, script, args);
    for _ in 1..3 {
        if holds(&doc) || !crowded(&doc, runnable) {
            break;
        }
        eprintln!(
            "re-measuring {script}: neighbours took the cores: {}",
            doc["process"]
        );
        doc = check_workload(python, script, args);
    }
    doc
}

/// True when the run-queue wait of a `check --json` report is more than the
/// workload's own `runnable` threads explain (see [`check_workload_uncrowded`]).
pub fn crowded(doc: &Value, runnable: f64) -> bool {
    let process = &doc["process"];
    let wall = process["wall_s"].as_f64().unwrap_or(0.0);
    let cores = process["cores_available"].as_f64().unwrap_or(1.0);
    let own = (runnable - cores).max(0.0) * wall;
    process["runqueue_wait_s"].as_f64().unwrap_or(0.0) > own + 0.25 * wall
}

/// The text report of `gilscope check -- PYTHON tests/workloads/SCRIPT ARGS...`,
/// asserting exit 0.
pub fn check_text(python: &Path, script: &str, args: &[&str]) -> String {
    let out = check_command(&[], python, script, args)
        .output()
        .expect("run gilscope");
    assert_success(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// As [`check_json`] with a prepared command (extra env, etc.).
pub fn check_json_with(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run gilscope");
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "gilscope failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Threads other than the main thread (tid == pid).
pub fn workers(doc: &Value) -> Vec<Value> {
    let pid = doc["pid"].as_u64().expect("pid");
    doc["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter(|t| t["tid"].as_u64() != Some(pid))
        .cloned()
        .collect()
}

pub fn diagnosis_kinds(doc: &Value) -> Vec<String> {
    doc["diagnosis"]
        .as_array()
        .expect("diagnosis")
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// pyenv's interpreters of the release lines 3.8-3.13: (line "3.X", python path, libpython path).
pub fn pyenv_matrix() -> Vec<(String, PathBuf, PathBuf)> {
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let mut out = Vec::new();
    for minor in 8..=13u8 {
        let prefix = format!("3.{minor}.");
        let dir = std::fs::read_dir(format!("{root}/versions"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .max();
        let Some(dir) = dir else {
            missing(&format!(
                "no pyenv build of 3.{minor} under {root}/versions"
            ));
            continue;
        };
        let python = dir.join(format!("bin/python3.{minor}"));
        let lib = dir.join(format!("lib/libpython3.{minor}.so.1.0"));
        if python.exists() && lib.exists() {
            out.push((format!("3.{minor}"), python, lib));
        } else {
            missing(&format!(
                "{} lacks bin/python3.{minor} or a shared libpython",
                dir.display()
            ));
        }
    }
    out
}

/// `objcopy --strip-all` of `lib` into a fresh directory named after `tag`.
pub fn stripped_copy(lib: &Path, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gilscope-stripped-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join(lib.file_name().expect("file name"));
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(lib)
        .arg(&copy)
        .status()
        .expect("objcopy (binutils) must be installed");
    assert!(status.success(), "objcopy failed on {}", lib.display());
    copy
}

/// Runs a measuring check, and once more if it failed: on a 2-vCPU VM a wake-up
/// can stall for a while and push one run just past a bound. A wrong measurement
/// fails both runs; both runs' failures are reported then, the first is logged.
pub fn twice_on_noise(label: &str, measure: impl Fn() -> Vec<String>) -> Vec<String> {
    let first = measure();
    if first.is_empty() {
        return first;
    }
    eprintln!(
        "{label}: first run failed, measuring again (VM noise?):\n  {}",
        first.join("\n  ")
    );
    let second = measure();
    if second.is_empty() {
        return second;
    }
    first
        .into_iter()
        .map(|f| format!("run 1: {f}"))
        .chain(second.into_iter().map(|f| format!("run 2: {f}")))
        .collect()
}

/// Checks one measured claim on each 3.11 interpreter of the acceptance matrix
/// (pyenv's and Debian's), holding the machine, and measures once more when it
/// fails ([`twice_on_noise`]); `check` gets the python and a label for its
/// messages and says what did not hold.
pub fn assert_on_each_311(check: impl Fn(&Path, &str) -> Vec<String>) {
    for python in interpreters311() {
        let _machine = serial();
        let label = python.display().to_string();
        let failures = twice_on_noise(&label, || check(&python, &label));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// The free-threaded CPython 3.13t built by tests/interpreters/build-cpython.sh.
pub fn python313t() -> Option<PathBuf> {
    built_cpython("3.13t")
}

/// One interpreter of the test matrix: a label, the python binary, and a library
/// directory to put first on LD_LIBRARY_PATH (for stripped copies).
pub struct Case {
    pub label: String,
    pub python: PathBuf,
    pub lib_dir: Option<PathBuf>,
    /// The release line gilscope must report ("3.14"): the right file was read.
    pub line: String,
}

impl Case {
    /// `gilscope check --json FLAGS -- PYTHON WORKLOAD...` for this interpreter.
    pub fn check(&self, flags: &[&str], workload_args: &[&str]) -> Value {
        let mut cmd = gilscope();
        cmd.args(["check", "--json"])
            .args(flags)
            .arg("--")
            .arg(&self.python)
            .args(workload_args);
        if let Some(dir) = &self.lib_dir {
            cmd.env("LD_LIBRARY_PATH", dir);
        }
        check_json_with(&mut cmd)
    }
}

/// Checks one claim on every interpreter of `cases`, each holding the machine;
/// `check` says what did not hold for one. Fails with the failures of all of
/// them at once, so one run shows the whole matrix.
pub fn assert_on_every_case(cases: &[Case], check: impl Fn(&Case) -> Vec<String>) {
    let mut failures = Vec::new();
    for case in cases {
        let _machine = serial();
        failures.extend(check(case));
    }
    assert!(
        failures.is_empty(),
        "{} interpreters, failures:\n{}",
        cases.len(),
        failures.join("\n")
    );
}

/// Every GIL interpreter here: pyenv 3.8-3.13, an `objcopy --strip-all` copy of
/// each libpython (made under a name with `tag`), Debian's static stripped 3.11
/// and Debian sid's 3.14.
pub fn interpreter_matrix(tag: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    for (line, python, lib) in pyenv_matrix() {
        cases.push(Case {
            label: format!("pyenv {line}"),
            python: python.clone(),
            lib_dir: None,
            line: line.clone(),
        });
        let stripped = stripped_copy(&lib, &format!("{tag}-{line}"));
        cases.push(Case {
            label: format!("pyenv {line} stripped"),
            python,
            lib_dir: stripped.parent().map(Path::to_path_buf),
            line,
        });
    }
    if let Some(python) = debian_python311() {
        cases.push(Case {
            label: "Debian 3.11 (static, stripped)".into(),
            python,
            lib_dir: None,
            line: "3.11".into(),
        });
    }
    if let Some(python) = debian_python314() {
        cases.push(Case {
            label: "Debian sid 3.14 (static, stripped, through sid's loader)".into(),
            python,
            lib_dir: None,
            line: "3.14".into(),
        });
    }
    cases
}
