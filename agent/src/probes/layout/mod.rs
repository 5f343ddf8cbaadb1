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
pub mod gil_condwait;
pub mod gil_precise;
pub mod gil_shared;
pub mod gil_wait;
pub mod lock_park;

pub use gil_condwait::{CondwaitInflight, CondwaitTarget, CondwaitWaits};
pub use gil_precise::PreciseGil;
pub use gil_shared::{map_full_slot, BlockedKey, BlockedVal, GilEpisode, GilKey, GilVal};
pub use gil_wait::{FutexInflight, GilTarget, ThreadWaits};
pub use lock_park::{LockKey, LockVal, LockWaits, ParkInflight};

/// GILs watched per process (the main interpreter's and subinterpreters' own;
/// `GILSCOPE_MAX_GILS` of `ebpf/gilscope.h`).
pub const MAX_GILS: usize = 8;

/// Counters accumulated between two reads of one cumulative struct: every u64
/// lane after the first `skip` lanes (the key-like header, e.g. `tgid`) is
/// subtracted (saturating, so a reset entry gives 0 rather than garbage).
///
/// # Safety
/// `T` must be `#[repr(C)]`, 8-byte aligned, a whole number of u64 lanes, and
/// every lane from `skip` on a `u64` counter (true of [`ThreadWaits`],
/// [`BlockedVal`], [`GilVal`]).
unsafe fn lanes_since<T: Copy>(cur: &T, prev: &T, skip: usize) -> T {
    const LANE: usize = std::mem::size_of::<u64>();
    debug_assert_eq!(std::mem::size_of::<T>() % LANE, 0);
    debug_assert!(std::mem::align_of::<T>() >= LANE);
    let mut out = *cur;
    let n = std::mem::size_of::<T>() / LANE;
    let out_lanes = std::slice::from_raw_parts_mut(&mut out as *mut T as *mut u64, n);
    let prev_lanes = std::slice::from_raw_parts(prev as *const T as *const u64, n);
    for (o, p) in out_lanes.iter_mut().zip(prev_lanes).skip(skip) {
        *o = o.saturating_sub(*p);
    }
    out
}

/// `into += add`, lane by lane, skipping the first `skip` u64 lanes.
///
/// # Safety
/// As [`lanes_since`]: `T` is `#[repr(C)]`, 8-byte aligned, a whole number of
/// u64 lanes, every lane from `skip` on a `u64` counter.
pub(crate) unsafe fn lanes_add<T: Copy>(into: &mut T, add: &T, skip: usize) {
    const LANE: usize = std::mem::size_of::<u64>();
    debug_assert_eq!(std::mem::size_of::<T>() % LANE, 0);
    debug_assert!(std::mem::align_of::<T>() >= LANE);
    let n = std::mem::size_of::<T>() / LANE;
    let into_lanes = std::slice::from_raw_parts_mut(into as *mut T as *mut u64, n);
    let add_lanes = std::slice::from_raw_parts(add as *const T as *const u64, n);
    for (o, a) in into_lanes.iter_mut().zip(add_lanes).skip(skip) {
        *o = o.saturating_add(*a);
    }
}

impl ThreadWaits {
    /// What this thread accumulated since `prev` (for per-interval views).
    pub fn since(&self, prev: &Self) -> Self {
        // SAFETY: repr(C), a u32 pair then u64 lanes only (checked by the layout test).
        // All are counters but `retake_armed_ns`, kernel state whose difference is
        // meaningless and never read.
        unsafe { lanes_since(self, prev, 1) }
    }
}

impl BlockedVal {
    /// What accumulated since `prev`.
    pub fn since(&self, prev: &Self) -> Self {
        // SAFETY: repr(C), u64 counters only.
        unsafe { lanes_since(self, prev, 0) }
    }
}

impl GilVal {
    /// What accumulated since `prev`.
    pub fn since(&self, prev: &Self) -> Self {
        // SAFETY: repr(C), u64 counters only.
        unsafe { lanes_since(self, prev, 0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_counters_subtract_every_counter_but_keep_the_header() {
        let mut prev = ThreadWaits {
            tgid: 7,
            take_wait_ns: 100,
            take_waits: 1,
            ..ThreadWaits::default()
        };
        prev.take_hist[3] = 1;
        let mut cur = ThreadWaits {
            tgid: 7,
            take_wait_ns: 350,
            take_waits: 3,
            other_wait_ns: 9,
            ..ThreadWaits::default()
        };
        cur.take_hist[3] = 2;
        cur.take_hist[63] = 5;
        let d = cur.since(&prev);
        assert_eq!(d.tgid, 7);
        assert_eq!((d.take_wait_ns, d.take_waits, d.other_wait_ns), (250, 2, 9));
        assert_eq!((d.take_hist[3], d.take_hist[63]), (1, 5));
        // A counter that went backwards (entry re-created) gives 0, not a wrap.
        assert_eq!(prev.since(&cur).take_wait_ns, 0);
        let b = BlockedVal {
            wait_ns: 10,
            segments: 2,
        };
        assert_eq!(
            b.since(&BlockedVal {
                wait_ns: 4,
                segments: 1
            }),
            BlockedVal {
                wait_ns: 6,
                segments: 1
            }
        );
    }
}
