//! Process churn, short: `tests/stress/churn.py` for 30 s at 120 processes a
//! minute (60 threaded CPython processes of 0.5-6 s) against the built
//! `gilscope run`. The script checks, from what the daemon exported into
//! VictoriaMetrics, that every process that lived at least 2 s was reported,
//! that the daemon's BPF maps are empty once every child exited and one more
//! interval passed, and that its RSS stayed bounded; this test runs it and
//! asserts its report. The 10-minute version and its numbers: BENCHMARKS.md.

use std::path::Path;
use std::process::Command;

use crate::common::receivers::receivers;
use crate::common::*;
use serde_json::Value;

#[test]
fn churning_processes_are_all_reported_and_leave_no_kernel_state() {
    if !can_use_bpf() {
        return;
    }
    let (Some(python), Some(_)) = (debian_python311(), receivers()) else {
        return;
    };
    if Command::new("bpftool").arg("version").output().is_err() {
        missing("bpftool is not installed (tests/setup.sh)");
        return;
    }
    let _machine = serial();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/stress/churn.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--minutes", "0.5", "--per-minute", "120"])
        .args(["--gilscope", env!("CARGO_BIN_EXE_gilscope")])
        .arg("--python")
        .arg(&python)
        .output()
        .expect("run tests/stress/churn.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    eprintln!("{report}");
    assert_eq!(report["spawned"], 60, "{report}");
    assert!(
        report["lived_ge_2s"].as_u64().is_some_and(|n| n >= 20),
        "too few long-lived children to judge: {report}"
    );
    assert_eq!(
        report["reported_of_those"], report["lived_ge_2s"],
        "{report}"
    );
    for (map, n) in report["bpf_entries_after"]
        .as_object()
        .into_iter()
        .flatten()
    {
        assert_eq!(
            n, 0,
            "map {map} holds entries of exited processes: {report}"
        );
    }
    assert_eq!(
        report["bpf_entries_after"].as_object().map(|m| m.len()),
        Some(5)
    );
    assert_eq!(report["daemon_warnings"], 0, "{report}");
    assert!(out.status.success(), "{report}\n{stderr}");
}
