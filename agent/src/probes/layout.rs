//! Rust mirrors of the structs in `ebpf/gilscope.h`.
//!
//! The kernel and the agent exchange these through BPF maps byte for byte, so
//! every field, its order and padding must match the C header. The test at the
//! bottom reads the BTF that clang emitted for the compiled objects and compares
//! each struct's size and member offsets with these definitions.

use crate::core::counters::{EPISODE_HOLDERS, HIST_SLOTS};

/// Classes of `enum wait_kind`: futex waits (on the GIL or not), then sleeps in
/// other syscalls by family, so a thread's blocked time can be told apart.
pub mod wait_kind {
    /// A futex wait not on the GIL (locks, queues, conditions).
    pub const OTHER: u32 = 0;
    /// Waiting to take the GIL (`gil->cond`).
    pub const TAKE: u32 = 1;
    /// Contending on `gil->mutex`.
    pub const MUTEX: u32 = 2;
    /// Inside `drop_gil`, waiting for another thread to take it (forced switch).
    pub const DROP: u32 = 3;
    /// epoll_wait/epoll_pwait(2), poll/ppoll, select/pselect6: an event loop's idle wait.
    pub const POLL: u32 = 4;
    /// read/readv/pread64/recvfrom/recvmsg/accept/accept4.
    pub const READ: u32 = 5;
    /// nanosleep/clock_nanosleep (`time.sleep`).
    pub const SLEEP: u32 = 6;
    /// Any other syscall, or none (page fault).
    pub const BLOCK_OTHER: u32 = 7;
}

/// Slots of the map-full counters (`enum map_full_slot`; u64 array maps
/// `map_full` and, on musl, `cond_map_full`): inserts that failed because a
/// per-thread map was full, so a wait went uncounted and someone must be told.
pub mod map_full_slot {
    /// `thread_waits` (musl: `cond_waits`).
    pub const THREAD_WAITS: u32 = 0;
    /// `blocked_by` (musl: `cond_blocked_by`).
    pub const BLOCKED_BY: u32 = 1;
    /// `inflight` (musl: `cond_inflight`).
    pub const INFLIGHT: u32 = 2;
    /// `gil_waits` (musl: `cond_gil_waits`).
    pub const GIL_WAITS: u32 = 3;
    /// Number of slots.
    pub const SLOTS: usize = 4;
}

/// GILs watched per process (the main interpreter's and subinterpreters' own).
pub const MAX_GILS: usize = 8;

/// Where one process's GILs live (map `targets`, key: tgid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilTarget {
    /// 0: unused slot.
    pub gil_addrs: [u64; MAX_GILS],
    pub gil_size: u32,
    pub cond_off: u32,
    pub mutex_off: u32,
    pub switch_cond_off: u32,
    pub last_holder_off: u32,
    pub locked_off: u32,
}

/// Cumulative blocking counters of one thread (map `thread_waits`, key: tid):
/// GIL waits, other futex waits, sleeps by syscall family, and retake waits.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadWaits {
    pub tgid: u32,
    pub _pad: u32,
    pub take_wait_ns: u64,
    pub take_waits: u64,
    pub take_futex_calls: u64,
    pub mutex_wait_ns: u64,
    pub mutex_waits: u64,
    pub drop_wait_ns: u64,
    pub drop_waits: u64,
    pub other_wait_ns: u64,
    pub other_waits: u64,
    pub take_hist: [u64; HIST_SLOTS],
    pub poll_wait_ns: u64,
    pub poll_waits: u64,
    pub read_wait_ns: u64,
    pub read_waits: u64,
    pub sleep_wait_ns: u64,
    pub sleep_waits: u64,
    pub block_other_ns: u64,
    pub block_others: u64,
    /// Wakes from non-GIL sleeps: each must retake the GIL.
    pub block_returns: u64,
    /// Kernel-side state (time of the last such wake), not a counter.
    pub retake_armed_ns: u64,
    /// Take waits that began right after such a wake (the rest found the GIL free).
    pub retake_waits: u64,
    pub retake_wait_ns: u64,
    pub retake_hist: [u64; HIST_SLOTS],
}

impl Default for ThreadWaits {
    fn default() -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            take_wait_ns: 0,
            take_waits: 0,
            take_futex_calls: 0,
            mutex_wait_ns: 0,
            mutex_waits: 0,
            drop_wait_ns: 0,
            drop_waits: 0,
            other_wait_ns: 0,
            other_waits: 0,
            take_hist: [0; HIST_SLOTS],
            poll_wait_ns: 0,
            poll_waits: 0,
            read_wait_ns: 0,
            read_waits: 0,
            sleep_wait_ns: 0,
            sleep_waits: 0,
            block_other_ns: 0,
            block_others: 0,
            block_returns: 0,
            retake_armed_ns: 0,
            retake_waits: 0,
            retake_wait_ns: 0,
            retake_hist: [0; HIST_SLOTS],
        }
    }
}

/// What a thread is blocked on right now (map `inflight`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FutexInflight {
    pub wait_start_ns: u64,
    pub segment_start_ns: u64,
    pub last_exit_ns: u64,
    pub holder_tstate: u64,
    pub deadline_ns: u64,
    pub gil_addr: u64,
    pub kind: u32,
    pub continuing: u32,
    /// 1: a take wait right after a wake from a non-GIL sleep.
    pub retake: u32,
    /// Take futex calls merged into this wait so far.
    pub slices: u32,
    /// Distinct holders seen at the start of its slices (0: unused slot).
    pub holders: [u64; EPISODE_HOLDERS],
}

/// One GIL contention episode (ring buffer `episodes`): a merged take wait of
/// at least the configured threshold, so long waits can leave the node as spans
/// with their waiter and holders instead of only as histogram counts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilEpisode {
    pub tgid: u32,
    /// The waiting thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    pub end_ns: u64,
    pub gil_addr: u64,
    /// `PyThreadState *` of the holders seen, in order; 0 = unused slot.
    pub holders: [u64; EPISODE_HOLDERS],
    /// Take futex calls (timed-out slices plus the last one).
    pub slices: u32,
    /// 1: began right after a wake from a non-GIL sleep.
    pub retake: u32,
}

impl From<GilEpisode> for crate::core::counters::WaitEpisode {
    fn from(e: GilEpisode) -> Self {
        Self {
            tgid: e.tgid,
            tid: e.tid,
            start_ns: e.start_ns,
            end_ns: e.end_ns,
            gil_addr: e.gil_addr,
            holders: e.holders,
            slices: e.slices,
            retake: e.retake != 0,
        }
    }
}

/// (process, GIL) of map `gil_waits`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GilKey {
    pub tgid: u32,
    pub _pad: u32,
    pub gil_addr: u64,
}

/// Take-side wait on one GIL.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GilVal {
    pub take_wait_ns: u64,
    pub take_waits: u64,
}

/// (waiter, holder) pair of map `blocked_by`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BlockedKey {
    pub waiter_tid: u32,
    pub _pad: u32,
    pub holder_tstate: u64,
}

/// GIL wait a waiter spent behind one holder.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockedVal {
    pub wait_ns: u64,
    pub segments: u64,
}

/// Exact take_gil/drop_gil timing of one thread (map `precise_gil`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreciseGil {
    pub tgid: u32,
    pub _pad: u32,
    pub take_calls: u64,
    pub take_ns: u64,
    pub hold_ns: u64,
    pub holds: u64,
    pub take_hist: [u64; HIST_SLOTS],
}

impl Default for PreciseGil {
    fn default() -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            take_calls: 0,
            take_ns: 0,
            hold_ns: 0,
            holds: 0,
            take_hist: [0; HIST_SLOTS],
        }
    }
}

/// PyMutex parking of one thread (map `lock_waits`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockWaits {
    pub tgid: u32,
    pub _pad: u32,
    pub park_ns: u64,
    pub parks: u64,
    pub event_ns: u64,
    pub events: u64,
    pub park_hist: [u64; HIST_SLOTS],
}

impl Default for LockWaits {
    fn default() -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            park_ns: 0,
            parks: 0,
            event_ns: 0,
            events: 0,
            park_hist: [0; HIST_SLOTS],
        }
    }
}

/// (process, lock address) of map `lock_by_address`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct LockKey {
    pub tgid: u32,
    pub _pad: u32,
    pub address: u64,
}

/// Park time spent on one lock.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockVal {
    pub park_ns: u64,
    pub parks: u64,
}

/// A park in progress (map `parking`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkInflight {
    pub start_ns: u64,
    pub address: u64,
    pub caller: u64,
}

// SAFETY: all of these are repr(C), Copy, and made only of integers, so every
// bit pattern is a valid value and they contain no pointers.
unsafe impl aya::Pod for GilTarget {}
unsafe impl aya::Pod for ThreadWaits {}
unsafe impl aya::Pod for FutexInflight {}
unsafe impl aya::Pod for GilEpisode {}
unsafe impl aya::Pod for BlockedKey {}
unsafe impl aya::Pod for GilKey {}
unsafe impl aya::Pod for GilVal {}
unsafe impl aya::Pod for BlockedVal {}
unsafe impl aya::Pod for PreciseGil {}
unsafe impl aya::Pod for LockWaits {}
unsafe impl aya::Pod for LockKey {}
unsafe impl aya::Pod for LockVal {}
unsafe impl aya::Pod for ParkInflight {}

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
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// struct name -> (size, member name -> byte offset), from `bpftool btf dump`.
    fn btf_structs(object: &str) -> HashMap<String, (usize, HashMap<String, usize>)> {
        let path = format!("{}/{object}", env!("OUT_DIR"));
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", &path, "format", "raw"])
            .output()
            .expect("bpftool must be installed (apt-get install bpftool) to check the BPF struct layout");
        assert!(out.status.success(), "bpftool failed on {path}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut structs = HashMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
                let name = rest.split('\'').next().unwrap_or_default().to_string();
                let size = rest
                    .split("size=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                structs.insert(name.clone(), (size, HashMap::new()));
                current = Some(name);
            } else if line.starts_with('\t') {
                if let Some(name) = &current {
                    let member = line.trim().split('\'').nth(1).unwrap_or_default();
                    let bits: usize = line
                        .split("bits_offset=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(usize::MAX);
                    if let Some(entry) = structs.get_mut(name) {
                        entry.1.insert(member.to_string(), bits / 8);
                    }
                }
            } else {
                current = None;
            }
        }
        structs
    }

    /// enum name -> (constant name -> value), from `bpftool btf dump`.
    fn btf_enums(object: &str) -> HashMap<String, HashMap<String, i64>> {
        let path = format!("{}/{object}", env!("OUT_DIR"));
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", &path, "format", "raw"])
            .output()
            .expect(
                "bpftool must be installed (apt-get install bpftool) to check the BPF constants",
            );
        assert!(out.status.success(), "bpftool failed on {path}");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut enums: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.split_once("] ENUM '").map(|(_, r)| r) {
                let name = rest.split('\'').next().unwrap_or_default().to_string();
                enums.insert(name.clone(), HashMap::new());
                current = Some(name);
            } else if line.starts_with('\t') {
                if let Some(name) = &current {
                    let constant = line.trim().split('\'').nth(1).unwrap_or_default();
                    let value = line
                        .split("val=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(i64::MIN);
                    if let Some(entry) = enums.get_mut(name) {
                        entry.insert(constant.to_string(), value);
                    }
                }
            } else {
                current = None;
            }
        }
        enums
    }

    #[test]
    fn map_full_slots_match_the_btf_of_the_wait_probe() {
        let enums = btf_enums("gil_wait.bpf.o");
        let slots = enums
            .get("map_full_slot")
            .expect("enum map_full_slot in gil_wait.bpf.o's BTF");
        let expected = [
            ("FULL_THREAD_WAITS", i64::from(map_full_slot::THREAD_WAITS)),
            ("FULL_BLOCKED_BY", i64::from(map_full_slot::BLOCKED_BY)),
            ("FULL_INFLIGHT", i64::from(map_full_slot::INFLIGHT)),
            ("FULL_GIL_WAITS", i64::from(map_full_slot::GIL_WAITS)),
            ("FULL_SLOTS", map_full_slot::SLOTS as i64),
        ];
        for (name, value) in expected {
            assert_eq!(slots.get(name).copied(), Some(value), "{name}");
        }
        assert_eq!(
            slots.len(),
            expected.len(),
            "map_full_slot has constants the Rust mirror lacks"
        );
    }

    macro_rules! assert_layout {
        ($structs:expr, $c_name:literal, $ty:ty, [$($field:ident),+ $(,)?]) => {{
            let (size, members) = $structs
                .get($c_name)
                .unwrap_or_else(|| panic!("struct {} not in the BPF object's BTF", $c_name));
            assert_eq!(*size, size_of::<$ty>(), "size of {}", $c_name);
            let mut checked = 0;
            $(
                let name = stringify!($field);
                assert_eq!(
                    members.get(name).copied(),
                    Some(offset_of!($ty, $field)),
                    "offset of {}.{}", $c_name, name
                );
                checked += 1;
            )+
            assert_eq!(checked, members.len(), "{} has members the Rust mirror lacks", $c_name);
        }};
    }

    #[test]
    fn rust_mirrors_match_the_btf_of_the_wait_probe() {
        let s = btf_structs("gil_wait.bpf.o");
        assert_layout!(
            s,
            "gil_target",
            GilTarget,
            [
                gil_addrs,
                gil_size,
                cond_off,
                mutex_off,
                switch_cond_off,
                last_holder_off,
                locked_off
            ]
        );
        assert_layout!(
            s,
            "thread_waits",
            ThreadWaits,
            [
                tgid,
                _pad,
                take_wait_ns,
                take_waits,
                take_futex_calls,
                mutex_wait_ns,
                mutex_waits,
                drop_wait_ns,
                drop_waits,
                other_wait_ns,
                other_waits,
                take_hist,
                poll_wait_ns,
                poll_waits,
                read_wait_ns,
                read_waits,
                sleep_wait_ns,
                sleep_waits,
                block_other_ns,
                block_others,
                block_returns,
                retake_armed_ns,
                retake_waits,
                retake_wait_ns,
                retake_hist
            ]
        );
        assert_layout!(
            s,
            "futex_inflight",
            FutexInflight,
            [
                wait_start_ns,
                segment_start_ns,
                last_exit_ns,
                holder_tstate,
                deadline_ns,
                gil_addr,
                kind,
                continuing,
                retake,
                slices,
                holders
            ]
        );
        assert_layout!(
            s,
            "gil_episode",
            GilEpisode,
            [tgid, tid, start_ns, end_ns, gil_addr, holders, slices, retake]
        );
        assert_layout!(
            s,
            "blocked_key",
            BlockedKey,
            [waiter_tid, _pad, holder_tstate]
        );
        assert_layout!(s, "blocked_val", BlockedVal, [wait_ns, segments]);
        assert_layout!(s, "gil_key", GilKey, [tgid, _pad, gil_addr]);
        assert_layout!(s, "gil_val", GilVal, [take_wait_ns, take_waits]);
    }

    #[test]
    fn rust_mirrors_match_the_btf_of_the_precise_probe() {
        let s = btf_structs("gil_precise.bpf.o");
        assert_layout!(
            s,
            "precise_gil",
            PreciseGil,
            [tgid, _pad, take_calls, take_ns, hold_ns, holds, take_hist]
        );
    }

    #[test]
    fn rust_mirrors_match_the_btf_of_the_lock_probe() {
        let s = btf_structs("lock_park.bpf.o");
        assert_layout!(
            s,
            "lock_waits",
            LockWaits,
            [tgid, _pad, park_ns, parks, event_ns, events, park_hist]
        );
        assert_layout!(s, "lock_key", LockKey, [tgid, _pad, address]);
        assert_layout!(s, "lock_val", LockVal, [park_ns, parks]);
        assert_layout!(
            s,
            "park_inflight",
            ParkInflight,
            [start_ns, address, caller]
        );
    }

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

    #[test]
    fn rust_mirrors_match_the_btf_of_the_condwait_probe() {
        let s = btf_structs("gil_condwait.bpf.o");
        assert_layout!(
            s,
            "condwait_target",
            CondwaitTarget,
            [gil_addrs, cond_off, switch_cond_off, last_holder_off, _pad]
        );
        assert_layout!(
            s,
            "condwait_waits",
            CondwaitWaits,
            [
                tgid,
                _pad,
                take_wait_ns,
                take_waits,
                take_slices,
                drop_wait_ns,
                drop_waits,
                take_hist
            ]
        );
        assert_layout!(
            s,
            "condwait_inflight",
            CondwaitInflight,
            [
                wait_start_ns,
                slice_start_ns,
                last_exit_ns,
                holder_tstate,
                gil_addr,
                kind,
                continuing,
                slices,
                _pad,
                holders
            ]
        );
        assert_layout!(
            s,
            "blocked_key",
            BlockedKey,
            [waiter_tid, _pad, holder_tstate]
        );
        assert_layout!(s, "gil_key", GilKey, [tgid, _pad, gil_addr]);
    }
}

/// musl: where one process's GILs are, for the condvar-wait probe (map
/// `cond_targets`, key: tgid); it matches a wait's condvar against each GIL's
/// `cond` and `switch_cond`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CondwaitTarget {
    /// 0: unused slot.
    pub gil_addrs: [u64; MAX_GILS],
    pub cond_off: u32,
    pub switch_cond_off: u32,
    pub last_holder_off: u32,
    pub _pad: u32,
}

/// musl: cumulative condvar-wait counters of one thread (map `cond_waits`, key:
/// tid), merged by the agent into the same per-thread figures as [`ThreadWaits`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CondwaitWaits {
    pub tgid: u32,
    pub _pad: u32,
    pub take_wait_ns: u64,
    pub take_waits: u64,
    pub take_slices: u64,
    pub drop_wait_ns: u64,
    pub drop_waits: u64,
    pub take_hist: [u64; HIST_SLOTS],
}

impl Default for CondwaitWaits {
    fn default() -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            take_wait_ns: 0,
            take_waits: 0,
            take_slices: 0,
            drop_wait_ns: 0,
            drop_waits: 0,
            take_hist: [0; HIST_SLOTS],
        }
    }
}

/// musl: a condvar wait in progress (map `cond_inflight`, key: tid).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CondwaitInflight {
    pub wait_start_ns: u64,
    pub slice_start_ns: u64,
    pub last_exit_ns: u64,
    pub holder_tstate: u64,
    pub gil_addr: u64,
    pub kind: u32,
    pub continuing: u32,
    /// Take slices merged into this wait so far.
    pub slices: u32,
    pub _pad: u32,
    /// Distinct holders seen at the start of its slices (0: unused slot).
    pub holders: [u64; EPISODE_HOLDERS],
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for CondwaitTarget {}
unsafe impl aya::Pod for CondwaitWaits {}
unsafe impl aya::Pod for CondwaitInflight {}
