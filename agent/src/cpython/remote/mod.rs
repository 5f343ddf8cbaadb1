//! Reading another process's memory: raw bytes ([`memory`]), the table of
//! object layouts per release line ([`objects`]), and readers of the CPython
//! objects found there — `str`, `int`, `dict`, a plain object's attributes,
//! the interpreter and thread-state lists, frame chains ([`frames`]) and code
//! objects ([`code`], [`lines`]) named through a cache ([`symbols`]). Every size a reader takes from the
//! target is capped, every pointer checked: the target may be torn mid-update
//! or hostile, and a failed read only means "not known".

pub mod code;
pub mod dict;
pub mod frames;
pub mod instance;
pub mod lines;
pub mod long;
pub mod memory;
pub mod objects;
pub mod runtime;
pub mod str;
pub mod symbols;

#[cfg(test)]
pub(crate) mod fake;
