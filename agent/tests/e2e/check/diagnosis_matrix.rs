//! Each pseudo-parallel pattern is diagnosed by the workload built to cause it
//! and by none of the others: one table, every workload against every kind.

use crate::common::*;

/// Kinds the self-check can say about a workload.
const KINDS: [&str; 7] = [
    "gil_serialized_threads",
    "event_loop_blocked",
    "process_pool_overhead",
    "gil_residual_latency",
    "cpu_throttled",
    "cpu_starved",
    "no_contention",
];

/// (workload and arguments, the kind it must produce, kinds it may also produce
/// because they are true of it too).
const CASES: [(&[&str], &str, &[&str]); 6] = [
    (&["cpu_threads.py", "4", "4"], "gil_serialized_threads", &[]),
    (&["blocked_loop.py", "4"], "event_loop_blocked", &[]),
    // The pool's result-handler thread does wait to retake the GIL behind the
    // task thread's pickling, and its 4 workers and feeder crowd 2 cores: residual
    // latency and CPU starvation are true secondary findings there.
    (
        &["pool_overhead.py", "4", "4"],
        "process_pool_overhead",
        &["gil_residual_latency", "cpu_starved"],
    ),
    (&["residual.py", "3"], "gil_residual_latency", &[]),
    (&["hash_threads.py", "2", "3"], "no_contention", &[]),
    (&["io_threads.py", "8", "3"], "no_contention", &[]),
];

#[test]
fn every_workload_gets_its_own_diagnosis_and_no_other() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let mut failures = Vec::new();
    for (args, want, also) in CASES {
        let _machine = serial();
        let label = args.join(" ");
        failures.extend(twice_on_noise(&label, || {
            let mut cmd: Vec<String> = vec!["--".into(), python.display().to_string()];
            cmd.push(workload(args[0]));
            cmd.extend(args[1..].iter().map(|a| a.to_string()));
            let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let doc = check_json(&refs);
            let kinds = diagnosis_kinds(&doc);
            let mut failures = Vec::new();
            if !kinds.iter().any(|k| k == want) {
                failures.push(format!("{label}: {want} missing from {kinds:?}"));
            }
            for k in &kinds {
                if k != want && KINDS.contains(&k.as_str()) && !also.contains(&k.as_str()) {
                    failures.push(format!("{label}: unexpected {k}: {}", doc["diagnosis"]));
                }
            }
            for d in doc["diagnosis"].as_array().into_iter().flatten() {
                if d["evidence"].as_object().is_none_or(|e| e.is_empty()) {
                    failures.push(format!("{label}: a finding without evidence: {d}"));
                }
            }
            failures
        }));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
