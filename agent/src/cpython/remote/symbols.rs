//! Names captured frames: code object address → (function, file, line table),
//! read once and cached, then any position in that code → its line.
//!
//! Code objects live as long as their function, so most addresses stay the
//! same code for the life of a process; but a freed code object's address is
//! reused by the next allocation. A cached entry is therefore checked again
//! once per *pass* (a caller's batch: one sampling round, one report) by one
//! read of the object's header: the same name, file and line-table pointers
//! and first line mean the same code; anything else is read afresh (and
//! counted). The cache is bounded in entries and bytes, and starts over when full.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::stacks::{Frame, RawFrame};
use crate::cpython::layout::frames::InstrKind;
use crate::cpython::remote::code::{Code, CodeReader};
use crate::cpython::remote::memory::Memory;

/// Code objects cached at most.
const MAX_ENTRIES: usize = 16_384;
/// Bytes (line tables and names) cached at most.
const MAX_BYTES: usize = 16 << 20;
/// Bytes into the instructions a position may be (CPython caps a code object
/// far below this); past it the position is garbage and has no line.
const MAX_CODE_BYTES: i64 = 1 << 26;

#[derive(Debug)]
struct Entry {
    code: Arc<Code>,
    /// The pass in which the entry was last found to be this code object.
    checked: u64,
}

/// Names frames of one process; see the module documentation.
#[derive(Debug)]
pub struct Symbolizer {
    reader: CodeReader,
    instr: InstrKind,
    cache: HashMap<u64, Entry>,
    bytes: usize,
    pass: u64,
    reused: u64,
}

impl Symbolizer {
    /// A symbolizer reading code objects with `reader`, whose frames hold
    /// positions of kind `instr`.
    pub fn new(reader: CodeReader, instr: InstrKind) -> Self {
        Self {
            reader,
            instr,
            cache: HashMap::new(),
            bytes: 0,
            pass: 1,
            reused: 0,
        }
    }

    /// Starts a new pass: every cached entry is checked again before its next use.
    pub fn begin_pass(&mut self) {
        self.pass += 1;
    }

    /// The code object at `addr`, from the cache when it is still the same.
    pub fn code(&mut self, mem: &impl Memory, addr: u64) -> Option<Arc<Code>> {
        if let Some(entry) = self.cache.get_mut(&addr) {
            if entry.checked == self.pass {
                return Some(entry.code.clone());
            }
            if self.reader.ident(mem, addr) == Some(entry.code.ident) {
                entry.checked = self.pass;
                return Some(entry.code.clone());
            }
            self.reused += 1;
            if let Some(old) = self.cache.remove(&addr) {
                self.bytes = self.bytes.saturating_sub(old.code.weight());
            }
        }
        let code = Arc::new(self.reader.read(mem, addr)?);
        if self.cache.len() >= MAX_ENTRIES || self.bytes + code.weight() > MAX_BYTES {
            self.cache.clear();
            self.bytes = 0;
        }
        self.bytes += code.weight();
        let entry = Entry {
            code: code.clone(),
            checked: self.pass,
        };
        self.cache.insert(addr, entry);
        Some(code)
    }

    /// Byte offset into the instructions of a captured position (negative:
    /// the frame has not started its first instruction).
    pub fn offset(&self, raw: RawFrame) -> i64 {
        let lasti = i64::from(raw.instr as u32 as i32);
        match self.instr {
            InstrKind::LastiBytes => lasti,
            InstrKind::LastiUnits => lasti * 2,
            InstrKind::Pointer => {
                let start = raw
                    .code
                    .wrapping_add(self.reader.code.code_start.unwrap_or(0));
                raw.instr.wrapping_sub(start) as i64
            }
        }
    }

    /// The named frame of a captured one; `None` when its code object cannot be read.
    pub fn frame(&mut self, mem: &impl Memory, raw: RawFrame) -> Option<Frame> {
        let offset = self.offset(raw);
        let code = self.code(mem, raw.code)?;
        // A frame not started points one code unit before the first (-2);
        // further out, the position is garbage.
        let line = if (-2..MAX_CODE_BYTES).contains(&offset) {
            code.line_at(offset)
        } else {
            None
        };
        Some(Frame {
            function: code.function.clone(),
            file: code.file.clone(),
            line,
        })
    }

    /// Code objects cached now.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Cached code objects found replaced at their address (and read again).
    pub fn reused(&self) -> u64 {
        self.reused
    }
}
