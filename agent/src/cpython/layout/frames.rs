//! How to walk a thread's Python frames from outside: from a thread state to
//! its innermost frame, from a frame to its caller, its code object and where
//! in that code it is. The same plain numbers serve the user-space stack
//! reader and the kernel, which captures a GIL holder's frames at the moment
//! another thread starts waiting behind it.

/// Where the innermost frame of a thread state is: `*(tstate + first)`, then,
/// when `second` is given, `*(that + second)` (3.11 and 3.12 go through
/// `tstate->cframe->current_frame`; 3.8-3.10 `tstate->frame` and 3.13+
/// `tstate->current_frame` are one load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TstateToFrame {
    pub first: u64,
    pub second: Option<u64>,
}

/// The frame walk of one build: every offset is relative to the start of the
/// struct it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameWalk {
    pub tstate_to_frame: TstateToFrame,
    /// The caller's frame (`f_back` to 3.10, `previous` from 3.11).
    pub frame_previous: u64,
    /// The code object (`f_code`; `f_executable` from 3.13, a tagged
    /// `_PyStackRef` from 3.14: clear `code_tag_mask` bits before use).
    pub frame_code: u64,
    pub code_tag_mask: u64,
    /// Where the frame is: `f_lasti` (an `int` counting code units, 3.10; bytes
    /// to 3.9) or a pointer into the code (`prev_instr` 3.11-3.12, `instr_ptr`
    /// from 3.13).
    pub frame_instr: u64,
    pub instr: InstrKind,
    /// `owner` (a byte): frames owned by the C stack (3.12+ entry shims) are
    /// skipped; `None` where frames have no owner field worth reading.
    pub frame_owner: Option<u64>,
}

/// The first `owner` value of a frame that is not a Python function's, so
/// frames at or above it are skipped: 3 is `FRAME_OWNED_BY_CSTACK` in 3.12 and
/// 3.13 (the entry shim of each C-to-Python call), `FRAME_OWNED_BY_INTERPRETER`
/// in 3.14 (the same shim), which puts `FRAME_OWNED_BY_CSTACK` at 4; 0-2
/// (thread, generator, frame object) are Python frames in every version.
pub const FIRST_NON_PYTHON_OWNER: u8 = 3;

/// What the frame's position field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrKind {
    /// An `int` byte offset into `co_code` (3.8, 3.9).
    LastiBytes,
    /// An `int` index of 2-byte code units into `co_code` (3.10).
    LastiUnits,
    /// A pointer to the current (3.13+) or previous (3.11, 3.12) code unit
    /// inside the code object's `co_code_adaptive`.
    Pointer,
}
