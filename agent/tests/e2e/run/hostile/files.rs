//! Interpreter files a target controls: a 3 GiB (sparse) interpreter, and a
//! FIFO or a symlink put where a container's mapped `libpython` was (a bind
//! mount over its directory, so `/proc/PID/maps` still names the old path).
//! The daemon reads no file whole, never blocks on one, and never follows a
//! container's symlink out of the container's root; each such process is
//! refused in one line while an ordinary service next to it is measured.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::bystanders::{assert_refused, Bystander};
use super::{scene, spawn_ready, Daemon, Scene, SPIN};
use crate::common::container::{build_rootfs, start_app, Container, Isolation, Rootfs, PREFIX};
use crate::common::receivers::scratch;
use crate::common::*;

#[test]
fn a_3_gib_sparse_interpreter_file_is_refused_without_reading_it() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("sparse")
    else {
        return;
    };
    let dir = scratch(&marker);
    let huge = dir.join("python3.11");
    std::fs::copy(&python, &huge).expect("copy the interpreter");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .and_then(|f| f.set_len(3 << 30))
        .expect("make it 3 GiB (sparse)");
    let (target, _out) = spawn_ready(Command::new(&huge).args(["-c", SPIN, &marker]));
    let bystander = Bystander::start(&python, &marker);
    let mut daemon = Daemon::start(&vm, &marker, &[]);
    assert_refused(&daemon, target.0.id(), "3.0 GiB, larger than");
    bystander.check(&mut daemon, &python, &marker, "a 3 GiB interpreter");
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bind-mounts `source` over `target` inside the mount namespace of `pid` (a
/// container's: its root is the rootfs), from a thread of our own that enters
/// that namespace alone.
fn mount_over(pid: u32, source: &str, target: &str) {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).expect("the container's mount ns");
    let (source, target) = (
        CString::new(source).expect("path"),
        CString::new(target).expect("path"),
    );
    let result = std::thread::spawn(move || {
        // SAFETY: plain syscalls on a thread that first stops sharing its
        // filesystem attributes (so setns changes only this thread's root);
        // the strings are NUL-terminated and outlive the calls.
        unsafe {
            if libc::unshare(libc::CLONE_FS) != 0
                || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
                || libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .expect("mount thread");
    result.expect("bind-mount inside the container");
}

/// A pivot_root container running pyenv's 3.11 (shared libpython) with three
/// CPU-bound threads, whose library directory is then covered by a directory
/// of the rootfs holding what `make` put there under libpython's name.
fn container_with_covered_library(
    marker: &str,
    make: impl FnOnce(&Path),
) -> Option<(Rootfs, Container)> {
    let python = pyenv_python311()?;
    let rootfs = build_rootfs(&python, marker);
    let cover = rootfs.dir.join("cover");
    std::fs::create_dir_all(&cover).expect("cover directory");
    make(&cover.join("libpython3.11.so.1.0"));
    let args = ["/app/cpu_threads.py", "3", "600", marker];
    let container = start_app(&rootfs, Isolation::PivotRoot, &args);
    // Started (its stdlib imported, its threads running) before the cover goes on.
    let threads =
        || std::fs::read_dir(format!("/proc/{}/task", container.pid)).map_or(0, |d| d.count());
    let deadline = Instant::now() + Duration::from_secs(10);
    while threads() < 4 {
        assert!(
            Instant::now() < deadline,
            "the container's threads never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    mount_over(container.pid, "/cover", &format!("{PREFIX}/lib"));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", container.pid)).unwrap_or_default();
    assert!(
        maps.contains(&format!("{PREFIX}/lib/libpython3.11.so.1.0\n")),
        "the maps still name the covered library: {maps}"
    );
    Some((rootfs, container))
}

#[test]
fn a_fifo_in_place_of_a_mapped_library_is_refused_at_once() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("fifo")
    else {
        return;
    };
    let made = container_with_covered_library(&marker, |path| {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    });
    let Some((_rootfs, container)) = made else {
        return;
    };
    let bystander = Bystander::start(&python, &marker);
    let mut daemon = Daemon::start(&vm, &marker, &[]);
    assert_refused(&daemon, container.pid, "a FIFO, not a regular file");
    bystander.check(&mut daemon, &python, &marker, "a FIFO for a library");
    drop(container);
}

/// inotify on one file: whether anything opened it since [`Opened::watch`].
struct Opened(OwnedFd);

impl Opened {
    fn watch(path: &Path) -> Self {
        // SAFETY: inotify_init1 returns a new fd (checked) that we own.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) };
        assert!(wd >= 0, "inotify_add_watch {}", path.display());
        Self(owned)
    }

    fn since(&self) -> bool {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a buffer we own from our inotify fd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n > 0
    }
}

#[test]
fn a_symlink_in_place_of_a_mapped_library_is_not_followed_out_of_the_container() {
    let Some(Scene {
        machine: _machine,
        python,
        vm,
        marker,
    }) = scene("symlink")
    else {
        return;
    };
    let Some(pyenv) = pyenv_python311() else {
        return;
    };
    // A real libpython on the host only: what the container's absolute link names.
    let host_dir = scratch(&format!("{marker}-host"));
    let host_file = host_dir.join("libpython3.11.so.1.0");
    let lib = pyenv
        .parent()
        .and_then(Path::parent)
        .expect("pyenv prefix")
        .join("lib/libpython3.11.so.1.0");
    std::fs::copy(&lib, &host_file).expect("copy libpython");
    let link_to = host_file.clone();
    let made = container_with_covered_library(&marker, move |path| {
        std::os::unix::fs::symlink(&link_to, path).expect("symlink");
    });
    let Some((_rootfs, container)) = made else {
        return;
    };
    let opened = Opened::watch(&host_file);
    let bystander = Bystander::start(&python, &marker);
    let mut daemon = Daemon::start(&vm, &marker, &[]);
    assert_refused(&daemon, container.pid, "libpython3.11.so.1.0");
    assert!(
        !opened.since(),
        "the daemon opened {}, a host file the container's symlink names",
        host_file.display()
    );
    bystander.check(&mut daemon, &python, &marker, "a symlink for a library");
    drop(container);
    let _ = std::fs::remove_dir_all(&host_dir);
}
