//! Opening a file of another process as that process sees it, without being
//! led anywhere else, blocked, or handed something that is not a file.
//!
//! The interpreter files of a process are read through `/proc/PID/root/PATH`.
//! Resolved by an ordinary `open`, a symlink in a container's filesystem
//! would be followed from the *agent's* root (an absolute link to
//! `/etc/...` names the node's file, not the container's), a magic link
//! (`/proc/self/...`) could lead anywhere, and a FIFO put in place of a mapped
//! library would block the reader forever. So the path is resolved with
//! `openat2` inside the process's root (`RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`), opened `O_NONBLOCK`, and kept only when it is a
//! regular file no larger than the caller allows. Where the kernel (before
//! 5.6) or a seccomp filter refuses `openat2`, the same rules are applied
//! component by component with `openat(O_PATH | O_NOFOLLOW)`, each symlink
//! resolved by us inside the root ([`walk_in_root`]).
//!
//! A mapped file that was deleted or replaced on disk (`PATH (deleted)` in
//! the maps) has no path any more: it is opened through
//! `/proc/PID/map_files/START-END`, a magic link to the mapping's own file,
//! which the kernel lets only `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`
//! follow.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Symlinks followed at most on one path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Path of `path_in_process` (as process `pid` names it) seen from the host:
/// `/proc/PID/root/...`, which [`open_regular`] resolves inside that root.
pub fn host_path(pid: u32, path_in_process: &Path) -> PathBuf {
    let relative = path_in_process.strip_prefix("/").unwrap_or(path_in_process);
    PathBuf::from(format!("/proc/{pid}/root")).join(relative)
}

/// Path of the file mapped at `start..end` in process `pid`, through
/// `/proc/PID/map_files` (the mapping's own file, even once deleted).
pub fn mapped_file_path(pid: u32, start: u64, end: u64) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
}

/// How a path given to [`open_regular`] is resolved.
#[derive(Debug, PartialEq, Eq)]
enum Resolution<'a> {
    /// `/proc/PID/root/REST`: REST inside the root of process PID.
    InRoot { pid: u32, rest: &'a Path },
    /// `/proc/PID/map_files/RANGE`: the magic link is the point.
    MappedFile { pid: u32 },
    /// Any other path: from our own root, no magic links.
    Host,
}

fn resolution(path: &Path) -> Resolution<'_> {
    let mut parts = path.components();
    let proc_pid = (
        parts.next(),
        parts.next(),
        parts
            .next()
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok()),
        parts.next(),
    );
    match proc_pid {
        (Some(Component::RootDir), Some(p), Some(pid), Some(Component::Normal(kind)))
            if p.as_os_str() == "proc" =>
        {
            match kind.as_bytes() {
                b"root" => Resolution::InRoot {
                    pid,
                    rest: parts.as_path(),
                },
                b"map_files" => Resolution::MappedFile { pid },
                _ => Resolution::Host,
            }
        }
        _ => Resolution::Host,
    }
}

/// Opens `path` for reading if it is a regular file of at most `max_len`
/// bytes. A `/proc/PID/root/...` path is resolved inside that process's root
/// (no symlink or `..` leads out of it, no magic link is followed); any other
/// path without magic links, except a `/proc/PID/map_files` entry, which is one.
/// Never blocks on a FIFO or device. Errors: [`Error::NoSuchProcess`] when
/// the process is gone, [`Error::UnsafeFile`] for what is not a file to read,
/// [`Error::Permission`], else [`Error::Io`].
pub fn open_regular(path: &Path, max_len: u64) -> Result<File> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Permission {
            what: format!("opening {}", path.display()),
        },
        _ => Error::Io {
            path: path.to_path_buf(),
            source: e,
        },
    };
    let file = match resolution(path) {
        Resolution::InRoot { pid, rest } => {
            let root = File::open(format!("/proc/{pid}/root")).map_err(|e| gone_or(pid, e, io))?;
            open_beneath(&OwnedFd::from(root), rest).map_err(io)?
        }
        Resolution::MappedFile { pid } => File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => Error::ReplacedFileHidden {
                    path: path.to_path_buf(),
                },
                _ => gone_or(pid, e, io),
            })?,
        Resolution::Host => {
            let root = OwnedFd::from(File::open("/").map_err(io)?);
            open_beneath(&root, path).map_err(io)?
        }
    };
    checked(file, path, max_len)
}

/// `NoSuchProcess` when `/proc/PID` is gone, else what `io` makes of `e`.
fn gone_or(pid: u32, e: std::io::Error, io: impl Fn(std::io::Error) -> Error) -> Error {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        Error::NoSuchProcess { pid }
    } else {
        io(e)
    }
}

/// What a file that is not a regular file is, for people.
fn kind_of(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Keeps `file` if it is a regular file of at most `max_len` bytes.
fn checked(file: File, path: &Path, max_len: u64) -> Result<File> {
    let meta = file.metadata().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let unsafe_file = |why: String| Error::UnsafeFile {
        path: path.to_path_buf(),
        why,
    };
    if !meta.file_type().is_file() {
        return Err(unsafe_file(format!(
            "it is {}, not a regular file",
            kind_of(meta.file_type())
        )));
    }
    if meta.len() > max_len {
        return Err(unsafe_file(format!(
            "it is {}, larger than the {} gilscope reads from such a file",
            size_text(meta.len()),
            size_text(max_len)
        )));
    }
    Ok(file)
}

/// `3.0 GiB`, `512 MiB`, `4096 bytes`.
pub fn size_text(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// The flags every target file is opened with: read-only, never blocking
/// (a FIFO), never becoming our terminal, closed on exec.
fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// Opens `path` beneath `root` as if `root` were `/`: `openat2` with
/// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, or [`walk_in_root`] where the
/// kernel or a seccomp filter does not offer `openat2`.
fn open_beneath(root: &OwnedFd, path: &Path) -> std::io::Result<File> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(read_flags())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match nix::fcntl::openat2(root.as_raw_fd(), relative, how) {
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { File::from_raw_fd(fd) }),
        Err(Errno::ENOSYS | Errno::EPERM) => walk_in_root(root, relative),
        Err(e) => Err(e.into()),
    }
}

/// Opens `fd`-relative `name` with `flags`, owning the result.
fn open_at(dir: &OwnedFd, name: &OsStr, flags: OFlag) -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The components of a path as names to resolve (`/` and `.` dropped).
fn names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// What `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` does, in user
/// space: each component is opened with `O_PATH | O_NOFOLLOW`; a symlink's
/// text is resolved by us (an absolute one from `root`, `..` never above it),
/// so neither it nor a magic link is ever followed by the kernel; the last
/// component is opened `O_NOFOLLOW` and must be the inode that was resolved.
///
/// Long: one loop over the path's components, the symlink and `..` cases in line.
pub fn walk_in_root(root: &OwnedFd, path: &Path) -> std::io::Result<File> {
    let mut todo: VecDeque<OsString> = names(path).collect();
    // The directories below `root` the walk is in, innermost last.
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            dirs.pop();
            continue;
        }
        let here = dirs.last().unwrap_or(root);
        let fd = open_at(
            here,
            &name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        )?;
        let meta = File::from(fd.try_clone()?).metadata()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = PathBuf::from(nix::fcntl::readlinkat(Some(fd.as_raw_fd()), "")?);
            if target.is_absolute() {
                dirs.clear();
            }
            for (i, n) in names(&target).enumerate() {
                todo.insert(i, n);
            }
            continue;
        }
        if !todo.is_empty() {
            if !meta.is_dir() {
                return Err(Errno::ENOTDIR.into());
            }
            dirs.push(fd);
            continue;
        }
        let file = File::from(open_at(here, &name, read_flags() | OFlag::O_NOFOLLOW)?);
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            // Swapped between the two opens.
            return Err(Errno::ESTALE.into());
        }
        return Ok(file);
    }
    Err(Errno::EISDIR.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gilscope-target-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[test]
    fn proc_paths_are_told_apart() {
        assert_eq!(
            resolution(Path::new("/proc/42/root/usr/lib/libpython3.11.so")),
            Resolution::InRoot {
                pid: 42,
                rest: Path::new("usr/lib/libpython3.11.so")
            }
        );
        assert_eq!(
            resolution(Path::new("/proc/42/map_files/1000-2000")),
            Resolution::MappedFile { pid: 42 }
        );
        assert_eq!(resolution(Path::new("/proc/self/root/x")), Resolution::Host);
        assert_eq!(resolution(Path::new("/usr/bin/python3")), Resolution::Host);
        assert_eq!(
            host_path(7, Path::new("/opt/py/lib/libpython3.13.so")),
            PathBuf::from("/proc/7/root/opt/py/lib/libpython3.13.so")
        );
    }

    /// A root with a file, links that try to leave it, and a FIFO.
    fn tree(tag: &str) -> (PathBuf, PathBuf) {
        let base = scratch(tag);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("lib")).expect("lib");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::write(root.join("lib/real.so"), b"inside").expect("file");
        std::fs::write(root.join("etc/secret"), b"the container's").expect("file");
        std::fs::write(base.join("outside"), b"the host's").expect("file");
        let link =
            |to: &str, at: &str| std::os::unix::fs::symlink(to, root.join(at)).expect("link");
        link("/etc/secret", "lib/absolute.so");
        link("../../../../outside", "lib/dotdot.so");
        link("real.so", "lib/relative.so");
        link("/lib", "libdir");
        link("/proc/self/root/etc/secret", "lib/magic.so");
        link("loop.so", "lib/loop.so");
        let fifo =
            std::ffi::CString::new(root.join("lib/fifo.so").as_os_str().as_bytes()).expect("path");
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        (base, root)
    }

    fn read_via(walk: bool, root: &Path, path: &str) -> std::io::Result<String> {
        let dir = OwnedFd::from(File::open(root)?);
        let mut file = if walk {
            walk_in_root(&dir, Path::new(path))?
        } else {
            open_beneath(&dir, Path::new(path))?
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text)?;
        Ok(text)
    }

    #[test]
    fn links_resolve_inside_the_root_with_openat2_and_with_the_walk() {
        let (base, root) = tree("links");
        for walk in [false, true] {
            let read = |p: &str| read_via(walk, &root, p);
            assert_eq!(read("lib/real.so").ok().as_deref(), Some("inside"));
            assert_eq!(read("/lib/relative.so").ok().as_deref(), Some("inside"));
            assert_eq!(read("libdir/real.so").ok().as_deref(), Some("inside"));
            assert_eq!(
                read("lib/absolute.so").ok().as_deref(),
                Some("the container's"),
                "an absolute link stays in the root (walk: {walk})"
            );
            assert!(
                read("lib/dotdot.so").is_err(),
                ".. stops at the root (walk: {walk})"
            );
            assert!(read("../outside").is_err(), "walk: {walk}");
            assert!(read("lib/loop.so").is_err(), "walk: {walk}");
            // The magic link's text names a path that is not in this root.
            assert!(read("lib/magic.so").is_err(), "walk: {walk}");
        }
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_fifo_a_directory_and_a_large_file_are_refused_without_blocking() {
        let (base, root) = tree("kinds");
        let big = root.join("lib/big.so");
        File::create(&big)
            .and_then(|f| f.set_len(3 << 30))
            .expect("sparse file");
        let err = |p: &Path| open_regular(p, 1 << 30).expect_err("refused").to_string();
        let fifo = err(&root.join("lib/fifo.so"));
        assert!(fifo.contains("a FIFO, not a regular file"), "{fifo}");
        assert!(err(&root.join("lib")).contains("a directory"));
        let big = err(&big);
        assert!(big.contains("3.0 GiB, larger than the 1.0 GiB"), "{big}");
        assert!(open_regular(&root.join("lib/real.so"), 1 << 30).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn our_own_root_seen_through_proc_resolves_in_it() {
        let exe = std::env::current_exe().expect("exe");
        let path = host_path(std::process::id(), &exe);
        let file = open_regular(&path, u64::MAX).expect("our own executable");
        assert!(file.metadata().is_ok_and(|m| m.len() > 0));
        let gone = open_regular(Path::new("/proc/999999999/root/usr/bin/env"), u64::MAX);
        assert!(matches!(gone, Err(Error::NoSuchProcess { .. })), "{gone:?}");
    }
}
