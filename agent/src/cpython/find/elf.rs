//! Reads what gilscope needs from a CPython executable or `libpython` on disk.
//!
//! Works on stripped files: `_PyRuntime` and `Py_Version` are exported dynamic
//! symbols in every build; `take_gil`/`drop_gil` come from
//! `.symtab` when it survived. Nothing here touches a process, and nothing here
//! knows about the other finders: they build on these facts of one file
//! (symbols, version, `PT_INTERP`, whether musl is linked in statically).
//! A file is read by section within a budget ([`ElfImage`]), never whole: a
//! process controls its files, and so their sizes.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, SymbolKind};

use crate::cpython::layout::versions::PyVersion;
use crate::error::{Error, Result};
use crate::os::target_file;

/// A full CPython version (`3.11.7`), as far as the file tells: some builds keep
/// no trace of the micro version, and then it is left out rather than guessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullVersion {
    pub line: PyVersion,
    pub micro: Option<u8>,
}

impl std::fmt::Display for FullVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.micro {
            Some(micro) => write!(f, "{}.{micro}", self.line),
            None => write!(f, "{}", self.line),
        }
    }
}

/// A function found in the file: where it is and how long it is (0 if unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub address: u64,
    pub size: u64,
}

/// What an interpreter file says about itself.
#[derive(Debug, Clone)]
pub struct InterpreterFile {
    pub path: PathBuf,
    /// Link-time address of `_PyRuntime`.
    pub py_runtime: u64,
    /// Link-time address of `PyCode_Type` (exported by every build): the type
    /// a code object read from the target must have.
    pub code_type: Option<u64>,
    pub version: FullVersion,
    /// No `.symtab`: `take_gil`/`drop_gil` must be found by disassembly.
    pub stripped: bool,
    /// Link-time address of the first loadable segment (0 for PIE and shared objects).
    pub first_load_vaddr: u64,
    pub take_gil: Option<Function>,
    pub drop_gil: Option<Function>,
    /// Exported `_PyParkingLot_Park` (3.13+): the PyMutex slow path, probed on free-threaded builds.
    pub park: Option<Function>,
    /// Exported `PyEvent_WaitTimed`: parks it makes are event waits, not lock contention.
    pub event_wait: Option<Function>,
    /// `PT_INTERP` (e.g. `/lib/ld-musl-x86_64.so.1`): names the libc of a dynamic executable.
    pub program_interpreter: Option<String>,
    /// A static executable carrying musl's own symbols ([`has_static_musl_symbols`]).
    pub static_musl: bool,
}

/// Largest file opened as an interpreter, libpython or libc. Debian's static
/// `python3.11` is 7 MB, a libpython with DWARF 60 MB: a bigger file is not
/// worth reading, whatever it is.
pub const MAX_FILE: u64 = 1 << 30;
/// Bytes read from one file at most: its headers, symbol tables, and the few
/// sections asked for (about 1 MB for libpython, 6 MB with `.text` for `--precise`).
pub const READ_BUDGET: u64 = 32 << 20;
/// The largest single read (one section, e.g. `.text` for disassembly).
pub const MAX_PIECE: u64 = 16 << 20;

/// Where an [`ElfImage`] reads from.
#[derive(Debug)]
enum Source {
    File(std::fs::File),
    Bytes(std::io::Cursor<Vec<u8>>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::File(f) => f.read(buf),
            Source::Bytes(b) => b.read(buf),
        }
    }
}

impl Seek for Source {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match self {
            Source::File(f) => f.seek(pos),
            Source::Bytes(b) => b.seek(pos),
        }
    }
}

/// An ELF file read by section, never whole: the parser asks for the headers,
/// the symbol tables and the sections a caller needs, each read once and kept,
/// within [`MAX_PIECE`] per read and [`READ_BUDGET`] in all (a file may say
/// anything about its own sizes). Opened with [`target_file::open_regular`]:
/// inside its process's root, and only if it is a regular file of at most
/// [`MAX_FILE`] bytes.
#[derive(Debug)]
pub struct ElfImage {
    cache: ReadCache<Source>,
    /// Bytes read so far, and the reads they were (a repeated read is cached).
    spent: Cell<u64>,
    reads: RefCell<HashSet<(u64, u64)>>,
}

impl ElfImage {
    /// Opens a file to read by section; errors name the path.
    pub fn read(path: &Path) -> Result<Self> {
        let file = target_file::open_regular(path, MAX_FILE)?;
        Ok(Self::with(Source::File(file)))
    }

    /// An image of bytes already in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self::with(Source::Bytes(std::io::Cursor::new(bytes)))
    }

    fn with(source: Source) -> Self {
        Self {
            cache: ReadCache::new(source),
            spent: Cell::new(0),
            reads: RefCell::new(HashSet::new()),
        }
    }

    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.spent.get()
    }

    /// Parses the headers and symbol tables (reading them, not the rest).
    pub fn parse(&self, path: &Path) -> Result<Elf<'_>> {
        let file = object::File::parse(self).map_err(|e| Error::BadElf {
            path: path.to_path_buf(),
            why: if self.spent.get() >= READ_BUDGET {
                format!("{e} (gilscope reads at most {READ_BUDGET} bytes of a file)")
            } else {
                e.to_string()
            },
        })?;
        Ok(Elf { file, image: self })
    }

    /// Counts a read of `size` bytes at `offset` against the budget.
    fn charge(&self, offset: u64, size: u64) -> std::result::Result<(), ()> {
        if size > MAX_PIECE {
            return Err(());
        }
        if !self.reads.borrow_mut().insert((offset, size)) {
            return Ok(()); // served from the cache
        }
        let spent = self.spent.get().saturating_add(size);
        self.spent.set(spent);
        if spent > READ_BUDGET {
            return Err(());
        }
        Ok(())
    }
}

/// Reads go through the budget to the cache (which reads the file once per range).
impl<'a> ReadRef<'a> for &'a ElfImage {
    fn len(self) -> std::result::Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> std::result::Result<&'a [u8], ()> {
        self.charge(offset, size)?;
        (&self.cache).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(
        self,
        range: Range<u64>,
        delimiter: u8,
    ) -> std::result::Result<&'a [u8], ()> {
        // A string (a symbol's name): the cache reads at most 4 KiB looking for its end.
        let found = (&self.cache).read_bytes_at_until(range.clone(), delimiter)?;
        self.charge(range.start, found.len() as u64 + 1)?;
        Ok(found)
    }
}

/// A parsed ELF file ([`ElfImage::parse`]): everything `object` offers, plus
/// reads of a few bytes at an address ([`bytes_at`]) without reading their section.
pub struct Elf<'a> {
    file: object::File<'a, &'a ElfImage>,
    image: &'a ElfImage,
}

impl<'a> std::ops::Deref for Elf<'a> {
    type Target = object::File<'a, &'a ElfImage>;
    fn deref(&self) -> &Self::Target {
        &self.file
    }
}

/// Bytes of the file at a link-time virtual address, as far as one section
/// holds them (read from the file, not the whole section).
pub fn bytes_at<'a>(file: &Elf<'a>, address: u64, len: u64) -> Option<&'a [u8]> {
    file.sections().find_map(|section| {
        let start = section.address();
        let end = start.checked_add(section.size())?;
        if address < start || address >= end {
            return None;
        }
        let (offset, size) = section.file_range()?;
        let into = address - start;
        let len = len.min(size.checked_sub(into)?).min(end - address);
        file.image
            .read_bytes_at(offset.checked_add(into)?, len)
            .ok()
    })
}

/// File offset of a link-time virtual address (what a uprobe attaches to).
pub fn file_offset_of(file: &Elf<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (offset, filesz) = seg.file_range();
        let start = seg.address();
        (address >= start && address < start.checked_add(filesz)?).then(|| address - start + offset)
    })
}

/// The symbol named `name`, or a compiler clone of it (`take_gil.constprop.0`).
fn find_function(file: &Elf<'_>, name: &str) -> Option<Function> {
    let matches = |sym_name: &str| {
        sym_name == name
            || sym_name
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    file.symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .find(|s| s.name().is_ok_and(matches))
        .map(|s| Function {
            address: s.address(),
            size: s.size(),
        })
}

/// Link-time address of a data symbol (dynamic symbols first).
pub fn object_address(file: &Elf<'_>, name: &str) -> Option<u64> {
    find_object(file, name)
}

fn find_object(file: &Elf<'_>, name: &str) -> Option<u64> {
    file.dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok(name) && s.address() != 0)
        .map(|s| s.address())
}

/// The `PT_INTERP` of an ELF file (its `.interp` section), if it has one.
pub fn program_interpreter(file: &Elf<'_>) -> Option<String> {
    let data = file.section_by_name(".interp")?.data().ok()?;
    let text = data.split(|b| *b == 0).next()?;
    std::str::from_utf8(text).ok().map(str::to_string)
}

/// A defined function named one of `names` (first name first), with its address.
pub fn defined_function(file: &Elf<'_>, names: &[&str]) -> Option<(String, u64)> {
    names.iter().find_map(|name| {
        file.dynamic_symbols()
            .chain(file.symbols())
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0 && !s.is_undefined())
            .find(|s| s.name() == Ok(*name))
            .map(|s| (name.to_string(), s.address()))
    })
}

/// musl's signature in a statically linked file: its start-up function
/// `__init_libc` next to its condvar wait `__pthread_cond_timedwait` (glibc has
/// neither name).
pub fn has_static_musl_symbols(file: &Elf<'_>) -> bool {
    defined_function(file, &["__init_libc"]).is_some()
        && defined_function(file, &["__pthread_cond_timedwait"]).is_some()
}

/// Decodes `PY_VERSION_HEX` (the value of the exported `Py_Version`, 3.11+).
pub fn version_from_hex(hex: u64) -> Option<FullVersion> {
    let major = ((hex >> 24) & 0xff) as u8;
    let minor = ((hex >> 16) & 0xff) as u8;
    let micro = ((hex >> 8) & 0xff) as u8;
    (major == 3).then_some(FullVersion {
        line: PyVersion { major, minor },
        micro: Some(micro),
    })
}

/// Finds a NUL-delimited `3.X.Y` string (the `PY_VERSION` literal) in read-only data.
pub fn version_from_rodata(rodata: &[u8]) -> Option<FullVersion> {
    rodata
        .split(|b| *b == 0)
        .filter(|s| s.len() >= 5 && s.len() <= 12 && s.starts_with(b"3."))
        .find_map(|s| {
            let text = std::str::from_utf8(s).ok()?;
            // Release suffixes: 3.13.0rc1, 3.12.0+
            let core: &str = text
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?;
            let mut parts = core.split('.');
            let major: u8 = parts.next()?.parse().ok()?;
            let minor: u8 = parts.next()?.parse().ok()?;
            let micro: u8 = parts.next()?.parse().ok()?;
            if parts.next().is_some() || major != 3 || !(6..=30).contains(&minor) {
                return None;
            }
            Some(FullVersion {
                line: PyVersion { major, minor },
                micro: Some(micro),
            })
        })
}

/// `python3.11` / `libpython3.11.so.1.0` / `libpython3.13t.so` -> 3.11 (micro unknown).
pub fn version_from_file_name(path: &Path) -> Option<FullVersion> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = digits.split('.');
    let major: u8 = parts.next()?.parse().ok()?;
    let minor: u8 = parts.next()?.parse().ok()?;
    (major == 3).then_some(FullVersion {
        line: PyVersion { major, minor },
        micro: None,
    })
}

/// Inspects an interpreter file; `Ok(None)` when it simply is not CPython (no `_PyRuntime`).
pub fn inspect(path: &Path) -> Result<Option<InterpreterFile>> {
    let image = ElfImage::read(path)?;
    let file = image.parse(path)?;
    inspect_parsed(path, &file)
}

/// [`inspect`] on an already parsed file.
pub fn inspect_parsed(path: &Path, file: &Elf<'_>) -> Result<Option<InterpreterFile>> {
    let Some(py_runtime) = find_object(file, "_PyRuntime") else {
        return Ok(None);
    };
    let version = find_object(file, "Py_Version")
        .and_then(|addr| bytes_at(file, addr, 8))
        .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
        .and_then(version_from_hex)
        .or_else(|| {
            file.section_by_name(".rodata")
                .and_then(|s| s.data().ok())
                .and_then(version_from_rodata)
        })
        .or_else(|| version_from_file_name(path))
        .ok_or_else(|| Error::UnknownVersion {
            path: path.to_path_buf(),
        })?;
    let first_load_vaddr = file
        .segments()
        .find(|s| s.file_range().0 == 0)
        .map(|s| s.address())
        .unwrap_or(0);
    let program_interpreter = program_interpreter(file);
    Ok(Some(InterpreterFile {
        path: path.to_path_buf(),
        py_runtime,
        code_type: find_object(file, "PyCode_Type"),
        version,
        stripped: file.section_by_name(".symtab").is_none(),
        first_load_vaddr,
        take_gil: find_function(file, "take_gil"),
        drop_gil: find_function(file, "drop_gil"),
        park: find_function(file, "_PyParkingLot_Park"),
        event_wait: find_function(file, "PyEvent_WaitTimed"),
        static_musl: program_interpreter.is_none() && has_static_musl_symbols(file),
        program_interpreter,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_version_hex_decodes() {
        let v = version_from_hex(0x030b07f0).expect("3.11.7 final");
        assert_eq!(v.to_string(), "3.11.7");
        assert!(version_from_hex(0x020712f0).is_none());
    }

    #[test]
    fn the_version_literal_is_found_among_other_strings() {
        let rodata = b"\0hello\x003.1\0x3.9.18\x003.9.18\0%s (%s)\0";
        assert_eq!(
            version_from_rodata(rodata).map(|v| v.to_string()),
            Some("3.9.18".into())
        );
        assert!(version_from_rodata(b"\0no\0version\0").is_none());
    }

    #[test]
    fn file_names_give_the_release_line() {
        let v = version_from_file_name(Path::new("/usr/lib/libpython3.11.so.1.0")).expect("lib");
        assert_eq!(v.to_string(), "3.11", "no micro version is made up");
        let v = version_from_file_name(Path::new("/usr/bin/python3.13t")).expect("exe");
        assert_eq!(v.line.to_string(), "3.13");
        assert!(version_from_file_name(Path::new("/usr/bin/bash")).is_none());
    }

    #[test]
    fn garbage_is_a_clear_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("gilscope-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("not-an-elf");
        std::fs::write(&path, b"\x7fELF\x02\x01garbage").expect("write");
        let err = inspect(&path).expect_err("garbage must not parse");
        assert!(err.to_string().contains("not a readable ELF"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
