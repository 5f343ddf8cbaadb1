//! A stripped copy (`objcopy --strip-all`) of pyenv's libpython resolves to the
//! same `_PyRuntime`, and `take_gil` is found by disassembly at the same offset
//! the symbol table gives.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use gilscope::python::elf::{inspect, ElfImage};
use gilscope::python::finder::{find_take_gil, FoundBy};

/// pyenv's libpython3.11 and a stripped copy of it in a fresh directory.
fn stripped_copy(python: &Path, tag: &str) -> Option<(PathBuf, PathBuf)> {
    let lib = python.parent()?.parent()?.join("lib/libpython3.11.so.1.0");
    if !lib.exists() {
        missing(&format!("{} not found", lib.display()));
        return None;
    }
    let dir = std::env::temp_dir().join(format!("gilscope-stripped-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("libpython3.11.so.1.0");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&lib)
        .arg(&copy)
        .status()
        .expect("objcopy (binutils) must be installed");
    assert!(status.success(), "objcopy failed");
    Some((lib, copy))
}

fn take_gil_of(path: &Path) -> (u64, FoundBy, u64) {
    let info = inspect(path).expect("readable").expect("is CPython");
    let image = ElfImage::read(path).expect("read");
    let file = image.parse(path).expect("parse");
    let found = find_take_gil(&file, &info).expect("take_gil found");
    (found.file_offset, found.how, info.py_runtime)
}

#[test]
fn a_stripped_libpython_resolves_like_the_original() {
    let Some(python) = pyenv_python311() else {
        return;
    };
    let Some((original, stripped)) = stripped_copy(&python, "file") else {
        return;
    };
    let orig = inspect(&original).expect("ok").expect("cpython");
    let copy = inspect(&stripped).expect("ok").expect("cpython");
    assert!(!orig.stripped && copy.stripped);
    assert_eq!(orig.version, copy.version);
    assert_eq!(
        orig.py_runtime, copy.py_runtime,
        "same _PyRuntime from .dynsym"
    );
    assert!(copy.take_gil.is_none(), "no symbols left in the copy");

    let (orig_offset, orig_how, _) = take_gil_of(&original);
    let (copy_offset, copy_how, _) = take_gil_of(&stripped);
    assert_eq!(orig_how, FoundBy::SymbolTable);
    assert_eq!(copy_how, FoundBy::Disassembly);
    assert_eq!(
        orig_offset, copy_offset,
        "disassembly finds the take_gil the symbol table names"
    );
    let _ = std::fs::remove_dir_all(stripped.parent().expect("dir"));
}

#[test]
fn debian_stripped_python_has_take_gil_found_by_disassembly() {
    let Some(python) = debian_python311() else {
        return;
    };
    let (offset, how, _) = take_gil_of(&python);
    assert_eq!(how, FoundBy::Disassembly);
    assert!(offset > 0);
}

#[test]
fn a_process_running_the_stripped_copy_is_measured_in_precise_mode() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let Some((original, stripped)) = stripped_copy(&python, "process") else {
        return;
    };
    let (symtab_offset, _, _) = take_gil_of(&original);
    let _machine = serial();
    let doc = check_json_with(
        gilscope()
            .args(["check", "--json", "--precise", "--"])
            .arg(&python)
            .args([&workload("cpu_threads.py"), "2", "2"])
            .env("LD_LIBRARY_PATH", stripped.parent().expect("dir")),
    );
    let interp = &doc["interpreter"];
    assert_eq!(interp["library"].as_str(), stripped.to_str(), "{interp}");
    assert_eq!(interp["stripped"], true);
    let take = &doc["precise_probes"]["take_gil"];
    assert_eq!(take["found_by"], "disassembly");
    assert_eq!(take["file_offset"].as_u64(), Some(symtab_offset));
    assert!(
        doc["precise_probes"]["drop_gil"].is_null(),
        "drop_gil has no symbol in the copy"
    );
    let wall = f(&doc["process"], "wall_s");
    for w in workers(&doc) {
        let share = f(&w, "gil_wait_s") / wall;
        assert!(
            (0.3..=0.7).contains(&share),
            "two workers each wait ~half: {w}"
        );
    }
    let _ = std::fs::remove_dir_all(stripped.parent().expect("dir"));
}
