//! Finds the CPython interpreter inside a running process and the address of its GIL.
//!
//! The interpreter is whichever mapped file exports `_PyRuntime`: the executable
//! (static builds such as Debian's `/usr/bin/python3.11`) or a `libpython3.X.so`.
//! Files are opened through `/proc/PID/root`, so a process in a container is read
//! from its own filesystem (the listing of mapped files, and the paths as the
//! process names them, are [`crate::os::mapped_files`]'s). The GIL address is
//! only trusted after [`read_gil_state`] confirms that memory there looks like a GIL.
//!
//! The C library's parts a process needs are found here too, among its mapped
//! files: glibc's tid offset in `struct pthread` and, on musl, the condvar wait
//! ([`detect_libc`]); what makes a file one or the other is [`super::libc`]'s.

use std::path::{Path, PathBuf};

use crate::cpython::find::elf::{self, InterpreterFile};
use crate::cpython::find::libc::{self, Libc, LibcKind};
use crate::cpython::layout::debug_offsets::{self, DebugOffsets};
use crate::cpython::layout::versions::{self, GilLayout, GilLocation, Layout, ThreadIdField};
use crate::cpython::remote::memory::RemoteMemory;
use crate::error::{Error, Result};
use crate::os::mapped_files::{exe_in_process, mapped_files, mapped_paths, MappedFile};
use crate::os::target_file::host_path;

/// The interpreter of one process: which file, where it is loaded, which layout applies.
#[derive(Debug, Clone)]
pub struct Interpreter {
    pub pid: u32,
    /// `/proc/PID/exe` when the interpreter was found (the process may be gone at report time).
    pub executable: PathBuf,
    pub file: InterpreterFile,
    /// The file's path as the process sees it (inside its mount namespace).
    pub path_in_process: PathBuf,
    /// The same file from the host: `/proc/PID/root/...`.
    pub host_path: PathBuf,
    /// The file is a shared `libpython`, not the executable.
    pub is_library: bool,
    /// Runtime address minus link-time address of the file's symbols.
    pub load_bias: u64,
    pub layout: &'static Layout,
    /// The C library the process runs on: on musl, GIL waits are measured at
    /// the libc condvar wait, not from futex addresses.
    pub libc: LibcKind,
}

/// The GIL of one interpreter: where it is and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GilSite {
    pub addr: u64,
    pub layout: GilLayout,
    /// How a `PyThreadState *` (the GIL's `last_holder`) leads to a tid.
    pub thread_id: ThreadIdField,
    pub free_threaded: bool,
    /// Offset of `int enabled` inside the GIL struct (free-threaded builds).
    pub enabled_off: Option<u64>,
    /// How to walk every interpreter (3.12+, where subinterpreters may own a GIL).
    pub interpreters: Option<InterpreterList>,
}

/// The interpreter list of a process: where its head pointer is, and the
/// offsets of `next` and `ceval.gil` inside `PyInterpreterState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterpreterList {
    pub head_at: u64,
    pub next_off: u64,
    pub gil_ptr_off: u64,
}

/// Interpreters walked at most, against a corrupt or cyclic list.
const MAX_INTERPRETERS: usize = 256;

/// Every distinct GIL of the process, the main interpreter's first.
pub fn all_gils(mem: &RemoteMemory, site: &GilSite, max: usize) -> Vec<u64> {
    let mut gils = vec![site.addr];
    let Some(list) = site.interpreters else {
        return gils;
    };
    let mut interp = mem.read_u64(list.head_at).unwrap_or(0);
    for _ in 0..MAX_INTERPRETERS {
        if interp == 0 || gils.len() >= max {
            break;
        }
        if let Ok(gil) = mem.read_u64(interp + list.gil_ptr_off) {
            if gil != 0 && !gils.contains(&gil) {
                gils.push(gil);
            }
        }
        interp = mem.read_u64(interp + list.next_off).unwrap_or(0);
    }
    gils
}

impl Interpreter {
    /// Runtime address of `_PyRuntime`.
    pub fn py_runtime(&self) -> u64 {
        self.file.py_runtime.wrapping_add(self.load_bias)
    }

    /// Runtime address of `PyCode_Type`, when the file exports it.
    pub fn code_type(&self) -> Option<u64> {
        self.file.code_type.map(|t| t.wrapping_add(self.load_bias))
    }

    /// The GIL without reading memory, where the layout makes it static (3.8-3.11):
    /// usable before the interpreter has initialized anything.
    pub fn static_gil(&self) -> Option<GilSite> {
        match self.layout.gil {
            GilLocation::Embedded(off) => Some(GilSite {
                addr: self.py_runtime() + off,
                layout: self.layout.gil_layout,
                thread_id: self.layout.thread_id,
                free_threaded: false,
                enabled_off: None,
                interpreters: None,
            }),
            _ => None,
        }
    }

    /// Finds the GIL, reading pointers (3.12) or the debug offsets (3.13+) from the process.
    pub fn resolve_gil(&self, mem: &RemoteMemory) -> Result<GilSite> {
        match self.layout.gil {
            GilLocation::Embedded(_) => self
                .static_gil()
                .ok_or_else(|| Error::Internal("embedded GIL without an address".into())),
            GilLocation::InterpreterPointer {
                interp,
                gil_ptr,
                interpreters_head,
                interp_next,
            } => {
                let list = InterpreterList {
                    head_at: self.py_runtime() + interpreters_head,
                    next_off: interp_next,
                    gil_ptr_off: gil_ptr,
                };
                self.gil_behind_pointer(mem, interp + gil_ptr, list)
            }
            GilLocation::DebugOffsets => self.gil_from_debug_offsets(mem),
        }
    }

    /// A GIL not there yet: the interpreter is still starting.
    fn not_ready(&self, why: &str) -> Error {
        Error::GilNotValid {
            pid: self.pid,
            addr: 0,
            why: why.to_string(),
        }
    }

    /// 3.12: the GIL the main interpreter's `ceval.gil` points to, that pointer
    /// being at `pointer_off` from `_PyRuntime`.
    fn gil_behind_pointer(
        &self,
        mem: &RemoteMemory,
        pointer_off: u64,
        interpreters: InterpreterList,
    ) -> Result<GilSite> {
        let addr = mem.read_u64(self.py_runtime() + pointer_off)?;
        if addr == 0 {
            return Err(self.not_ready("the interpreter has no GIL yet (still starting?)"));
        }
        Ok(GilSite {
            addr,
            layout: self.layout.gil_layout,
            thread_id: self.layout.thread_id,
            free_threaded: false,
            enabled_off: None,
            interpreters: Some(interpreters),
        })
    }

    /// What `_PyRuntime.debug_offsets` says (3.13+), `None` for a release line
    /// whose layout comes from the table; an error when the block is unreadable
    /// or not what this release line writes.
    pub fn debug_offsets(&self, mem: &RemoteMemory) -> Result<Option<DebugOffsets>> {
        if self.layout.gil != GilLocation::DebugOffsets {
            return Ok(None);
        }
        let mut block = [0u8; debug_offsets::BLOCK_LEN];
        mem.read(self.py_runtime(), &mut block)?;
        debug_offsets::parse(&block, self.file.version.line)
            .map(Some)
            .map_err(|why| Error::DebugOffsetsNotValid {
                pid: self.pid,
                addr: self.py_runtime(),
                why,
            })
    }

    /// 3.13+: the first interpreter's GIL, where `_PyRuntime.debug_offsets` says.
    fn gil_from_debug_offsets(&self, mem: &RemoteMemory) -> Result<GilSite> {
        let offsets = self
            .debug_offsets(mem)?
            .ok_or_else(|| Error::Internal("no debug offsets in this release line".into()))?;
        let head = mem.read_u64(self.py_runtime() + offsets.interpreters_head)?;
        if head == 0 {
            return Err(self.not_ready("no interpreter yet (still starting?)"));
        }
        let addr = mem.read_u64(head + offsets.ceval_gil)?;
        if addr == 0 {
            return Err(self.not_ready("the interpreter has no GIL yet (still starting?)"));
        }
        Ok(GilSite {
            addr,
            layout: self.checked_gil_layout(&offsets, addr)?,
            thread_id: ThreadIdField::NativeThreadId(offsets.native_thread_id),
            free_threaded: offsets.free_threaded,
            enabled_off: offsets.enabled_in_gil(),
            interpreters: Some(InterpreterList {
                head_at: self.py_runtime() + offsets.interpreters_head,
                next_off: offsets.interp_next,
                gil_ptr_off: offsets.ceval_gil,
            }),
        })
    }

    /// The GIL layout gilscope expects for this build, refused (for the GIL at
    /// `addr`) when the process's debug offsets put its fields elsewhere.
    fn checked_gil_layout(&self, offsets: &DebugOffsets, addr: u64) -> Result<GilLayout> {
        let layout = if offsets.free_threaded {
            self.layout.gil_layout.free_threaded()
        } else {
            self.layout.gil_layout
        };
        if offsets.locked_in_gil() != Some(layout.locked)
            || offsets.holder_in_gil() != Some(layout.last_holder)
        {
            return Err(Error::GilNotValid {
                pid: self.pid,
                addr,
                why: format!(
                    "debug offsets put locked/last_holder at {:?}/{:?}, gilscope expects {}/{}",
                    offsets.locked_in_gil(),
                    offsets.holder_in_gil(),
                    layout.locked,
                    layout.last_holder
                ),
            });
        }
        Ok(layout)
    }
}

/// The GIL as read from memory at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GilState {
    pub interval_us: u64,
    pub locked: bool,
    pub last_holder: u64,
    pub switch_number: u64,
    /// Free-threaded builds: whether the GIL is switched on right now.
    pub enabled: Option<bool>,
}

/// Reads and sanity-checks the GIL struct; errors explain what did not look right.
pub fn read_gil_state(pid: u32, mem: &RemoteMemory, gil: &GilSite) -> Result<GilState> {
    let (addr, layout) = (gil.addr, &gil.layout);
    // Everything up to and including switch_number (and `enabled` before it).
    let mut raw = [0u8; 48];
    mem.read(addr, &mut raw)?;
    let field = |off: u64| -> u64 {
        let off = off as usize;
        raw.get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    let interval_us = field(layout.interval);
    let locked_word = field(layout.locked) & 0xffff_ffff;
    let state = GilState {
        interval_us,
        locked: locked_word == 1,
        last_holder: field(layout.last_holder),
        switch_number: field(layout.switch_number),
        enabled: gil.enabled_off.map(|off| field(off) & 0xffff_ffff != 0),
    };
    let invalid = |why: String| Error::GilNotValid { pid, addr, why };
    if interval_us == 0 {
        return Err(invalid(
            "switch interval is 0: the runtime is not initialized".into(),
        ));
    }
    if interval_us > 10_000_000 {
        return Err(invalid(format!(
            "switch interval {interval_us} µs is implausible"
        )));
    }
    if locked_word > 1 {
        return Err(invalid(format!("locked = {locked_word}, expected 0 or 1")));
    }
    Ok(state)
}

fn is_candidate(path: &Path, exe: Option<&Path>) -> bool {
    Some(path) == exe || named_like_cpython(path)
}

/// `libpython3*` or `python3*`: a file that says it is CPython's.
fn named_like_cpython(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("libpython3") || name.starts_with("python3")
}

/// What one process maps, listed once: a caller polling a starting process
/// compares its [`candidates`](Self::candidates) (cheap, no ELF is read) and
/// looks for the interpreter in the same listing only when they changed.
pub struct MappedListing {
    pid: u32,
    exe: Option<PathBuf>,
    files: Vec<MappedFile>,
}

impl MappedListing {
    /// Lists the mapped files of `pid` (one read of its maps).
    pub fn read(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            exe: exe_in_process(pid),
            files: mapped_files(pid)?,
        })
    }

    /// The mapped files that could hold the interpreter.
    pub fn candidates(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| &f.path)
            .filter(|p| is_candidate(p, self.exe.as_deref()))
            .cloned()
            .collect()
    }

    /// The interpreter among these files. `Ok(None)`: nothing mapped exports
    /// `_PyRuntime` (yet).
    pub fn find_interpreter(self) -> Result<Option<Interpreter>> {
        find_interpreter_in(self.pid, self.exe, self.files)
    }
}

/// Finds the interpreter of `pid`. `Ok(None)`: nothing mapped exports `_PyRuntime` (yet).
pub fn find_interpreter(pid: u32) -> Result<Option<Interpreter>> {
    MappedListing::read(pid)?.find_interpreter()
}

fn find_interpreter_in(
    pid: u32,
    exe: Option<PathBuf>,
    mut files: Vec<MappedFile>,
) -> Result<Option<Interpreter>> {
    // The executable first: static builds define _PyRuntime there.
    files.sort_by_key(|f| Some(f.path.as_path()) != exe.as_deref());
    // A file we may not open (another user's, in a directory we cannot enter) is
    // not "not Python": if nothing else is found, that is what to say.
    let mut denied = None;
    for mapped in files
        .iter()
        .filter(|f| is_candidate(&f.path, exe.as_deref()))
    {
        let host = mapped.host_path(pid);
        let file = match elf::inspect(&host) {
            Ok(Some(file)) => file,
            Ok(None) => continue,
            Err(e @ Error::NoSuchProcess { .. }) => return Err(e),
            // Nor is one we refuse to read (a FIFO, a device, a file too
            // large, a link out of the process's root): the reason is said.
            Err(
                e @ (Error::Permission { .. }
                | Error::UnsafeFile { .. }
                | Error::ReplacedFileHidden { .. }),
            ) => {
                tracing::debug!("skipping {}: {e}", host.display());
                denied.get_or_insert(e);
                continue;
            }
            // An unreadable file named like CPython's is said too, others skipped.
            Err(e) => {
                tracing::debug!("skipping {}: {e}", host.display());
                if named_like_cpython(&mapped.path) {
                    denied.get_or_insert(e);
                }
                continue;
            }
        };
        let layout =
            versions::layout_for(file.version.line).ok_or_else(|| Error::UnsupportedVersion {
                pid,
                version: file.version.to_string(),
                supported: versions::supported_versions(),
            })?;
        let load_bias = mapped.base.wrapping_sub(file.first_load_vaddr & !0xfff);
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let libc = libc::kind_of(&paths, &file);
        return Ok(Some(Interpreter {
            pid,
            executable: exe.clone().unwrap_or_else(|| mapped.path.clone()),
            is_library: Some(mapped.path.as_path()) != exe.as_deref(),
            path_in_process: mapped.path.clone(),
            host_path: host,
            file,
            load_bias,
            layout,
            libc,
        }));
    }
    match denied {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Where glibc keeps the kernel tid inside `struct pthread`, read from the
/// `_thread_db_pthread_tid` descriptor libc exports for debuggers ({bits, count,
/// offset}); `None` for musl or a libc without it. Needed to name threads on
/// 3.8-3.10, whose thread states only record the `pthread_t`.
pub fn glibc_pthread_tid_offset(pid: u32) -> Option<u64> {
    let files = mapped_files(pid).ok()?;
    let libc = files.iter().find(|f| {
        f.path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libc.so") || n.starts_with("libc-"))
    })?;
    let host = host_path(pid, &libc.path);
    let image = elf::ElfImage::read(&host).ok()?;
    let file = image.parse(&host).ok()?;
    let descriptor = elf::object_address(&file, "_thread_db_pthread_tid")?;
    let bytes = elf::bytes_at(&file, descriptor, 12)?;
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(i * 4..i * 4 + 4)?
            .try_into()
            .ok()
            .map(u32::from_le_bytes)
    };
    (word(0)? == 32 && word(1)? == 1).then(|| u64::from(word(2).unwrap_or(0)))
}

/// The libc of the process of `interp` (already classified when it was found);
/// on musl, also where to probe its condvar wait.
pub fn detect_libc(interp: &Interpreter) -> Result<Libc> {
    let pid = interp.pid;
    let kind = interp.libc;
    if kind != LibcKind::Musl {
        return Ok(Libc {
            kind,
            cond_wait: None,
        });
    }
    let exe = exe_in_process(pid);
    let mapped = mapped_paths(pid)?;
    let order = libc::cond_wait_search_order(&mapped, exe.as_deref(), &interp.path_in_process);
    for path in order {
        let host = host_path(pid, path);
        match libc::cond_wait_in(&host, path) {
            Ok(Some(site)) => {
                return Ok(Libc {
                    kind,
                    cond_wait: Some(site),
                })
            }
            Ok(None) => {}
            Err(e @ Error::NoSuchProcess { .. }) => return Err(e),
            Err(e) => tracing::debug!("musl: skipping {}: {e}", host.display()),
        }
    }
    Ok(Libc {
        kind,
        cond_wait: None,
    })
}

/// [`detect_libc`], refusing a musl process whose condvar wait cannot be found:
/// its GIL waits would silently read as zero.
pub fn require_measurable_libc(interp: &Interpreter) -> Result<Libc> {
    let libc = detect_libc(interp)?;
    if libc.kind == LibcKind::Musl && libc.cond_wait.is_none() {
        return Err(Error::MuslUnmeasurable {
            pid: interp.pid,
            file: interp.path_in_process.display().to_string(),
        });
    }
    Ok(libc)
}

/// [`find_interpreter`] that turns "nothing found" into [`Error::NotPython`].
pub fn require_interpreter(pid: u32) -> Result<Interpreter> {
    find_interpreter(pid)?.ok_or_else(|| {
        let exe = exe_in_process(pid);
        let name = exe
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "unknown executable".into());
        // A stripped static build (e.g. musl, Alpine-style) keeps no symbol at all:
        // say so rather than "not CPython".
        match exe {
            Some(p) if libc::is_stripped_static(&host_path(pid, &p)) => {
                Error::StrippedStatic { pid, exe: name }
            }
            _ => Error::NotPython { pid, exe: name },
        }
    })
}
