//! Every supported interpreter build: the version matrix, stripped and static builds, musl, free-threaded, subinterpreters, the offset tables against DWARF, containers.

mod containers;
mod free_threaded;
mod musl;
mod offsets_match_dwarf;
mod stripped_interpreters;
mod subinterpreters;
mod version_matrix;
