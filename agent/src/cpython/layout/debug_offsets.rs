//! `_PyRuntime.debug_offsets` (3.13+): the interpreter describes its own layout.
//!
//! CPython 3.13 put a `_Py_DebugOffsets` block at the very start of `_PyRuntime`
//! for out-of-process tools: a cookie (`xdebugpy`), `PY_VERSION_HEX`, whether the
//! build is free-threaded, and `offsetof` values of the fields a profiler needs.
//! The block's own layout still changes between releases, so this module knows,
//! per release line, where in the block each value sits; the values themselves
//! come from the process.

use crate::cpython::layout::frames::{
    CodeLayout, FrameWalk, InstrKind, LineFormat, StackLayout, TstateToFrame,
};
use crate::cpython::layout::versions::PyVersion;

/// Bytes of `_PyRuntime` to read: enough for every field used here in every release.
pub const BLOCK_LEN: usize = 656;

const COOKIE: &[u8; 8] = b"xdebugpy";

/// Positions (byte offsets inside `_Py_DebugOffsets`) of the values gilscope reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub version: PyVersion,
    pub interpreters_head: usize,
    pub interp_next: usize,
    pub ceval_gil: usize,
    pub gil_runtime_state: usize,
    pub gil_enabled: usize,
    pub gil_locked: usize,
    pub gil_holder: usize,
    pub native_thread_id: usize,
    /// Positions of the offsets the thread-name reader uses (interpreter's
    /// thread list and `sys.modules`, thread states, object headers, dict,
    /// int and str layouts).
    pub threads_head: usize,
    pub imports_modules: usize,
    pub tstate_next: usize,
    pub thread_id: usize,
    pub ob_type: usize,
    pub tp_flags: usize,
    pub ma_keys: usize,
    pub ma_values: usize,
    pub long_tag: usize,
    pub long_digits: usize,
    pub unicode_state: usize,
    pub unicode_length: usize,
    pub ascii_size: usize,
    /// Positions of what the stack reader uses: `sizeof` each struct (for the
    /// plausibility checks), the thread's current frame, the frame's fields,
    /// the code object's, and `PyBytesObject`'s (line tables are `bytes`).
    pub stack: StackPositions,
}

/// Positions in the block of the offsets a stack walk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackPositions {
    pub tstate_size: usize,
    pub current_frame: usize,
    pub frame_size: usize,
    pub frame_previous: usize,
    pub frame_executable: usize,
    pub frame_instr_ptr: usize,
    pub frame_owner: usize,
    pub code_size: usize,
    pub code_filename: usize,
    pub code_qualname: usize,
    pub code_linetable: usize,
    pub code_firstlineno: usize,
    pub code_adaptive: usize,
    pub bytes_size: usize,
    pub bytes_data: usize,
}

/// Read from DWARF (`ptype /o struct _Py_DebugOffsets`) of each release's build.
///
/// 3.14 grew the block: `interpreter_state` gained `threads_main` (after
/// `threads_head`, so `ceval_gil` and the `_gil` fields move by 8) and
/// `code_object_generation`/`tlbc_generation` (so `thread_state` moves by 24).
/// The 3.14 figures come from the DWARF Debian's python3.14-dbg ships for sid's
/// stripped `/usr/bin/python3.14` 3.14.10 (same build id), and match the block
/// that binary carries in its `.data`.
const BLOCK_LAYOUTS: &[BlockLayout] = &[
    BlockLayout {
        version: PyVersion {
            major: 3,
            minor: 13,
        },
        interpreters_head: 40,
        interp_next: 64,
        ceval_gil: 112,
        gil_runtime_state: 120,
        gil_enabled: 128,
        gil_locked: 136,
        gil_holder: 144,
        native_thread_id: 200,
        threads_head: 72,
        imports_modules: 88,
        tstate_next: 168,
        thread_id: 192,
        ob_type: 360,
        tp_flags: 392,
        ma_keys: 456,
        ma_values: 464,
        long_tag: 496,
        long_digits: 504,
        unicode_state: 544,
        unicode_length: 552,
        ascii_size: 560,
        stack: StackPositions {
            tstate_size: 152,
            current_frame: 184,
            frame_size: 224,
            frame_previous: 232,
            frame_executable: 240,
            frame_instr_ptr: 248,
            frame_owner: 264,
            code_size: 272,
            code_filename: 280,
            code_qualname: 296,
            code_linetable: 304,
            code_firstlineno: 312,
            code_adaptive: 344,
            bytes_size: 520,
            bytes_data: 528,
        },
    },
    BlockLayout {
        version: PyVersion {
            major: 3,
            minor: 14,
        },
        interpreters_head: 40,
        interp_next: 64,
        ceval_gil: 120,
        gil_runtime_state: 128,
        gil_enabled: 136,
        gil_locked: 144,
        gil_holder: 152,
        native_thread_id: 224,
        threads_head: 72,
        imports_modules: 96,
        tstate_next: 192,
        thread_id: 216,
        ob_type: 408,
        tp_flags: 440,
        ma_keys: 536,
        ma_values: 544,
        long_tag: 576,
        long_digits: 584,
        unicode_state: 624,
        unicode_length: 632,
        ascii_size: 640,
        stack: StackPositions {
            tstate_size: 176,
            current_frame: 208,
            frame_size: 248,
            frame_previous: 256,
            frame_executable: 264,
            frame_instr_ptr: 272,
            frame_owner: 288,
            code_size: 312,
            code_filename: 320,
            code_qualname: 336,
            code_linetable: 344,
            code_firstlineno: 352,
            code_adaptive: 384,
            bytes_size: 600,
            bytes_data: 608,
        },
    },
];

/// What a process's debug offsets say (all values are `offsetof` in that build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version_hex: u64,
    pub free_threaded: bool,
    /// `offsetof(_PyRuntimeState, interpreters.head)`
    pub interpreters_head: u64,
    /// `offsetof(PyInterpreterState, next)`
    pub interp_next: u64,
    /// `offsetof(PyInterpreterState, ceval.gil)`: pointer to the GIL this interpreter uses.
    pub ceval_gil: u64,
    /// `offsetof(PyInterpreterState, _gil)` and of its fields.
    pub gil_runtime_state: u64,
    pub gil_enabled: u64,
    pub gil_locked: u64,
    pub gil_holder: u64,
    /// `offsetof(PyThreadState, native_thread_id)`
    pub native_thread_id: u64,
    /// `offsetof(PyInterpreterState, threads.head)`
    pub threads_head: u64,
    /// `offsetof(PyInterpreterState, imports.modules)`: `sys.modules`
    pub imports_modules: u64,
    /// `offsetof(PyThreadState, next)`
    pub tstate_next: u64,
    /// `offsetof(PyThreadState, thread_id)`: the `pthread_t`
    pub thread_id: u64,
    /// `offsetof(PyObject, ob_type)`
    pub ob_type: u64,
    /// `offsetof(PyTypeObject, tp_flags)`
    pub tp_flags: u64,
    /// `offsetof(PyDictObject, ma_keys)` and `ma_values`
    pub ma_keys: u64,
    pub ma_values: u64,
    /// `offsetof(PyLongObject, long_value.lv_tag)` and `long_value.ob_digit`
    pub long_tag: u64,
    pub long_digits: u64,
    /// `offsetof(PyASCIIObject, state)` and `length`, and `sizeof(PyASCIIObject)`
    pub unicode_state: u64,
    pub unicode_length: u64,
    pub ascii_size: u64,
    /// The values at [`StackPositions`]: `offsetof` in this build (checked
    /// before use by [`DebugOffsets::stack_layout`]).
    pub stack: StackOffsets,
}

/// What the process says about the structs a stack walk reads (`size` is `sizeof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackOffsets {
    pub tstate_size: u64,
    pub current_frame: u64,
    pub frame_size: u64,
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_owner: u64,
    pub code_size: u64,
    pub code_filename: u64,
    pub code_qualname: u64,
    pub code_linetable: u64,
    pub code_firstlineno: u64,
    pub code_adaptive: u64,
    pub bytes_size: u64,
    pub bytes_data: u64,
}

impl DebugOffsets {
    /// Offset of `locked` inside the GIL struct.
    pub fn locked_in_gil(&self) -> Option<u64> {
        self.gil_locked.checked_sub(self.gil_runtime_state)
    }

    /// Offset of `last_holder` inside the GIL struct.
    pub fn holder_in_gil(&self) -> Option<u64> {
        self.gil_holder.checked_sub(self.gil_runtime_state)
    }

    /// Offset of `enabled` inside the GIL struct (free-threaded builds only). Unlike
    /// `locked` and `last_holder`, CPython records this one relative to the GIL
    /// struct, not to the interpreter (`offsetof(struct _gil_runtime_state, enabled)`).
    pub fn enabled_in_gil(&self) -> Option<u64> {
        self.free_threaded.then_some(self.gil_enabled)
    }
}

/// A field of `width` bytes at `at` inside a struct of `size` bytes, aligned to
/// `width`: anything else is not what CPython writes, and is refused.
fn field(name: &str, at: u64, width: u64, size: u64) -> Result<u64, String> {
    let fits = at.checked_add(width).is_some_and(|end| end <= size);
    if fits && at.is_multiple_of(width) {
        Ok(at)
    } else {
        Err(format!(
            "implausible debug offset {name} = {at} (a {width}-byte field in a {size}-byte struct)"
        ))
    }
}

/// A struct size between `min` and `max` bytes.
fn size(name: &str, v: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("implausible debug offset: sizeof({name}) = {v}"))
    }
}

/// Fields that must not overlap: (name, start, width).
fn disjoint(fields: &[(&str, u64, u64)]) -> Result<(), String> {
    for (i, (a, at, aw)) in fields.iter().enumerate() {
        for (b, bt, bw) in &fields[i + 1..] {
            if at < &(bt + bw) && bt < &(at + aw) {
                return Err(format!("debug offsets put {a} ({at}) over {b} ({bt})"));
            }
        }
    }
    Ok(())
}

impl DebugOffsets {
    /// The frame walk and code object layout this process describes, every
    /// value checked: each field inside its struct (whose size is itself
    /// bounded), aligned, not overlapping the others, the instructions after
    /// every named field of the code object. A block that fails is refused whole
    /// (the target may be hostile: issue 14).
    pub fn stack_layout(&self) -> Result<StackLayout, String> {
        let s = &self.stack;
        let tstate = size("PyThreadState", s.tstate_size, 64, 1 << 16)?;
        let frame = size("_PyInterpreterFrame", s.frame_size, 32, 1024)?;
        let code = size("PyCodeObject", s.code_size, 64, 4096)?;
        let current = field("thread_state.current_frame", s.current_frame, 8, tstate)?;
        let previous = field("interpreter_frame.previous", s.frame_previous, 8, frame)?;
        let executable = field("interpreter_frame.executable", s.frame_executable, 8, frame)?;
        let instr = field("interpreter_frame.instr_ptr", s.frame_instr_ptr, 8, frame)?;
        let owner = field("interpreter_frame.owner", s.frame_owner, 1, frame)?;
        disjoint(&[
            ("previous", previous, 8),
            ("executable", executable, 8),
            ("instr_ptr", instr, 8),
            ("owner", owner, 1),
        ])?;
        let filename = field("code_object.filename", s.code_filename, 8, code)?;
        let qualname = field("code_object.qualname", s.code_qualname, 8, code)?;
        let linetable = field("code_object.linetable", s.code_linetable, 8, code)?;
        let firstlineno = field("code_object.firstlineno", s.code_firstlineno, 4, code)?;
        let adaptive = field("code_object.co_code_adaptive", s.code_adaptive, 2, code)?;
        disjoint(&[
            ("filename", filename, 8),
            ("qualname", qualname, 8),
            ("linetable", linetable, 8),
            ("firstlineno", firstlineno, 4),
        ])?;
        let fields_end = [filename + 8, qualname + 8, linetable + 8, firstlineno + 4]
            .into_iter()
            .max()
            .unwrap_or(0);
        if adaptive < fields_end {
            return Err(format!(
                "debug offsets put co_code_adaptive ({adaptive}) before the code object's fields"
            ));
        }
        let bytes_size = field("bytes_object.ob_size", s.bytes_size, 8, 64)?;
        let bytes_data = field("bytes_object.ob_sval", s.bytes_data, 1, 128)?;
        if bytes_data < bytes_size + 8 {
            return Err(format!(
                "debug offsets put ob_sval ({bytes_data}) inside ob_size ({bytes_size})"
            ));
        }
        // 3.14 tags `f_executable` (a `_PyStackRef`): its low bit (`Py_TAG_BITS`).
        let minor = (self.version_hex >> 16) & 0xff;
        Ok(StackLayout {
            walk: FrameWalk {
                tstate_to_frame: TstateToFrame {
                    first: current,
                    second: None,
                },
                frame_previous: previous,
                frame_code: executable,
                code_tag_mask: if minor >= 14 { 1 } else { 0 },
                frame_instr: instr,
                instr: InstrKind::Pointer,
                frame_owner: Some(owner),
            },
            code: CodeLayout {
                name: qualname,
                filename,
                firstlineno,
                linetable,
                lines: LineFormat::Locations,
                code_start: Some(adaptive),
                bytes_size,
                bytes_data,
            },
        })
    }
}

/// The release lines whose debug-offsets block gilscope can read.
pub fn known(line: PyVersion) -> bool {
    block_layout(line).is_some()
}

/// Where the values sit in the block of one release line (checked against DWARF by a test).
pub fn block_layout(line: PyVersion) -> Option<&'static BlockLayout> {
    BLOCK_LAYOUTS.iter().find(|l| l.version == line)
}

fn u64_at(block: &[u8], at: usize) -> Option<u64> {
    block
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Parses the start of `_PyRuntime`; the error says what did not match.
pub fn parse(block: &[u8], line: PyVersion) -> Result<DebugOffsets, String> {
    if block.get(..8) != Some(COOKIE.as_slice()) {
        return Err("no xdebugpy cookie at the start of _PyRuntime".into());
    }
    let version_hex = u64_at(block, 8).ok_or("debug offsets block too short")?;
    let (major, minor) = ((version_hex >> 24) & 0xff, (version_hex >> 16) & 0xff);
    if major != u64::from(line.major) || minor != u64::from(line.minor) {
        return Err(format!(
            "debug offsets say {major}.{minor}, the file says {line}"
        ));
    }
    let layout =
        block_layout(line).ok_or_else(|| format!("no known debug-offsets layout for {line}"))?;
    let get =
        |at: usize| u64_at(block, at).ok_or_else(|| "debug offsets block too short".to_string());
    let offsets = DebugOffsets {
        version_hex,
        free_threaded: get(16)? != 0,
        interpreters_head: get(layout.interpreters_head)?,
        interp_next: get(layout.interp_next)?,
        ceval_gil: get(layout.ceval_gil)?,
        gil_runtime_state: get(layout.gil_runtime_state)?,
        gil_enabled: get(layout.gil_enabled)?,
        gil_locked: get(layout.gil_locked)?,
        gil_holder: get(layout.gil_holder)?,
        native_thread_id: get(layout.native_thread_id)?,
        threads_head: get(layout.threads_head)?,
        imports_modules: get(layout.imports_modules)?,
        tstate_next: get(layout.tstate_next)?,
        thread_id: get(layout.thread_id)?,
        ob_type: get(layout.ob_type)?,
        tp_flags: get(layout.tp_flags)?,
        ma_keys: get(layout.ma_keys)?,
        ma_values: get(layout.ma_values)?,
        long_tag: get(layout.long_tag)?,
        long_digits: get(layout.long_digits)?,
        unicode_state: get(layout.unicode_state)?,
        unicode_length: get(layout.unicode_length)?,
        ascii_size: get(layout.ascii_size)?,
        stack: read_stack_offsets(&layout.stack, &get)?,
    };
    offsets.check_plausible()?;
    Ok(offsets)
}

/// The most bytes of `_PyRuntimeState` or `PyInterpreterState` an offset may
/// point into: both are a few hundred KiB at most in any build.
const RUNTIME_STRUCT_MAX: u64 = 1 << 24;

/// The most bytes of the GIL struct (`struct _gil_runtime_state`: ~200).
const GIL_STRUCT_MAX: u64 = 512;

/// The most bytes of an object header an offset may point into (`PyTypeObject`
/// is ~400 bytes, the others under 100).
const OBJECT_HEADER_MAX: u64 = 1024;

impl DebugOffsets {
    /// Every field the agent uses, checked before any is (issue 14: the block
    /// is the target's own memory and may be garbage or hostile): each offset
    /// inside a struct of bounded size and aligned to its width, the GIL's
    /// fields inside the GIL, the thread state's inside its declared size, and
    /// the fields that cannot be at 0 not at 0. A block that fails is refused
    /// whole, with the first field that failed named.
    pub fn check_plausible(&self) -> Result<(), String> {
        // (name, offset, whether 0 is impossible: a field after a header)
        for (name, v, after_header) in [
            (
                "runtime_state.interpreters_head",
                self.interpreters_head,
                true,
            ),
            ("interpreter_state.next", self.interp_next, false),
            ("interpreter_state.ceval.gil", self.ceval_gil, true),
            ("interpreter_state._gil", self.gil_runtime_state, true),
            ("interpreter_state.threads.head", self.threads_head, false),
            (
                "interpreter_state.imports.modules",
                self.imports_modules,
                false,
            ),
        ] {
            if after_header && v == 0 {
                return Err(format!("implausible debug offset {name} = 0"));
            }
            field(name, v, 8, RUNTIME_STRUCT_MAX)?;
        }
        let in_gil = |name: &str, v: u64, width: u64| {
            let at = v.checked_sub(self.gil_runtime_state).ok_or_else(|| {
                format!("implausible debug offset {name} = {v}, before the GIL struct")
            })?;
            field(name, at, width, GIL_STRUCT_MAX)
        };
        in_gil("_gil.locked", self.gil_locked, 4)?;
        in_gil("_gil.last_holder", self.gil_holder, 8)?;
        if self.free_threaded {
            field("_gil.enabled", self.gil_enabled, 4, GIL_STRUCT_MAX)?;
        }
        let tstate = size("PyThreadState", self.stack.tstate_size, 64, 1 << 16)?;
        field("thread_state.next", self.tstate_next, 8, tstate)?;
        field("thread_state.thread_id", self.thread_id, 8, tstate)?;
        field(
            "thread_state.native_thread_id",
            self.native_thread_id,
            8,
            tstate,
        )?;
        let ascii = size("PyASCIIObject", self.ascii_size, 16, 128)?;
        for (name, v, width, within) in [
            ("object.ob_type", self.ob_type, 8, 64),
            ("type_object.tp_flags", self.tp_flags, 8, OBJECT_HEADER_MAX),
            ("dict_object.ma_keys", self.ma_keys, 8, 128),
            ("dict_object.ma_values", self.ma_values, 8, 128),
            ("long_object.lv_tag", self.long_tag, 8, 128),
            ("long_object.ob_digit", self.long_digits, 4, 128),
            ("unicode_object.state", self.unicode_state, 4, ascii),
            ("unicode_object.length", self.unicode_length, 8, ascii),
        ] {
            field(name, v, width, within)?;
        }
        Ok(())
    }
}

fn read_stack_offsets(
    p: &StackPositions,
    get: &impl Fn(usize) -> Result<u64, String>,
) -> Result<StackOffsets, String> {
    Ok(StackOffsets {
        tstate_size: get(p.tstate_size)?,
        current_frame: get(p.current_frame)?,
        frame_size: get(p.frame_size)?,
        frame_previous: get(p.frame_previous)?,
        frame_executable: get(p.frame_executable)?,
        frame_instr_ptr: get(p.frame_instr_ptr)?,
        frame_owner: get(p.frame_owner)?,
        code_size: get(p.code_size)?,
        code_filename: get(p.code_filename)?,
        code_qualname: get(p.code_qualname)?,
        code_linetable: get(p.code_linetable)?,
        code_firstlineno: get(p.code_firstlineno)?,
        code_adaptive: get(p.code_adaptive)?,
        bytes_size: get(p.bytes_size)?,
        bytes_data: get(p.bytes_data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GIL and thread-id fields set, over the fake's plausible others.
    fn block_313(free_threaded: u64) -> Vec<u8> {
        let mut b = crate::cpython::remote::fake::debug_block(13, free_threaded != 0);
        let mut put = |at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(8, 0x030d00f0);
        put(16, free_threaded);
        put(40, 0x28);
        put(64, 0x8);
        put(112, 0x1010);
        put(120, 0x1020);
        put(128, 0);
        put(136, 0x1030);
        put(144, 0x1028);
        put(200, 0x98);
        b
    }

    #[test]
    fn a_313_block_gives_the_gil_field_offsets() {
        let d = parse(
            &block_313(0),
            PyVersion {
                major: 3,
                minor: 13,
            },
        )
        .expect("valid");
        assert_eq!(d.locked_in_gil(), Some(16));
        assert_eq!(d.holder_in_gil(), Some(8));
        assert_eq!(d.enabled_in_gil(), None);
        assert_eq!(d.native_thread_id, 0x98);
        let ft = parse(
            &block_313(1),
            PyVersion {
                major: 3,
                minor: 13,
            },
        )
        .expect("valid");
        assert_eq!(ft.enabled_in_gil(), Some(0), "relative to the GIL struct");
    }

    /// The head of sid's 3.14.10 `_PyRuntime` as stored in its `.data` (values
    /// the stripped binary carries, not made up): `_gil` at +0x1e68 in the interpreter.
    /// (The fields not listed are the fake's.)
    fn block_314() -> Vec<u8> {
        let mut b = crate::cpython::remote::fake::debug_block(14, false);
        let values: [(usize, u64); 17] = [
            (8, 0x030e0af0),
            (16, 0),
            (24, 316616),
            (32, 784),
            (40, 808),
            (48, 225864),
            (56, 7280),
            (64, 7272),
            (72, 7344),
            (80, 7360),
            (120, 16),
            (128, 7784),
            (136, 0),
            (144, 7800),
            (152, 7792),
            (216, 152),
            (224, 160),
        ];
        for (at, v) in values {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_314_block_is_read_at_its_grown_positions() {
        let line = PyVersion {
            major: 3,
            minor: 14,
        };
        let d = parse(&block_314(), line).expect("valid");
        assert_eq!(d.interpreters_head, 808);
        assert_eq!(d.interp_next, 7272);
        assert_eq!(d.ceval_gil, 16);
        assert_eq!(
            d.gil_runtime_state, 0x1e68,
            "DWARF: &PyInterpreterState._gil"
        );
        assert_eq!(d.locked_in_gil(), Some(16));
        assert_eq!(d.holder_in_gil(), Some(8));
        assert_eq!(
            d.native_thread_id, 0xa0,
            "DWARF: PyThreadState.native_thread_id"
        );
        // Read with 3.13's positions the same bytes would be nonsense: the table matters.
        let mut as_313 = block_314();
        as_313[8..16].copy_from_slice(&0x030d00f0u64.to_le_bytes());
        let wrong = parse(
            &as_313,
            PyVersion {
                major: 3,
                minor: 13,
            },
        );
        assert!(
            wrong.map_or(true, |w| w.locked_in_gil() != Some(16)),
            "3.13 positions must not happen to fit a 3.14 block"
        );
    }

    #[test]
    fn a_wrong_cookie_or_version_is_refused() {
        let mut b = block_313(0);
        b[0] = b'y';
        assert!(parse(
            &b,
            PyVersion {
                major: 3,
                minor: 13
            }
        )
        .is_err());
        let b = block_313(0);
        let err = parse(
            &b,
            PyVersion {
                major: 3,
                minor: 14,
            },
        )
        .expect_err("3.13 block, 3.14 file");
        assert!(err.contains("say 3.13"), "{err}");
        let err = parse(
            &block_314(),
            PyVersion {
                major: 3,
                minor: 15,
            },
        )
        .expect_err("3.14 block, 3.15 file");
        assert!(err.contains("say 3.14"), "{err}");
        assert!(parse(
            &b[..20],
            PyVersion {
                major: 3,
                minor: 13
            }
        )
        .is_err());
    }

    use crate::cpython::layout::frames::{InstrKind, LineFormat};
    use crate::cpython::remote::fake::debug_block;

    #[test]
    fn the_stack_layout_of_313_313t_and_314_is_what_their_dwarf_says() {
        let walk_of = |minor, ft| {
            let line = PyVersion { major: 3, minor };
            parse(&debug_block(minor, ft), line)
                .expect("valid")
                .stack_layout()
                .expect("plausible")
        };
        let l = walk_of(13, false);
        assert_eq!(
            l.walk.tstate_to_frame.first, 72,
            "PyThreadState.current_frame"
        );
        assert_eq!(l.walk.tstate_to_frame.second, None);
        assert_eq!(
            (l.walk.frame_previous, l.walk.frame_code, l.walk.frame_instr),
            (8, 0, 56)
        );
        assert_eq!(l.walk.frame_owner, Some(70));
        assert_eq!(l.walk.code_tag_mask, 0);
        assert_eq!(l.walk.instr, InstrKind::Pointer);
        assert_eq!(
            (
                l.code.name,
                l.code.filename,
                l.code.linetable,
                l.code.firstlineno
            ),
            (128, 112, 136, 68)
        );
        assert_eq!(l.code.code_start, Some(200));
        assert_eq!(l.code.lines, LineFormat::Locations);
        let t = walk_of(13, true);
        assert_eq!(t.walk, l.walk, "3.13t frames are laid out as 3.13's");
        assert_eq!((t.code.name, t.code.code_start), (144, Some(216)));
        assert_eq!((t.code.bytes_size, t.code.bytes_data), (32, 48));
        let n = walk_of(14, false);
        assert_eq!(n.walk.frame_owner, Some(74), "3.14 added stackpointer");
        assert_eq!(
            n.walk.code_tag_mask, 1,
            "f_executable is a tagged _PyStackRef"
        );
        assert_eq!(n.code.code_start, Some(208));
    }

    /// Issue 14 feeds garbage: every stack value out of its struct, misaligned,
    /// overlapping another, or a struct of absurd size is refused.
    /// Issue 14: garbage written into any field the agent uses is refused,
    /// naming the field; the real blocks of every build pass.
    #[test]
    fn garbage_in_any_used_field_refuses_the_block() {
        for (minor, ft) in [(13, false), (13, true), (14, false)] {
            let line = PyVersion { major: 3, minor };
            let good = crate::cpython::remote::fake::debug_block(minor, ft);
            assert!(parse(&good, line).is_ok(), "3.{minor} ft={ft}");
            let p = block_layout(line).expect("layout");
            for (name, at) in [
                ("interpreters_head", p.interpreters_head),
                ("interpreter_state.next", p.interp_next),
                ("ceval.gil", p.ceval_gil),
                ("_gil", p.gil_runtime_state),
                ("locked", p.gil_locked),
                ("last_holder", p.gil_holder),
                ("native_thread_id", p.native_thread_id),
                ("threads.head", p.threads_head),
                ("imports.modules", p.imports_modules),
                ("thread_state.next", p.tstate_next),
                ("thread_id", p.thread_id),
                ("ob_type", p.ob_type),
                ("tp_flags", p.tp_flags),
                ("ma_keys", p.ma_keys),
                ("ma_values", p.ma_values),
                ("lv_tag", p.long_tag),
                ("ob_digit", p.long_digits),
                ("unicode state", p.unicode_state),
                ("unicode length", p.unicode_length),
                ("ascii size", p.ascii_size),
                ("tstate size", p.stack.tstate_size),
            ] {
                for garbage in [u64::MAX, 1 << 40, 0x7fff_ffff_ffff_fff3] {
                    let mut bad = good.clone();
                    bad[at..at + 8].copy_from_slice(&garbage.to_le_bytes());
                    assert!(
                        parse(&bad, line).is_err(),
                        "3.{minor} ft={ft}: {name} = {garbage:#x} was accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn implausible_stack_offsets_are_refused_one_by_one() {
        for minor in [13u8, 14] {
            let line = PyVersion { major: 3, minor };
            let p = block_layout(line).expect("known").stack;
            let good = debug_block(minor, false);
            assert!(parse(&good, line).expect("valid").stack_layout().is_ok());
            let frame = u64_at(&good, p.frame_size).expect("size");
            let code = u64_at(&good, p.code_size).expect("size");
            let bad: &[(usize, u64, &str)] = &[
                (p.tstate_size, 8, "tiny thread state"),
                (p.tstate_size, 1 << 40, "huge thread state"),
                (p.current_frame, 1 << 20, "outside the thread state"),
                (p.current_frame, 73, "misaligned"),
                (p.frame_size, 4096, "huge frame"),
                (p.frame_previous, frame, "past the frame"),
                (p.frame_previous, 0, "over executable"),
                (p.frame_executable, 60, "misaligned"),
                (p.frame_instr_ptr, u64::MAX - 3, "wraps"),
                (p.frame_owner, frame, "past the frame"),
                (p.frame_owner, 9, "inside previous"),
                (p.code_size, 1 << 30, "huge code"),
                (p.code_filename, code, "past the code"),
                (p.code_qualname, 112, "over filename"),
                (p.code_linetable, 130, "misaligned"),
                (p.code_firstlineno, 66, "misaligned int"),
                (p.code_adaptive, 100, "before the fields"),
                (p.code_adaptive, code, "past the code"),
                (p.bytes_size, 4, "misaligned"),
                (p.bytes_data, 8, "inside ob_size"),
                (p.bytes_data, 1 << 16, "huge header"),
            ];
            for (at, value, why) in bad {
                let mut b = good.clone();
                b[*at..*at + 8].copy_from_slice(&value.to_le_bytes());
                let refused = parse(&b, line).map(|d| d.stack_layout());
                assert!(
                    matches!(refused, Ok(Err(_)) | Err(_)),
                    "3.{minor}: {why} ({value} at {at}) accepted: {refused:?}"
                );
            }
        }
    }
}
