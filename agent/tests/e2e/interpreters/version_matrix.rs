//! Every interpreter of the matrix — pyenv 3.8-3.13, stripped copies of each,
//! Debian's stripped 3.11, and Debian sid's stripped 3.14 (binary packages run
//! through sid's own loader) — measured against the same two truths: four CPU-bound threads
//! serialize (GIL held ≥ 90 % of the time, each worker waits 55-85 % of the wall
//! time) and a single-thread ping-pong shows zero GIL waits; `--precise` finds
//! take_gil everywhere (by disassembly when stripped) and agrees.

use crate::common::*;

fn matrix() -> Vec<Case> {
    interpreter_matrix("matrix")
}

/// The truths one interpreter must show; returns what did not hold.
fn measure_case(case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let label = &case.label;
    let doc = case.check(&[], &[&workload("cpu_threads.py"), "4", "5"]);
    let p = &doc["process"];
    let wall = f(p, "wall_s");
    let stripped = doc["interpreter"]["stripped"].as_bool();
    if case.lib_dir.is_some() && stripped != Some(true) {
        failures.push(format!(
            "{label}: the stripped copy was not the one measured: {}",
            doc["interpreter"]
        ));
    }
    let version = doc["interpreter"]["version"].as_str().unwrap_or_default();
    if version != case.line && !version.starts_with(&format!("{}.", case.line)) {
        failures.push(format!(
            "{label}: measured as CPython {version}, not {}",
            case.line
        ));
    }
    if f(p, "gil_utilization") < 0.9 {
        failures.push(format!("{label}: utilization {}", p["gil_utilization"]));
    }
    let cpu_workers = workers(&doc);
    if cpu_workers.len() != 4 {
        failures.push(format!("{label}: {} workers", cpu_workers.len()));
    }
    for w in &cpu_workers {
        let share = f(w, "gil_wait_s") / wall;
        if !(0.55..=0.85).contains(&share) {
            failures.push(format!(
                "{label}: worker {} waits {share:.3} of wall",
                w["tid"]
            ));
        }
        if w["blocked_by"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|h| h["tid"] != 0).count())
            < 3
        {
            failures.push(format!(
                "{label}: holders not identified: {}",
                w["blocked_by"]
            ));
        }
    }

    let doc = case.check(&[], &[&workload("pingpong.py"), "1.5"]);
    if doc["process"]["gil_waits"].as_u64() != Some(0) {
        failures.push(format!(
            "{label}: ping-pong shows {} GIL waits",
            doc["process"]["gil_waits"]
        ));
    }
    // --precise: every copy of take_gil probed (by symbol, or by disassembly when stripped).
    let doc = case.check(&["--precise"], &[&workload("cpu_threads.py"), "4", "3"]);
    let probes = &doc["precise_probes"];
    let takes = probes["take_gil"].as_array().map_or(0, Vec::len);
    let drops = probes["drop_gil"].as_array().map_or(0, Vec::len);
    let stripped = doc["interpreter"]["stripped"] == true;
    if takes == 0 || (stripped && probes["take_gil"][0]["found_by"] != "disassembly") {
        failures.push(format!("{label}: precise probes {probes}"));
    }
    if !stripped && drops == 0 {
        failures.push(format!(
            "{label}: drop_gil has a symbol but was not probed: {probes}"
        ));
    }
    let wall = f(&doc["process"], "wall_s");
    for w in workers(&doc) {
        let share = f(&w, "gil_wait_s") / wall;
        if !(0.55..=0.85).contains(&share) {
            failures.push(format!(
                "{label} --precise: worker {} waits {share:.3} of wall",
                w["tid"]
            ));
        }
    }
    eprintln!("{label}: measured (precise: {takes} take_gil, {drops} drop_gil sites)");
    failures
}

#[test]
fn every_interpreter_in_the_matrix_measures_serialization_and_no_phantom_waits() {
    if !can_use_bpf() {
        return;
    }
    assert_on_every_case(&matrix(), |case| {
        twice_on_noise(&case.label, || measure_case(case))
    });
}

/// On 3.14 a `threading.Lock` is a PyMutex; Debian's LTO build parks it through
/// a clone of `_PyParkingLot_Park`, not the export. Four threads queued on one
/// lock whose holder sleeps: lock contention (Σ park ≈ 3 × wall, one lock),
/// not GIL waits.
#[test]
fn on_debian_314_threads_queued_on_a_threading_lock_show_lock_contention() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = debian_python314() else {
        return;
    };
    let _machine = serial();
    let failures = twice_on_noise("Debian 3.14 lock", || {
        let doc = check_workload(&python, "lock_threads.py", &["4", "3"]);
        let mut failures = Vec::new();
        let p = &doc["process"];
        let wall = f(p, "wall_s");
        let locks = &doc["lock_contention"];
        let total = locks["wait_s"].as_f64().unwrap_or(0.0);
        if !(2.4..=3.3).contains(&(total / wall)) {
            failures.push(format!("Σ park / wall {:.2}: {locks}", total / wall));
        }
        let top = locks["top_locks"][0]["wait_s"].as_f64().unwrap_or(0.0);
        if top < 0.95 * total {
            failures.push(format!("one lock must dominate: {locks}"));
        }
        for w in workers(&doc) {
            let share = f(&w, "lock_wait_s") / wall;
            if !(0.55..=0.85).contains(&share) {
                failures.push(format!("worker {} parks {share:.3} of wall", w["tid"]));
            }
        }
        if f(p, "gil_queue_length") > 0.05 {
            failures.push(format!("the GIL is free here: {p}"));
        }
        if diagnosis_kinds(&doc).first().map(String::as_str) != Some("lock_contention") {
            failures.push(format!("diagnosis {}", doc["diagnosis"]));
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
