//! CPython on musl (built with musl-gcc by tests/interpreters/build-cpython.sh
//! 3.13-musl, like Alpine's): its condvar waiters sleep on their own stack, so
//! GIL waits are measured at musl's condvar wait instead of from futex
//! addresses — and must read the same as on glibc: four CPU-bound threads
//! serialize, and a single-thread ping-pong neither waits nor even reaches the
//! probe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn python313_musl() -> Option<PathBuf> {
    built_cpython("3.13-musl")
}

/// The static build next to the shared-libc `python`, made by the same recipe:
/// musl linked in, `__pthread_cond_timedwait` only in `.symtab`.
fn static_build_beside(python: &Path) -> PathBuf {
    let mut name = python.file_name().unwrap_or_default().to_os_string();
    name.push("-static");
    python.with_file_name(name)
}

#[test]
fn four_cpu_bound_threads_on_musl_serialize_on_the_gil() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313_musl() else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("musl cpu_threads", || {
        let mut failures = Vec::new();
        let doc = check_workload(&python, "cpu_threads.py", &["4", "5"]);
        if doc["interpreter"]["libc"] != "musl" {
            failures.push(format!("libc not detected as musl: {}", doc["interpreter"]));
        }
        if !doc["measured_by"][0]
            .as_str()
            .is_some_and(|m| m.contains("pthread_cond_timedwait"))
        {
            failures.push(format!("measured_by: {}", doc["measured_by"]));
        }
        let p = &doc["process"];
        let wall = f(p, "wall_s");
        if f(p, "gil_utilization") < 0.9 {
            failures.push(format!("utilization {}", p["gil_utilization"]));
        }
        let cpu_workers = workers(&doc);
        if cpu_workers.len() != 4 {
            failures.push(format!("{} workers", cpu_workers.len()));
        }
        for w in &cpu_workers {
            let share = f(w, "gil_wait_s") / wall;
            if !(0.55..=0.85).contains(&share) {
                failures.push(format!("worker {} waits {share:.3} of wall", w["tid"]));
            }
            if w["gil_waits"].as_u64().unwrap_or(0) == 0 || w["gil_wait_p99_us"].is_null() {
                failures.push(format!(
                    "worker {} has no wait count/percentiles: {w}",
                    w["tid"]
                ));
            }
            let named = w["blocked_by"]
                .as_array()
                .map_or(0, |b| b.iter().filter(|h| h["tid"] != 0).count());
            if named < 3 {
                failures.push(format!("holders not identified: {}", w["blocked_by"]));
            }
            // The same sleeps are not also counted as "other futex" waits.
            if f(w, "futex_wait_s") > 0.1 * wall {
                failures.push(format!(
                    "worker {} GIL sleeps counted as futex waits too: {}",
                    w["tid"], w["futex_wait_s"]
                ));
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_static_musl_build_is_measured_through_its_symbol_table() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313_musl() else {
        return;
    };
    let python = static_build_beside(&python);
    if !python.exists() {
        missing(&format!("{} is not built", python.display()));
        return;
    }
    let _machine = serial();
    let failures = twice_on_noise("static musl cpu_threads", || {
        let mut failures = Vec::new();
        let doc = check_workload(&python, "cpu_threads.py", &["4", "4"]);
        let by = doc["measured_by"][0].as_str().unwrap_or_default();
        if doc["interpreter"]["libc"] != "musl" || !by.contains("__pthread_cond_timedwait") {
            failures.push(format!(
                "static musl not measured at its condvar wait: {} / {by}",
                doc["interpreter"]
            ));
        }
        let p = &doc["process"];
        let wall = f(p, "wall_s");
        if f(p, "gil_utilization") < 0.9 {
            failures.push(format!("utilization {}", p["gil_utilization"]));
        }
        for w in workers(&doc) {
            let share = f(&w, "gil_wait_s") / wall;
            if !(0.55..=0.85).contains(&share) {
                failures.push(format!("worker {} waits {share:.3} of wall", w["tid"]));
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_stripped_static_musl_build_is_refused_saying_why_and_what_works() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313_musl() else {
        return;
    };
    let prefix = python
        .parent()
        .and_then(|bin| bin.parent())
        .expect("prefix/bin/python")
        .to_path_buf();
    let stripped = stripped_copy(&static_build_beside(&python), "musl-static");
    let _machine = serial();
    let mut target = Command::new(&stripped)
        .args([&workload("cpu_threads.py"), "2", "3"])
        .env("PYTHONHOME", &prefix)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the stripped static python");
    std::thread::sleep(Duration::from_millis(300));
    let pid = target.id().to_string();
    let out = gilscope()
        .args(["check", "--pid", &pid, "--duration", "1s"])
        .output()
        .expect("run gilscope");
    let _ = target.kill();
    let _ = target.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "statically linked and stripped",
        "_PyRuntime",
        "pthread_cond_timedwait",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

/// Number of times the loaded BPF program `name` has run, from `bpftool`
/// (kernel.bpf_stats_enabled must be on); `None` when no such program is loaded.
fn bpf_run_count(name: &str) -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "name", name, "--json"])
        .output()
        .ok()?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let progs = match &doc {
        serde_json::Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let prog = progs.first()?;
    prog.get("id")?;
    Some(prog.get("run_cnt").and_then(|v| v.as_u64()).unwrap_or(0))
}

#[test]
fn a_single_thread_ping_pong_on_musl_never_reaches_the_probe() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313_musl() else {
        return;
    };
    let _machine = serial();
    // Count program runs while gilscope watches the ping-pong (the setting is
    // global and only adds run-time accounting; it is restored afterwards).
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    let _ = std::fs::write(stats, "1");
    let child = check_command(&["--json"], &python, "pingpong.py", &["3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gilscope");
    std::thread::sleep(Duration::from_millis(2000));
    let runs = bpf_run_count("cond_enter");
    let out = child.wait_with_output().expect("gilscope finishes");
    let _ = std::fs::write(stats, before.trim());
    assert_success(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["interpreter"]["libc"], "musl", "{}", doc["interpreter"]);
    assert_eq!(
        doc["process"]["gil_waits"].as_u64(),
        Some(0),
        "ping-pong shows GIL waits: {}",
        doc["process"]
    );
    match runs {
        Some(n) => assert_eq!(
            n, 0,
            "the condvar probe ran {n} times on an uncontended GIL"
        ),
        None => panic!("cond_enter was not loaded while gilscope measured a musl process"),
    }
}
