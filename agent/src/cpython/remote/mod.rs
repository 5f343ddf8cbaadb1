//! Reading another process's memory: raw bytes, and CPython objects (str, int,
//! dict) laid out as its version says.

pub mod memory;
pub mod objects;
