//! Rust mirrors of the structs the BPF programs in `ebpf/` share with the
//! agent, one module per C header.
//!
//! The kernel and the agent exchange these through BPF maps byte for byte, so
//! every field, its order and padding must match the C header. Each module's
//! test reads the BTF that clang emitted for the compiled object of its program
//! and compares each struct's size and member offsets with these definitions.
//! Nothing here leaves the probes layer: the probes turn these into the plain
//! counters of [`crate::core::counters`] when they read a map.

#[cfg(test)]
mod btf;
pub mod event_loop;
pub mod gil_condwait;
pub mod gil_precise;
pub mod gil_shared;
pub mod gil_wait;
pub mod lock_park;

pub use event_loop::{LongIterationRecord, LoopThread};
pub use gil_condwait::{CondwaitInflight, CondwaitTarget, CondwaitWaits};
pub use gil_precise::PreciseGil;
pub use gil_shared::{
    map_full_slot, BlockedKey, BlockedVal, FrameWalk, GilEpisode, GilKey, GilVal, HolderKey,
    HolderStack, HolderWaitVal, STACK_UNKNOWN,
};
pub use gil_wait::{FutexInflight, GilTarget, ThreadWaits};
pub use lock_park::{LockKey, LockVal, LockWaits};

/// GILs watched per process (the main interpreter's and subinterpreters' own;
/// `GILSCOPE_MAX_GILS` of `ebpf/gilscope.h`).
pub const MAX_GILS: usize = 8;
