//! Reads a code object of the target: what names a frame (qualified name, file,
//! first line) and its line table, so that any position in the code can be
//! turned into a line later without reading the target again.
//!
//! A code object is only taken when it looks like one: its type is
//! `PyCode_Type` (when the interpreter file exports it, as every build here
//! does), its name and file are compact `str`s, its line table a `bytes` of
//! sane size. Strings are cut at [`MAX_STRING_BYTES`], line tables at
//! [`MAX_LINE_TABLE`]: a hostile target costs at most that much per code object.

use crate::cpython::layout::frames::{CodeLayout, LineFormat};
use crate::cpython::remote::lines::LineTable;
use crate::cpython::remote::memory::{le_u32, le_u64, Memory, MIN_POINTER};
use crate::cpython::remote::objects::ObjectLayout;
use crate::cpython::remote::str::read_str_bytes;

/// Bytes of a name or a file name read at most.
pub const MAX_STRING_BYTES: u64 = 1024;
/// Bytes of a line table read at most (a function's table is a few hundred
/// bytes; a module of thousands of lines a few dozen KiB).
pub const MAX_LINE_TABLE: u64 = 64 * 1024;
/// Largest `co_firstlineno` taken (a bigger one is garbage).
const MAX_FIRST_LINE: i32 = 50_000_000;
/// Largest `ob_size` a line table may claim.
const MAX_BYTES_SIZE: u64 = 1 << 30;

/// The header words that make a code object what it is: if a later read finds
/// the same ones at the same address, it is (for naming) the same code object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeIdent {
    pub name: u64,
    pub filename: u64,
    pub linetable: u64,
    pub first_line: i32,
}

/// What one code object says, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub ident: CodeIdent,
    pub function: String,
    pub file: String,
    pub format: LineFormat,
    pub table: Vec<u8>,
    /// False when the table was longer than [`MAX_LINE_TABLE`] and was cut.
    pub table_complete: bool,
}

impl Code {
    /// The line at byte `offset` of the instructions (negative: not started).
    pub fn line_at(&self, offset: i64) -> Option<u32> {
        LineTable {
            format: self.format,
            bytes: &self.table,
            complete: self.table_complete,
            first_line: self.ident.first_line,
        }
        .line_at(offset)
    }

    /// Bytes this entry holds (for a cache's budget).
    pub fn weight(&self) -> usize {
        self.table.len() + self.function.len() + self.file.len() + 64
    }
}

/// How to read code objects of one process.
#[derive(Debug, Clone, Copy)]
pub struct CodeReader {
    pub code: CodeLayout,
    pub objects: ObjectLayout,
    /// Runtime address of `PyCode_Type`, when known: a code object's type must be it.
    pub code_type: Option<u64>,
}

impl CodeReader {
    /// The identifying header words of the code object at `addr`, one read;
    /// `None` when unreadable or not a code object.
    pub fn ident(&self, mem: &impl Memory, addr: u64) -> Option<CodeIdent> {
        let c = &self.code;
        let len = c.header_len().max(self.objects.ob_type.saturating_add(8));
        let header = mem.bytes_at(addr, len)?;
        if let Some(ty) = self.code_type {
            if le_u64(&header, self.objects.ob_type)? != ty {
                return None;
            }
        }
        let pointer = |at: u64| le_u64(&header, at).filter(|p| *p >= MIN_POINTER);
        let first_line = le_u32(&header, c.firstlineno)? as i32;
        Some(CodeIdent {
            name: pointer(c.name)?,
            filename: pointer(c.filename)?,
            linetable: pointer(c.linetable)?,
            first_line: Some(first_line).filter(|l| (0..=MAX_FIRST_LINE).contains(l))?,
        })
    }

    /// Reads the code object at `addr` whole; `None` when anything is off.
    pub fn read(&self, mem: &impl Memory, addr: u64) -> Option<Code> {
        let ident = self.ident(mem, addr)?;
        let function = read_str_bytes(mem, ident.name, &self.objects, MAX_STRING_BYTES)?;
        let file = read_str_bytes(mem, ident.filename, &self.objects, MAX_STRING_BYTES)?;
        let (table, table_complete) = self.line_table(mem, ident.linetable)?;
        Some(Code {
            ident,
            function,
            file,
            format: self.code.lines,
            table,
            table_complete,
        })
    }

    /// The bytes of a `bytes` object, cut at [`MAX_LINE_TABLE`].
    fn line_table(&self, mem: &impl Memory, bytes: u64) -> Option<(Vec<u8>, bool)> {
        let size = mem
            .u64_at(bytes.checked_add(self.code.bytes_size)?)
            .filter(|s| *s <= MAX_BYTES_SIZE)?;
        let read = size.min(MAX_LINE_TABLE);
        let data = mem.bytes_at(bytes.checked_add(self.code.bytes_data)?, read)?;
        Some((data, read == size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::remote::fake::{layout, stack_layout, CodeSpec, Fake, CODE_TYPE};

    fn reader(minor: u8) -> CodeReader {
        CodeReader {
            code: stack_layout(minor, false).code,
            objects: layout(minor, false),
            code_type: Some(CODE_TYPE),
        }
    }

    #[test]
    fn a_line_table_longer_than_the_cap_is_cut_and_gives_no_line_past_the_cut() {
        let r = reader(12);
        // One location entry (2 bytes, 1 code unit, +1 line) per unit: 50 000 units.
        let table: Vec<u8> = (0..50_000).flat_map(|_| [0x80 | (13 << 3), 0x02]).collect();
        let mut mem = Fake::default();
        let spec = CodeSpec {
            name: "Big.f",
            file: "/srv/big.py",
            first_line: 1,
            table: &table,
        };
        let at = mem.code(&r.objects, &r.code, &spec);
        let code = r.read(&mem, at).expect("a code object");
        assert!(!code.table_complete);
        assert_eq!(code.table.len() as u64, MAX_LINE_TABLE);
        assert_eq!(code.line_at(0), Some(2));
        let last_read = (MAX_LINE_TABLE / 2 - 1) as i64 * 2;
        assert_eq!(
            code.line_at(last_read),
            Some(2 + (MAX_LINE_TABLE / 2 - 1) as u32)
        );
        assert_eq!(code.line_at(last_read + 2), None, "past the cut");
        assert_eq!(
            (code.function.as_str(), code.file.as_str()),
            ("Big.f", "/srv/big.py")
        );
    }

    #[test]
    fn what_is_not_a_code_object_is_refused() {
        let r = reader(11);
        let mut mem = Fake::default();
        let spec = CodeSpec {
            name: "f",
            file: "f.py",
            first_line: 3,
            table: &[],
        };
        let at = mem.code(&r.objects, &r.code, &spec);
        assert!(r.ident(&mem, at).is_some());
        let mut other = Fake::default();
        let wrong_type = other.code(&r.objects, &r.code, &spec);
        other.poke(wrong_type + r.objects.ob_type, 0x9999_0000);
        assert_eq!(r.read(&other, wrong_type), None, "another type");
        let first_line_at = at + r.code.firstlineno;
        let word = mem.u64_at(first_line_at).expect("readable");
        mem.poke(first_line_at, (word & !0xffff_ffff) | 0xffff_fff0);
        assert_eq!(r.read(&mem, at), None, "a negative first line");
        let huge = mem.code(&r.objects, &r.code, &spec);
        let table = mem.u64_at(huge + r.code.linetable).expect("table");
        mem.poke(table + r.code.bytes_size, u64::MAX);
        assert_eq!(r.read(&mem, huge), None, "a line table of absurd size");
        assert_eq!(r.read(&mem, 0x10), None, "unreadable");
    }
}
