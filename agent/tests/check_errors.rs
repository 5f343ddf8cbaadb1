//! Bad targets get the documented exit code and a message that says what to do.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_pid_that_does_not_exist_is_a_user_error() {
    if !can_use_bpf() {
        return;
    }
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let out = gilscope()
        .args([
            "check",
            "--pid",
            &(pid_max + 1).to_string(),
            "--duration",
            "1s",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no process with pid"),
        "{}",
        stderr_of(&out)
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_process_that_is_not_python_is_a_user_error() {
    if !can_use_bpf() {
        return;
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    std::thread::sleep(Duration::from_millis(100));
    let out = gilscope()
        .args([
            "check",
            "--pid",
            &sleeper.id().to_string(),
            "--duration",
            "1s",
        ])
        .output()
        .expect("run");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("is not a CPython process"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_command_that_is_not_python_is_a_user_error() {
    if !can_use_bpf() {
        return;
    }
    let out = gilscope()
        .args(["check", "--", "/bin/true"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("before a CPython interpreter was loaded"),
        "{}",
        stderr_of(&out)
    );

    let out = gilscope()
        .args(["check", "--", "/nonexistent/python3"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot start /nonexistent/python3"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn no_target_is_a_usage_error() {
    let out = gilscope().args(["check"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("--pid PID or a command"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_process_that_exits_mid_measurement_still_gets_its_report() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let mut target = Command::new(&python)
        .args([&workload("cpu_threads.py"), "2", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("python");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = gilscope()
        .args([
            "check",
            "--json",
            "--pid",
            &target.id().to_string(),
            "--duration",
            "20s",
        ])
        .output()
        .expect("run");
    let _ = target.wait();
    assert_success(&out);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped when the process exited"
    );
    assert!(
        stderr_of(&out).contains("exited after"),
        "{}",
        stderr_of(&out)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ended"], "process_exited");
    let wall = f(&doc["process"], "wall_s");
    assert!(
        (1.0..3.0).contains(&wall),
        "measured until the exit: {wall}"
    );
    for w in workers(&doc) {
        assert!(f(&w, "gil_wait_s") > 0.3 * wall, "what it saw is kept: {w}");
        assert!(
            f(&w, "cpu_s") > 0.2 * wall,
            "CPU of exited threads is kept: {w}"
        );
    }
}

#[test]
fn a_launched_command_reports_its_exit_status_and_keeps_stdout_clean() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let out = gilscope()
        .args([
            "check",
            "--json",
            "--",
            python.to_str().unwrap(),
            "-c",
            "print('hello'); raise SystemExit(3)",
        ])
        .output()
        .expect("run");
    assert_success(&out);
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is only the JSON document");
    assert_eq!(doc["command_exit_code"], 3);
    assert_eq!(doc["ended"], "command_exited");
    assert!(
        stderr_of(&out).contains("hello"),
        "the command's stdout went to stderr"
    );
}
