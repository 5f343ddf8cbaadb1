//! `gilscope check --json --flamegraph --pprof`: the GIL contention profile
//! names the code the GIL was held by while others waited. Truth by
//! construction (tests/workloads/holders.py): two threads spin in `spin_alpha`
//! and `spin_beta`, a third sleeps 1 ms in a loop (`nap`), so the GIL wait of
//! all three is spent behind the two spinners' code, about half each. Checked
//! on a pyenv build (futex probe), Debian's static stripped 3.11 (no symbols:
//! the frame walk from the table alone) and musl's 3.13 (the condvar probe and
//! 3.13's debug offsets).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

/// Seconds the workload's threads run: a few hundred switch intervals per
/// spinner, enough for the half-each split (see the tolerances below).
const SECONDS: &str = "2";

/// The line of `def NAME` in holders.py, and its last line (the next blank).
fn function_lines(name: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(workload("holders.py")).expect("holders.py");
    let lines: Vec<&str> = text.lines().collect();
    let def = lines
        .iter()
        .position(|l| l.starts_with(&format!("def {name}(")))
        .unwrap_or_else(|| panic!("def {name} in holders.py"));
    let end = (def..lines.len())
        .find(|i| lines[*i].trim().is_empty())
        .unwrap_or(lines.len());
    (def as u64 + 1, end as u64)
}

/// Reads the fields of a protobuf message: (field number, varint value or
/// bytes). Written from the wire format alone, not from gilscope's message
/// types, so the pprof file's field numbers are checked against profile.proto
/// independently.
fn fields(mut b: &[u8]) -> Vec<(u64, Result<u64, Vec<u8>>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        match key & 7 {
            0 => out.push((key >> 3, Ok(varint(&mut b)))),
            2 => {
                let len = varint(&mut b) as usize;
                let (bytes, rest) = b.split_at(len);
                out.push((key >> 3, Err(bytes.to_vec())));
                b = rest;
            }
            wire => panic!("wire type {wire} not written by gilscope"),
        }
    }
    out
}

/// (string table, sample type indexes, Σ sample values) of a pprof profile.
fn decode_pprof(raw: &[u8]) -> (Vec<String>, Vec<u64>, u64) {
    let (mut strings, mut sample_type, mut total) = (Vec::new(), Vec::new(), 0u64);
    for (field, value) in fields(raw) {
        match (field, value) {
            (6, Err(s)) => strings.push(String::from_utf8(s).expect("utf-8 string")),
            (1, Err(vt)) => sample_type.extend(fields(&vt).into_iter().filter_map(|f| f.1.ok())),
            (2, Err(sample)) => {
                for (f, v) in fields(&sample) {
                    // value (2): packed int64s.
                    if let (2, Err(packed)) = (f, v) {
                        let mut p = &packed[..];
                        while !p.is_empty() {
                            total += varint(&mut p);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (strings, sample_type, total)
}

/// One varint off the front of `b`.
fn varint(b: &mut &[u8]) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = b.split_first().expect("truncated varint");
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// Every claim on one interpreter's run; failures as text.
fn profile_truth(label: &str, python: &Path, dir: &Path) -> Vec<String> {
    let svg = dir.join("gil.svg");
    let pprof = dir.join("gil.pb.gz");
    let flags = [
        "--json",
        "--flamegraph",
        svg.to_str().expect("utf-8 path"),
        "--pprof",
        pprof.to_str().expect("utf-8 path"),
    ];
    let mut command = check_command(&flags, python, "holders.py", &[SECONDS]);
    if label.contains(FREE_THREADED) {
        // The GIL is back on (and attributed) only when asked for.
        command.env("PYTHON_GIL", "1");
    }
    let doc = check_json_with(&mut command);
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{label}: {what}"));
    let p = &doc["contention_profile"];
    let Some(functions) = p["functions"].as_array() else {
        return vec![format!("{label}: no contention profile: {p}")];
    };
    let share = |name: &str| {
        functions
            .iter()
            .filter(|f| f["function"] == name)
            .map(|f| f["share"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    let (alpha, beta) = (share("spin_alpha"), share("spin_beta"));
    eprintln!(
        "{label}: profile {:.3} s, alpha {alpha:.3} beta {beta:.3} nap {:.3} unknown {:.3}",
        f(p, "wait_s"),
        share("nap"),
        share("<unknown>")
    );
    // Tolerances as the kernel test's (kernel::holder_stacks, 25 runs per
    // build): the spinners carried 0.933-0.99 of the wait, nap the rest but
    // <= 0.5 % elsewhere; between the spinners the split was 0.472-0.544, and
    // +-0.1 is twice the worst seen yet fails a capture naming the wrong code.
    if alpha + beta < 0.9 {
        fail(format!(
            "only {:.3} of the wait behind the spinners",
            alpha + beta
        ));
    }
    let half = alpha / (alpha + beta).max(f64::MIN_POSITIVE);
    if !(0.4..=0.6).contains(&half) {
        fail(format!("spin_alpha's part of the spinners' wait {half:.3}"));
    }
    if share("<unknown>") + share("[other]") > 0.02 {
        fail(format!("wait behind no workload function: {functions:?}"));
    }
    let total_share: f64 = functions
        .iter()
        .map(|f| f["share"].as_f64().unwrap_or(0.0))
        .sum();
    if (total_share - 1.0).abs() > 1e-9 {
        fail(format!("shares add up to {total_share}"));
    }
    let wait: Vec<f64> = functions
        .iter()
        .map(|f| f["wait_s"].as_f64().unwrap_or(-1.0))
        .collect();
    if wait.windows(2).any(|w| w[0] < w[1]) {
        fail(format!("functions not sorted by wait: {wait:?}"));
    }
    for name in ["spin_alpha", "spin_beta"] {
        let (def, end) = function_lines(name);
        let row = functions.iter().find(|f| f["function"] == name);
        let file_ok = row
            .and_then(|r| r["file"].as_str())
            .is_some_and(|f| f.ends_with("/holders.py"));
        let line = row.and_then(|r| r["line"].as_u64()).unwrap_or(0);
        if !file_ok || !(def..=end).contains(&line) {
            fail(format!(
                "{name}: expected holders.py:{def}-{end}, got {row:?}"
            ));
        }
    }
    // Both are added from the same take slices as they end (kernel::holder_stacks).
    let blocked: f64 = doc["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["blocked_by"].as_array().into_iter().flatten())
        .map(|b| f(b, "gil_wait_s"))
        .sum();
    if (f(p, "wait_s") - blocked).abs() > 1e-6 {
        fail(format!(
            "profile wait {} s != blocked-by wait {blocked} s",
            f(p, "wait_s")
        ));
    }
    failures.extend(stack_failures(label, p));
    failures.extend(picture_failures(label, p, &svg, &pprof));
    failures
}

/// The top stack is a spinner's whole stack, root first.
fn stack_failures(label: &str, p: &Value) -> Vec<String> {
    let stacks = p["stacks"].as_array().cloned().unwrap_or_default();
    let Some(top) = stacks.first() else {
        return vec![format!("{label}: no stacks")];
    };
    let names: Vec<&str> = top["frames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["function"].as_str())
        .collect();
    // Thread._bootstrap (3.8-3.10: _bootstrap), _bootstrap_inner, run, spin_*.
    let whole = names.len() == 4
        && names[0].ends_with("_bootstrap")
        && names[2].ends_with("run")
        && names[3].starts_with("spin_");
    let sum: f64 = stacks.iter().map(|s| f(s, "wait_s")).sum();
    let mut failures = Vec::new();
    if !whole {
        failures.push(format!("{label}: top stack {names:?}"));
    }
    if (sum - f(p, "wait_s")).abs() > 1e-6 {
        failures.push(format!(
            "{label}: stacks add up to {sum} s, profile {}",
            f(p, "wait_s")
        ));
    }
    failures
}

/// The SVG parses and names both spinners; the pprof gunzips, decodes (read
/// from the wire format here) to sample type gil_wait in nanoseconds, names
/// both spinners, and its samples add up to the profile's wait.
fn picture_failures(label: &str, p: &Value, svg: &Path, pprof: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let text = std::fs::read_to_string(svg).unwrap_or_default();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut elements = 0;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(_)) => elements += 1,
            Ok(_) => {}
            Err(e) => {
                failures.push(format!("{label}: the SVG does not parse: {e}"));
                break;
            }
        }
    }
    if elements < 10 || !text.contains("spin_alpha (holders.py:") || !text.contains("spin_beta") {
        failures.push(format!(
            "{label}: the SVG ({elements} elements) does not name the spinners"
        ));
    }
    let mut raw = Vec::new();
    let gz = std::fs::read(pprof).unwrap_or_default();
    if let Err(e) = flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw) {
        return vec![format!("{label}: the pprof does not gunzip: {e}")];
    }
    let (strings, sample_type, total_ns) = decode_pprof(&raw);
    let types: Vec<&str> = sample_type
        .iter()
        .filter_map(|i| strings.get(*i as usize).map(String::as_str))
        .collect();
    if strings.first().map(String::as_str) != Some("") || types != ["gil_wait", "nanoseconds"] {
        failures.push(format!("{label}: pprof sample type {types:?}"));
    }
    if !strings.iter().any(|s| s == "spin_alpha") || !strings.iter().any(|s| s == "spin_beta") {
        failures.push(format!("{label}: pprof names {strings:?}"));
    }
    // The JSON's wait_s is the ns total / 1e9 printed as f64.
    if (total_ns as f64 / 1e9 - f(p, "wait_s")).abs() > 1e-6 {
        failures.push(format!(
            "{label}: pprof total {total_ns} ns, profile {} s",
            f(p, "wait_s")
        ));
    }
    failures
}

/// The label of the free-threaded build, which runs with PYTHON_GIL=1.
const FREE_THREADED: &str = "3.13t";

/// pyenv 3.8, 3.10, 3.12 and 3.13, Debian's static stripped 3.11 and sid's
/// 3.14, musl's 3.13, the free-threaded 3.13t with its GIL back on: each
/// frame layout (3.8-3.10 frame objects, 3.11+ interpreter frames, 3.12+
/// entry shims, 3.14's tagged references, 3.13t's own object header), each
/// way the frame walk is found (table with symbols, table without, debug
/// offsets) and both wait probes.
fn builds() -> Vec<(String, PathBuf)> {
    let pyenv = |want: &str| {
        let found = pyenv_matrix()
            .into_iter()
            .find(|(line, _, _)| line == want)
            .map(|(_, python, _)| python);
        if found.is_none() {
            missing(&format!("pyenv CPython {want} is not installed"));
        }
        found
    };
    [
        ("pyenv 3.8", pyenv("3.8")),
        ("pyenv 3.10", pyenv("3.10")),
        ("pyenv 3.12", pyenv("3.12")),
        ("pyenv 3.13", pyenv("3.13")),
        ("Debian 3.11 (static, stripped)", debian_python311()),
        ("Debian 3.14", debian_python314()),
        ("musl 3.13", built_cpython("3.13-musl")),
        ("3.13t (PYTHON_GIL=1)", built_cpython(FREE_THREADED)),
    ]
    .into_iter()
    .filter_map(|(label, python)| Some((label.to_string(), python?)))
    .collect()
}

#[test]
fn the_profile_names_the_two_spinners_half_each_in_json_svg_and_pprof() {
    if !can_use_bpf() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("gilscope-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for (label, python) in builds() {
        let _machine = serial();
        failures.extend(twice_on_noise(&label, || {
            profile_truth(&label, &python, &dir)
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
