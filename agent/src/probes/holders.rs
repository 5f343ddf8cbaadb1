//! The GIL holders' Python stacks a wait probe captures
//! (`ebpf/holder_stack.bpf.h`): per process, how to walk its frames (set by
//! the agent), the distinct stacks the kernel stored, and the wait behind
//! each. Both wait probes keep the same three maps under their own names.

use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError};
use aya::Ebpf;

use crate::core::counters::KernelMap;
use crate::core::holders::HolderStacks;
use crate::cpython::layout::frames::{FrameWalk, InstrKind, OWNER_NOT_PYTHON};
use crate::error::{Error, Result};
use crate::probes::layout as k;
use crate::probes::map_error;
use crate::probes::{remove_where, take_map};

/// The names of one probe's holder-stack maps in its object.
pub(crate) struct HolderMapNames {
    /// How to walk each process's frames (key: tgid).
    pub walks: &'static str,
    /// Distinct stacks, and the wait behind each (key: tgid, stack id).
    pub stacks: KernelMap,
    pub waits: KernelMap,
}

/// The typed holder-stack maps of one loaded wait probe.
pub(crate) struct HolderMaps {
    names: &'static HolderMapNames,
    walks: BpfHashMap<MapData, u32, k::FrameWalk>,
    stacks: BpfHashMap<MapData, k::HolderKey, k::HolderStack>,
    waits: BpfHashMap<MapData, k::HolderKey, k::HolderWaitVal>,
}

impl HolderMaps {
    /// Takes the three maps out of `ebpf` (`object` names it in errors).
    pub fn take(ebpf: &mut Ebpf, object: &str, names: &'static HolderMapNames) -> Result<Self> {
        Ok(Self {
            names,
            walks: take_map(ebpf, object, names.walks)?,
            stacks: take_map(ebpf, object, names.stacks.name())?,
            waits: take_map(ebpf, object, names.waits.name())?,
        })
    }

    /// Starts (or updates) capturing the holder stacks of `tgid`, walked with `walk`.
    pub fn set_walk(&mut self, tgid: u32, walk: &FrameWalk) -> Result<()> {
        self.walks
            .insert(tgid, kernel_walk(walk)?, 0)
            .map_err(|e| map_error(self.names.walks, &e))
    }

    /// The wait behind each holder stack of `tgid`, and the stacks those waits
    /// name (one lookup per stack: the stacks map is never scanned).
    pub fn read(&self, tgid: u32) -> HolderStacks {
        let mut out = HolderStacks::default();
        for (key, wait) in self.waits.iter().filter_map(|entry| entry.ok()) {
            if key.tgid != tgid {
                continue;
            }
            out.waits.insert(key.stack_id, wait.into());
            if key.stack_id == k::STACK_UNKNOWN {
                continue;
            }
            if let Ok(stack) = self.stacks.get(&key, 0) {
                out.stacks.insert(key.stack_id, stack.into());
            }
        }
        out
    }

    /// Deletes everything of `tgid`: its walk (no more captures), its stacks
    /// and the waits behind them.
    pub fn forget(&mut self, tgid: u32) {
        match self.walks.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => tracing::debug!("{}: {e}", self.names.walks),
        }
        remove_where(&mut self.waits, |key| key.tgid == tgid);
        remove_where(&mut self.stacks, |key| key.tgid == tgid);
    }

    /// The entries the kernel gave `map`; `None` for a map not of these.
    pub fn capacity(&self, map: KernelMap) -> Option<u32> {
        let data = match map {
            m if m == self.names.stacks => self.stacks.map(),
            m if m == self.names.waits => self.waits.map(),
            _ => return None,
        };
        data.info().ok().map(|i| i.max_entries())
    }

    /// Entries in each map (walks, stacks, waits), to show that nothing leaks.
    pub fn entry_counts(&self) -> [(&'static str, usize); 3] {
        let n = self.names;
        [
            (n.walks, self.walks.keys().count()),
            (n.stacks.name(), self.stacks.keys().count()),
            (n.waits.name(), self.waits.keys().count()),
        ]
    }
}

/// The kernel's `struct frame_walk` of a build's frame walk; an offset that
/// does not fit the kernel's 32 bits is a bug of the layout tables.
fn kernel_walk(walk: &FrameWalk) -> Result<k::FrameWalk> {
    let narrow = |v: u64| {
        u32::try_from(v).map_err(|_| Error::Internal(format!("frame walk offset {v} too large")))
    };
    let t = walk.tstate_to_frame;
    Ok(k::FrameWalk {
        code_tag_mask: walk.code_tag_mask,
        tstate_frame: narrow(t.first)?,
        cframe_frame: narrow(t.second.unwrap_or(0))?,
        frame_previous: narrow(walk.frame_previous)?,
        frame_code: narrow(walk.frame_code)?,
        frame_instr: narrow(walk.frame_instr)?,
        frame_owner: narrow(walk.frame_owner.unwrap_or(0))?,
        two_loads: u8::from(t.second.is_some()),
        instr_is_int: u8::from(walk.instr != InstrKind::Pointer),
        has_owner: u8::from(walk.frame_owner.is_some()),
        owner_skip_from: OWNER_NOT_PYTHON,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::layout::frames::TstateToFrame;

    #[test]
    fn a_frame_walk_reaches_the_kernel_with_its_loads_and_kinds() {
        // pyenv 3.11.7 (gdb: tstate->cframe +56, cframe->current_frame +8,
        // frame previous +48, f_code +32, prev_instr +56, owner +69).
        let py311 = FrameWalk {
            tstate_to_frame: TstateToFrame {
                first: 56,
                second: Some(8),
            },
            frame_previous: 48,
            frame_code: 32,
            code_tag_mask: 0,
            frame_instr: 56,
            instr: InstrKind::Pointer,
            frame_owner: Some(69),
        };
        let k = kernel_walk(&py311).expect("fits");
        assert_eq!((k.tstate_frame, k.cframe_frame, k.two_loads), (56, 8, 1));
        assert_eq!(
            (k.frame_previous, k.frame_code, k.frame_instr),
            (48, 32, 56)
        );
        assert_eq!((k.instr_is_int, k.has_owner, k.frame_owner), (0, 1, 69));
        assert_eq!(k.owner_skip_from, OWNER_NOT_PYTHON);
        // 3.10: one load, an int position, no owner.
        let py310 = FrameWalk {
            tstate_to_frame: TstateToFrame {
                first: 24,
                second: None,
            },
            instr: InstrKind::LastiUnits,
            frame_owner: None,
            ..py311
        };
        let k = kernel_walk(&py310).expect("fits");
        assert_eq!((k.two_loads, k.instr_is_int, k.has_owner), (0, 1, 0));
        let huge = FrameWalk {
            frame_code: u64::from(u32::MAX) + 1,
            ..py311
        };
        assert!(kernel_walk(&huge).is_err());
    }
}
