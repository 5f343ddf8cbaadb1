//! Rust mirrors of `ebpf/lock_park.h` (free-threaded builds: PyMutex parking).

use crate::core::counters::{self, LockParks, HIST_SLOTS};

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

impl From<LockWaits> for counters::LockWaits {
    fn from(w: LockWaits) -> Self {
        Self {
            park_ns: w.park_ns,
            parks: w.parks,
            event_ns: w.event_ns,
            events: w.events,
            park_hist: w.park_hist,
        }
    }
}

impl From<LockVal> for LockParks {
    fn from(v: LockVal) -> Self {
        Self {
            park_ns: v.park_ns,
            parks: v.parks,
        }
    }
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for LockWaits {}
unsafe impl aya::Pod for LockKey {}
unsafe impl aya::Pod for LockVal {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn rust_mirrors_match_the_btf_of_the_lock_probe() {
        let s = btf::structs("lock_park.bpf.o");
        assert_layout!(
            s,
            "lock_waits",
            LockWaits,
            [tgid, _pad, park_ns, parks, event_ns, events, park_hist]
        );
        assert_layout!(s, "lock_key", LockKey, [tgid, _pad, address]);
        assert_layout!(s, "lock_val", LockVal, [park_ns, parks]);
    }
}
