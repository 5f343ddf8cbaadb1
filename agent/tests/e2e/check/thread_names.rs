//! Every thread of the report carries the name the Python program gave it, read
//! from the target's memory, on every interpreter of the matrix: pyenv 3.8-3.13,
//! `objcopy --strip-all` copies of each libpython (no DWARF at run time), Debian's
//! stripped static 3.11, the free-threaded 3.13t and Debian sid's 3.14. The
//! workload's truth: `MainThread`, `cpu-0`/`cpu-1`, a `Dummy-1` started by
//! `_thread`, and two pool threads `pool_0`/`pool_1`; up to 3.13 none renames its
//! OS thread, so `os_name` is the interpreter's comm; 3.14 gives `threading`
//! threads their Python name as OS name too (cut to 15 bytes).

use std::path::Path;

use crate::common::*;
use serde_json::Value;

/// The names tests/workloads/named_threads.py gives its threads, in the order it
/// starts them.
const NAMED_THREADS: [&str; 6] = [
    "MainThread",
    "cpu-0",
    "cpu-1",
    "Dummy-1",
    "pool_0",
    "pool_1",
];

fn matrix() -> Vec<Case> {
    let mut cases = interpreter_matrix("names");
    if let Some(python) = python313t() {
        cases.push(Case {
            label: "CPython 3.13t (free-threaded)".into(),
            python,
            lib_dir: None,
            line: "3.13".into(),
        });
    }
    cases
}

/// What the kernel calls a thread of `python`: its file name, cut to 15 bytes.
fn comm_of(python: &Path) -> String {
    let name = python
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(15).collect()
}

fn python_names(doc: &Value) -> Vec<String> {
    doc["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter_map(|t| t["python_name"].as_str().map(str::to_string))
        .collect()
}

/// The names one interpreter must show; returns what did not hold.
fn check_names(case: &Case) -> Vec<String> {
    let label = &case.label;
    let doc = case.check(&[], &[&workload("named_threads.py"), "2", "1.5"]);
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{label}: {what}"));
    if case.lib_dir.is_some() && doc["interpreter"]["stripped"] != true {
        fail(format!(
            "the stripped copy was not measured: {}",
            doc["interpreter"]
        ));
    }
    let pid = doc["pid"].as_u64().expect("pid");
    let threads = doc["threads"].as_array().expect("threads");
    let main = threads.iter().find(|t| t["tid"].as_u64() == Some(pid));
    match main {
        Some(m) if m["python_name"] == "MainThread" && m["name"] == "MainThread" => {}
        other => fail(format!("main thread not named MainThread: {other:?}")),
    }
    let names = python_names(&doc);
    // Each name must sit on the right tid: threads start in this order, so their
    // tids (the report's order after the main thread) ascend the same way.
    if names != NAMED_THREADS {
        fail(format!(
            "names in tid order {names:?}, started as {NAMED_THREADS:?}"
        ));
    }
    // And the sleeping dummy thread used less CPU than any spinning one.
    let cpu_of = |name: &str| {
        threads
            .iter()
            .find(|t| t["python_name"] == name)
            .map_or(f64::NAN, |t| f(t, "cpu_s"))
    };
    let dummy_is_idlest = cpu_of("Dummy-1") < cpu_of("cpu-0").min(cpu_of("cpu-1"));
    if !dummy_is_idlest {
        fail(format!(
            "Dummy-1 used {} s of CPU, cpu-0/cpu-1 {}/{} s",
            cpu_of("Dummy-1"),
            cpu_of("cpu-0"),
            cpu_of("cpu-1")
        ));
    }
    for want in ["cpu-0", "cpu-1", "Dummy-1"] {
        if !names.iter().any(|n| n == want) {
            fail(format!("no thread named {want}: {names:?}"));
        }
    }
    let pool = names.iter().filter(|n| n.starts_with("pool")).count();
    if pool != 2 {
        fail(format!("{pool} pool threads (want 2): {names:?}"));
    }
    if names.len() != threads.len() {
        fail(format!(
            "{} of {} threads named: {names:?}",
            names.len(),
            threads.len()
        ));
    }
    let comm = comm_of(&case.python);
    for t in threads {
        let os_name = t["os_name"].as_str().unwrap_or_default();
        let python_name: String = t["python_name"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(15)
            .collect();
        // 3.14 runs here through sid's loader, whose name the threads it did not rename keep.
        let loader_named = case.label.contains("3.14") && os_name == "ld-linux-x86-64";
        let renamed_by_314 = case.label.contains("3.14") && os_name == python_name;
        if os_name != comm.as_str() && !loader_named && !renamed_by_314 {
            fail(format!("os_name {} is not the comm {comm}", t["os_name"]));
        }
        if !t["python_name"].is_null() && t["name"] != t["python_name"] {
            fail(format!(
                "name {} is not the python name {}",
                t["name"], t["python_name"]
            ));
        }
    }
    eprintln!("{label}: {names:?}");
    failures
}

#[test]
fn every_thread_is_named_as_the_program_named_it_on_every_interpreter() {
    if !can_use_bpf() {
        return;
    }
    assert_on_every_case(&matrix(), check_names);
}

#[test]
fn the_text_report_shows_the_python_names_of_threads_and_of_gil_holders() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let text = check_text(&python, "named_threads.py", &["2", "1"]);
    for name in NAMED_THREADS {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} is not in the thread table:\n{text}"
        );
    }
    // "blocked by" names the holders too: cpu-0 waited behind the other spinners.
    let cpu0 = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("cpu-0"))
        .unwrap_or_default();
    assert!(
        ["cpu-1", "pool_0", "pool_1"]
            .iter()
            .any(|holder| cpu0.contains(&format!("{holder} "))),
        "cpu-0's holders are not named: {cpu0}"
    );
}

#[test]
fn a_running_process_attached_by_pid_has_its_threads_named_too() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let mut child = std::process::Command::new(&python)
        .args([&workload("named_threads.py"), "2", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start python");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let pid = child.id().to_string();
    let doc = check_json(&["--pid", &pid, "--duration", "1s"]);
    let _ = child.kill();
    let _ = child.wait();
    let names = python_names(&doc);
    for want in NAMED_THREADS {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}
