//! Where the time goes when it is not the GIL: a process pool drowned in IPC, a
//! cgroup CPU quota, and the speedup the GIL leaves on the table — each produced
//! by a real workload on pyenv's 3.11 and Debian's stripped 3.11.

use crate::common::quota::QuotaCgroup;
use crate::common::*;

#[test]
fn a_pool_fed_one_mebibyte_payloads_is_diagnosed_as_ipc_overhead() {
    if !can_use_bpf() {
        return;
    }
    assert_on_each_311(|python, label| {
        let doc = check_workload(python, "pool_overhead.py", &["4", "5"]);
        let mut failures = Vec::new();
        let children = doc["children"].as_array().cloned().unwrap_or_default();
        if children.len() < 4 {
            failures.push(format!("{label}: 4 workers watched: {children:?}"));
        }
        for c in &children {
            if f(c, "busy_share") >= 0.5 || f(c, "cpu_s") <= 0.0 {
                failures.push(format!("{label}: worker not mostly waiting: {c}"));
            }
        }
        // (On a loaded machine cpu_starved may be said too, and rightly.)
        let kinds = diagnosis_kinds(&doc);
        if !kinds.iter().any(|k| k == "process_pool_overhead") {
            failures.push(format!("{label}: diagnosis {}", doc["diagnosis"]));
        }
        if kinds.iter().any(|k| k == "gil_serialized_threads") {
            failures.push(format!("{label}: the GIL is not the problem: {kinds:?}"));
        }
        failures
    });
}

#[test]
fn a_twenty_percent_cpu_quota_is_throttling_not_the_gil() {
    if !can_use_bpf() {
        return;
    }
    let Some(cgroup) = QuotaCgroup::new(0.2) else {
        missing("no writable CPU cgroup controller (v1 cpu or v2 with cpu) to set a quota");
        return;
    };
    for python in interpreters311() {
        let _machine = serial();
        // The shell moves itself into the cgroup, then becomes the workload.
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} {} 1 4",
            cgroup.dir.display(),
            python.display(),
            workload("cpu_threads.py")
        );
        let doc = check_json(&["--", "sh", "-c", &script]);
        let p = &doc["process"];
        let label = python.display();
        assert!(
            (f(p, "cpu_limit_cores") - 0.2).abs() < 1e-6,
            "{label}: quota seen: {p}"
        );
        assert!(
            f(p, "throttled_s") / f(p, "wall_s") >= 0.3,
            "{label}: a CPU-bound thread under a 20% quota is throttled much of the time: {p}"
        );
        let kinds = diagnosis_kinds(&doc);
        assert_eq!(kinds[0], "cpu_throttled", "{label}: {}", doc["diagnosis"]);
        assert!(
            !kinds.contains(&"gil_serialized_threads".to_string()),
            "{label}: {kinds:?}"
        );
        let evidence = &doc["diagnosis"][0]["evidence"];
        assert!(f(evidence, "throttled_s") > 0.0, "{evidence}");
    }
}

#[test]
fn four_cpu_threads_on_two_cores_would_run_about_twice_as_fast_without_the_gil() {
    if !can_use_bpf() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores != 2 {
        missing(&format!(
            "the estimate's truth (≈2x) holds on 2 cores; this machine has {cores}"
        ));
        return;
    }
    for python in interpreters311() {
        let _machine = serial();
        let doc = check_workload(&python, "cpu_threads.py", &["4", "4"]);
        let e = &doc["estimate"];
        let speedup = f(e, "speedup_without_gil");
        assert!(
            (1.6..=2.2).contains(&speedup),
            "{}: speedup {speedup}: {e}",
            python.display()
        );
        assert!(e["model"].as_str().is_some_and(|m| m.contains("cores")));
        assert_eq!(f(&doc["process"], "cores_available"), 2.0);
    }
}

#[test]
fn threads_that_hash_in_parallel_leave_nothing_on_the_table() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let doc = check_workload(&python, "hash_threads.py", &["2", "3"]);
    let speedup = f(&doc["estimate"], "speedup_without_gil");
    assert!(
        speedup < 1.15,
        "hashing threads already run in parallel: {speedup}"
    );
    assert!(doc["children"].as_array().is_some_and(Vec::is_empty));
}
