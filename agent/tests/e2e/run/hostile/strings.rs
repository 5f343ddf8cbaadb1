//! What a target says about itself is data, never log lines: a newline (and
//! 3,000 more characters) in its `OTEL_SERVICE_NAME` and in its executable's
//! file name, both of which the daemon logs when it starts watching the
//! process ("watching process N (CPython 3.11.2, EXE) as service.name=...").

use std::process::Command;

use super::{scene, spawn_ready, Daemon, Scene, SPIN};
use crate::common::receivers::*;

/// What a forged log line would look like.
const FORGED: &str = "2030-01-01T00:00:00.000000Z  WARN gilscope: forged";

#[test]
fn newlines_in_what_a_target_says_cannot_forge_log_lines() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("newline")
    else {
        return;
    };
    let dir = scratch(&marker);
    // The executable's own name carries a line (it is a candidate: it starts with python3).
    let exe = dir.join(format!("python3.11\n{FORGED} exe"));
    std::fs::copy(&python, &exe).expect("copy the interpreter");
    let service = format!("{marker}-evil\n{FORGED} service {}", "x".repeat(3_000));
    let (target, _) = spawn_ready(
        Command::new(&exe)
            .args(["-c", SPIN, &marker])
            .env("OTEL_SERVICE_NAME", &service),
    );
    let pid = target.0.id();
    let mut daemon = Daemon::start(&vm, &marker, &[]);
    let utilization = daemon.spinning_utilization(pid);
    assert!(utilization >= 0.9, "utilization {utilization:.2}");
    daemon.assert_running();
    let log = daemon.log();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        log.contains("forged"),
        "the target's strings reach the log (else this proves nothing):\n{log}"
    );
    let forged: Vec<&str> = log.lines().filter(|l| l.starts_with(FORGED)).collect();
    assert!(forged.is_empty(), "a target forged log lines: {forged:?}");
    let long: Vec<usize> = log
        .lines()
        .map(|l| l.chars().count())
        .filter(|n| *n > 2048 + 200)
        .collect();
    assert!(long.is_empty(), "log lines of {long:?} characters");
    drop(target);
}
