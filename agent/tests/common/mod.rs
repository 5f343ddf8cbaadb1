//! Shared helpers of the end-to-end tests: finding interpreters and workloads,
//! running `gilscope check`, and deciding whether a missing capability is a skip
//! (a developer's laptop) or a failure (CI=true).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// Measurements of CPU and GIL wait are only true when one workload runs at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the machine for one measuring test.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
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
