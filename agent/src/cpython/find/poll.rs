//! Where a process's poll-family functions are: the libc entry points an event
//! loop calls once per iteration (`epoll_wait`, `epoll_pwait`, `epoll_pwait2`,
//! `poll`, `ppoll`, `select`, `pselect`), for the event-loop probe's uprobes.
//!
//! asyncio's selectors, uvloop's libuv and gevent's libev all reach the kernel
//! through these libc functions, so probing them in the process's own libc
//! (glibc's `libc.so.6`, musl's `ld-musl-*.so.1`, or a static executable)
//! covers them all.

use std::path::{Path, PathBuf};

use crate::cpython::find::elf::{defined_function, file_offset_of, ElfImage};
use crate::cpython::find::libc::cond_wait_search_order;
use crate::cpython::find::locate::Interpreter;
use crate::error::{Error, Result};
use crate::os::mapped_files::{exe_in_process, mapped_paths};
use crate::os::target_file::host_path;

/// The poll family: the names each function goes by (an alias at the same
/// address is the same function), and whether it is an epoll call.
const POLL_FAMILY: [(&[&str], bool); 7] = [
    (&["epoll_wait"], true),
    (&["epoll_pwait"], true),
    (&["epoll_pwait2"], true),
    (&["poll", "__poll"], false),
    (&["ppoll"], false),
    (&["select", "__select"], false),
    (&["pselect"], false),
];

/// One poll-family function of a process, ready for a uprobe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollFunction {
    /// The file as seen from the host (`/proc/PID/root/...`).
    pub host_path: PathBuf,
    /// The file as the process sees it, for people.
    pub path_in_process: PathBuf,
    /// File offset of the function's first instruction.
    pub file_offset: u64,
    /// The symbol it was found by.
    pub symbol: &'static str,
    /// An epoll call (an event loop's selector), not poll/select.
    pub epoll: bool,
}

/// The poll-family functions one file defines, each once (aliases dropped).
pub fn poll_functions_in(host: &Path, in_process: &Path) -> Result<Vec<PollFunction>> {
    let image = ElfImage::read(host)?;
    let file = image.parse(host)?;
    let mut out: Vec<PollFunction> = Vec::new();
    for (names, epoll) in POLL_FAMILY {
        let Some((name, address)) = defined_function(&file, names) else {
            continue;
        };
        let file_offset = file_offset_of(&file, address).ok_or_else(|| Error::BadElf {
            path: host.to_path_buf(),
            why: format!("{name} is outside every loadable segment"),
        })?;
        if out.iter().any(|f| f.file_offset == file_offset) {
            continue;
        }
        let symbol = names
            .iter()
            .copied()
            .find(|n| *n == name)
            .unwrap_or(names[0]);
        out.push(PollFunction {
            host_path: host.to_path_buf(),
            path_in_process: in_process.to_path_buf(),
            file_offset,
            symbol,
            epoll,
        });
    }
    Ok(out)
}

/// The poll-family functions of the process of `interp`: those of the first
/// mapped file that defines `epoll_wait` (its libc, or a static executable).
/// Empty when no mapped file does (a stripped static build).
pub fn poll_functions(interp: &Interpreter) -> Result<Vec<PollFunction>> {
    let pid = interp.pid;
    let exe = exe_in_process(pid);
    let mapped = mapped_paths(pid)?;
    for path in cond_wait_search_order(&mapped, exe.as_deref(), &interp.path_in_process) {
        let host = host_path(pid, path);
        match poll_functions_in(&host, path) {
            Ok(found) if found.iter().any(|f| f.symbol == "epoll_wait") => return Ok(found),
            Ok(_) => {}
            Err(e @ Error::NoSuchProcess { .. }) => return Err(e),
            Err(e) => tracing::debug!("poll functions: skipping {}: {e}", host.display()),
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_defines_every_poll_function_once_and_tells_epoll_apart() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        if !libc.exists() {
            return;
        }
        let found = poll_functions_in(libc, libc).expect("glibc reads");
        let names: Vec<&str> = found.iter().map(|f| f.symbol).collect();
        for name in [
            "epoll_wait",
            "epoll_pwait",
            "poll",
            "ppoll",
            "select",
            "pselect",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        // poll/__poll and select/__select are one function each.
        let mut offsets: Vec<u64> = found.iter().map(|f| f.file_offset).collect();
        offsets.dedup();
        assert_eq!(offsets.len(), found.len());
        assert!(found
            .iter()
            .all(|f| f.epoll == f.symbol.starts_with("epoll_")));
    }
}
