//! `gilscope check`: measure one CPython process for a while and report.
//!
//! A [`Session`] on the process (running, or a command started suspended)
//! measures it until the time is up, the process ends or Ctrl-C; a [`Fleet`]
//! of its CPython children (pool workers) is measured alongside. Then the
//! measurement is analysed and diagnosed into a [`Report`]. Nothing here reads
//! a process or the kernel itself.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::core::analyse::Measurement;
use crate::core::assess::assess;
use crate::core::report::{ChildReport, Ending, Mode, PreciseProbes, Report, SCHEMA};
use crate::error::Result;
use crate::os::process::is_alive;
use crate::os::signals;
use crate::probes::wait::WaitProbe;
use crate::watch::children::Children;
use crate::watch::launch::ChildStdout;
use crate::watch::session::{NameRefresh, Sampling, Session, SessionOptions};

/// What to measure.
#[derive(Debug, Clone)]
pub enum Target {
    Pid(u32),
    /// A command to start suspended, then measure until it exits (or `duration`).
    Command(Vec<String>),
}

/// Options of one `check` run.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub target: Target,
    /// `None` with a command: until it exits.
    pub duration: Option<Duration>,
    pub precise: bool,
    pub sample_hz: u32,
    /// Measure event-loop lag (uprobes on the process's poll functions).
    pub event_loops: bool,
    pub child_stdout: ChildStdout,
    /// Show elapsed/duration on stderr while measuring (when stderr is a terminal).
    pub progress: bool,
}

/// How often procfs is read (and exited threads' last counters kept).
const TICK: Duration = Duration::from_millis(100);

/// One progress line on stderr, rewritten in place.
fn show_progress(pid: u32, elapsed: Duration, duration: Option<Duration>, children: usize) {
    use std::io::Write as _;
    let total = match duration {
        Some(d) => format!(" / {:.0} s", d.as_secs_f64()),
        None => " (until it exits)".to_string(),
    };
    let kids = if children > 0 {
        format!(", {children} child processes")
    } else {
        String::new()
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[Kgilscope: measuring pid {pid}: {:.1} s{total}{kids}",
        elapsed.as_secs_f64()
    );
    let _ = err.flush();
}

/// Ends a launched command that outlived the measurement, as `timeout` does:
/// SIGTERM, then SIGKILL after 2 s. Returns its exit code if it exited normally.
fn stop_command(mut child: Child) -> Option<i32> {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok().and_then(|s| s.code())
}

/// Why the measurement should stop now, if it should: the launched command
/// exited (its exit code is kept), the process is gone, Ctrl-C, or time is up.
fn ending(
    session: &Session,
    child: &mut Option<Child>,
    exit_code: &mut Option<i32>,
    duration: Option<Duration>,
) -> Option<Ending> {
    if let Some(c) = child.as_mut() {
        if let Ok(Some(status)) = c.try_wait() {
            *exit_code = status.code();
            *child = None;
            return Some(Ending::CommandExited);
        }
    } else if !is_alive(session.pid()) {
        return Some(Ending::ProcessExited);
    }
    if signals::stop_asked() {
        return Some(Ending::Interrupted);
    }
    if duration.is_some_and(|d| session.since.elapsed() >= d) {
        return Some(Ending::Duration);
    }
    None
}

/// Runs one measurement and returns its report.
pub fn run(opts: &CheckOptions) -> Result<Report> {
    signals::catch_stop_signals();
    let mut probe = WaitProbe::load()?;
    let loops = opts
        .event_loops
        .then(crate::probes::event_loop::load_or_warn)
        .flatten();
    let session_opts = SessionOptions {
        sampling: Sampling::Own(opts.sample_hz),
        precise: opts.precise,
        locks: true,
        names: NameRefresh::EveryRefresh,
        holders: true,
        loops: loops.as_ref(),
    };
    let (mut session, mut child) = match &opts.target {
        Target::Pid(pid) => (Session::attach(*pid, &mut probe, &session_opts)?, None),
        Target::Command(argv) => {
            let (session, child) =
                Session::launch(argv, opts.child_stdout, &mut probe, &session_opts)?;
            (session, Some(child))
        }
    };
    let pid = session.pid();
    let first = session.first_snapshot();
    let mut children = Children::new(pid);
    let mut exit_code = None;
    let ended = session.follow(&mut probe, TICK, |session, probe| {
        children.tick(probe);
        let end = ending(session, &mut child, &mut exit_code, opts.duration);
        if opts.progress && end.is_none() {
            show_progress(
                pid,
                session.since.elapsed(),
                opts.duration,
                children.count(),
            );
        }
        end
    });
    if opts.progress {
        eprint!("\r\x1b[K");
    }
    let last = session.final_snapshot(&probe)?;
    let mut measurement = session.measurement(&first, &last);
    measurement.precise = session.precise_counters()?;
    if opts.precise {
        measurement.mode = Mode::Precise;
    }
    crate::probes::wait::warn_dropped(&probe.entries_dropped());
    if let Some(loops) = &loops {
        crate::probes::wait::warn_dropped(&loops.entries_dropped());
    }
    if let Some(dropped) = session.entries_dropped() {
        crate::probes::wait::warn_dropped(&dropped);
    }
    let measured_by = super::measured_by::measured_by(&session, &measurement, opts.sample_hz);
    let own = session.release(&mut probe);
    let precise_probes = own.precise.map(|p| p.sites);
    let children = children.finish(&mut probe);
    measurement.locks = match own.locks {
        Some(locks) => Some(locks.read(pid)?),
        None => None,
    };
    if let Some(c) = child.take() {
        exit_code = stop_command(c);
    }
    Ok(report(
        measurement,
        ended,
        exit_code,
        measured_by,
        precise_probes,
        children,
    ))
}

/// Analyses and diagnoses a finished measurement.
fn report(
    m: Measurement,
    ended: Ending,
    command_exit_code: Option<i32>,
    measured_by: Vec<String>,
    precise_probes: Option<PreciseProbes>,
    children: Vec<ChildReport>,
) -> Report {
    let judged = assess(&m, &children);
    let gils = crate::core::analyse::gils(&m);
    Report {
        schema: SCHEMA,
        pid: m.pid,
        duration_s: m.wall_s,
        mode: m.mode,
        interpreter: m.interpreter,
        process: judged.process,
        threads: judged.threads,
        diagnosis: judged.diagnosis,
        ended,
        command_exit_code,
        measured_by,
        lock_contention: judged.lock_contention,
        gils,
        estimate: judged.estimate,
        children,
        event_loops: judged.event_loops,
        precise_probes,
        contention_profile: judged.profile,
    }
}
