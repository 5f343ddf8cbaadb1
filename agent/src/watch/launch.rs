//! Starts a command suspended, so gilscope is attached before it runs any Python.
//!
//! The child is traced (`PTRACE_TRACEME`) from its first instruction and stepped
//! from system call to system call (following `exec`, e.g. through pyenv's shell
//! shims) until a mapped file exports `_PyRuntime`. At that point the dynamic
//! loader has mapped the interpreter but not run it; the caller's hook attaches
//! the probes, and only then is the child released. Children of the command are
//! not traced.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cpython::find::locate::{self, Interpreter};
use crate::error::{Error, Result};

/// System-call stops after the last `exec` before giving up on finding Python.
const MAX_STOPS_AFTER_EXEC: u32 = 100_000;

/// A launched command, released and running.
pub struct Launched {
    pub child: Child,
    pub interpreter: Interpreter,
}

/// Where the launched command's standard output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStdout {
    Inherit,
    /// gilscope's stdout carries the JSON document alone.
    ToStderr,
}

fn launch_error(argv: &[String], why: impl std::fmt::Display) -> Error {
    Error::Launch {
        command: argv.join(" "),
        why: why.to_string(),
    }
}

/// Starts `argv`, stops it once the interpreter is mapped, runs `attach`, then releases it.
///
/// If the command turns out not to be CPython, it is killed and `NotPython` returned.
pub fn launch<F>(argv: &[String], stdout: ChildStdout, attach: F) -> Result<Launched>
where
    F: FnOnce(&Interpreter) -> Result<()>,
{
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| launch_error(argv, "no command given after --"))?;
    let mut command = Command::new(program);
    command.args(args);
    if stdout == ChildStdout::ToStderr {
        let stderr = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| launch_error(argv, e))?;
        command.stdout(Stdio::from(stderr));
    }
    // SAFETY: the closure runs in the forked child before exec and only calls
    // ptrace(PTRACE_TRACEME), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| ptrace::traceme().map_err(std::io::Error::from));
    }
    let mut child = command.spawn().map_err(|e| launch_error(argv, e))?;
    let pid = Pid::from_raw(child.id() as i32);

    let found = trace_until_python(pid, argv);
    match found {
        Ok(interpreter) => {
            let attached = attach(&interpreter);
            // Release the child whatever happened; a failed attach kills it below.
            let _ = ptrace::detach(pid, None);
            if let Err(e) = attached {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            Ok(Launched { child, interpreter })
        }
        Err(e) => {
            let _ = ptrace::detach(pid, None);
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

fn trace_until_python(pid: Pid, argv: &[String]) -> Result<Interpreter> {
    let raw = pid.as_raw() as u32;
    // The first stop is the SIGTRAP of the initial exec.
    match waitpid(pid, None) {
        Ok(WaitStatus::Stopped(_, Signal::SIGTRAP)) => {}
        Ok(WaitStatus::Exited(_, code)) => {
            return Err(launch_error(
                argv,
                format!("exited with status {code} before running"),
            ))
        }
        Ok(other) => {
            return Err(launch_error(
                argv,
                format!("unexpected first stop: {other:?}"),
            ))
        }
        Err(e) => return Err(launch_error(argv, e)),
    }
    ptrace::setoptions(
        pid,
        ptrace::Options::PTRACE_O_TRACESYSGOOD
            | ptrace::Options::PTRACE_O_TRACEEXEC
            | ptrace::Options::PTRACE_O_EXITKILL,
    )
    .map_err(|e| launch_error(argv, e))?;

    let mut seen: Vec<PathBuf> = Vec::new();
    let mut stops_since_exec = 0u32;
    loop {
        let listing = locate::MappedListing::read(raw)?;
        let candidates = listing.candidates();
        if candidates != seen {
            if let Some(interpreter) = listing.find_interpreter()? {
                return Ok(interpreter);
            }
            seen = candidates;
        }
        if stops_since_exec > MAX_STOPS_AFTER_EXEC {
            let exe = std::fs::read_link(format!("/proc/{raw}/exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::NotPython { pid: raw, exe });
        }
        let mut deliver: Option<Signal> = None;
        loop {
            ptrace::syscall(pid, deliver.take()).map_err(|e| launch_error(argv, e))?;
            match waitpid(pid, None).map_err(|e| launch_error(argv, e))? {
                WaitStatus::PtraceSyscall(_) => {
                    stops_since_exec += 1;
                    break;
                }
                WaitStatus::PtraceEvent(_, _, _) => {
                    stops_since_exec = 0;
                    break;
                }
                WaitStatus::Stopped(_, sig) => deliver = Some(sig),
                WaitStatus::Exited(_, code) => {
                    return Err(launch_error(
                        argv,
                        format!(
                            "exited with status {code} before a CPython interpreter was loaded"
                        ),
                    ))
                }
                WaitStatus::Signaled(_, sig, _) => {
                    return Err(launch_error(
                        argv,
                        format!("killed by {sig} before Python started"),
                    ))
                }
                _ => {}
            }
        }
    }
}
