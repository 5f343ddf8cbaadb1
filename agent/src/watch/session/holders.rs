//! The GIL holders' code, for a session that asks for it: at attach, the
//! wait probes (the futex probe, and musl's condvar probe) are given the
//! process's frame walk, so the kernel captures the holder's Python stack
//! each time a wait begins; at each snapshot the captured stacks are read and
//! named here, in user space, with the stack reader (code objects cached and
//! revalidated; what cannot be named is counted).
//!
//! A stack is named once, when first seen: its id is a hash of code object
//! addresses, and those addresses name the code that ran then (a code object
//! freed later may see its address reused).

use std::collections::HashMap;

use super::attach::OwnProbes;
use super::Session;
use crate::core::holders::{HolderStacks, HolderWaits, NamedHolderWait, StackEnd, StackId};
use crate::core::stacks::{Frame, Stack};
use crate::cpython::find::locate::Interpreter;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::stacks::StackReader;
use crate::probes::wait::WaitProbe;

/// The holder-stack capture of one process: its stack reader and the names
/// of every stack seen so far.
pub(super) struct HolderCapture {
    reader: StackReader,
    names: HashMap<StackId, Stack>,
}

impl HolderCapture {
    /// Starts the kernel's capture in the wait probes of the process of
    /// `interp`; `None` (logged) where its frame layout cannot be trusted or
    /// a probe refuses: the session measures as before, without the code.
    pub fn start(
        interp: &Interpreter,
        mem: RemoteMemory,
        probe: &mut WaitProbe,
        own: &mut OwnProbes,
    ) -> Option<Self> {
        let pid = interp.pid;
        let reader = match StackReader::new(interp, mem) {
            Ok(reader) => reader,
            Err(e) => {
                tracing::info!("process {pid}: the GIL holders' code is not captured: {e}");
                return None;
            }
        };
        let walk = reader.layout().walk;
        let started =
            probe
                .capture_holders(pid, &walk)
                .and_then(|()| match own.condwait.as_mut() {
                    Some(c) => c.capture_holders(pid, &walk),
                    None => Ok(()),
                });
        if let Err(e) = started {
            tracing::info!("process {pid}: cannot capture the GIL holders' code: {e}");
            return None;
        }
        Some(Self {
            reader,
            names: HashMap::new(),
        })
    }

    /// The holder stacks of process `pid` since the capture began (both
    /// probes' on musl), naming the stacks not seen before.
    pub fn read(&mut self, pid: u32, probe: &WaitProbe, own: &OwnProbes) -> HolderStacks {
        let mut stacks = probe.read_holders(pid).unwrap_or_default();
        if let Some(c) = &own.condwait {
            match c.read_holders(pid) {
                Ok(cond) => stacks.add(&cond),
                Err(e) => tracing::debug!("condvar probe's holder stacks of {pid}: {e}"),
            }
        }
        let new: Vec<StackId> = stacks
            .stacks
            .keys()
            .filter(|id| !self.names.contains_key(id))
            .copied()
            .collect();
        if !new.is_empty() {
            self.reader.begin_pass();
        }
        for id in new {
            if let Some(raw) = stacks.stacks.get(&id) {
                let mut named = self.reader.symbolize(&raw.frames);
                named.truncated = raw.end != StackEnd::Root;
                self.names.insert(id, named);
            }
        }
        stacks
    }

    /// The waits of `stacks` (an interval's) with the stacks they name.
    pub fn named(&self, stacks: &HolderStacks) -> HolderWaits {
        let named: Vec<NamedHolderWait> = stacks
            .waits
            .iter()
            .map(|(id, wait)| NamedHolderWait {
                stack: self.names.get(id).cloned(),
                wait: *wait,
            })
            .collect();
        HolderWaits {
            stacks: named,
            frames_unnamed: self.reader.counts().unknown_code,
        }
    }
}

impl Session {
    /// The running frame of holder stack `stack`, where it was named (the
    /// contention spans' code).
    pub fn holder_code(&self, stack: StackId) -> Option<Frame> {
        let named = self.holders.as_ref()?.names.get(&stack)?;
        named.frames.last().cloned()
    }

    /// The holder stacks since the capture began (empty without one).
    pub(super) fn read_holders(&mut self, probe: &WaitProbe) -> HolderStacks {
        let pid = self.pid();
        match self.holders.as_mut() {
            Some(h) => h.read(pid, probe, &self.own),
            None => HolderStacks::default(),
        }
    }
}
