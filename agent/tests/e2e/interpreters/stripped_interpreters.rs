//! Stripped copies (`objcopy --strip-all`) of every pyenv libpython resolve to the
//! same `_PyRuntime`, and `take_gil` is found by disassembly at an offset the
//! symbol table of the original names; Debian's stripped builds are found too,
//! and so is every copy of `_PyParkingLot_Park` (LTO clones it).

use std::path::{Path, PathBuf};

use crate::common::*;
use gilscope::cpython::find::elf::{inspect, Elf, ElfImage};
use gilscope::cpython::find::functions::{find_park, find_take_gil, FoundBy, FoundFunction};

/// The copies of a function `find` locates in the ELF file at `path`.
fn found_in(path: &Path, find: fn(&Elf<'_>) -> Vec<FoundFunction>) -> Vec<FoundFunction> {
    let image = ElfImage::read(path).expect("read");
    let file = image.parse(path).expect("parse");
    find(&file)
}

fn take_gil_of(path: &Path) -> Vec<(u64, FoundBy)> {
    inspect(path).expect("readable").expect("is CPython");
    found_in(path, find_take_gil)
        .into_iter()
        .map(|f| (f.file_offset, f.how))
        .collect()
}

/// Debian sid's stripped `python3.14` itself (not its launcher) and the DWARF
/// file of the same build, if both are fetched.
fn debian_314_and_its_debug_file() -> Option<(PathBuf, PathBuf)> {
    let launcher = debian_python314()?;
    let debug = debian_python314_debug_file()?;
    // The launcher lives in PREFIX/bin; the interpreter in PREFIX/root/usr/bin.
    let python = launcher
        .parent()
        .and_then(Path::parent)
        .map(|prefix| prefix.join("root/usr/bin/python3.14"))
        .expect("prefix");
    Some((python, debug))
}

/// Where the symbol table of `debug` puts `function` and its compiler clones
/// (`take_gil.lto_priv.0`, `_PyParkingLot_Park.constprop.0`; not the `.cold`
/// split-off parts), sorted.
fn named_copies(debug: &Path, function: &str) -> Vec<u64> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(debug).expect("read debug file");
    let dwarf = object::File::parse(&*data).expect("parse debug file");
    let clone = format!("{function}.");
    let mut named: Vec<u64> = dwarf
        .symbols()
        .filter(|s| {
            s.name()
                .is_ok_and(|n| n == function || (n.starts_with(&clone) && !n.ends_with(".cold")))
        })
        .map(|s| s.address())
        .collect();
    named.sort_unstable();
    named
}

#[test]
fn stripped_libpythons_resolve_like_the_originals() {
    for (line, _, lib) in pyenv_matrix() {
        let stripped = stripped_copy(&lib, &format!("file-{line}"));
        let orig = inspect(&lib).expect("ok").expect("cpython");
        let copy = inspect(&stripped).expect("ok").expect("cpython");
        assert!(!orig.stripped && copy.stripped, "{line}");
        assert_eq!(orig.version.line, copy.version.line, "{line}");
        assert_eq!(
            orig.py_runtime, copy.py_runtime,
            "{line}: same _PyRuntime from .dynsym"
        );
        assert!(
            copy.take_gil.is_none(),
            "{line}: no symbols left in the copy"
        );

        let by_symbol = take_gil_of(&lib);
        let by_disassembly = take_gil_of(&stripped);
        assert!(
            by_symbol
                .iter()
                .all(|(_, how)| *how == FoundBy::SymbolTable),
            "{line}"
        );
        assert!(
            by_disassembly
                .iter()
                .all(|(_, how)| *how == FoundBy::Disassembly),
            "{line}"
        );
        let offsets = |v: &[(u64, FoundBy)]| v.iter().map(|(o, _)| *o).collect::<Vec<_>>();
        assert_eq!(
            offsets(&by_disassembly),
            offsets(&by_symbol),
            "{line}: disassembly finds every copy the symbol table names (3.8 has two)"
        );
        let _ = std::fs::remove_dir_all(stripped.parent().expect("dir"));
    }
}

#[test]
fn debian_stripped_python_has_take_gil_found_by_disassembly() {
    let Some(python) = debian_python311() else {
        return;
    };
    let found = take_gil_of(&python);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, FoundBy::Disassembly);
}

/// Debian sid's 3.14 is stripped and LTO-built (take_gil is `take_gil.lto_priv.0`
/// there); the DWARF file from python3.14-dbg names it, so disassembly of the
/// stripped binary must land on exactly the copies that file's symbol table lists.
#[test]
fn debian_314_take_gil_by_disassembly_is_where_its_debug_symbols_put_it() {
    let Some((python, debug)) = debian_314_and_its_debug_file() else {
        return;
    };
    let found = found_in(&python, find_take_gil);
    assert!(
        found.iter().all(|f| f.how == FoundBy::Disassembly),
        "{found:?}"
    );
    let found: Vec<u64> = found.iter().map(|f| f.address).collect();
    let named = named_copies(&debug, "take_gil");
    assert!(!named.is_empty(), "the debug file names take_gil");
    assert_eq!(found, named, "take_gil by disassembly vs the debug symbols");
}

/// Debian's LTO build parks every PyMutex through `_PyParkingLot_Park.constprop.0`,
/// not the export: the stripped binary must yield the export and that clone,
/// exactly the copies the debug file's symbol table lists.
#[test]
fn debian_314_every_copy_of_the_parking_lot_park_is_found() {
    let Some((python, debug)) = debian_314_and_its_debug_file() else {
        return;
    };
    let mut found: Vec<u64> = found_in(&python, find_park)
        .iter()
        .map(|f| f.address)
        .collect();
    found.sort_unstable();
    let named = named_copies(&debug, "_PyParkingLot_Park");
    assert!(named.len() >= 2, "an LTO clone exists: {named:x?}");
    assert_eq!(
        found, named,
        "park copies by disassembly vs the debug symbols"
    );
}

/// Without LTO there is one park (pyenv 3.13): stripped or not, only the export.
#[test]
fn pyenv_313_parks_only_through_the_export_stripped_or_not() {
    let Some((_, _, lib)) = pyenv_matrix()
        .into_iter()
        .find(|(line, _, _)| line == "3.13")
    else {
        return;
    };
    let stripped = stripped_copy(&lib, "park-3.13");
    let parks = |path: &Path| {
        found_in(path, find_park)
            .iter()
            .map(|f| f.file_offset)
            .collect::<Vec<_>>()
    };
    let (orig, copy) = (parks(&lib), parks(&stripped));
    assert_eq!(orig.len(), 1, "{orig:x?}");
    assert_eq!(orig, copy);
    let _ = std::fs::remove_dir_all(stripped.parent().expect("dir"));
}

#[test]
fn a_process_running_a_stripped_copy_is_measured_in_precise_mode() {
    if !can_use_bpf() {
        return;
    }
    let Some(python) = pyenv_python311() else {
        return;
    };
    let lib = python
        .parent()
        .and_then(|d| d.parent())
        .expect("prefix")
        .join("lib/libpython3.11.so.1.0");
    let stripped = stripped_copy(&lib, "process");
    let symtab_offset = take_gil_of(&lib)[0].0;
    let _machine = serial();
    let doc = check_json_with(
        check_command(
            &["--json", "--precise"],
            &python,
            "cpu_threads.py",
            &["2", "2"],
        )
        .env("LD_LIBRARY_PATH", stripped.parent().expect("dir")),
    );
    let interp = &doc["interpreter"];
    assert_eq!(interp["library"].as_str(), stripped.to_str(), "{interp}");
    assert_eq!(interp["stripped"], true);
    let take = &doc["precise_probes"]["take_gil"][0];
    assert_eq!(take["found_by"], "disassembly");
    assert_eq!(take["file_offset"].as_u64(), Some(symtab_offset));
    assert_eq!(
        doc["precise_probes"]["drop_gil"],
        serde_json::json!([]),
        "no drop_gil symbol in the copy"
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
