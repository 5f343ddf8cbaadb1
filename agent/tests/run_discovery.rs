//! `gilscope run` finds a CPython process that starts after it within a second,
//! judges a non-Python process once (not every poll), and lets go of a process
//! that exited.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_new_process_is_watched_within_a_second_and_released_when_it_exits() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let tag = format!("disc{}", std::process::id());
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
    let not_python = Command::new("bash")
        .args(["-c", &format!("sleep 4; : {tag}")])
        .spawn()
        .expect("start bash");
    let spawned = Instant::now();
    let mut work = Command::new(&python)
        .args([&workload("cpu_threads.py"), "2", "2.5", &tag])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the workload");
    let pid = work.id();
    let _ = work.wait();
    let status = daemon.wait().expect("gilscope run");
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
    assert!(
        latency < Duration::from_secs(1),
        "watched after {latency:?}"
    );
    assert!(
        all.contains(&format!("process {pid} exited; released its kernel state")),
        "exit not noticed:\n{all}"
    );
    let refusals = lines
        .iter()
        .filter(|(_, l)| {
            l.contains(&format!("process {} ", not_python.id())) && l.contains("is not CPython")
        })
        .count();
    assert_eq!(refusals, 1, "a non-Python process is judged once:\n{all}");
    // No endpoint configured: the summary on stdout names the process and its diagnosis.
    let row = summary
        .lines()
        .find(|l| l.contains(&format!("pid {pid:>7} python:cpu_threads.py")))
        .unwrap_or_else(|| panic!("no summary row for {pid}:\n{summary}"));
    assert!(row.contains("gil_serialized_threads"), "{row}");
}
