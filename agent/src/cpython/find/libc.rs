//! Which C library a CPython process runs on, and — on musl — where its condvar
//! wait is.
//!
//! The default wait probe recognises a GIL wait by its futex word lying inside
//! the GIL struct, which holds for glibc. musl's condvar waiters sleep on a node
//! on their own stack, so there the GIL waits must be measured at musl's
//! `__pthread_cond_timedwait` instead (`ebpf/gil_condwait.bpf.c`). This module
//! tells the two apart and finds that function: in musl's `libc.so` /
//! `ld-musl-*.so.1` (exported as `pthread_cond_timedwait`), or in a statically
//! linked interpreter's `.symtab`. Which files of a process to look in is
//! [`super::locate`]'s part; this module only reads names and files.

use std::path::{Path, PathBuf};

use object::Object;

use crate::cpython::find::elf::{
    defined_function, file_offset_of, program_interpreter, Elf, ElfImage, InterpreterFile,
};
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

/// What was found out about the libc of a process (`locate::detect_libc`).
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
/// parsing half of [`cond_wait_in`], public so the fuzz harness can feed it bytes.
pub fn cond_wait_symbol(file: &Elf<'_>) -> Option<(String, u64)> {
    defined_function(file, &COND_WAIT_SYMBOLS)
}

/// The condvar wait in the file at `host` (seen from the host; `in_process`
/// is its name in the process), if the file defines it.
pub fn cond_wait_in(host: &Path, in_process: &Path) -> Result<Option<CondWaitSite>> {
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

/// The order to search a musl process's mapped files for its condvar wait:
/// musl-named files first, then the interpreter file and the executable (static
/// builds), then other libc files, then any other mapped file (Debian maps musl
/// as /usr/lib/x86_64-linux-musl/libc.so).
pub fn cond_wait_search_order<'a>(
    mapped: &'a [PathBuf],
    exe: Option<&Path>,
    interpreter: &Path,
) -> Vec<&'a PathBuf> {
    let mut order: Vec<&PathBuf> = mapped.iter().collect();
    order.sort_by_key(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if is_musl_name(name) {
            0
        } else if Some(p.as_path()) == exe || p.as_path() == interpreter {
            1
        } else if name.starts_with("libc") {
            2
        } else {
            3
        }
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::find::elf::has_static_musl_symbols;

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
    fn musl_files_are_searched_first_then_the_interpreter_then_libc() {
        let mapped: Vec<PathBuf> = [
            "/usr/lib/libz.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
            "/usr/bin/python3.13",
            "/lib/ld-musl-x86_64.so.1",
        ]
        .map(PathBuf::from)
        .to_vec();
        let order = cond_wait_search_order(
            &mapped,
            Some(Path::new("/usr/bin/python3.13")),
            Path::new("/usr/lib/libpython3.13.so"),
        );
        let names: Vec<&str> = order.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(
            names,
            [
                "/lib/ld-musl-x86_64.so.1",
                "/usr/bin/python3.13",
                "/usr/lib/x86_64-linux-musl/libc.so",
                "/usr/lib/libz.so.1"
            ]
        );
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
