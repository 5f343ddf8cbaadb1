//! The offset table (agent/src/cpython/layout/versions.rs) and the debug-offsets block
//! positions (agent/src/cpython/layout/debug_offsets.rs) agree with the DWARF of every
//! pyenv build on the machine and of Debian sid's 3.14, read with gdb.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::pyenv_matrix;
use gilscope::cpython::layout::debug_offsets::block_layout;
use gilscope::cpython::layout::versions::{
    layout_for, GilLayout, GilLocation, PyVersion, ThreadIdField,
};
use gilscope::cpython::remote::objects::{object_layout_for, KeysLayout, ObjectLayout};

/// pyenv's libpython of each release line 3.8-3.13, with debug info.
fn pyenv_libraries() -> Vec<(PyVersion, PathBuf)> {
    pyenv_matrix()
        .into_iter()
        .filter_map(|(line, _, lib)| {
            let minor = line.strip_prefix("3.")?.parse().ok()?;
            Some((PyVersion { major: 3, minor }, lib))
        })
        .collect()
}

/// Evaluates `(long)&(EXPR)`-style expressions with gdb; one number per expression.
fn gdb_values(lib: &Path, exprs: &[String]) -> Vec<i64> {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for e in exprs {
        cmd.arg("-ex").arg(format!("print/d {e}"));
    }
    let out = cmd
        .arg(lib)
        .output()
        .expect("gdb must be installed (apt-get install gdb)");
    let text = String::from_utf8_lossy(&out.stdout);
    let values: Vec<i64> = text
        .lines()
        .filter_map(|l| l.split_once(" = ").and_then(|(_, v)| v.trim().parse().ok()))
        .collect();
    assert_eq!(
        values.len(),
        exprs.len(),
        "gdb could not evaluate every expression on {}:\n{text}\n{}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    values
}

fn off(ty: &str, field: &str) -> String {
    format!("(long)&(({ty}*)0)->{field}")
}

#[test]
fn the_offset_table_matches_the_debug_info_of_every_pyenv_build() {
    let libs = pyenv_libraries();
    assert!(!libs.is_empty() || !std::env::var("CI").is_ok_and(|v| v == "true"));
    for (version, lib) in libs {
        table_matches_dwarf(version, &lib);
    }
}

/// Debian ships no symbols in sid's stripped python3.14, but its python3.14-dbg
/// carries the DWARF of that very build (same build id): the table must agree.
#[test]
fn the_offset_table_matches_the_debug_info_of_debian_sids_3_14() {
    let Some(debug) = crate::common::debian_python314_debug_file() else {
        return;
    };
    table_matches_dwarf(
        PyVersion {
            major: 3,
            minor: 14,
        },
        &debug,
    );
}

/// `(gdb expression, what the table says)` for each field of the GIL's state
/// (`struct _gil_runtime_state`) that `g` places, and its size.
fn gil_state_checks(g: &GilLayout) -> Vec<(String, u64)> {
    let gil = "struct _gil_runtime_state";
    vec![
        (off(gil, "interval"), g.interval),
        (off(gil, "last_holder"), g.last_holder),
        (off(gil, "locked"), g.locked),
        (off(gil, "switch_number"), g.switch_number),
        (off(gil, "cond"), g.cond),
        (off(gil, "mutex"), g.mutex),
        (off(gil, "switch_cond"), g.switch_cond),
        (format!("sizeof({gil})"), g.size),
    ]
}

/// `(gdb expression, what the block layout says)` for each `(field of
/// struct _Py_DebugOffsets, where the block layout puts it)`.
fn debug_offsets_checks(fields: &[(&str, usize)]) -> Vec<(String, u64)> {
    fields
        .iter()
        .map(|(field, at)| (off("struct _Py_DebugOffsets", field), *at as u64))
        .collect()
}

/// Every figure the table holds for `version`, against the DWARF in `lib`.
fn table_matches_dwarf(version: PyVersion, lib: &Path) {
    let layout = layout_for(version).unwrap_or_else(|| panic!("{version} in the table"));
    let mut checks = gil_state_checks(&layout.gil_layout);
    checks.push(match layout.thread_id {
        ThreadIdField::NativeThreadId(o) => (off("struct _ts", "native_thread_id"), o),
        ThreadIdField::PthreadOnly(o) => (off("struct _ts", "thread_id"), o),
    });
    match layout.gil {
        GilLocation::Embedded(o) => checks.push((off("struct pyruntimestate", "ceval.gil"), o)),
        GilLocation::InterpreterPointer {
            interp,
            gil_ptr,
            interpreters_head,
            interp_next,
        } => checks.extend([
            (off("struct pyruntimestate", "_main_interpreter"), interp),
            (off("struct _is", "ceval.gil"), gil_ptr),
            (
                off("struct pyruntimestate", "interpreters.head"),
                interpreters_head,
            ),
            (off("struct _is", "next"), interp_next),
        ]),
        GilLocation::DebugOffsets => {
            let b = block_layout(version).unwrap_or_else(|| panic!("{version} block layout"));
            checks.extend(debug_offsets_checks(&[
                ("runtime_state.interpreters_head", b.interpreters_head),
                ("interpreter_state.next", b.interp_next),
                ("interpreter_state.ceval_gil", b.ceval_gil),
                ("interpreter_state.gil_runtime_state", b.gil_runtime_state),
                ("interpreter_state.gil_runtime_state_enabled", b.gil_enabled),
                ("interpreter_state.gil_runtime_state_locked", b.gil_locked),
                ("interpreter_state.gil_runtime_state_holder", b.gil_holder),
                ("thread_state.native_thread_id", b.native_thread_id),
            ]));
        }
    }
    assert_dwarf_agrees(&version.to_string(), lib, &checks);
}

/// libpython3.13t of the free-threaded build, if it was built here.
fn free_threaded_library() -> Option<PathBuf> {
    let python = crate::common::python313t()?;
    let lib = python
        .parent()
        .and_then(|b| b.parent())
        .map(|prefix| prefix.join("lib/libpython3.13t.so.1.0"))
        .filter(|l| l.exists());
    if lib.is_none() {
        crate::common::missing(&format!(
            "{} has no lib/libpython3.13t.so.1.0 beside it",
            python.display()
        ));
    }
    lib
}

#[test]
fn the_free_threaded_gil_layout_matches_the_debug_info_of_3_13t() {
    let Some(lib) = free_threaded_library() else {
        return;
    };
    let version = PyVersion {
        major: 3,
        minor: 13,
    };
    // The free-threaded GIL state starts with its `enabled` flag.
    let mut checks = vec![(off("struct _gil_runtime_state", "enabled"), 0)];
    checks.extend(gil_state_checks(
        &layout_for(version)
            .expect("3.13")
            .gil_layout
            .free_threaded(),
    ));
    let b = block_layout(version).expect("3.13 block");
    checks.extend(debug_offsets_checks(&[
        ("runtime_state.interpreters_head", b.interpreters_head),
        ("interpreter_state.ceval_gil", b.ceval_gil),
        ("interpreter_state.gil_runtime_state_locked", b.gil_locked),
        ("interpreter_state.gil_runtime_state_holder", b.gil_holder),
        ("thread_state.native_thread_id", b.native_thread_id),
    ]));
    assert_dwarf_agrees("3.13t", &lib, &checks);
}

/// `(gdb expression, what the object table says)` for every field of `l` that
/// has a name in the debug info (the managed-dict offsets are macros, not fields:
/// the unit tests and the end-to-end test pin those).
fn object_checks(l: &ObjectLayout) -> Vec<(String, u64)> {
    let minor = l.version.minor;
    let mut c = vec![
        (off("PyObject", "ob_type"), l.ob_type),
        (off("PyTypeObject", "tp_basicsize"), l.tp_basicsize),
        (off("PyTypeObject", "tp_flags"), l.tp_flags),
        (off("PyTypeObject", "tp_dictoffset"), l.tp_dictoffset),
        (off("PyHeapTypeObject", "ht_cached_keys"), l.ht_cached_keys),
        (off("PyModuleObject", "md_dict"), l.md_dict),
        (off("PyDictObject", "ma_keys"), l.ma_keys),
        (off("PyDictObject", "ma_values"), l.ma_values),
        (off("PyASCIIObject", "length"), l.unicode_length),
        (off("PyASCIIObject", "state"), l.unicode_state),
        ("sizeof(PyASCIIObject)".into(), l.ascii_size),
        ("sizeof(PyCompactUnicodeObject)".into(), l.compact_size),
    ];
    let keys = "struct _dictkeysobject";
    match l.keys {
        KeysLayout::Sized => c.extend([
            (off(keys, "dk_size"), 8),
            (off(keys, "dk_nentries"), 32),
            (off(keys, "dk_indices"), 40),
        ]),
        KeysLayout::Log2 => c.extend([
            (off(keys, "dk_log2_size"), 8),
            (off(keys, "dk_log2_index_bytes"), 9),
            (off(keys, "dk_kind"), 10),
            (off(keys, "dk_nentries"), 24),
            (off(keys, "dk_indices"), 32),
            (off("struct _dictvalues", "values"), l.values_array),
        ]),
    }
    if l.long_tagged {
        c.push((off("struct _longobject", "long_value.lv_tag"), l.long_size));
        c.push((
            off("struct _longobject", "long_value.ob_digit"),
            l.long_digits,
        ));
    } else {
        c.push((off("struct _longobject", "ob_base.ob_size"), l.long_size));
        c.push((off("struct _longobject", "ob_digit"), l.long_digits));
    }
    if l.complete() {
        let (modules, threads) = match minor {
            8..=10 => ("modules", "tstate_head"),
            11 => ("modules", "threads.head"),
            _ => ("imports.modules", "threads.head"),
        };
        c.extend([
            (
                off("struct pyruntimestate", "interpreters.head"),
                l.interpreters_head,
            ),
            (off("struct _is", "next"), l.interp_next),
            (off("struct _is", modules), l.interp_modules),
            (off("struct _is", threads), l.interp_threads_head),
            (off("struct _ts", "next"), l.tstate_next),
            (off("struct _ts", "thread_id"), l.tstate_thread_id),
        ]);
        if let Some(native) = l.tstate_native_thread_id {
            c.push((off("struct _ts", "native_thread_id"), native));
        }
    } else {
        // 3.13+: these come from the debug offsets; check where the block keeps them.
        let b = block_layout(l.version).expect("a block layout for a debug-offsets build");
        let d = "struct _Py_DebugOffsets";
        c.extend([
            (
                off(d, "interpreter_state.threads_head"),
                b.threads_head as u64,
            ),
            (
                off(d, "interpreter_state.imports_modules"),
                b.imports_modules as u64,
            ),
            (off(d, "thread_state.next"), b.tstate_next as u64),
            (off(d, "thread_state.thread_id"), b.thread_id as u64),
            (off(d, "pyobject.ob_type"), b.ob_type as u64),
            (off(d, "type_object.tp_flags"), b.tp_flags as u64),
            (off(d, "dict_object.ma_keys"), b.ma_keys as u64),
            (off(d, "dict_object.ma_values"), b.ma_values as u64),
            (off(d, "long_object.lv_tag"), b.long_tag as u64),
            (off(d, "long_object.ob_digit"), b.long_digits as u64),
            (off(d, "unicode_object.state"), b.unicode_state as u64),
            (off(d, "unicode_object.length"), b.unicode_length as u64),
            (
                off(d, "unicode_object.asciiobject_size"),
                b.ascii_size as u64,
            ),
        ]);
    }
    c
}

/// Evaluates every `(gdb expression, expected value)` of `checks` on the DWARF
/// of `lib` and asserts each one.
fn assert_dwarf_agrees(label: &str, lib: &Path, checks: &[(String, u64)]) {
    let exprs: Vec<String> = checks.iter().map(|(e, _)| e.clone()).collect();
    let values = gdb_values(lib, &exprs);
    for ((expr, want), got) in checks.iter().zip(values) {
        assert_eq!(got as u64, *want, "{label}: {expr}");
    }
}

#[test]
fn the_object_layouts_for_thread_names_match_the_debug_info_of_every_build() {
    for (version, lib) in pyenv_libraries() {
        let l = object_layout_for(version, false)
            .unwrap_or_else(|| panic!("{version} has an object layout"));
        assert_dwarf_agrees(&version.to_string(), &lib, &object_checks(&l));
    }
    if let Some(lib) = free_threaded_library() {
        let version = PyVersion {
            major: 3,
            minor: 13,
        };
        let l = object_layout_for(version, true).expect("3.13t has an object layout");
        assert_dwarf_agrees("3.13t", &lib, &object_checks(&l));
    }
}
