//! `--precise`: uprobes on `take_gil` (entry and return) and `drop_gil` (entry) of
//! one process, from `ebpf/gil_precise.bpf.c`.
//!
//! Exact, but every GIL acquisition then pays for a uprobe round trip, which is
//! why this is never the default (see BENCHMARKS.md).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;

use crate::core::counters::PreciseGil;
use crate::error::{Error, Result};
use crate::probes::layout as k;
use crate::probes::take_map;
use crate::probes::{bpf_error, uprobe_error};

static PRECISE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gil_precise.bpf.o"));

/// File offsets (not addresses) of every copy of the functions to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreciseTargets {
    pub take_gil: Vec<u64>,
    /// Empty when `drop_gil` is inlined or cannot be found: hold times are then sampled.
    pub drop_gil: Vec<u64>,
}

/// The attached uprobes; detached when dropped.
pub struct PreciseProbe {
    /// Keeps the programs loaded and attached.
    _ebpf: Ebpf,
    /// Per-thread timing (key: tid).
    precise_gil: BpfHashMap<MapData, u32, k::PreciseGil>,
}

impl PreciseProbe {
    /// Attaches to `file` (seen from the host) in process `pid` only.
    pub fn attach(pid: u32, file: &Path, targets: &PreciseTargets) -> Result<Self> {
        let mut ebpf =
            Ebpf::load(PRECISE_OBJECT).map_err(|e| bpf_error("loading gil_precise.bpf.o", &e))?;
        let pid = NonZeroU32::new(pid).ok_or(Error::NoSuchProcess { pid })?;
        let mut attach = |program: &str, offsets: &[u64]| -> Result<()> {
            let probe: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or_else(|| {
                    Error::Internal(format!("{program} missing from gil_precise.bpf.o"))
                })?
                .try_into()
                .map_err(|e| bpf_error(program, &e))?;
            probe.load().map_err(|e| bpf_error(program, &e))?;
            for &offset in offsets {
                let location = UProbeAttachLocation::AbsoluteOffset(offset);
                probe
                    .attach(location, file, UProbeScope::OneProcess(pid))
                    .map_err(|e| {
                        let what =
                            format!("attaching {program} at {offset:#x} of {}", file.display());
                        uprobe_error(&what, &e)
                    })?;
            }
            Ok(())
        };
        attach("take_gil_enter", &targets.take_gil)?;
        attach("take_gil_return", &targets.take_gil)?;
        if !targets.drop_gil.is_empty() {
            attach("drop_gil_enter", &targets.drop_gil)?;
        }
        let precise_gil = take_map(&mut ebpf, "gil_precise.bpf.o", "precise_gil")?;
        Ok(Self {
            _ebpf: ebpf,
            precise_gil,
        })
    }

    /// Cumulative exact counters of every thread of `tgid`.
    pub fn read(&self, tgid: u32) -> Result<HashMap<u32, PreciseGil>> {
        Ok(self
            .precise_gil
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, p)| p.tgid == tgid)
            .map(|(tid, p)| (tid, p.into()))
            .collect())
    }
}
