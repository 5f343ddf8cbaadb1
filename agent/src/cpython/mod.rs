//! Everything gilscope knows about CPython: which file is the interpreter, which
//! version it is, where its GIL lives, and where `take_gil`/`drop_gil` are.

pub mod find;
pub mod gil_sampler;
pub mod layout;
pub mod remote;
pub mod thread_names;
