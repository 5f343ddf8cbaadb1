//! The errors a user can cause or meet, each saying what was wrong and what to do.
//!
//! The binary maps [`Error::is_user_error`] to exit code 2 and everything else to 1,
//! so the split between "you asked for something impossible" and "gilscope broke"
//! lives in one place.

use std::path::PathBuf;

/// Everything that can stop a measurement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process with pid {pid}: check the pid (ps -e) or start the program with `gilscope check -- CMD`")]
    NoSuchProcess { pid: u32 },

    #[error("process {pid} ({exe}) is not a CPython process: no mapped file exports _PyRuntime")]
    NotPython { pid: u32, exe: String },

    #[error("process {pid} runs CPython {version}, which gilscope does not support yet (supported: {supported})")]
    UnsupportedVersion {
        pid: u32,
        version: String,
        supported: String,
    },

    #[error("cannot tell which CPython version {path} is: it has no Py_Version symbol, no version string and no versioned file name")]
    UnknownVersion { path: PathBuf },

    #[error("the GIL of process {pid} at {addr:#x} does not look valid ({why}); gilscope refuses to measure a layout it cannot confirm")]
    GilNotValid { pid: u32, addr: u64, why: String },

    /// `_Py_DebugOffsets` is static data, valid from the process's first
    /// instruction: a block that fails the checks is garbage (or hostile), not
    /// an interpreter still starting, so it is refused at once, not retried.
    #[error("the _Py_DebugOffsets of process {pid} at {addr:#x} are not what CPython writes ({why}); gilscope will not size a read by them")]
    DebugOffsetsNotValid { pid: u32, addr: u64, why: String },

    #[error("permission denied: {what}. Run gilscope as root, or grant it CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH")]
    Permission { what: String },

    #[error("permission denied: {what}. Uprobes (musl interpreters, --precise, PyMutex lock contention) need CAP_SYS_ADMIN on kernels since 2025, besides CAP_BPF and CAP_PERFMON: run gilscope as root or grant CAP_SYS_ADMIN (the Helm chart's uprobes.enabled)")]
    UprobePermission { what: String },

    #[error("refusing to read {path}: {why}")]
    UnsafeFile { path: PathBuf, why: String },

    /// A mapped file deleted or replaced on disk is reachable only through its
    /// `/proc/PID/map_files` magic link, which the kernel opens only for
    /// CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN; the DaemonSet grants neither.
    #[error("cannot read {path}: the file was replaced or deleted on disk since the process mapped it, and its mapping opens only with CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN, which the DaemonSet does not grant (deploy/README.md)")]
    ReplacedFileHidden { path: PathBuf },

    #[error("{path} is not a readable ELF file: {why}")]
    BadElf { path: PathBuf, why: String },

    #[error("cannot start {command}: {why}")]
    Launch { command: String, why: String },

    #[error("the kernel refused the BPF programs: {0}")]
    Bpf(String),

    #[error("process {pid} runs CPython on musl, and {file} has no symbol for musl's __pthread_cond_timedwait (a stripped static build): on musl GIL waits can only be measured there, because condvar waiters sleep on their own stack, not on the GIL. Measure a build that keeps its symbol table (not stripped), or one linked dynamically against musl's libc.so, which exports pthread_cond_timedwait")]
    MuslUnmeasurable { pid: u32, file: String },

    #[error("process {pid} ({exe}) is statically linked and stripped: it has neither a dynamic symbol table nor a symbol table, so nothing says where CPython's _PyRuntime is (if it is CPython at all), nor — on musl — where its condvar wait is. Measure a build that keeps its symbol table (do not strip it), or one that links libpython or libc dynamically (they export _PyRuntime and pthread_cond_timedwait)")]
    StrippedStatic { pid: u32, exe: String },

    #[error("{0}")]
    Internal(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when the user can fix it (wrong pid, not Python, missing privilege): exit code 2.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::NoSuchProcess { .. }
                | Error::NotPython { .. }
                | Error::UnsupportedVersion { .. }
                | Error::UnknownVersion { .. }
                | Error::GilNotValid { .. }
                | Error::DebugOffsetsNotValid { .. }
                | Error::Permission { .. }
                | Error::UprobePermission { .. }
                | Error::Launch { .. }
                | Error::MuslUnmeasurable { .. }
                | Error::StrippedStatic { .. }
                | Error::UnsafeFile { .. }
                | Error::ReplacedFileHidden { .. }
        )
    }

    /// Wraps an I/O error on a path, turning EPERM/EACCES into [`Error::Permission`]
    /// and ENOENT/ESRCH on `/proc/PID` into [`Error::NoSuchProcess`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::PermissionDenied => Error::Permission {
                what: format!("reading {}", path.display()),
            },
            _ => match proc_pid_of(&path) {
                Some(pid)
                    if source.kind() == std::io::ErrorKind::NotFound
                        || source.raw_os_error() == Some(libc::ESRCH) =>
                {
                    Error::NoSuchProcess { pid }
                }
                _ => Error::Io { path, source },
            },
        }
    }
}

/// The pid in a `/proc/PID/...` path, if it is one.
fn proc_pid_of(path: &std::path::Path) -> Option<u32> {
    let mut parts = path.components().skip(1);
    let proc_dir = parts.next()?;
    if proc_dir.as_os_str() != "proc" {
        return None;
    }
    parts.next()?.as_os_str().to_str()?.parse().ok()
}

/// Result with gilscope's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop `gilscope run` from starting: a bad config file, a bad flag
/// or environment variable, an exporter that cannot be set up. Each message
/// names the source (file, flag or variable), what was wrong and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for gilscope (unknown key, wrong type).
    #[error("config file {path} is not valid: {why}")]
    ConfigParse { path: PathBuf, why: String },
    /// A setting has a value gilscope cannot use.
    #[error("{source_name}: {why}")]
    BadSetting { source_name: String, why: String },
    /// The measuring core failed (BPF, permissions).
    #[error(transparent)]
    Core(#[from] crate::Error),
}

impl RunError {
    /// A bad setting in `source_name` (a flag, a variable or `file: key`).
    pub fn setting(source_name: impl Into<String>, why: impl Into<String>) -> Self {
        RunError::BadSetting {
            source_name: source_name.into(),
            why: why.into(),
        }
    }

    /// True when the user can fix it: exit code 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            RunError::Core(e) => e.is_user_error(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_proc_entry_means_the_process_is_gone() {
        let err = Error::io(
            "/proc/4242/maps",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(matches!(err, Error::NoSuchProcess { pid: 4242 }));
        assert!(err.is_user_error());
    }

    #[test]
    fn permission_errors_say_which_capabilities_to_grant() {
        let err = Error::io(
            "/proc/1/mem",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(err.to_string().contains("CAP_BPF"));
        assert!(err.is_user_error());
    }
}
