//! The shapes of CPython's structs per version: the DWARF-checked table for
//! 3.8-3.12 and `_Py_DebugOffsets` for 3.13+.

pub mod debug_offsets;
pub mod frames;
pub mod versions;
