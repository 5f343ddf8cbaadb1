//! The one table of CPython memory layouts gilscope relies on.
//!
//! Every figure here was read from the DWARF of a local build (`gdb -batch -ex
//! 'print &((struct pyruntimestate*)0)->ceval.gil' libpython3.X.so`); the tests at
//! the bottom pin them, and a later check compares them with each build's debug
//! info. Nothing else in the agent hard-codes a CPython offset.

use std::fmt;

use crate::cpython::layout::frames::{
    CodeLayout, FrameWalk, InstrKind, LineFormat, StackLayout, TstateToFrame,
};

/// A CPython `major.minor` release line: layouts only change between these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PyVersion {
    pub major: u8,
    pub minor: u8,
}

impl fmt::Display for PyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How to get from `_PyRuntime` to the GIL state of the main interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilLocation {
    /// The GIL struct is embedded in `_PyRuntime` at this offset (3.8-3.11).
    Embedded(u64),
    /// `_PyRuntime` embeds the main interpreter at `interp`; each interpreter
    /// holds a pointer to its GIL at `gil_ptr`; interpreters form a list from
    /// `_PyRuntime + interpreters_head` through `next` (3.12).
    InterpreterPointer {
        interp: u64,
        gil_ptr: u64,
        interpreters_head: u64,
        interp_next: u64,
    },
    /// Read from `_PyRuntime.debug_offsets` (3.13+), not from this table.
    DebugOffsets,
}

/// Offsets inside `struct _gil_runtime_state`, relative to its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GilLayout {
    /// Switch interval in µs; 5000 by default, the first validation check.
    pub interval: u64,
    /// `PyThreadState *` of the thread that took the GIL last.
    pub last_holder: u64,
    /// `int`, 1 while the GIL is held.
    pub locked: u64,
    /// Incremented each time the GIL passes to another thread.
    pub switch_number: u64,
    /// Waiters in `take_gil` sleep here (timed, `interval` at a time).
    pub cond: u64,
    pub mutex: u64,
    /// The forced-switch wait in `drop_gil`.
    pub switch_cond: u64,
    /// Size of the struct; everything at or past `switch_cond` is the drop side.
    pub size: u64,
}

/// The layout shared by every default (GIL) build from 3.8 to 3.14 with glibc.
pub const GIL_LAYOUT_DEFAULT: GilLayout = GilLayout {
    interval: 0,
    last_holder: 8,
    locked: 16,
    switch_number: 24,
    cond: 32,
    mutex: 80,
    switch_cond: 120,
    size: 208,
};

impl GilLayout {
    /// The layout of a free-threaded build: `int enabled` (padded to 8) comes first.
    pub const fn free_threaded(self) -> GilLayout {
        GilLayout {
            interval: self.interval + 8,
            last_holder: self.last_holder + 8,
            locked: self.locked + 8,
            switch_number: self.switch_number + 8,
            cond: self.cond + 8,
            mutex: self.mutex + 8,
            switch_cond: self.switch_cond + 8,
            size: self.size + 8,
        }
    }
}

/// How a thread state names its OS thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadIdField {
    /// `PyThreadState.native_thread_id`: the kernel tid (3.11+).
    NativeThreadId(u64),
    /// Only `PyThreadState.thread_id` (a `pthread_t`) exists (3.8-3.10): the tid
    /// is read from glibc's `struct pthread` (see `_thread_db_pthread_tid`).
    PthreadOnly(u64),
}

/// Where the frame walk and code object offsets of a release line come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackSource {
    /// This table (3.8-3.12, from DWARF).
    Table(StackLayout),
    /// The process's `_PyRuntime.debug_offsets` (3.13+).
    DebugOffsets,
}

/// Everything gilscope needs to know about one CPython release line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub version: PyVersion,
    pub gil: GilLocation,
    pub gil_layout: GilLayout,
    pub thread_id: ThreadIdField,
    pub stack: StackSource,
}

const fn v(major: u8, minor: u8) -> PyVersion {
    PyVersion { major, minor }
}

/// 3.8: `tstate->frame` (a `PyFrameObject`), `f_back`, `f_code`, `f_lasti` in bytes;
/// `co_name` (no qualified name yet) and `co_lnotab`.
const STACK_38: StackLayout = StackLayout {
    walk: FrameWalk {
        tstate_to_frame: TstateToFrame {
            first: 24,
            second: None,
        },
        frame_previous: 24,
        frame_code: 32,
        code_tag_mask: 0,
        frame_instr: 104,
        instr: InstrKind::LastiBytes,
        frame_owner: None,
    },
    code: CodeLayout {
        name: 112,
        filename: 104,
        firstlineno: 40,
        linetable: 120,
        lines: LineFormat::Lnotab,
        code_start: None,
        bytes_size: 16,
        bytes_data: 32,
    },
};

/// 3.10: `f_lasti` moved up (and counts code units); `co_linetable` replaces `co_lnotab`.
const STACK_310: StackLayout = StackLayout {
    walk: FrameWalk {
        frame_instr: 96,
        instr: InstrKind::LastiUnits,
        ..STACK_38.walk
    },
    code: CodeLayout {
        lines: LineFormat::LineTable310,
        ..STACK_38.code
    },
};

/// 3.11: `tstate->cframe->current_frame`, a `_PyInterpreterFrame` on the data
/// stack; `prev_instr` points into `co_code_adaptive`; `co_qualname` and the
/// location table. Its `owner` never marks a C-stack frame (3.12 added those).
const STACK_311: StackLayout = StackLayout {
    walk: FrameWalk {
        tstate_to_frame: TstateToFrame {
            first: 56,
            second: Some(8),
        },
        frame_previous: 48,
        frame_code: 32,
        code_tag_mask: 0,
        frame_instr: 56,
        instr: InstrKind::Pointer,
        frame_owner: None,
    },
    code: CodeLayout {
        name: 128,
        filename: 112,
        firstlineno: 72,
        linetable: 136,
        lines: LineFormat::Locations,
        code_start: Some(184),
        bytes_size: 16,
        bytes_data: 32,
    },
};

/// 3.12: `f_code` first, `current_frame` first in `_PyCFrame`, and C-stack
/// entry frames marked by `owner` (`FRAME_OWNED_BY_CSTACK` = 3).
const STACK_312: StackLayout = StackLayout {
    walk: FrameWalk {
        tstate_to_frame: TstateToFrame {
            first: 56,
            second: Some(0),
        },
        frame_previous: 8,
        frame_code: 0,
        frame_owner: Some(70),
        ..STACK_311.walk
    },
    code: CodeLayout {
        firstlineno: 68,
        code_start: Some(192),
        ..STACK_311.code
    },
};

/// Layouts of the default (GIL-enabled, glibc, x86_64) builds, measured from DWARF.
const LAYOUTS: &[Layout] = &[
    Layout {
        version: v(3, 8),
        gil: GilLocation::Embedded(0x480),
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::PthreadOnly(0xb0),
        stack: StackSource::Table(STACK_38),
    },
    Layout {
        version: v(3, 9),
        gil: GilLocation::Embedded(0x160),
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::PthreadOnly(0xb0),
        stack: StackSource::Table(STACK_38),
    },
    Layout {
        version: v(3, 10),
        gil: GilLocation::Embedded(0x160),
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::PthreadOnly(0xb0),
        stack: StackSource::Table(STACK_310),
    },
    Layout {
        version: v(3, 11),
        gil: GilLocation::Embedded(0x168),
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::NativeThreadId(0xa0),
        stack: StackSource::Table(STACK_311),
    },
    Layout {
        version: v(3, 12),
        gil: GilLocation::InterpreterPointer {
            interp: 0x12a68,
            gil_ptr: 0x180,
            interpreters_head: 0x28,
            interp_next: 0,
        },
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::NativeThreadId(0x90),
        stack: StackSource::Table(STACK_312),
    },
    Layout {
        version: v(3, 13),
        gil: GilLocation::DebugOffsets,
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::NativeThreadId(0xa0),
        stack: StackSource::DebugOffsets,
    },
    // Debian sid's 3.14.10 (static, stripped), read from the DWARF its
    // python3.14-dbg package ships for that build id: `_gil_runtime_state` is
    // unchanged from 3.13 (208 bytes, cond +32, switch_cond +120).
    Layout {
        version: v(3, 14),
        gil: GilLocation::DebugOffsets,
        gil_layout: GIL_LAYOUT_DEFAULT,
        thread_id: ThreadIdField::NativeThreadId(0xa0),
        stack: StackSource::DebugOffsets,
    },
];

/// The layout for a release line, or `None` when gilscope does not know it.
pub fn layout_for(version: PyVersion) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.version == version)
}

/// The release lines with a known layout, for error messages.
pub fn supported_versions() -> String {
    LAYOUTS
        .iter()
        .map(|l| l.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gil_offsets_match_the_dwarf_of_local_builds() {
        let embedded = |major, minor| match layout_for(v(major, minor)).map(|l| l.gil) {
            Some(GilLocation::Embedded(off)) => off,
            other => panic!("{major}.{minor}: {other:?}"),
        };
        assert_eq!(embedded(3, 8), 0x480);
        assert_eq!(embedded(3, 9), 0x160);
        assert_eq!(embedded(3, 10), 0x160);
        assert_eq!(embedded(3, 11), 0x168);
    }

    #[test]
    fn python_3_11_names_threads_by_native_id_at_160() {
        let layout = layout_for(v(3, 11)).expect("3.11 is supported");
        assert_eq!(layout.thread_id, ThreadIdField::NativeThreadId(160));
    }

    #[test]
    fn the_gil_struct_is_208_bytes_with_the_drop_side_at_120() {
        assert_eq!(GIL_LAYOUT_DEFAULT.size, 208);
        assert_eq!(GIL_LAYOUT_DEFAULT.switch_cond, 120);
        assert_eq!(GIL_LAYOUT_DEFAULT.cond, 32);
    }

    #[test]
    fn frames_of_3_8_to_3_12_come_from_the_table_and_of_3_13_on_from_the_process() {
        for minor in 8..=14 {
            let stack = layout_for(v(3, minor)).expect("known").stack;
            match (minor, stack) {
                (8..=12, StackSource::Table(s)) => {
                    // Lasti counts bytes, then code units, then pointers.
                    let want = match minor {
                        8 | 9 => InstrKind::LastiBytes,
                        10 => InstrKind::LastiUnits,
                        _ => InstrKind::Pointer,
                    };
                    assert_eq!(s.walk.instr, want, "3.{minor}");
                    assert_eq!(s.code.code_start.is_some(), minor >= 11, "3.{minor}");
                    assert_eq!(s.walk.frame_owner.is_some(), minor >= 12, "3.{minor}");
                }
                (13.., StackSource::DebugOffsets) => {}
                other => panic!("3.{minor}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_versions_have_no_layout() {
        assert!(layout_for(v(2, 7)).is_none());
        assert!(layout_for(v(3, 7)).is_none());
    }
}
