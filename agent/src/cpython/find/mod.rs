//! Finding the interpreter in a process: which mapped file is CPython, which
//! libc it runs on, where `_PyRuntime` and the GIL are, and where `take_gil`,
//! `drop_gil` and the parking lot are in its machine code, and where its libc
//! polls for I/O.

pub mod elf;
pub mod functions;
pub mod libc;
pub mod locate;
pub mod poll;
