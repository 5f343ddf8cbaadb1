//! Everything gilscope knows about CPython: which file is the interpreter, which
//! version it is, where its GIL lives, and where `take_gil`/`drop_gil` are.

pub mod debug_offsets;
pub mod elf;
pub mod finder;
pub mod libc;
pub mod locate;
pub mod objects;
pub mod thread_names;
pub mod versions;
