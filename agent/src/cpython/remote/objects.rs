//! The one table of CPython *object* layouts the readers of this module use.
//!
//! Naming a thread means walking from the interpreter state to `sys.modules`,
//! the `threading` module's `_active` dict, each `Thread` object's `_name` and
//! the `str` behind it, so this table holds the offsets of those structs per
//! release line. Like [`crate::cpython::layout::versions`], every figure was read from the DWARF
//! of a local build (`gdb -batch -ex 'ptype /o PyDictObject' libpython3.X.so`)
//! and `agent/tests/e2e/interpreters/offsets_match_dwarf.rs` compares them with each build's debug
//! info, so stripped interpreters need no debug info at run time. On 3.13+ the
//! fields `_PyRuntime.debug_offsets` describes override the table
//! ([`ObjectLayout::with_debug_offsets`]).

use crate::cpython::layout::debug_offsets::DebugOffsets;
use crate::cpython::layout::versions::PyVersion;

/// How `PyDictKeysObject` is laid out (its header changed in 3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeysLayout {
    /// 3.8-3.10: `Py_ssize_t dk_size` at 8, `dk_nentries` at 32, indices at 40,
    /// entries of `{hash, key, value}`; index width follows `dk_size`.
    Sized,
    /// 3.11+: `dk_log2_size` at 8, `dk_log2_index_bytes` at 9, `dk_kind` at 10,
    /// `dk_nentries` at 24, indices at 32; entries are `{key, value}` unless the
    /// kind is general (0).
    Log2,
}

/// Where a plain Python object (such as a `threading.Thread`) keeps its attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceDict {
    /// 3.8-3.10: a dict pointer at `obj + type->tp_dictoffset`.
    DictOffset,
    /// 3.11: before the object, the dict pointer at -24 and, while no dict was
    /// made, a `PyDictValues *` at -32 indexed like the type's cached keys.
    Managed311,
    /// 3.12: one tagged word at -24: a dict, or (low bit set) `PyDictValues *`
    /// minus one.
    Managed312,
    /// 3.13: a dict pointer at `managed_dict` (-24; -8 free-threaded) and, with
    /// `Py_TPFLAGS_INLINE_VALUES`, the values right after the object
    /// (`obj + tp_basicsize`, header `{capacity, size, embedded, valid}`).
    Managed313 { managed_dict: i64 },
}

/// Offsets (bytes) of everything the object readers touch, for one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLayout {
    pub version: PyVersion,
    pub free_threaded: bool,
    /// `offsetof(_PyRuntimeState, interpreters.head)`.
    pub interpreters_head: u64,
    /// `offsetof(PyInterpreterState, next)`.
    pub interp_next: u64,
    /// `offsetof(PyInterpreterState, modules)` (3.12+: `imports.modules`): `sys.modules`.
    pub interp_modules: u64,
    /// `offsetof(PyInterpreterState, tstate_head)` (3.11+: `threads.head`).
    pub interp_threads_head: u64,
    /// `offsetof(PyThreadState, next)`.
    pub tstate_next: u64,
    /// `offsetof(PyThreadState, thread_id)`: the `pthread_t`, key of `threading._active`.
    pub tstate_thread_id: u64,
    /// `offsetof(PyThreadState, native_thread_id)` (3.11+): the kernel tid.
    pub tstate_native_thread_id: Option<u64>,
    /// `offsetof(PyObject, ob_type)`.
    pub ob_type: u64,
    /// `offsetof(PyTypeObject, tp_basicsize)`.
    pub tp_basicsize: u64,
    /// `offsetof(PyTypeObject, tp_flags)`.
    pub tp_flags: u64,
    /// `offsetof(PyTypeObject, tp_dictoffset)`.
    pub tp_dictoffset: u64,
    /// `offsetof(PyHeapTypeObject, ht_cached_keys)`: keys shared by instances (3.11+).
    pub ht_cached_keys: u64,
    /// `offsetof(PyModuleObject, md_dict)`.
    pub md_dict: u64,
    /// `offsetof(PyDictObject, ma_keys)`.
    pub ma_keys: u64,
    /// `offsetof(PyDictObject, ma_values)`.
    pub ma_values: u64,
    pub keys: KeysLayout,
    /// Offset of the value array inside what `ma_values` points to (8 in 3.13).
    pub values_array: u64,
    pub instance_dict: InstanceDict,
    /// `offsetof(PyASCIIObject, length)`.
    pub unicode_length: u64,
    /// `offsetof(PyASCIIObject, state)`: bits interned:2, kind:3, compact:1, ascii:1.
    pub unicode_state: u64,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's bytes start.
    pub ascii_size: u64,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' code units start.
    pub compact_size: u64,
    /// `PyLongObject`: the size word (`ob_size`, 3.12+: `lv_tag`).
    pub long_size: u64,
    /// `PyLongObject`: the first 30-bit digit.
    pub long_digits: u64,
    /// 3.12+: `lv_tag` packs the digit count (`>> 3`) and the sign (`& 3`).
    pub long_tagged: bool,
}

const fn v(major: u8, minor: u8) -> PyVersion {
    PyVersion { major, minor }
}

/// 3.8 (the other release lines are written as differences from their predecessor).
const L38: ObjectLayout = ObjectLayout {
    version: v(3, 8),
    free_threaded: false,
    interpreters_head: 32,
    interp_next: 0,
    interp_modules: 56,
    interp_threads_head: 8,
    tstate_next: 8,
    tstate_thread_id: 176,
    tstate_native_thread_id: None,
    ob_type: 8,
    tp_basicsize: 32,
    tp_flags: 168,
    tp_dictoffset: 288,
    ht_cached_keys: 872,
    md_dict: 16,
    ma_keys: 32,
    ma_values: 40,
    keys: KeysLayout::Sized,
    values_array: 0,
    instance_dict: InstanceDict::DictOffset,
    unicode_length: 16,
    unicode_state: 32,
    ascii_size: 48,
    compact_size: 72,
    long_size: 16,
    long_digits: 24,
    long_tagged: false,
};

const L39: ObjectLayout = ObjectLayout {
    version: v(3, 9),
    interp_modules: 856,
    ht_cached_keys: 864,
    ..L38
};

const L310: ObjectLayout = ObjectLayout {
    version: v(3, 10),
    ht_cached_keys: 872,
    ..L39
};

const L311: ObjectLayout = ObjectLayout {
    version: v(3, 11),
    interpreters_head: 40,
    interp_modules: 888,
    interp_threads_head: 16,
    tstate_thread_id: 152,
    tstate_native_thread_id: Some(160),
    keys: KeysLayout::Log2,
    instance_dict: InstanceDict::Managed311,
    ..L310
};

const L312: ObjectLayout = ObjectLayout {
    version: v(3, 12),
    interp_modules: 944,
    interp_threads_head: 72,
    tstate_thread_id: 136,
    tstate_native_thread_id: Some(144),
    ht_cached_keys: 880,
    instance_dict: InstanceDict::Managed312,
    ascii_size: 40,
    compact_size: 56,
    long_tagged: true,
    ..L311
};

/// 3.13: the runtime, interpreter and thread-state offsets (zero here) always come
/// from the process's debug offsets; so do those of object headers, dicts, ints and
/// strs, which the table still carries so a test can hold them against DWARF.
const L313: ObjectLayout = ObjectLayout {
    version: v(3, 13),
    interpreters_head: 0,
    interp_next: 0,
    interp_modules: 0,
    interp_threads_head: 0,
    tstate_next: 0,
    tstate_thread_id: 0,
    tstate_native_thread_id: None,
    values_array: 8,
    instance_dict: InstanceDict::Managed313 { managed_dict: -24 },
    ..L312
};

/// 3.13 free-threaded: every object header is 32 bytes (`ob_tid`, split refcounts).
const L313T: ObjectLayout = ObjectLayout {
    free_threaded: true,
    ob_type: 24,
    tp_basicsize: 48,
    tp_flags: 184,
    tp_dictoffset: 304,
    ht_cached_keys: 896,
    md_dict: 32,
    ma_keys: 48,
    ma_values: 56,
    instance_dict: InstanceDict::Managed313 { managed_dict: -8 },
    unicode_length: 32,
    unicode_state: 48,
    ascii_size: 56,
    compact_size: 72,
    long_size: 32,
    long_digits: 40,
    ..L313
};

/// 3.14 (Debian sid's 3.14.10, checked with gdb against the DWARF its
/// python3.14-dbg ships): type, module, dict, str and int layouts are 3.13's;
/// the rest comes from its (grown) debug offsets.
const L314: ObjectLayout = ObjectLayout {
    version: v(3, 14),
    ..L313
};

/// Measured layouts, one per release line and build kind.
const OBJECT_LAYOUTS: &[ObjectLayout] = &[L38, L39, L310, L311, L312, L313, L313T, L314];

/// `Py_TPFLAGS_INLINE_VALUES` (3.13+).
pub const TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
/// `Py_TPFLAGS_MANAGED_DICT` (3.11+).
pub const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;

/// The layout of a release line's default (or free-threaded) build, if known.
pub fn object_layout_for(version: PyVersion, free_threaded: bool) -> Option<ObjectLayout> {
    OBJECT_LAYOUTS
        .iter()
        .find(|l| l.version == version && l.free_threaded == free_threaded)
        .copied()
}

impl ObjectLayout {
    /// The object layout of a process of release line `line`: the table's for
    /// its build kind, refined by its debug offsets where it has them (3.13+);
    /// `None` when unknown or incomplete.
    pub fn of_process(line: PyVersion, debug: Option<&DebugOffsets>) -> Option<ObjectLayout> {
        let free_threaded = debug.is_some_and(|d| d.free_threaded);
        let table = object_layout_for(line, free_threaded)?;
        let layout = match debug {
            Some(d) => table.with_debug_offsets(d),
            None => table,
        };
        layout.complete().then_some(layout)
    }

    /// The table's layout with every field the process describes itself (3.13+)
    /// taken from its `_PyRuntime.debug_offsets` instead.
    pub fn with_debug_offsets(self, d: &DebugOffsets) -> ObjectLayout {
        ObjectLayout {
            interpreters_head: d.interpreters_head,
            interp_next: d.interp_next,
            interp_modules: d.imports_modules,
            interp_threads_head: d.threads_head,
            tstate_next: d.tstate_next,
            tstate_thread_id: d.thread_id,
            tstate_native_thread_id: Some(d.native_thread_id),
            ob_type: d.ob_type,
            tp_flags: d.tp_flags,
            ma_keys: d.ma_keys,
            ma_values: d.ma_values,
            unicode_state: d.unicode_state,
            unicode_length: d.unicode_length,
            ascii_size: d.ascii_size,
            long_size: d.long_tag,
            long_digits: d.long_digits,
            ..self
        }
    }

    /// Whether the interpreter and thread-state offsets are filled in (3.13 needs
    /// [`ObjectLayout::with_debug_offsets`] first).
    pub fn complete(&self) -> bool {
        self.interp_modules != 0 && self.tstate_thread_id != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_release_line_with_a_gil_layout_has_an_object_layout() {
        for minor in 8..=13 {
            assert!(object_layout_for(v(3, minor), false).is_some(), "3.{minor}");
        }
        assert!(object_layout_for(v(3, 13), true).is_some());
        assert!(object_layout_for(v(3, 12), true).is_none());
    }

    #[test]
    fn the_313_table_needs_the_debug_offsets_for_interpreter_fields() {
        let l = object_layout_for(v(3, 13), false).expect("3.13");
        assert!(!l.complete());
        assert!(object_layout_for(v(3, 11), false).expect("3.11").complete());
    }

    #[test]
    fn free_threaded_objects_have_a_32_byte_header() {
        let l = object_layout_for(v(3, 13), true).expect("3.13t");
        assert_eq!((l.ob_type, l.md_dict, l.ma_keys), (24, 32, 48));
        assert_eq!(
            l.instance_dict,
            InstanceDict::Managed313 { managed_dict: -8 }
        );
    }
}
