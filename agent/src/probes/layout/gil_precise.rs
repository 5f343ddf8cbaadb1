//! Rust mirror of `ebpf/gil_precise.h` (`--precise`).

use crate::core::counters::{self, HIST_SLOTS};

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

impl From<PreciseGil> for counters::PreciseGil {
    fn from(p: PreciseGil) -> Self {
        Self {
            take_calls: p.take_calls,
            take_ns: p.take_ns,
            hold_ns: p.hold_ns,
            holds: p.holds,
            take_hist: p.take_hist,
        }
    }
}

// SAFETY: repr(C), Copy, integers only: every bit pattern is valid, no pointers.
unsafe impl aya::Pod for PreciseGil {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::layout::btf::{self, assert_layout};

    #[test]
    fn rust_mirrors_match_the_btf_of_the_precise_probe() {
        let s = btf::structs("gil_precise.bpf.o");
        assert_layout!(
            s,
            "precise_gil",
            PreciseGil,
            [tgid, _pad, take_calls, take_ns, hold_ns, holds, take_hist]
        );
    }
}
