//! Everything gilscope knows about CPython: which file is the interpreter, which
//! version it is, where its GIL lives, and where `take_gil`/`drop_gil` are
//! ([`find`], [`layout`]); then, reading a running target's memory
//! ([`remote`]): its threads' Python names ([`thread_names`]), which thread a
//! thread state is ([`tstate`]), how the GIL is held ([`gil_sampler`]) and
//! which Python code each thread runs ([`stacks`]).
//! No BPF here: the probes build on this.

pub mod find;
pub mod gil_sampler;
pub mod layout;
pub mod remote;
pub mod stacks;
pub mod thread_names;
pub mod tstate;
