//! The DaemonSet's capability list is enough, and each capability in it is needed.
//!
//! The list is read from `deploy/manifests/daemonset.yaml` itself, so the manifest,
//! its README table and this test cannot drift. gilscope runs as uid `nobody` with
//! exactly those capabilities (ambient, through `capsh`), against a workload owned by
//! root whose interpreter sits in a root-only (0700) directory, as a container's
//! files do for an agent of another uid. With the full list it must measure the
//! 4-thread truth; without any one capability it must refuse, with a message that
//! names the capability where gilscope can tell which one failed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// `capabilities.add` of the gilscope container in the plain DaemonSet manifest.
fn manifest_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manifests/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("read deploy/manifests/daemonset.yaml");
    let doc: Value = serde_norway::from_str(&text).expect("daemonset.yaml is YAML");
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|c| c["name"] == "gilscope")
        .expect("a container named gilscope");
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]), "drop ALL first");
    let add: Vec<String> = caps["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("capability name").to_string())
        .collect();
    assert!(!add.is_empty(), "capabilities.add is empty");
    assert!(
        !add.iter().any(|c| c == "SYS_ADMIN"),
        "SYS_ADMIN is opt-in (uprobes), not in the default list: {add:?}"
    );
    add
}

/// `BPF` -> `cap_bpf` (capsh's spelling).
fn capsh_name(cap: &str) -> String {
    format!("cap_{}", cap.to_ascii_lowercase())
}

/// True when capsh exists and this process may hand capabilities to `nobody`.
fn can_drop_to_nobody() -> bool {
    if !can_use_bpf() {
        return false;
    }
    if Command::new("capsh").arg("--help").output().is_err() {
        return missing(
            "capsh is not installed (apt-get install libcap2-bin; tests/setup.sh does)",
        );
    }
    true
}

/// A directory only root may enter, holding a copy of Debian's python3.11, and a
/// world-readable directory holding a copy of the gilscope binary (nobody must be
/// able to execute it wherever the build tree lives).
struct Scratch {
    root: PathBuf,
    python: PathBuf,
    gilscope: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Option<Self> {
        let system_python = debian_python311()?;
        let root = std::env::temp_dir().join(format!("gilscope-caps-{tag}-{}", std::process::id()));
        let private = root.join("private");
        let public = root.join("public");
        std::fs::create_dir_all(&private).expect("mkdir private");
        std::fs::create_dir_all(&public).expect("mkdir public");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let python = private.join("python3.11");
        std::fs::copy(&system_python, &python).expect("copy python3.11");
        let gilscope = public.join("gilscope");
        std::fs::copy(env!("CARGO_BIN_EXE_gilscope"), &gilscope).expect("copy gilscope");
        std::fs::set_permissions(&gilscope, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Some(Self {
            root,
            python,
            gilscope,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The workload, owned by root (this test runs as root), killed when dropped.
struct Workload(Child);

impl Workload {
    fn start(python: &Path) -> Self {
        let child = Command::new(python)
            .arg(workload("cpu_threads.py"))
            .args(["4", "120", "capabilities-test-workload"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start cpu_threads.py");
        // Let the interpreter start its threads before it is looked at.
        std::thread::sleep(Duration::from_millis(700));
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gilscope check --json --pid PID --duration 3s`, as nobody with exactly `caps`
/// (permitted, effective, inheritable and ambient), nothing else.
fn check_as_nobody(gilscope: &Path, caps: &[String], pid: u32) -> Output {
    let pid = pid.to_string();
    as_nobody(
        gilscope,
        caps,
        &["check", "--json", "--duration", "3s", "--pid", &pid],
    )
}

/// `gilscope ARGS` as nobody with exactly `caps`.
fn as_nobody(gilscope: &Path, caps: &[String], args: &[&str]) -> Output {
    let list: Vec<String> = caps.iter().map(|c| capsh_name(c)).collect();
    let list = list.join(",");
    let mut cmd = Command::new("capsh");
    // capsh needs setuid/setgid/setpcap itself to switch user; they are not in the
    // set it keeps (--caps) and are gone after --user.
    if list.is_empty() {
        cmd.arg("--caps=cap_setpcap,cap_setuid,cap_setgid+ep");
    } else {
        cmd.arg(format!(
            "--caps={list}+eip cap_setpcap,cap_setuid,cap_setgid+ep"
        ));
    }
    cmd.args(["--keep=1", "--user=nobody"]);
    if !list.is_empty() {
        cmd.arg(format!("--addamb={list}"));
    }
    cmd.arg(format!("--shell={}", gilscope.display()))
        .arg("--")
        .args(args);
    cmd.output().expect("run capsh")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What is wrong with a measurement of the 4-thread workload (same bounds as
/// check_measures_truth.rs); empty when it is right.
fn four_thread_truth(doc: &Value) -> Vec<String> {
    let p = &doc["process"];
    let wall = f(p, "wall_s");
    let mut wrong = vec![];
    if f(p, "gil_utilization") < 0.9 {
        wrong.push(format!("utilization below 0.9: {p}"));
    }
    let workers = workers(doc);
    if workers.len() != 4 {
        wrong.push(format!("{} workers, not 4", workers.len()));
    }
    for w in &workers {
        let share = f(w, "gil_wait_s") / wall;
        if !(0.55..=0.85).contains(&share) {
            wrong.push(format!("worker waits {share:.3} of wall: {w}"));
        }
    }
    wrong
}

#[test]
fn the_manifest_capabilities_are_enough_and_each_is_needed() {
    if !can_drop_to_nobody() {
        return;
    }
    let caps = manifest_capabilities();
    let _machine = serial();
    let Some(scratch) = Scratch::new("check") else {
        return;
    };
    let work = Workload::start(&scratch.python);

    // The whole list: a non-root agent measures a root-owned process.
    let label = format!("nobody with {caps:?}");
    let measured = twice_on_noise(&label, || {
        let out = check_as_nobody(&scratch.gilscope, &caps, work.pid());
        assert_success(&out);
        let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
        four_thread_truth(&doc)
    });
    assert!(measured.is_empty(), "{measured:?}");

    // Each one removed: gilscope must refuse rather than report a wrong measurement.
    for dropped in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let out = check_as_nobody(&scratch.gilscope, &fewer, work.pid());
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "without {dropped}, gilscope must exit 2 (user error), got {}:\n{err}",
            out.status
        );
        eprintln!("without CAP_{dropped}: {}", err.trim());
        // gilscope knows which capability a BPF load or attach needed; a /proc read
        // that fails says what it could not read.
        if dropped == "BPF" || dropped == "PERFMON" {
            assert!(
                err.contains(&format!("CAP_{dropped}")),
                "the message must name CAP_{dropped}:\n{err}"
            );
        } else {
            // A file or /proc entry it may not read is a permission problem, not
            // "not a CPython process".
            assert!(
                err.contains("permission denied") && !err.contains("not a CPython process"),
                "without {dropped} the message must say permission denied:\n{err}"
            );
        }
        assert!(!err.trim().is_empty(), "without {dropped}: no message");
    }

    // Nothing at all: the BPF load is refused and the message says what to grant.
    let out = check_as_nobody(&scratch.gilscope, &[], work.pid());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for cap in &caps {
        assert!(
            err.contains(&format!("CAP_{cap}")),
            "the advice names CAP_{cap}:\n{err}"
        );
    }
}

/// `(GIL held %, queue length)` of `pid` in each interval line of the daemon's summary
/// (`pid N name  GIL held 100%  queue  2.33  …`).
fn summary_intervals(stdout: &str, pid: u32) -> Vec<(f64, f64)> {
    let pid = pid.to_string();
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() != Some(&"pid") || words.get(1) != Some(&pid.as_str()) {
                return None;
            }
            let after = |key: &str| {
                let i = words.iter().position(|w| *w == key)?;
                words.get(i + 1)?.trim_end_matches('%').parse::<f64>().ok()
            };
            Some((after("held")?, after("queue")?))
        })
        .collect()
}

#[test]
fn the_daemon_watches_a_root_process_with_the_manifest_capabilities() {
    if !can_drop_to_nobody() {
        return;
    }
    let caps = manifest_capabilities();
    let _machine = serial();
    let Some(scratch) = Scratch::new("run") else {
        return;
    };
    let work = Workload::start(&scratch.python);
    let out = as_nobody(
        &scratch.gilscope,
        &caps,
        &[
            "run",
            "--duration",
            "7s",
            "--interval",
            "3s",
            "--sample-hz",
            "50",
            "--include-cmdline",
            "capabilities-test-workload",
        ],
    );
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let intervals = summary_intervals(&stdout, work.pid());
    // Two full 3 s intervals (the first starts when the process is found); 4
    // CPU-bound threads: the GIL is held nearly always and 2-3 threads wait for it
    // (1.5 leaves room for a loaded 2-core machine).
    assert!(
        intervals.len() >= 2,
        "the daemon reported the workload:\n{stdout}"
    );
    let full = &intervals[..2];
    assert!(
        full.iter().any(|&(held, _)| held >= 90.0),
        "GIL held >= 90 % in a full interval:\n{stdout}"
    );
    assert!(
        full.iter().all(|&(_, queue)| queue >= 1.5),
        "queue >= 1.5 in each full interval:\n{stdout}"
    );
    assert!(stdout.contains("gil_serialized_threads"), "{stdout}");
}
