//! The `Report`: what one measurement of one process found, as plain data.
//!
//! These structs are the `gilscope.check/v1` JSON schema; field names are part
//! of the public interface and must stay stable. Renderers (text, JSON) and the
//! exporters read this and nothing else.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::profile::ContentionProfile;

/// Schema identifier written into every JSON document.
pub const SCHEMA: &str = "gilscope.check/v1";

/// How the GIL was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// futex waits on the GIL + sampled holder: nothing on the fast path.
    Default,
    /// uprobes on take_gil/drop_gil in addition: exact, but costly on GIL-churning code.
    Precise,
}

/// Which interpreter was measured.
#[derive(Debug, Clone, Serialize)]
pub struct InterpreterInfo {
    pub executable: String,
    pub library: Option<String>,
    pub version: String,
    pub stripped: bool,
    /// Free-threaded builds: the GIL's state when measuring ended.
    pub gil_enabled: bool,
    /// The GIL was switched on or off while measuring (e.g. an extension without
    /// `Py_MOD_GIL_NOT_USED` was imported).
    pub gil_enabled_changed: bool,
    pub free_threaded: bool,
    /// The C library: `glibc`, `musl` or `unknown`. On musl GIL waits are
    /// measured at the libc condvar wait (see `measured_by`).
    pub libc: &'static str,
}

/// Totals and ratios for the whole process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessReport {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub runqueue_wait_s: f64,
    pub gil_wait_s: f64,
    pub gil_waits: u64,
    pub gil_wait_p50_us: f64,
    pub gil_wait_p99_us: f64,
    /// Exact hold time; `null` unless `--precise` could probe drop_gil.
    pub gil_hold_s: Option<f64>,
    pub gil_utilization: f64,
    pub gil_queue_length: f64,
    pub effective_parallelism: f64,
    pub gil_switches_per_s: f64,
    pub futex_wait_s: f64,
    /// Σ of the threads' sleeps outside futex() by syscall family (see [`ThreadReport`]),
    /// so blocked time that is not the GIL's can be told apart.
    pub poll_wait_s: f64,
    pub io_wait_s: f64,
    pub sleep_wait_s: f64,
    pub other_block_s: f64,
    /// Time the process's cgroup was throttled by its CPU quota while measuring.
    pub throttled_s: f64,
    /// Share of CFS periods in which it was throttled.
    pub throttled_period_share: f64,
    /// The tightest CPU quota of its cgroup, in cores; `null`: no limit.
    pub cpu_limit_cores: Option<f64>,
    /// Cores it could use: its CPU affinity, capped by the quota.
    pub cores_available: f64,
}

/// What the process would gain without the GIL, and the model behind the figure.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Σ CPU of the run over Σ CPU it would get without the GIL: 1.0 = nothing to gain.
    pub speedup_without_gil: f64,
    /// Cores the threads would keep busy without the GIL: Σ(cpu + GIL wait) / wall, capped.
    pub cpu_demand_cores: f64,
    /// The model in one line.
    pub model: String,
}

/// GIL wait one thread spent behind another.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BlockedBy {
    /// Holder tid; 0 when the holder could not be identified.
    pub tid: u32,
    pub gil_wait_s: f64,
}

/// One thread of the process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreadReport {
    pub tid: u32,
    /// The best name there is: the Python `threading` name when known, else `os_name`.
    pub name: String,
    /// The `threading.Thread` name the program gave (read from its memory); `null`
    /// for threads `threading` does not know, or where it could not be read.
    pub python_name: Option<String>,
    /// The OS thread name (`comm`, at most 15 bytes).
    pub os_name: String,
    pub cpu_s: f64,
    pub runqueue_wait_s: f64,
    pub gil_wait_s: f64,
    pub gil_waits: u64,
    pub gil_wait_p50_us: f64,
    pub gil_wait_p99_us: f64,
    pub gil_hold_s: Option<f64>,
    pub gil_hold_share: f64,
    pub drop_wait_s: f64,
    pub futex_wait_s: f64,
    /// Free-threaded builds: time parked on PyMutexes (`_PyParkingLot_Park`).
    pub lock_wait_s: f64,
    pub lock_waits: u64,
    pub blocked_by: Vec<BlockedBy>,
    /// Asleep in epoll_wait/epoll_pwait(2)/poll/ppoll/select/pselect6: an event
    /// loop (or selector) idling. The thread with most of these is the loop thread.
    pub poll_wait_s: f64,
    pub poll_waits: u64,
    /// Asleep in read/readv/pread64/recvfrom/recvmsg/accept/accept4: waiting for I/O.
    pub io_wait_s: f64,
    pub io_waits: u64,
    /// Asleep in nanosleep/clock_nanosleep (`time.sleep`).
    pub sleep_wait_s: f64,
    pub sleep_waits: u64,
    /// Asleep in any other syscall (write, connect, waitpid, …) or none (page fault).
    pub other_block_s: f64,
    pub other_blocks: u64,
    /// Wakes from a sleep that was not a GIL wait: each must retake the GIL.
    pub block_returns: u64,
    /// Returns whose retake had to wait for the GIL (the others found it free).
    pub retake_waits: u64,
    /// Total of those retake waits: GIL wait that is latency after I/O, not CPU demand.
    pub retake_wait_s: f64,
    /// GIL residual latency: time to retake the GIL after a blocking call, as a
    /// percentile over all `block_returns`, free retakes counting as 0.
    pub retake_p50_us: f64,
    pub retake_p99_us: f64,
    /// Sampled GIL hold stretches (same holder, no hand-over between samples):
    /// how long this thread kept the GIL in one go, p99 and longest.
    pub hold_stretch_p99_ms: f64,
    pub hold_stretch_max_ms: f64,
}

/// One event loop of the process: a thread that asks for ready I/O in epoll
/// once per iteration (asyncio, uvloop), with the lag of its iterations.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EventLoopReport {
    /// The loop thread.
    pub tid: u32,
    /// Iterations finished while measuring (poll-family return to the next call).
    pub iterations: u64,
    /// Iteration length, the time no other callback of the loop could run:
    /// percentiles from a log2 histogram (exact to its bucket) and the longest.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Time spent in iterations at least `LONG_ITERATION_NS` long (see the README's
    /// Diagnoses table): the loop was blocked.
    pub blocked_s: f64,
    /// The code that ran during the long iterations, most first: the loop
    /// thread's running frame sampled while an iteration was long. Empty where
    /// the stack could not be read or no long iteration was seen.
    pub functions: Vec<LoopFunction>,
}

/// A function that ran on a loop thread during its long iterations, and its
/// share of the loop's blocked time: what to move off the loop.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LoopFunction {
    /// Qualified name (`module.Class.method`).
    pub function: String,
    pub file: String,
    /// The line sampled most (`None` where the line table has none).
    pub line: Option<u32>,
    /// Share of the loop's blocked time spent in it, 0..1 (of the samples
    /// taken during long iterations).
    pub share: f64,
}

/// One GIL of the process: the main interpreter's, or a subinterpreter's own (3.12+).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GilReport {
    /// Address of the GIL struct in the process, hex.
    pub address: String,
    /// The main interpreter's GIL.
    pub main: bool,
    pub gil_wait_s: f64,
    pub gil_waits: u64,
}

/// A CPython child process of the measured one (a pool worker, typically).
#[derive(Debug, Clone, Serialize)]
pub struct ChildReport {
    pub pid: u32,
    /// Its command line.
    pub command: String,
    pub version: String,
    /// Seconds after measuring began that it was first watched.
    pub started_after_s: f64,
    /// Seconds it was watched (until it exited or measuring ended).
    pub watched_s: f64,
    /// It exited before measuring ended.
    pub exited: bool,
    pub threads: usize,
    /// CPU while watched (from birth if it started while measuring).
    pub cpu_s: f64,
    /// cpu_s / watched_s: the most of its time it can have spent on useful work.
    pub busy_share: f64,
    pub gil_wait_s: f64,
    /// Non-GIL futex waits: for a pool worker mostly the task queue's lock.
    pub futex_wait_s: f64,
}

/// One contended lock, by address.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotLock {
    /// Address of the lock word in the process, hex.
    pub address: String,
    pub wait_s: f64,
    pub waits: u64,
}

/// PyMutex contention of a free-threaded build (what replaces the GIL when it is off).
#[derive(Debug, Clone, Serialize)]
pub struct LockContention {
    pub wait_s: f64,
    pub waits: u64,
    pub wait_p50_us: f64,
    pub wait_p99_us: f64,
    /// The most waited-on locks, most first (at most 10).
    pub top_locks: Vec<HotLock>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The JSON spelling (`info`, `warning`, `critical`), for text that quotes it.
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Declares [`DiagnosisKind`] with its names and [`DiagnosisKind::ALL`] from one
/// list, so no kind can be left out of `ALL`.
macro_rules! diagnosis_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// What a finding is about: one kind per rule of `diagnose`, and
        /// `no_contention` when no rule holds. Its snake_case [`name`](Self::name) is the
        /// `kind` of the JSON document and the `cpython.diagnosis.kind` attribute;
        /// [`ALL`](Self::ALL) is what the daemon's state gauge and the README's
        /// Diagnoses table are made from, so a kind added here cannot be missing from either.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum DiagnosisKind {
            $($variant,)*
        }

        impl DiagnosisKind {
            /// Every kind, in the order the daemon exports its state gauge.
            pub const ALL: &'static [DiagnosisKind] = &[$(DiagnosisKind::$variant,)*];

            /// The kind's name in JSON, metrics and the README (`gil_serialized_threads`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(DiagnosisKind::$variant => $name,)*
                }
            }
        }
    };
}

diagnosis_kinds! {
    GilSerializedThreads => "gil_serialized_threads",
    LockContention => "lock_contention",
    EventLoopBlocked => "event_loop_blocked",
    GilResidualLatency => "gil_residual_latency",
    CpuThrottled => "cpu_throttled",
    CpuStarved => "cpu_starved",
    ProcessPoolOverhead => "process_pool_overhead",
    NoContention => "no_contention",
}

impl std::fmt::Display for DiagnosisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Written as its [`name`](DiagnosisKind::name): the JSON schema keeps its strings.
impl Serialize for DiagnosisKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One finding with its advice, and the measured numbers it rests on so a user
/// (or an alert) can check the claim instead of trusting it.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub kind: DiagnosisKind,
    pub severity: Severity,
    pub summary: String,
    pub advice: String,
    /// Named figures behind the finding (`gil_queue_length`, `threads`, ...).
    pub evidence: BTreeMap<String, f64>,
}

/// Why the measurement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// `--duration` elapsed.
    Duration,
    /// The launched command exited.
    CommandExited,
    /// The watched process exited before `--duration`: the report covers what was seen.
    ProcessExited,
    /// Interrupted (Ctrl-C).
    Interrupted,
}

/// Where a `--precise` uprobe was attached, and on what evidence.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeSite {
    /// Offset in the interpreter file (what the uprobe attaches to).
    pub file_offset: u64,
    /// `symbol_table` or `disassembly`.
    pub found_by: &'static str,
}

/// The uprobes of `--precise`, one per copy of each function.
#[derive(Debug, Clone, Serialize)]
pub struct PreciseProbes {
    pub take_gil: Vec<ProbeSite>,
    /// Empty: drop_gil is inlined or stripped, so hold times are sampled.
    pub drop_gil: Vec<ProbeSite>,
}

/// The whole `gilscope.check/v1` document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub pid: u32,
    pub duration_s: f64,
    pub mode: Mode,
    pub interpreter: InterpreterInfo,
    pub process: ProcessReport,
    pub threads: Vec<ThreadReport>,
    pub diagnosis: Vec<Diagnosis>,
    /// Why measuring stopped.
    pub ended: Ending,
    /// Exit status of a launched command (`null` for `--pid`, or if killed by a signal).
    pub command_exit_code: Option<i32>,
    /// Which mechanism produced which figure, in plain words.
    pub measured_by: Vec<String>,
    /// Every GIL seen, with the take-side waits on it (more than one with
    /// subinterpreters that own their GIL).
    pub gils: Vec<GilReport>,
    /// Builds with a parking lot (3.13+): PyMutex contention; `null` where not measured.
    pub lock_contention: Option<LockContention>,
    /// The speedup available without the GIL (Amdahl-style; see `model`).
    pub estimate: Estimate,
    /// CPython child processes (pool workers) seen while measuring.
    pub children: Vec<ChildReport>,
    /// The event loops found (threads iterating on epoll), most blocked first.
    pub event_loops: Vec<EventLoopReport>,
    /// `--precise` only: where take_gil/drop_gil were probed.
    pub precise_probes: Option<PreciseProbes>,
    /// Which code held the GIL while others waited, by the wait behind it
    /// (`null` where the holders' stacks could not be captured).
    pub contention_profile: Option<ContentionProfile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnosis_kinds_are_written_as_their_snake_case_names() {
        let mut seen = std::collections::HashSet::new();
        for kind in DiagnosisKind::ALL {
            let name = kind.name();
            assert!(seen.insert(name), "{name} twice");
            // The variant's name in snake_case: GilSerializedThreads -> gil_serialized_threads.
            let snake: String = format!("{kind:?}")
                .chars()
                .enumerate()
                .flat_map(|(i, c)| {
                    let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                    sep.into_iter()
                        .chain(std::iter::once(c.to_ascii_lowercase()))
                })
                .collect();
            assert_eq!(name, snake);
            assert_eq!(kind.to_string(), name);
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(serde_json::Value::String(name.to_string()))
            );
        }
    }
}
