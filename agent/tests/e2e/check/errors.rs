//! Bad targets get the documented exit code and a message that says what to do.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

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
        // 4 s: time for the attach even on a busy machine (under parallel
        // tests it took up to 1.2 s here), and most of it still measured.
        .args([&workload("cpu_threads.py"), "2", "4"])
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
    // At most the process's 4 s of life, and at least a second of it.
    assert!(
        (1.0..4.0).contains(&wall),
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

#[test]
fn an_unsupported_python_version_is_refused_with_the_supported_list() {
    if !can_use_bpf() {
        return;
    }
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let Some(python37) = std::fs::read_dir(format!("{root}/versions"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("3.7."))
        .map(|e| e.path().join("bin/python3.7"))
    else {
        missing("no pyenv CPython 3.7 to stand for an unsupported version");
        return;
    };
    let out = gilscope()
        .args(["check", "--"])
        .arg(&python37)
        .args(["-c", "import time; time.sleep(0.5)"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("CPython 3.7,") && err.contains("does not support yet"),
        "{err}"
    );
    assert!(err.contains("supported: 3.8, 3.9, 3.10, 3.11"), "{err}");
}

#[test]
fn without_privilege_the_message_says_what_to_grant() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let mut target = Command::new(&python)
        .args(["-c", "import time; time.sleep(5)"])
        .spawn()
        .expect("python");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_gilscope"))
        .args([
            "check",
            "--pid",
            &target.id().to_string(),
            "--duration",
            "1s",
        ])
        .output()
        .expect("setpriv (util-linux) runs gilscope as nobody");
    let _ = target.kill();
    let _ = target.wait();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("permission denied") && err.contains("Run gilscope as root"),
        "{err}"
    );
}
