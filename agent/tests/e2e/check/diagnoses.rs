//! The diagnoses `gil_residual_latency` and `event_loop_blocked` against workloads
//! whose truth is known, and their absence where it does not hold, on pyenv's
//! 3.11 (symbols, shared libpython) and Debian's stripped static 3.11.

use crate::common::*;
use serde_json::Value;

fn measure(python: &std::path::Path, script_and_args: &[&str]) -> Value {
    let script = workload(script_and_args[0]);
    let mut args = vec!["--", python.to_str().expect("utf-8 path"), &script];
    args.extend(&script_and_args[1..]);
    check_json(&args)
}

fn finding<'a>(doc: &'a Value, kind: &str) -> Option<&'a Value> {
    doc["diagnosis"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == kind)
}

fn thread(doc: &Value, tid: u64) -> Option<&Value> {
    doc["threads"]
        .as_array()?
        .iter()
        .find(|t| t["tid"].as_u64() == Some(tid))
}

#[test]
fn a_thread_sleeping_1ms_next_to_a_spinner_retakes_the_gil_a_switch_interval_late() {
    if !can_use_bpf() {
        return;
    }
    assert_on_each_311(|python, label| {
        let doc = measure(python, &["residual.py", "3"]);
        let mut bad = Vec::new();
        // The sleeper is the thread that sleeps in clock_nanosleep.
        let Some(sleeper) = doc["threads"]
            .as_array()
            .and_then(|ts| ts.iter().max_by_key(|t| t["sleep_waits"].as_u64()))
        else {
            return vec![format!("{label}: no threads in {doc}")];
        };
        let returns = sleeper["block_returns"].as_u64().unwrap_or(0);
        let p50 = f(sleeper, "retake_p50_us");
        if returns < 100 {
            bad.push(format!(
                "{label}: sleeper returned {returns} times: {sleeper}"
            ));
        }
        // Truth: about the switch interval (5 ms); at least 1 ms.
        if !(1_000.0..=20_000.0).contains(&p50) {
            bad.push(format!(
                "{label}: sleeper retake p50 {p50:.0} µs: {sleeper}"
            ));
        }
        match finding(&doc, "gil_residual_latency") {
            Some(d) if d["evidence"]["tid"].as_f64() == sleeper["tid"].as_f64() => {}
            Some(d) => bad.push(format!("{label}: names the wrong thread: {d}")),
            None => bad.push(format!("{label}: no gil_residual_latency: {doc}")),
        }
        if finding(&doc, "event_loop_blocked").is_some() {
            bad.push(format!("{label}: no event loop here: {doc}"));
        }
        bad
    });
}

#[test]
fn an_asyncio_loop_running_cpu_work_inline_is_a_blocked_event_loop() {
    if !can_use_bpf() {
        return;
    }
    assert_on_each_311(|python, label| {
        let doc = measure(python, &["blocked_loop.py", "4"]);
        let pid = doc["pid"].as_u64().unwrap_or(0);
        let mut bad = Vec::new();
        let Some(main) = thread(&doc, pid) else {
            return vec![format!("{label}: no main thread in {doc}")];
        };
        // Truth: 100 ms bursts on the loop thread.
        if f(main, "hold_stretch_max_ms") < 80.0 {
            bad.push(format!("{label}: loop hold stretches too short: {main}"));
        }
        if main["poll_waits"].as_u64().unwrap_or(0) < 20 {
            bad.push(format!("{label}: the loop thread barely polls: {main}"));
        }
        match finding(&doc, "event_loop_blocked") {
            Some(d) => {
                if d["evidence"]["loop_tid"].as_f64() != Some(pid as f64) {
                    bad.push(format!("{label}: names the wrong loop thread: {d}"));
                }
                let prefix = format!("event loop thread {pid} (");
                if !d["summary"].as_str().unwrap_or("").starts_with(&prefix) {
                    bad.push(format!("{label}: summary does not name {pid}: {d}"));
                }
            }
            None => bad.push(format!("{label}: no event_loop_blocked: {doc}")),
        }
        bad
    });
}

#[test]
fn cpu_io_and_hashing_threads_have_no_blocked_loop_and_no_residual_latency() {
    if !can_use_bpf() {
        return;
    }
    let cases: [(&[&str], Option<&str>); 3] = [
        (
            &["cpu_threads.py", "4", "4"],
            Some("gil_serialized_threads"),
        ),
        (&["io_threads.py", "8", "3"], None),
        (&["hash_threads.py", "2", "3"], None),
    ];
    for python in interpreters311() {
        for (workload_args, expected) in &cases {
            let _machine = serial();
            let label = format!("{} {}", python.display(), workload_args.join(" "));
            let failures = twice_on_noise(&label, || {
                let doc = measure(&python, workload_args);
                let kinds = diagnosis_kinds(&doc);
                let mut bad = Vec::new();
                for unwanted in ["event_loop_blocked", "gil_residual_latency"] {
                    if kinds.iter().any(|k| k == unwanted) {
                        bad.push(format!("{label}: {unwanted} in {doc}"));
                    }
                }
                if let Some(kind) = expected {
                    if !kinds.iter().any(|k| k == kind) {
                        bad.push(format!("{label}: no {kind} in {kinds:?}"));
                    }
                }
                bad
            });
            assert!(failures.is_empty(), "{}", failures.join("\n"));
        }
    }
}

#[test]
fn blocked_time_is_split_by_what_the_threads_sleep_in() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let _machine = serial();
    let doc = measure(&python, &["io_threads.py", "8", "3"]);
    let wall = f(&doc["process"], "wall_s");
    let readers = workers(&doc);
    assert_eq!(readers.len(), 8, "{doc}");
    for r in &readers {
        // Truth: each reader sits in read() all the time, woken every 10 ms.
        let share = f(r, "io_wait_s") / wall;
        assert!(share >= 0.8, "reader in read() {share:.2} of wall: {r}");
        assert!(r["io_waits"].as_u64().unwrap_or(0) >= 100, "{r}");
        assert_eq!(r["poll_waits"].as_u64(), Some(0), "{r}");
    }
    // The main thread paces itself with time.sleep (clock_nanosleep).
    let pid = doc["pid"].as_u64().unwrap_or(0);
    let main = thread(&doc, pid).expect("main thread");
    assert!(f(main, "sleep_wait_s") / wall >= 0.5, "{main}");
    assert!(f(&doc["process"], "io_wait_s") >= 8.0 * 0.8 * wall, "{doc}");
}
