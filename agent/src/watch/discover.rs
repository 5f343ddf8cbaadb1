//! Finds the CPython processes of the node, continuously, by polling /proc.
//!
//! Rules select by executable glob, command-line regex, cgroup regex (containers,
//! pods, systemd units) and minimum age.
//!
//! Polling was chosen over an exec tracepoint: it sees a new process within one
//! poll, which is the 1 s the daemon promises, without a second BPF program.
//! Listing /proc walks every thread of the node in the kernel, so a poll first
//! asks whether the number of processes changed (one `stat` of /proc) and lists
//! only then, or once a second (a start and an exit in one poll).
//!
//! A process is judged once per (pid, executable): rules first (no
//! file is opened), then the interpreter search. What is not CPython, or not
//! supported, is remembered and logged once, so it is not examined again every
//! poll; an `exec` changes the executable and so earns a new look (within 1 s
//! of the refusal, then ever less often: up to 30 s for a process refused long
//! ago, since exec wrappers exec right after they start). A CPython
//! process whose GIL does not exist yet (still starting) is retried.

use crate::os::process::{
    full_command_line, list_pids, process_count, same_executable, start_ticks, ticks_per_s,
    uptime_s,
};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::Regex;

use crate::cpython::find::locate::MappedListing;
use crate::error::Error;
use crate::error::RunError;

/// Which processes may be watched: globs on the executable, regexes on the
/// command line, and a minimum age (short-lived tools are not worth attaching to).
#[derive(Debug, Clone)]
pub struct Rules {
    include_exe: Option<GlobSet>,
    exclude_exe: Option<GlobSet>,
    include_cmdline: Vec<Regex>,
    exclude_cmdline: Vec<Regex>,
    include_cgroup: Vec<Regex>,
    exclude_cgroup: Vec<Regex>,
    pub min_age: Duration,
}

/// Patterns of [`Rules`] as written (globs and regexes), before compiling.
#[derive(Debug, Clone, Default)]
pub struct RulePatterns {
    pub include_exe: Vec<String>,
    pub exclude_exe: Vec<String>,
    pub include_cmdline: Vec<String>,
    pub exclude_cmdline: Vec<String>,
    /// Regexes on `/proc/PID/cgroup` (a container id, a Kubernetes pod slice, a systemd unit).
    pub include_cgroup: Vec<String>,
    pub exclude_cgroup: Vec<String>,
}

fn globs(patterns: &[String], what: &str) -> Result<Option<GlobSet>, RunError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(Glob::new(p).map_err(|e| RunError::setting(what, format!("glob '{p}': {e}")))?);
    }
    set.build()
        .map(Some)
        .map_err(|e| RunError::setting(what, e.to_string()))
}

fn regexes(patterns: &[String], what: &str) -> Result<Vec<Regex>, RunError> {
    patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| RunError::setting(what, format!("regex '{p}': {e}"))))
        .collect()
}

impl Rules {
    /// Compiles the rules; a bad glob or regex is an error naming it.
    pub fn new(p: &RulePatterns, min_age: Duration) -> Result<Self, RunError> {
        Ok(Self {
            include_exe: globs(&p.include_exe, "include executables")?,
            exclude_exe: globs(&p.exclude_exe, "exclude executables")?,
            include_cmdline: regexes(&p.include_cmdline, "include cmdline")?,
            exclude_cmdline: regexes(&p.exclude_cmdline, "exclude cmdline")?,
            include_cgroup: regexes(&p.include_cgroup, "include cgroup")?,
            exclude_cgroup: regexes(&p.exclude_cgroup, "exclude cgroup")?,
            min_age,
        })
    }

    /// Whether the command line rules need `/proc/PID/cmdline` at all.
    pub fn uses_cmdline(&self) -> bool {
        !self.include_cmdline.is_empty() || !self.exclude_cmdline.is_empty()
    }

    /// Whether the cgroup rules need `/proc/PID/cgroup` at all.
    pub fn uses_cgroup(&self) -> bool {
        !self.include_cgroup.is_empty() || !self.exclude_cgroup.is_empty()
    }

    /// Everything, at any age.
    pub fn all() -> Self {
        Self {
            include_exe: None,
            exclude_exe: None,
            include_cmdline: Vec::new(),
            exclude_cmdline: Vec::new(),
            include_cgroup: Vec::new(),
            exclude_cgroup: Vec::new(),
            min_age: Duration::ZERO,
        }
    }

    /// Whether a process with this executable, command line and cgroup file may be watched.
    pub fn admits(&self, exe: &str, cmdline: &str, cgroup: &str) -> bool {
        if !self.include_cgroup.is_empty()
            && !self.include_cgroup.iter().any(|r| r.is_match(cgroup))
        {
            return false;
        }
        if self.exclude_cgroup.iter().any(|r| r.is_match(cgroup)) {
            return false;
        }
        if self.include_exe.as_ref().is_some_and(|g| !g.is_match(exe)) {
            return false;
        }
        if self.exclude_exe.as_ref().is_some_and(|g| g.is_match(exe)) {
            return false;
        }
        if !self.include_cmdline.is_empty()
            && !self.include_cmdline.iter().any(|r| r.is_match(cmdline))
        {
            return false;
        }
        !self.exclude_cmdline.iter().any(|r| r.is_match(cmdline))
    }
}

/// Who a pid is: the same pid with another start time or executable is another process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    pub exe: PathBuf,
}

/// What the poll decided about one process.
#[derive(Debug)]
pub enum Verdict {
    /// Attach now.
    Attach(Identity),
    /// Not yet (too young, GIL not initialized, interpreter not mapped yet): look again.
    Later,
    /// Never (for this identity): the reason was logged once.
    Refused,
}

/// The state of the poll: what was refused and what is pending.
#[derive(Debug, Default)]
pub struct Discovery {
    refused: HashMap<u32, Refused>,
    /// Pending processes and the candidate files seen last time (no ELF is read again
    /// until the mapped files change).
    pending: HashMap<u32, (Identity, Vec<PathBuf>)>,
    /// Refusals so far (for the log and self-telemetry).
    pub refusals: u64,
    /// Polls so far.
    polls: u64,
    /// The number of processes on the node at the last full listing (the link
    /// count of `/proc`), and the poll of that listing.
    listed: Option<(u64, u64)>,
}

/// The pids one poll looks at: every pid in /proc, or only the pending ones
/// when the node has the same number of processes as at the last full listing.
#[derive(Debug)]
pub struct Listing {
    pub pids: Vec<u32>,
    /// Every process of the node (not only the pending ones).
    pub complete: bool,
}

/// /proc is listed in full at least once every this many polls (1 s at 250 ms),
/// even when the number of processes did not change (one started as another
/// exited): the daemon still sees every new process within a second.
const FULL_LIST_EVERY: u64 = 4;

/// A refused process, and when to look for an exec next.
#[derive(Debug)]
struct Refused {
    identity: Identity,
    /// The poll at which its executable is read again.
    next_check: u64,
    /// Polls between the last two looks: doubles while the executable stays the same.
    gap: u64,
}

/// A newly refused process is checked for an exec after this many polls (1 s at 250 ms).
const REFUSED_RECHECK: u64 = 4;
/// The longest gap between two looks at a refused process (30 s at 250 ms): a
/// process that exec's into Python does so right after it starts (a shell or
/// container entry point), so one that did not for long is looked at rarely,
/// and a node's hundreds of other processes cost almost nothing per poll.
const REFUSED_RECHECK_MAX: u64 = 120;

/// How long a process whose interpreter is not mapped yet stays pending (ld.so
/// maps libpython within milliseconds of exec).
const YOUNG_S: f64 = 2.0;
/// How long a CPython process may take to create its GIL before it is refused.
const GIL_INIT_S: f64 = 30.0;

/// Whether the rules admit `pid` (its command line and cgroup are read only
/// when a rule needs them).
fn admitted(pid: u32, rules: &Rules, exe: &str) -> bool {
    let cmdline = if rules.uses_cmdline() {
        full_command_line(pid)
    } else {
        String::new()
    };
    let cgroup = if rules.uses_cgroup() {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
    } else {
        String::new()
    };
    rules.admits(exe, &cmdline, &cgroup)
}

impl Discovery {
    /// Decides about one pid not watched yet. `own_pid` is the watcher's own pid.
    pub fn judge(&mut self, pid: u32, rules: &Rules, own_pid: u32) -> Verdict {
        if pid == own_pid {
            return Verdict::Refused;
        }
        let Some(identity) = self.identity_unless_refused(pid) else {
            return Verdict::Refused;
        };
        let exe_text = identity.exe.to_string_lossy().into_owned();
        if !admitted(pid, rules, &exe_text) {
            tracing::debug!("process {pid} ({exe_text}) excluded by the rules");
            return self.refuse(identity);
        }
        let age_s = uptime_s() - identity.start_ticks as f64 / ticks_per_s();
        if age_s < rules.min_age.as_secs_f64() {
            return Verdict::Later;
        }
        self.interpreter_verdict(identity, &exe_text, age_s)
    }

    /// Who `pid` is, unless it is a refused process that did not exec since
    /// (refused processes cost nothing most polls: an exec, the only way a
    /// refused pid becomes Python, is looked for after [`REFUSED_RECHECK`]
    /// polls, then ever less often, up to [`REFUSED_RECHECK_MAX`], while the
    /// executable stays the same). A kernel thread (or a zombie) has no
    /// executable: it is remembered as refused with an empty one.
    fn identity_unless_refused(&mut self, pid: u32) -> Option<Identity> {
        if self
            .refused
            .get(&pid)
            .is_some_and(|r| self.polls < r.next_check)
        {
            return None;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if let Some(known) = self.refused.get_mut(&pid) {
            if same_executable(&known.identity.exe, &exe) {
                known.gap = (known.gap * 2).min(REFUSED_RECHECK_MAX);
                known.next_check = self.polls + known.gap;
                return None;
            }
        }
        if exe.as_os_str().is_empty() {
            self.remember_refused(Identity {
                pid,
                start_ticks: 0,
                exe,
            });
            return None;
        }
        let start_ticks = start_ticks(pid)?;
        Some(Identity {
            pid,
            start_ticks,
            exe,
        })
    }

    /// Attach, wait or refuse, by what is mapped: CPython (whose GIL may still
    /// be starting), nothing yet (a young process), or not CPython.
    fn interpreter_verdict(&mut self, identity: Identity, exe_text: &str, age_s: f64) -> Verdict {
        let pid = identity.pid;
        let listing = match MappedListing::read(pid) {
            Ok(listing) => listing,
            // A listing too long to read is refused once, and said (SECURITY.md).
            Err(e @ Error::UnsafeFile { .. }) => {
                tracing::warn!("not watching process {pid} ({exe_text}): {e}");
                return self.refuse(identity);
            }
            Err(_) => return Verdict::Refused,
        };
        let files = listing.candidates();
        // A young process whose mapped files did not change has nothing new to show.
        if let Some((known, seen)) = self.pending.get(&pid) {
            if *known == identity && *seen == files && age_s < YOUNG_S {
                return Verdict::Later;
            }
        }
        match listing.find_interpreter() {
            Ok(Some(_)) if self.pending.contains_key(&pid) && age_s > GIL_INIT_S => {
                tracing::info!(
                    "process {pid} ({exe_text}): its GIL is still not usable after {age_s:.0} s; not watching it"
                );
                self.refuse(identity)
            }
            Ok(Some(_)) => {
                self.pending.remove(&pid);
                Verdict::Attach(identity)
            }
            Ok(None) if age_s < YOUNG_S => {
                self.pending.insert(pid, (identity, files));
                Verdict::Later
            }
            Ok(None) => {
                tracing::debug!("process {pid} ({exe_text}) is not CPython");
                self.refuse(identity)
            }
            Err(Error::NoSuchProcess { .. }) => Verdict::Refused,
            Err(e) => {
                tracing::warn!("not watching process {pid} ({exe_text}): {e}");
                self.refuse(identity)
            }
        }
    }

    /// Remembers that attaching failed in a way that may pass (GIL not initialized):
    /// retried when the mapped files change or every poll, until [`GIL_INIT_S`].
    pub fn retry_later(&mut self, identity: Identity, err: &Error) {
        let pid = identity.pid;
        match err {
            Error::GilNotValid { .. } | Error::NoSuchProcess { .. } => {
                tracing::debug!("process {pid}: not ready yet ({err})");
                // Empty file list: the next poll compares unequal and tries again.
                self.pending.insert(pid, (identity, Vec::new()));
            }
            _ => {
                tracing::warn!(
                    "not watching process {pid} ({}): {err}",
                    identity.exe.display()
                );
                self.refuse(identity);
            }
        }
    }

    fn refuse(&mut self, identity: Identity) -> Verdict {
        self.refusals += 1;
        self.remember_refused(identity)
    }

    /// Not to be looked at again before the next exec check.
    fn remember_refused(&mut self, identity: Identity) -> Verdict {
        self.pending.remove(&identity.pid);
        self.refused.insert(
            identity.pid,
            Refused {
                identity,
                next_check: self.polls + REFUSED_RECHECK,
                gap: REFUSED_RECHECK,
            },
        );
        Verdict::Refused
    }

    /// The pids this poll should judge: all of /proc when processes came or went
    /// (or every [`FULL_LIST_EVERY`] polls), else only the pending ones.
    pub fn list(&mut self) -> Listing {
        let count = process_count();
        let unchanged = match (self.listed, count) {
            (Some((was, at)), Some(now)) => was == now && self.polls < at + FULL_LIST_EVERY,
            _ => false,
        };
        if unchanged {
            return Listing {
                pids: self.pending.keys().copied().collect(),
                complete: false,
            };
        }
        self.listed = count.map(|c| (c, self.polls));
        Listing {
            pids: list_pids(),
            complete: true,
        }
    }

    /// Ends a poll; after a complete listing, forgets pids that no longer
    /// exist, so the tables do not grow forever.
    pub fn end_poll(&mut self, listing: &Listing) {
        if listing.complete {
            let alive: HashSet<u32> = listing.pids.iter().copied().collect();
            self.forget_missing(&alive);
        } else {
            self.polls += 1;
        }
    }

    /// Forgets pids that no longer exist, so the tables do not grow forever; ends a poll.
    pub fn forget_missing(&mut self, alive: &HashSet<u32>) {
        self.polls += 1;
        self.refused.retain(|pid, _| alive.contains(pid));
        self.pending.retain(|pid, _| alive.contains(pid));
    }

    /// How many processes are remembered as refused.
    pub fn refused_count(&self) -> usize {
        self.refused.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn rules(inc: &[&str], exc: &[&str], inc_re: &[&str], exc_re: &[&str]) -> Rules {
        let p = RulePatterns {
            include_exe: s(inc),
            exclude_exe: s(exc),
            include_cmdline: s(inc_re),
            exclude_cmdline: s(exc_re),
            ..RulePatterns::default()
        };
        Rules::new(&p, Duration::ZERO).expect("rules")
    }

    #[test]
    fn cgroup_regexes_select_containers() {
        let p = RulePatterns {
            include_cgroup: s(&["kubepods"]),
            exclude_cgroup: s(&["kube-system"]),
            ..RulePatterns::default()
        };
        let r = Rules::new(&p, Duration::ZERO).expect("rules");
        assert!(r.uses_cgroup());
        assert!(r.admits(
            "/usr/bin/python3",
            "python3 app.py",
            "0::/kubepods.slice/pod1/cri-containerd-ab.scope\n"
        ));
        assert!(!r.admits(
            "/usr/bin/python3",
            "python3 app.py",
            "0::/user.slice/session-1.scope\n"
        ));
        assert!(!r.admits(
            "/usr/bin/python3",
            "x",
            "0::/kubepods/kube-system/pod2/cd\n"
        ));
        assert!(!Rules::all().uses_cgroup());
    }

    #[test]
    fn executable_globs_include_and_exclude() {
        let r = rules(&["*/python3*"], &["/usr/bin/python3.9"], &[], &[]);
        assert!(r.admits("/usr/bin/python3.11", "python3 app.py", ""));
        assert!(r.admits("/root/.pyenv/versions/3.11.7/bin/python3.11", "x", ""));
        assert!(!r.admits("/usr/bin/python3.9", "python3.9 app.py", ""));
        assert!(!r.admits("/usr/bin/bash", "bash", ""));
    }

    #[test]
    fn command_line_regexes_include_and_exclude() {
        let r = rules(&[], &[], &["gunicorn|celery"], &["--check-only"]);
        assert!(r.admits("/usr/bin/python3", "python3 -m gunicorn app:app", ""));
        assert!(!r.admits("/usr/bin/python3", "python3 tool.py", ""));
        assert!(!r.admits("/usr/bin/python3", "celery worker --check-only", ""));
        assert!(Rules::all().admits("/anything", "", ""));
    }

    #[test]
    fn a_bad_pattern_is_an_error_that_quotes_it() {
        let p = RulePatterns {
            include_exe: s(&["["]),
            ..RulePatterns::default()
        };
        let err = Rules::new(&p, Duration::ZERO).expect_err("glob");
        assert!(err.to_string().contains("glob '['"), "{err}");
    }

    #[test]
    fn a_refused_process_is_looked_at_ever_less_often_until_it_execs() {
        let own = std::process::id();
        // Excludes every executable: each look refuses again at once.
        let r = rules(&[], &["*"], &[], &[]);
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 1; exec sleep 5"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        let alive = HashSet::from([pid]);
        let mut d = Discovery::default();
        let first = d.judge(pid, &r, own);
        let shell = d.refused.get(&pid).map(|x| x.identity.exe.clone());
        let mut looks = Vec::new();
        for _ in 0..40 {
            d.forget_missing(&alive);
            let before = d.refused.get(&pid).map(|x| x.next_check);
            d.judge(pid, &r, own);
            if d.refused.get(&pid).map(|x| x.next_check) != before {
                looks.push(d.polls);
            }
        }
        // The shell has exec'd `sleep` by now: the next look sees a new executable.
        std::thread::sleep(Duration::from_millis(1500));
        while d.refused.get(&pid).is_some_and(|x| d.polls < x.next_check) {
            d.forget_missing(&alive);
        }
        d.judge(pid, &r, own);
        let after = d.refused.get(&pid).map(|x| (x.identity.exe.clone(), x.gap));
        let _ = child.kill();
        let _ = child.wait();
        assert!(matches!(first, Verdict::Refused), "{first:?}");
        assert_eq!(looks, vec![4, 12, 28], "gaps of 4, 8, 16 polls");
        let (exe, gap) = after.expect("still refused");
        assert_ne!(Some(exe.clone()), shell, "the exec was seen");
        assert!(exe.to_string_lossy().contains("sleep"), "{exe:?}");
        assert_eq!(gap, REFUSED_RECHECK, "a new executable starts over");
    }

    #[test]
    fn our_own_process_and_a_non_python_one_are_refused_once() {
        let mut d = Discovery::default();
        let own = std::process::id();
        assert!(matches!(d.judge(own, &Rules::all(), own), Verdict::Refused));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        // Old enough not to be "still starting".
        let r = Rules::all();
        std::thread::sleep(Duration::from_millis(50));
        let first = d.judge(child.id(), &r, own);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(first, Verdict::Later | Verdict::Refused),
            "{first:?}"
        );
    }

    #[test]
    fn proc_is_listed_in_full_when_a_process_starts_and_at_least_every_second() {
        let mut d = Discovery::default();
        let first = d.list();
        assert!(first.complete, "the first poll lists everything");
        assert!(first.pids.contains(&std::process::id()));
        d.end_poll(&first);
        // Other tests of this binary start processes too: a poll may list in
        // full early, never late.
        let mut complete_at = Vec::new();
        for _ in 0..8 {
            let l = d.list();
            if l.complete {
                complete_at.push(d.polls);
            }
            d.end_poll(&l);
        }
        assert!(
            complete_at
                .windows(2)
                .all(|w| w[1] - w[0] <= FULL_LIST_EVERY)
                && complete_at.first().is_some_and(|p| *p <= FULL_LIST_EVERY),
            "{complete_at:?}"
        );
        // A new process changes the count: the next poll lists in full and sees
        // it (unless another exited meanwhile: then within FULL_LIST_EVERY polls).
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let mut seen_after = None;
        for n in 1..=FULL_LIST_EVERY + 1 {
            let l = d.list();
            d.end_poll(&l);
            if l.complete && l.pids.contains(&child.id()) {
                seen_after = Some(n);
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen_after.is_some(), "a new process was not listed");
    }

    #[test]
    fn a_kernel_thread_is_remembered_and_not_read_every_poll() {
        // kthreadd is pid 2 on Linux: no executable to read.
        let kthreadd = 2;
        if std::fs::read_link(format!("/proc/{kthreadd}/exe")).is_ok() {
            return; // not a host pid namespace: no kernel thread to look at
        }
        let mut d = Discovery::default();
        let verdict = d.judge(kthreadd, &Rules::all(), std::process::id());
        assert!(matches!(verdict, Verdict::Refused), "{verdict:?}");
        assert!(d.refused.get(&kthreadd).is_some_and(|r| r.next_check > 0));
        assert_eq!(d.refusals, 0, "not counted as a refused Python candidate");
    }
}
