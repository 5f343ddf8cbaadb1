//! Python stacks as plain data, between the readers that capture them and the
//! analyses and reports that show them.

/// One Python frame as captured from outside, not yet symbolized: the address
/// of its code object and its raw position in that code, as the process's
/// frame walk defines it (`cpython::layout::frames::InstrKind`: a pointer into
/// the code's instructions, or an `f_lasti` int sign-extended). Symbolized in
/// user space, where the code object can be read and cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RawFrame {
    pub code: u64,
    pub instr: u64,
}
