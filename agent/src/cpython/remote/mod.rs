//! Reading another process's memory: raw bytes ([`memory`]), the table of
//! object layouts per release line ([`objects`]), and readers of the CPython
//! objects found there — `str`, `int`, `dict`, a plain object's attributes, and
//! the interpreter and thread-state lists. Every size a reader takes from the
//! target is capped, every pointer checked: the target may be torn mid-update
//! or hostile, and a failed read only means "not known".

pub mod dict;
pub mod instance;
pub mod long;
pub mod memory;
pub mod objects;
pub mod runtime;
pub mod str;

#[cfg(test)]
pub(crate) mod fake;
