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
    /// Skipped means `owner >= OWNER_NOT_PYTHON` (which also covers 3.14's
    /// interpreter-owned frames); above `OWNER_MAX` the frame is garbage.
    pub frame_owner: Option<u64>,
}

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

/// Frames whose `owner` byte is at least this are not Python code: 3.12 and
/// 3.13's `FRAME_OWNED_BY_CSTACK` (3, the entry shim `_PyEval_EvalFrameDefault`
/// pushes on the C stack), 3.14's `FRAME_OWNED_BY_INTERPRETER` (3) and
/// `FRAME_OWNED_BY_CSTACK` (4). Below it: thread (0), generator (1), frame
/// object (2). A walk skips them, as CPython's own remote unwinder does.
pub const OWNER_NOT_PYTHON: u8 = 3;
/// The largest `owner` any supported release writes; a larger one is garbage.
pub const OWNER_MAX: u8 = 4;

/// How a code object's line table is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `co_lnotab` (3.8, 3.9): (byte increment, signed line increment) pairs.
    Lnotab,
    /// `co_linetable` of 3.10: (byte delta, signed line delta) pairs, -128 = no line.
    LineTable310,
    /// The location table of 3.11+ (`Objects/locations.md`): entries of
    /// code-unit ranges with line deltas and columns.
    Locations,
}

/// Where a code object keeps what names it; offsets from its start, plus the
/// two `PyBytesObject` offsets its line table is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    /// `co_qualname` (3.11+), else `co_name`: a `str`.
    pub name: u64,
    /// `co_filename`: a `str`.
    pub filename: u64,
    /// `co_firstlineno`: an `int`.
    pub firstlineno: u64,
    /// `co_lnotab` (3.8, 3.9) or `co_linetable`: a `bytes`.
    pub linetable: u64,
    pub lines: LineFormat,
    /// `co_code_adaptive` (3.11+): the instructions a frame's pointer points
    /// into start here; `None` where frames count `f_lasti` instead.
    pub code_start: Option<u64>,
    /// `offsetof(PyBytesObject, ob_size)` and `ob_sval`.
    pub bytes_size: u64,
    pub bytes_data: u64,
}

impl CodeLayout {
    /// Bytes of a code object to read to see every field named here.
    pub fn header_len(&self) -> u64 {
        [self.name, self.filename, self.linetable]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(self.firstlineno)
            .saturating_add(8)
    }
}

/// Everything the stack reader needs of one build: the walk and the code objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackLayout {
    pub walk: FrameWalk,
    pub code: CodeLayout,
}

impl FrameWalk {
    /// Bytes of a frame to read to see every field the walk uses.
    pub fn frame_len(&self) -> u64 {
        let owner = self.frame_owner.map_or(0, |o| o.saturating_add(1));
        [self.frame_previous, self.frame_code, self.frame_instr]
            .into_iter()
            .max()
            .unwrap_or(0)
            .saturating_add(8)
            .max(owner)
    }
}
