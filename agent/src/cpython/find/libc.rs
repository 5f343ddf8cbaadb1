//! Which C library a CPython process runs on, and — on musl — where its condvar
//! wait is.
//!
//! The default wait probe recognises a GIL wait by its futex word lying inside
//! the GIL struct, which holds for glibc. musl's condvar waiters sleep on a node
//! on their own stack, so there the GIL waits must be measured at musl's
//! `__pthread_cond_timedwait` instead (`ebpf/gil_condwait.bpf.c`). This module
//! tells the two apart and finds that function: in musl's `libc.so` /
//! `ld-musl-*.so.1` (exported as `pthread_cond_timedwait`), or in a statically
//! linked interpreter's `.symtab`.

use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::cpython::find::elf::{file_offset_of, ElfImage, InterpreterFile};
use crate::cpython::find::locate::{host_path, mapped_paths, Interpreter};
use crate::error::{Error, Result};

/// The C library family of a process, as reported (`interpreter.libc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibcKind {
    /// GNU libc: condvar waiters sleep on futex words inside the GIL struct.
    Glibc,
    /// musl: condvar waiters sleep on their own stack; measured at the condvar wait.
    Musl,
    /// Neither could be recognised (e.g. a static build of another libc).
    Unknown,
}

impl LibcKind {
    /// The name in reports: `glibc`, `musl` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            LibcKind::Glibc => "glibc",
            LibcKind::Musl => "musl",
            LibcKind::Unknown => "unknown",
        }
    }
}

/// Where musl's condvar wait is, ready for a uprobe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CondWaitSite {
    /// The file as seen from the host (`/proc/PID/root/...`).
    pub host_path: PathBuf,
    /// The file as the process sees it, for people.
    pub path_in_process: PathBuf,
    /// File offset of the function's first instruction.
    pub file_offset: u64,
    /// The symbol it was found by.
    pub symbol: String,
}

/// What [`detect`] found out about the libc of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Libc {
    /// Which family, as classified when the interpreter was found.
    pub kind: LibcKind,
    /// musl only: `None` when the function cannot be found (stripped static build).
    pub cond_wait: Option<CondWaitSite>,
}

/// Symbols musl defines for its condvar wait: the internal one (also reached by
/// `pthread_cond_wait`) and its exported alias at the same address.
const COND_WAIT_SYMBOLS: [&str; 2] = ["__pthread_cond_timedwait", "pthread_cond_timedwait"];

/// A mapped file name that only musl uses for its libc (`ld-musl-x86_64.so.1`,
/// Alpine's `libc.musl-x86_64.so.1`).
fn is_musl_name(name: &str) -> bool {
    name.starts_with("ld-musl-") || name.starts_with("libc.musl-")
}

/// A mapped path that is musl's libc by name or by directory (Debian's musl
/// package maps `/usr/lib/x86_64-linux-musl/libc.so`).
fn is_musl_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    is_musl_name(name) || (name.starts_with("libc.so") && path.contains("-linux-musl/"))
}

/// A mapped file name that only glibc uses (`libc.so.6`, old `libc-2.31.so`).
fn is_glibc_name(name: &str) -> bool {
    name == "libc.so.6" || (name.starts_with("libc-2.") && name.ends_with(".so"))
}

/// Classifies from what can be seen without reading libc itself: the paths of
/// the mapped files, the executable's program interpreter (`PT_INTERP`), and for
/// a static executable whether it carries musl's own symbols.
pub fn classify(
    mapped_paths: &[&str],
    program_interpreter: Option<&str>,
    static_musl_symbols: bool,
) -> LibcKind {
    let interp_name = program_interpreter
        .and_then(|p| Path::new(p).file_name())
        .and_then(|n| n.to_str());
    let name = |p: &&str| p.rsplit('/').next().unwrap_or(p).to_string();
    if mapped_paths.iter().any(|p| is_musl_path(p)) || interp_name.is_some_and(is_musl_name) {
        LibcKind::Musl
    } else if mapped_paths.iter().map(name).any(|n| is_glibc_name(&n))
        || interp_name.is_some_and(|n| n.starts_with("ld-linux"))
    {
        LibcKind::Glibc
    } else if static_musl_symbols {
        LibcKind::Musl
    } else {
        LibcKind::Unknown
    }
}

/// The `PT_INTERP` of an ELF file (its `.interp` section), if it has one.
pub fn program_interpreter(file: &object::File<'_>) -> Option<String> {
    let data = file.section_by_name(".interp")?.data().ok()?;
    let text = data.split(|b| *b == 0).next()?;
    std::str::from_utf8(text).ok().map(str::to_string)
}

/// A defined function named one of `names` (first name first), with its address.
fn defined_function(file: &object::File<'_>, names: &[&str]) -> Option<(String, u64)> {
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
pub fn has_static_musl_symbols(file: &object::File<'_>) -> bool {
    defined_function(file, &["__init_libc"]).is_some()
        && defined_function(file, &["__pthread_cond_timedwait"]).is_some()
}

/// A statically linked executable with no symbol table of either kind left
/// (`strip`ped): nothing in it can be found by name.
pub fn is_stripped_static(path: &Path) -> bool {
    let Ok(image) = ElfImage::read(path) else {
        return false;
    };
    let Ok(file) = image.parse(path) else {
        return false;
    };
    program_interpreter(&file).is_none()
        && file.section_by_name(".symtab").is_none()
        && file.section_by_name(".dynsym").is_none()
}

/// The condvar wait a libc file defines (symbol name, link-time address): the
/// parsing half of [`detect`], public so the fuzz harness can feed it bytes.
pub fn cond_wait_symbol(file: &object::File<'_>) -> Option<(String, u64)> {
    defined_function(file, &COND_WAIT_SYMBOLS)
}

/// The condvar wait in `path` (seen from the host), if the file defines it.
fn cond_wait_in(host: &Path, in_process: &Path) -> Result<Option<CondWaitSite>> {
    let image = ElfImage::read(host)?;
    let file = image.parse(host)?;
    let Some((symbol, address)) = cond_wait_symbol(&file) else {
        return Ok(None);
    };
    let file_offset = file_offset_of(&file, address).ok_or_else(|| Error::BadElf {
        path: host.to_path_buf(),
        why: format!("{symbol} is outside every loadable segment"),
    })?;
    Ok(Some(CondWaitSite {
        host_path: host.to_path_buf(),
        path_in_process: in_process.to_path_buf(),
        file_offset,
        symbol,
    }))
}

/// The libc family of a process, from the paths it maps and its interpreter
/// file (whose `PT_INTERP` or static musl symbols decide when names do not).
pub fn kind_of(mapped: &[PathBuf], file: &InterpreterFile) -> LibcKind {
    let paths: Vec<String> = mapped
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    classify(&refs, file.program_interpreter.as_deref(), file.static_musl)
}

/// The libc of the process of `interp` (already classified when it was found);
/// on musl, also where to probe its condvar wait.
pub fn detect(interp: &Interpreter) -> Result<Libc> {
    let pid = interp.pid;
    let kind = interp.libc;
    if kind != LibcKind::Musl {
        return Ok(Libc {
            kind,
            cond_wait: None,
        });
    }
    let exe = crate::cpython::find::locate::exe_in_process(pid);
    let mapped = mapped_paths(pid)?;
    // The file that defines the condvar wait: musl-named files first, then the
    // interpreter and executable (static builds), then any other mapped file
    // (Debian maps musl as /usr/lib/x86_64-linux-musl/libc.so).
    let mut order: Vec<&PathBuf> = mapped.iter().collect();
    order.sort_by_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if is_musl_name(name) {
            0
        } else if Some(p.as_path()) == exe.as_deref() || p.as_path() == interp.path_in_process {
            1
        } else if name.starts_with("libc") {
            2
        } else {
            3
        }
    });
    for path in order {
        let host = host_path(pid, path);
        match cond_wait_in(&host, path) {
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

/// [`detect`], refusing a musl process whose condvar wait cannot be found:
/// its GIL waits would silently read as zero.
pub fn require_measurable(interp: &Interpreter) -> Result<Libc> {
    let libc = detect(interp)?;
    if libc.kind == LibcKind::Musl && libc.cond_wait.is_none() {
        return Err(Error::MuslUnmeasurable {
            pid: interp.pid,
            file: interp.path_in_process.display().to_string(),
        });
    }
    Ok(libc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musl_is_recognised_by_its_loader_or_alpine_libc_name() {
        let alpine = [
            "python3.13",
            "libc.musl-x86_64.so.1",
            "libpython3.13.so.1.0",
        ];
        assert_eq!(classify(&alpine, None, false), LibcKind::Musl);
        let loader = ["python3.13", "ld-musl-x86_64.so.1"];
        assert_eq!(classify(&loader, None, false), LibcKind::Musl);
        // Debian's musl: the loader is a symlink, maps show .../x86_64-linux-musl/libc.so,
        // but the executable's PT_INTERP still names ld-musl.
        let debian = ["python3.13", "libc.so"];
        assert_eq!(
            classify(&debian, Some("/lib/ld-musl-x86_64.so.1"), false),
            LibcKind::Musl
        );
    }

    #[test]
    fn debian_musl_is_recognised_by_its_directory_without_pt_interp() {
        // A shared libpython is read, not the executable: only the mapped paths tell.
        let maps = [
            "/opt/py/lib/libpython3.13.so.1.0",
            "/usr/lib/x86_64-linux-musl/libc.so",
        ];
        assert_eq!(classify(&maps, None, false), LibcKind::Musl);
        let glibc = [
            "/opt/py/lib/libpython3.13.so.1.0",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ];
        assert_eq!(classify(&glibc, None, false), LibcKind::Glibc);
    }

    #[test]
    fn an_unmeasurable_musl_build_is_refused_saying_why_and_what_works() {
        let err = Error::MuslUnmeasurable {
            pid: 42,
            file: "/usr/bin/python3.13".into(),
        };
        assert!(err.is_user_error(), "exit code 2");
        let text = err.to_string();
        for needle in [
            "musl",
            "__pthread_cond_timedwait",
            "own stack",
            "not stripped",
        ] {
            assert!(text.contains(needle), "{needle} missing from: {text}");
        }
    }

    #[test]
    fn glibc_is_recognised_and_a_static_build_needs_musl_symbols() {
        let glibc = ["python3.11", "libc.so.6", "ld-linux-x86-64.so.2"];
        assert_eq!(
            classify(&glibc, Some("/lib64/ld-linux-x86-64.so.2"), false),
            LibcKind::Glibc
        );
        assert_eq!(classify(&["python3.13"], None, true), LibcKind::Musl);
        assert_eq!(classify(&["python3.13"], None, false), LibcKind::Unknown);
    }

    #[test]
    fn this_test_process_runs_on_glibc_and_has_no_musl_symbols() {
        let exe = std::env::current_exe().expect("current exe");
        let image = ElfImage::read(&exe).expect("read own executable");
        let file = image.parse(&exe).expect("parse own executable");
        assert!(!has_static_musl_symbols(&file));
        assert!(program_interpreter(&file).is_some_and(|p| p.contains("ld-linux")));
    }

    #[test]
    fn musl_libc_exports_its_condvar_wait() {
        // Debian's musl package (apt-get install musl); Alpine has /lib/ld-musl-x86_64.so.1 too.
        let lib = Path::new("/lib/ld-musl-x86_64.so.1");
        if !lib.exists() {
            eprintln!("SKIPPED: no musl at {}", lib.display());
            return;
        }
        let site = cond_wait_in(lib, lib)
            .expect("readable")
            .expect("musl exports pthread_cond_timedwait");
        assert!(site.file_offset > 0);
        assert!(COND_WAIT_SYMBOLS.contains(&site.symbol.as_str()));
    }
}
