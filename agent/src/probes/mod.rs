//! The kernel side, seen from the agent: loading the BPF objects built from
//! `ebpf/`, attaching them, and reading their maps. The only layer that names
//! aya or the kernel's structs (`layout`, private to it): each probe takes
//! its maps once at load as typed handles and hands out the plain counters of
//! [`crate::core::counters`].

pub mod condwait;
pub mod event_loop;
mod holders;
mod layout;
pub mod lock;
mod maps;
pub mod precise;
pub mod wait;

use aya::maps::{Map, MapError};
use aya::Ebpf;

use crate::error::{Error, Result};

/// GILs the probes watch per process at most (the main interpreter's first,
/// then subinterpreters with their own GIL).
pub use layout::MAX_GILS;

/// The whole error chain on one line (aya's top-level messages alone say little).
fn chain(err: &(dyn std::error::Error + 'static)) -> (String, Option<i32>) {
    let mut text = err.to_string();
    let mut errno = None;
    let mut source = err.source();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        current = e.source();
    }
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    (text, errno)
}

/// Maps a BPF load/attach failure to a permission error (EPERM/EACCES) or a BPF error.
pub(crate) fn bpf_error(what: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    let (text, errno) = chain(err);
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => Error::Permission {
            what: format!("{what}: {text}"),
        },
        _ => Error::Bpf(format!("{what}: {text}")),
    }
}

/// Like [`bpf_error`] for attaching a uprobe, whose permission failure needs
/// CAP_SYS_ADMIN on current kernels (perf/core requires it for uprobes).
pub(crate) fn uprobe_error(what: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    match bpf_error(what, err) {
        Error::Permission { what } => Error::UprobePermission { what },
        other => other,
    }
}

/// A map that is missing or of the wrong type is a build bug, not a user error.
pub(crate) fn map_error(name: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    let (text, _) = chain(err);
    Error::Internal(format!("BPF map {name}: {text}"))
}

/// Takes map `name` out of a loaded object as a typed handle: a map missing or
/// of the wrong type is a build bug, reported as an internal error.
pub(crate) fn take_map<M>(ebpf: &mut Ebpf, object: &str, name: &str) -> Result<M>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Internal(format!("map {name} missing from {object}")))?;
    M::try_from(map).map_err(|e| map_error(name, &e))
}

/// Deletes every entry of `map` whose key `doomed` picks (a process's, when
/// it is released); an entry gone meanwhile is no error.
pub(crate) fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    doomed: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| doomed(k))
        .collect();
    for key in &keys {
        let _ = map.remove(key);
    }
}

/// Gives the heap that loading a BPF object freed back to the system. Loading
/// parses the kernel's BTF (tens of MiB of short-lived allocations) and glibc
/// keeps freed heap mapped unless asked: 12 MiB of the daemon's RSS, measured.
pub(crate) fn release_freed_heap() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no live
    // allocation is touched.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
