//! Every supported interpreter build: the version matrix, stripped and static builds, musl, free-threaded, subinterpreters, the offset tables against DWARF, Python stacks read from outside, containers.

mod containers;
mod free_threaded;
mod musl;
mod offsets_match_dwarf;
mod stacks;
mod stripped_interpreters;
mod subinterpreters;
mod version_matrix;
