//! Free-threaded CPython (3.13t, built from Debian's source package by
//! tests/interpreters/build-cpython.sh): with the GIL off, threads run in
//! parallel and contention moves to PyMutexes; with PYTHON_GIL=1 the GIL is back
//! and its waits are measured like on any GIL build.

use crate::common::*;

#[test]
fn with_the_gil_off_cpu_bound_threads_run_in_parallel() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313t() else { return };
    let _machine = serial();
    let doc = check_workload(&python, "cpu_threads.py", &["4", "3"]);
    let i = &doc["interpreter"];
    assert_eq!(i["free_threaded"], true, "{i}");
    assert_eq!(i["gil_enabled"], false, "{i}");
    let p = &doc["process"];
    assert!(f(p, "effective_parallelism") >= 1.5, "{p}");
    assert_eq!(p["gil_waits"], 0, "{p}");
    assert!(!diagnosis_kinds(&doc).contains(&"gil_serialized_threads".to_string()));
    // Thread joins park in PyEvent_WaitTimed: waiting for an event is not lock contention.
    assert!(
        f(&doc["lock_contention"], "wait_s") < 0.1 * f(p, "wall_s"),
        "{}",
        doc["lock_contention"]
    );
}

#[test]
fn with_the_gil_off_threads_sharing_a_list_contend_on_its_lock() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313t() else { return };
    let _machine = serial();
    let doc = check_workload(&python, "shared_list.py", &["4", "3"]);
    let locks = &doc["lock_contention"];
    assert!(locks["waits"].as_u64().unwrap_or(0) > 100, "{locks}");
    assert!(f(locks, "wait_s") > 0.3, "{locks}");
    let top = &locks["top_locks"][0];
    assert!(
        f(top, "wait_s") > 0.5 * f(locks, "wait_s"),
        "one list lock dominates: {locks}"
    );
    assert!(
        workers(&doc)
            .iter()
            .all(|w| w["lock_waits"].as_u64().unwrap_or(0) > 0),
        "every appender parks"
    );
    assert_eq!(
        diagnosis_kinds(&doc)[0],
        "lock_contention",
        "{}",
        doc["diagnosis"]
    );
}

#[test]
fn with_python_gil_1_the_gil_is_back_and_measured() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = python313t() else { return };
    let _machine = serial();
    let doc = check_json_with(
        check_command(&["--json"], &python, "cpu_threads.py", &["4", "5"]).env("PYTHON_GIL", "1"),
    );
    assert_eq!(
        doc["interpreter"]["gil_enabled"], true,
        "{}",
        doc["interpreter"]
    );
    let p = &doc["process"];
    let wall = f(p, "wall_s");
    assert!(f(p, "gil_utilization") >= 0.9, "{p}");
    assert!(
        f(p, "gil_switches_per_s") > 50.0,
        "switch_number is read at its free-threaded offset: {p}"
    );
    for w in workers(&doc) {
        let share = f(&w, "gil_wait_s") / wall;
        assert!(
            (0.55..=0.85).contains(&share),
            "worker waits {share:.3}: {w}"
        );
    }
    assert_eq!(diagnosis_kinds(&doc)[0], "gil_serialized_threads");
}
