//! `gilscope run` finds a CPython process that starts after it within a second,
//! judges a non-Python process once (not every poll), and lets go of a process
//! that exited.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::daemon::unique_tag;
use crate::common::*;

#[test]
fn a_new_process_is_watched_within_a_second_and_released_when_it_exits() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("discovery", || watch_a_new_process(&python));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One run: the daemon, a non-Python process and a short workload started after it.
fn watch_a_new_process(python: &std::path::Path) -> Vec<String> {
    let tag = unique_tag("disc");
    let mut daemon = gilscope()
        .args(["-vv", "run", "--interval", "1s", "--duration", "9s"])
        .args(["--include-cmdline", &tag])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gilscope run");
    let mut stdout = daemon.stdout.take().expect("stdout");
    let stderr = daemon.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    // Let the daemon load its probe and do its first polls.
    std::thread::sleep(Duration::from_millis(1500));
    let mut not_python = Command::new("bash")
        .args(["-c", &format!("sleep 4; : {tag}")])
        .spawn()
        .expect("start bash");
    let spawned = Instant::now();
    let mut work = Command::new(python)
        .args([&workload("cpu_threads.py"), "2", "2.5", &tag])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    let pid = work.id();
    let _ = work.wait();
    let status = daemon.wait().expect("gilscope run");
    let not_python_pid = not_python.id();
    let _ = not_python.kill();
    let _ = not_python.wait();
    let mut summary = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut summary);
    let _ = reader.join();
    let lines: Vec<(Instant, String)> = rx.try_iter().collect();
    let all = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.success(), "gilscope run failed: {all}");
    let watched = lines
        .iter()
        .find(|(_, l)| l.contains(&format!("watching process {pid} ")))
        .unwrap_or_else(|| panic!("process {pid} never watched:\n{all}"));
    let latency = watched.0.duration_since(spawned);
    eprintln!("discovery latency: {latency:?}");
    let mut failures = Vec::new();
    if latency >= Duration::from_secs(1) {
        failures.push(format!("watched after {latency:?}"));
    }
    if !all.contains(&format!("process {pid} exited; released its kernel state")) {
        failures.push(format!("exit not noticed:\n{all}"));
    }
    let refusals = lines
        .iter()
        .filter(|(_, l)| {
            l.contains(&format!("process {not_python_pid} ")) && l.contains("is not CPython")
        })
        .count();
    if refusals != 1 {
        failures.push(format!(
            "a non-Python process is judged once, not {refusals} times:\n{all}"
        ));
    }
    // No endpoint configured: the summary on stdout names the process and its diagnosis.
    match summary
        .lines()
        .find(|l| l.contains(&format!("pid {pid:>7} python:cpu_threads.py")))
    {
        Some(row) if row.contains("gil_serialized_threads") => {}
        Some(row) => failures.push(format!("summary row lacks the diagnosis: {row}")),
        None => failures.push(format!("no summary row for {pid}:\n{summary}")),
    }
    failures
}
