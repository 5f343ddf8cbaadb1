//! Free-threaded builds: uprobes on `_PyParkingLot_Park` of one process, from
//! `ebpf/lock_park.bpf.c`, counting PyMutex contention per thread and per lock.
//!
//! Only threads that must sleep on a lock reach `_PyParkingLot_Park`, so the
//! probes never run on an uncontended lock.

use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use aya::programs::UProbe;
use aya::{Ebpf, EbpfLoader};

use crate::core::counters::LockCounters;
use crate::error::{Error, Result};
use crate::probes::layout as k;
use crate::probes::take_map;
use crate::probes::{bpf_error, uprobe_error};

static LOCK_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lock_park.bpf.o"));

/// The attached parking-lot probes; detached when dropped.
pub struct LockProbe {
    /// Keeps the programs loaded and attached.
    _ebpf: Ebpf,
    /// Per-thread parking (key: tid).
    lock_waits: BpfHashMap<MapData, u32, k::LockWaits>,
    /// Parking per (process, lock address).
    lock_by_address: BpfHashMap<MapData, k::LockKey, k::LockVal>,
}

impl LockProbe {
    /// Attaches to every copy of `_PyParkingLot_Park` (at `file_offsets` in `file`:
    /// LTO builds call a clone, not the export), for process `pid` only; parks
    /// called from the runtime address range `event_wait` are counted as event
    /// waits, not lock waits.
    pub fn attach(
        pid: u32,
        file: &Path,
        file_offsets: &[u64],
        event_wait: Option<std::ops::Range<u64>>,
    ) -> Result<Self> {
        let range = event_wait.unwrap_or(0..0);
        let mut ebpf = EbpfLoader::new()
            .override_global("event_wait_lo", &range.start, true)
            .override_global("event_wait_hi", &range.end, true)
            .load(LOCK_OBJECT)
            .map_err(|e| bpf_error("loading lock_park.bpf.o", &e))?;
        let pid = NonZeroU32::new(pid).ok_or(Error::NoSuchProcess { pid })?;
        for program in ["park_enter", "park_return"] {
            let probe: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or_else(|| Error::Internal(format!("{program} missing from lock_park.bpf.o")))?
                .try_into()
                .map_err(|e| bpf_error(program, &e))?;
            probe.load().map_err(|e| bpf_error(program, &e))?;
            for &offset in file_offsets {
                probe
                    .attach(
                        UProbeAttachLocation::AbsoluteOffset(offset),
                        file,
                        UProbeScope::OneProcess(pid),
                    )
                    .map_err(|e| {
                        uprobe_error(
                            &format!("attaching {program} to {}+{offset:#x}", file.display()),
                            &e,
                        )
                    })?;
            }
        }
        Ok(Self {
            lock_waits: take_map(&mut ebpf, "lock_park.bpf.o", "lock_waits")?,
            lock_by_address: take_map(&mut ebpf, "lock_park.bpf.o", "lock_by_address")?,
            _ebpf: ebpf,
        })
    }

    /// Per-thread and per-lock counters of `tgid`.
    pub fn read(&self, tgid: u32) -> Result<LockCounters> {
        Ok(LockCounters {
            threads: self
                .lock_waits
                .iter()
                .filter_map(|e| e.ok())
                .filter(|(_, w)| w.tgid == tgid)
                .map(|(tid, w)| (tid, w.into()))
                .collect(),
            locks: self
                .lock_by_address
                .iter()
                .filter_map(|e| e.ok())
                .filter(|(k, _)| k.tgid == tgid)
                .map(|(k, v)| (k.address, v.into()))
                .collect(),
        })
    }
}
