//! `gilscope check`: measure one CPython process for a while and report.
//!
//! Wires the stages together: load the wait probe, find the interpreter (of a
//! running pid, or of a command started suspended), validate its GIL, watch it
//! in the kernel, sample the GIL and procfs until the time is up or the process
//! ends, then analyse and diagnose. Cleans its kernel state up on the way out.

use std::collections::{BTreeMap, HashMap};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::analyse::{
    analyse, estimate, lock_contention, CpuEnvironment, Measurement, PreciseCounters,
};
use crate::core::counters::WaitCounters;
use crate::core::cpu::{ThreadSample, Throttling};
use crate::core::diagnose::{diagnose, Facts};
use crate::core::report::{Ending, Mode, PreciseProbes, ProbeSite, Report, SCHEMA};
use crate::core::retire::{self, Retirement};
use crate::core::samples::GilSamples;
use crate::cpython::find::elf::ElfImage;
use crate::cpython::find::functions::{self, FoundBy, FoundFunction};
use crate::cpython::find::libc as c_library;
use crate::cpython::find::locate::{self, GilSite, Interpreter};
use crate::cpython::gil_sampler::{GilSampler, TstateResolver};
use crate::cpython::layout::versions::ThreadIdField;
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::thread_names::ThreadNameReader;
use crate::error::{Error, Result};
use crate::os::cgroup::{affinity_cpus, throttled_between, CpuCgroup};
use crate::os::threads::sample_threads;
use crate::probes::condwait::{self, CondWaitProbe};
use crate::probes::lock::LockProbe;
use crate::probes::precise::{PreciseProbe, PreciseTargets};
use crate::probes::wait::WaitProbe;
use crate::probes::MAX_GILS;
use crate::watch::children::Children;
use crate::watch::launch::{self, ChildStdout};
use crate::watch::retire::{retire_due, Sources};
use crate::watch::session::interpreter_info;

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
    pub child_stdout: ChildStdout,
    /// Show elapsed/duration on stderr while measuring (when stderr is a terminal).
    pub progress: bool,
}

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

/// How often procfs is read (and exited threads' last counters kept).
const TICK: Duration = Duration::from_millis(100);
/// How long a launched interpreter may take to create its GIL.
const GIL_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Set by SIGINT/SIGTERM: stop measuring and report what was seen.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            tracing::debug!("cannot install a {signal} handler: {e}");
        }
    }
}

/// Probes PyMutex parking where the interpreter has a parking lot (3.13+): the
/// slow path only, so it is on by default. Matters most on free-threaded builds.
fn attach_locks(interp: &Interpreter) -> Result<Option<LockProbe>> {
    let Some(park) = interp.file.park else {
        return Ok(None);
    };
    let image = ElfImage::read(&interp.host_path)?;
    let file = image.parse(&interp.host_path)?;
    // Every copy: LTO builds (Debian's 3.14) park through a clone, not the export.
    let offsets: Vec<u64> = functions::find_park(&file)
        .iter()
        .map(|f| f.file_offset)
        .collect();
    if offsets.is_empty() {
        return Err(Error::BadElf {
            path: interp.host_path.clone(),
            why: format!(
                "_PyParkingLot_Park at {:#x} is outside every loadable segment",
                park.address
            ),
        });
    }
    let event_wait = interp.file.event_wait.map(|f| {
        let start = f.address.wrapping_add(interp.load_bias);
        start..start + f.size.max(1)
    });
    LockProbe::attach(interp.pid, &interp.host_path, &offsets, event_wait).map(Some)
}

/// musl: GIL waits are measured at libc's condvar wait (the futex words are on
/// the waiters' stacks); refuses a musl build where that function cannot be found.
fn attach_condwait(interp: &Interpreter) -> Result<Option<CondWaitProbe>> {
    match c_library::require_measurable(interp)?.cond_wait {
        Some(site) => CondWaitProbe::attach(interp.pid, &site).map(Some),
        None => Ok(None),
    }
}

/// The futex probe's counters of `pid`, with the condvar probe's folded in on musl.
fn read_waits(
    probe: &WaitProbe,
    condwait: Option<&CondWaitProbe>,
    pid: u32,
) -> Result<WaitCounters> {
    let mut waits = probe.read(pid)?;
    if let Some(c) = condwait {
        condwait::merge_into(&mut waits, &c.read(pid)?);
    }
    Ok(waits)
}

/// The attached `--precise` uprobes and where they went.
struct PreciseAttachment {
    probe: PreciseProbe,
    sites: PreciseProbes,
}

fn site(f: &FoundFunction) -> ProbeSite {
    ProbeSite {
        file_offset: f.file_offset,
        found_by: match f.how {
            FoundBy::SymbolTable => "symbol_table",
            FoundBy::Disassembly => "disassembly",
        },
    }
}

fn attach_precise(interp: &Interpreter) -> Result<PreciseAttachment> {
    let image = ElfImage::read(&interp.host_path)?;
    let file = image.parse(&interp.host_path)?;
    let take = functions::find_take_gil(&file);
    if take.is_empty() {
        return Err(Error::Internal(format!(
            "--precise: cannot find take_gil in {} (no symbol, and no function reachable from \
             PyEval_RestoreThread calls pthread_cond_timedwait); run without --precise",
            interp.host_path.display()
        )));
    }
    let drop = functions::find_drop_gil(&file);
    let targets = PreciseTargets {
        take_gil: take.iter().map(|f| f.file_offset).collect(),
        drop_gil: drop.iter().map(|f| f.file_offset).collect(),
    };
    let probe = PreciseProbe::attach(interp.pid, &interp.host_path, &targets)?;
    Ok(PreciseAttachment {
        probe,
        sites: PreciseProbes {
            take_gil: take.iter().map(site).collect(),
            drop_gil: drop.iter().map(site).collect(),
        },
    })
}

/// Finds the GIL and checks that memory there looks like one.
fn validated_gil(interp: &Interpreter, mem: &RemoteMemory) -> Result<GilSite> {
    let site = interp.resolve_gil(mem)?;
    locate::read_gil_state(interp.pid, mem, &site)?;
    Ok(site)
}

/// Waits until the GIL of a starting interpreter exists and validates.
fn wait_for_gil(
    interp: &Interpreter,
    mem: &RemoteMemory,
    child: &mut Option<Child>,
) -> Result<GilSite> {
    let started = Instant::now();
    loop {
        match validated_gil(interp, mem) {
            Ok(site) => return Ok(site),
            Err(e) if started.elapsed() > GIL_INIT_TIMEOUT => return Err(e),
            Err(e @ (Error::UnsupportedVersion { .. } | Error::Permission { .. })) => {
                return Err(e)
            }
            Err(e) => {
                if let Some(c) = child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Err(Error::Launch {
                            command: format!("pid {}", interp.pid),
                            why: format!("exited ({status}) before its GIL was initialized: {e}"),
                        });
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

struct Attached {
    interp: Interpreter,
    gil: GilSite,
    child: Option<Child>,
    precise: Option<PreciseAttachment>,
    locks: Option<LockProbe>,
    /// musl only: the condvar-wait probe that measures the GIL waits.
    condwait: Option<CondWaitProbe>,
    cpu_start: BTreeMap<u32, ThreadSample>,
    started: Instant,
}

fn attach(opts: &CheckOptions, probe: &mut WaitProbe) -> Result<Attached> {
    match &opts.target {
        Target::Pid(pid) => {
            let pid = *pid;
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(Error::NoSuchProcess { pid });
            }
            let interp = locate::require_interpreter(pid)?;
            let mem = RemoteMemory::new(pid);
            let gil = validated_gil(&interp, &mem)?;
            let locks = attach_locks(&interp)?;
            let mut condwait = attach_condwait(&interp)?;
            let precise = if opts.precise {
                Some(attach_precise(&interp)?)
            } else {
                None
            };
            let cpu_start = sample_threads(pid)?;
            let gils = locate::all_gils(&mem, &gil, MAX_GILS);
            probe.watch(pid, &gils, &gil.layout)?;
            if let Some(c) = condwait.as_mut() {
                c.watch(pid, &gils, &gil.layout)?;
            }
            Ok(Attached {
                interp,
                gil,
                child: None,
                precise,
                locks,
                condwait,
                cpu_start,
                started: Instant::now(),
            })
        }
        Target::Command(argv) => {
            let mut precise = None;
            let mut locks = None;
            let mut condwait = None;
            let mut static_gil = None;
            let launched = launch::launch(argv, opts.child_stdout, |interp| {
                if let Some(site) = interp.static_gil() {
                    probe.watch(interp.pid, &[site.addr], &site.layout)?;
                    static_gil = Some(site);
                }
                if opts.precise {
                    precise = Some(attach_precise(interp)?);
                }
                locks = attach_locks(interp)?;
                condwait = attach_condwait(interp)?;
                Ok(())
            })?;
            let started = Instant::now();
            let interp = launched.interpreter;
            let mut child = Some(launched.child);
            let mem = RemoteMemory::new(interp.pid);
            let gil = match wait_for_gil(&interp, &mem, &mut child) {
                Ok(site) => site,
                Err(e) => {
                    if let Some(mut c) = child {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    let _ = probe.unwatch(interp.pid);
                    return Err(e);
                }
            };
            if static_gil != Some(gil) {
                probe.watch(interp.pid, &[gil.addr], &gil.layout)?;
            }
            if let Some(c) = condwait.as_mut() {
                c.watch(interp.pid, &[gil.addr], &gil.layout)?;
            }
            Ok(Attached {
                interp,
                gil,
                child,
                precise,
                locks,
                condwait,
                cpu_start: BTreeMap::new(),
                started,
            })
        }
    }
}

/// A process is gone once /proc forgets it or it is a zombie waiting to be reaped.
fn is_alive(pid: u32) -> bool {
    match procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => !matches!(stat.state, 'Z' | 'X' | 'x'),
        Err(_) => false,
    }
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

/// Runs one measurement and returns its report.
pub fn run(opts: &CheckOptions) -> Result<Report> {
    install_interrupt_handler();
    let mut probe = WaitProbe::load()?;
    let mut attached = attach(opts, &mut probe)?;
    let pid = attached.interp.pid;
    let pthread_tid_off = match attached.gil.thread_id {
        ThreadIdField::PthreadOnly(_) => locate::glibc_pthread_tid_offset(pid),
        ThreadIdField::NativeThreadId(_) => None,
    };
    let resolver = Arc::new(TstateResolver::new(
        RemoteMemory::new(pid),
        attached.gil.thread_id,
        pthread_tid_off,
    ));
    let sampler = GilSampler::start(pid, attached.gil, Arc::clone(&resolver), opts.sample_hz);

    let mem = RemoteMemory::new(pid);
    let mut gils = vec![attached.gil.addr];
    let mut watched: Vec<u64> = Vec::new();
    let mut cpu_end: BTreeMap<u32, ThreadSample> = BTreeMap::new();
    let mut holder_tids: HashMap<u64, u32> = HashMap::new();
    // Python thread names: read every tick, the last name of each thread kept
    // (threads exit mid-measurement and must still be named in the report).
    let mut name_reader = ThreadNameReader::new(&attached.interp, &attached.gil, mem);
    let mut python_names: HashMap<u32, String> = HashMap::new();
    let mut command_exit_code = None;
    let mut children = Children::new(pid);
    let cgroup = CpuCgroup::of(pid);
    let throttling_start = cgroup.as_ref().map(CpuCgroup::throttling);
    let cpu_limit_cores = cgroup.as_ref().and_then(CpuCgroup::quota_cores);
    let affinity = affinity_cpus(pid);
    // Exited threads are folded into one row after a while (see `retire`), so a
    // long check of a thread-per-request server does not fill the kernel maps.
    // Not with --precise or PyMutex probes: their per-thread counters stay by tid.
    let retiring = attached.precise.is_none() && attached.locks.is_none();
    let mut exits = Retirement::default();
    let mut live: Vec<u32> = attached.cpu_start.keys().copied().collect();
    let ending = loop {
        children.tick(&mut probe);
        python_names.extend(name_reader.read());
        {
            // Subinterpreters with their own GIL come and go: re-list them every tick
            // (a few pointer reads) and keep the kernel filter current.
            let now = locate::all_gils(&mem, &attached.gil, MAX_GILS);
            if now != watched && !now.is_empty() {
                let updated = probe.watch(pid, &now, &attached.gil.layout).and_then(|()| {
                    match attached.condwait.as_mut() {
                        Some(c) => c.watch(pid, &now, &attached.gil.layout),
                        None => Ok(()),
                    }
                });
                match updated {
                    Ok(()) => watched = now.clone(),
                    Err(e) => tracing::debug!("cannot update the GILs of process {pid}: {e}"),
                }
            }
            for gil in now {
                if !gils.contains(&gil) {
                    gils.push(gil);
                }
            }
        }
        if let Ok(threads) = sample_threads(pid) {
            live = threads.keys().copied().collect();
            cpu_end.extend(threads);
        }
        let now = Instant::now();
        if retiring {
            exits.note(cpu_end.keys().copied(), &live, now);
            retire_due(
                &mut exits,
                pid,
                now,
                Sources {
                    probe: &mut probe,
                    condwait: attached.condwait.as_mut(),
                    sampler: Some(sampler.sampled()),
                    cpu: &mut cpu_end,
                    names: &mut python_names,
                    holders: &mut holder_tids,
                },
            );
        }
        if let Ok(counters) = read_waits(&probe, attached.condwait.as_ref(), pid) {
            if retiring {
                // Threads that lived and died between two procfs reads.
                exits.note(counters.threads.keys().copied(), &live, now);
            }
            for key in counters.blocked_by.keys() {
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    holder_tids.entry(key.holder_tstate)
                {
                    if let Some(tid) = resolver.tid_of(key.holder_tstate) {
                        slot.insert(tid);
                    }
                }
            }
        }
        if let Some(child) = attached.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                command_exit_code = status.code();
                break Ending::CommandExited;
            }
        } else if !is_alive(pid) {
            break Ending::ProcessExited;
        }
        if opts.progress {
            show_progress(
                pid,
                attached.started.elapsed(),
                opts.duration,
                children.count(),
            );
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            break Ending::Interrupted;
        }
        if opts
            .duration
            .is_some_and(|d| attached.started.elapsed() >= d)
        {
            break Ending::Duration;
        }
        std::thread::sleep(TICK);
    };
    let wall_s = attached.started.elapsed().as_secs_f64();
    if opts.progress {
        eprint!("\r\x1b[K");
    }
    let mut gil = sampler.stop();

    let throttling = match (&cgroup, &throttling_start) {
        (Some(cg), Some(start)) => throttled_between(start, &cg.throttling()),
        _ => Throttling::default(),
    };
    let mut waits = read_waits(&probe, attached.condwait.as_ref(), pid)?;
    let cpu_start = if exits.retired() > 0 {
        exits.apply(&mut cpu_end, &mut waits, &mut gil, &live);
        // Threads retired during the measurement count from their start in the row.
        retire::rebase(
            &attached.cpu_start,
            &WaitCounters::default(),
            &GilSamples::default(),
            &cpu_end,
            &waits,
            &gil,
        )
        .0
    } else {
        attached.cpu_start
    };
    crate::probes::wait::warn_dropped(&probe.entries_dropped());
    if let Some(c) = &attached.condwait {
        crate::probes::wait::warn_dropped(&c.entries_dropped());
    }
    for key in waits.blocked_by.keys() {
        if let Some(tid) = resolver.tid_of(key.holder_tstate) {
            holder_tids.entry(key.holder_tstate).or_insert(tid);
        }
    }
    let precise = match &attached.precise {
        Some(p) => Some(PreciseCounters {
            threads: p.probe.read(pid)?,
            holds_exact: !p.sites.drop_gil.is_empty(),
        }),
        None => None,
    };
    if let Err(e) = probe.unwatch(pid) {
        tracing::warn!("could not clear the kernel state of process {pid}: {e}");
    }
    let precise_probes = attached.precise.take().map(|p| p.sites);
    let children = children.finish(&mut probe);
    let locks = match attached.locks.take() {
        Some(probe) => Some(probe.read(pid)?),
        None => None,
    };

    if let Some(child) = attached.child.take() {
        if ending == Ending::CommandExited {
            // already reaped by try_wait
        } else {
            command_exit_code = stop_command(child);
        }
    }

    let mode = if opts.precise {
        Mode::Precise
    } else {
        Mode::Default
    };
    let gil_wait_by = match &attached.condwait {
        Some(c) => format!(
            "GIL wait (musl): uprobes on {} in {} for calls on the GIL's cond (take) and \
             switch_cond (forced switch), which only a thread that must block makes; other \
             futex waits from sched_switch, less those GIL sleeps",
            c.site.symbol,
            c.site.path_in_process.display()
        ),
        None => "GIL wait: threads blocking in futex() on the GIL's own memory (sched_switch \
                 tracepoint), nothing on the uncontended fast path"
            .to_string(),
    };
    let mut measured_by = vec![
        gil_wait_by,
        "blocked time outside the GIL (poll/io/sleep/other) and GIL retake waits after blocking \
         calls: every sleep of a watched thread, classed by its syscall (same tracepoint)"
            .to_string(),
        format!(
            "GIL hold share, utilization and hold stretches: {} samples of the GIL state at {} Hz",
            gil.samples, opts.sample_hz
        ),
        "CPU and run-queue delay: /proc/PID/task/TID/schedstat".to_string(),
    ];
    measured_by.push(match &cgroup {
        Some(cg) => format!(
            "CPU throttling and quota: {} cpu.stat/quota, from {} up to the root",
            if cg.v2 { "cgroup v2" } else { "cgroup v1" },
            cg.dir.display()
        ),
        None => "CPU throttling: the process's CPU cgroup was not found".to_string(),
    });
    if locks.is_some() {
        measured_by.push(
            "lock contention: uprobes on every copy of _PyParkingLot_Park (the PyMutex slow \
             path; parks from PyEvent_WaitTimed such as thread joins are left out)"
                .to_string(),
        );
    }
    if let Some(p) = &precise {
        measured_by.push(format!(
            "--precise: uprobes on take_gil{}; GIL wait totals are exact take_gil times{}",
            if p.holds_exact {
                " and drop_gil"
            } else {
                " (drop_gil is inlined or stripped: holds stay sampled)"
            },
            if p.holds_exact {
                ", hold times exact"
            } else {
                ""
            }
        ));
    }
    let measurement = Measurement {
        pid,
        wall_s,
        mode,
        interpreter: interpreter_info(&attached.interp, &attached.gil, &gil),
        cpu_start,
        cpu_end,
        waits,
        precise,
        gil,
        holder_tids,
        locks,
        gil_addrs: gils,
        cpu_env: CpuEnvironment {
            affinity_cpus: affinity,
            cpu_limit_cores,
            throttling,
        },
        python_names,
    };
    let (process, threads) = analyse(&measurement);
    let estimate = estimate(&process, &threads);
    let gil_reports = crate::core::analyse::gils(&measurement);
    let lock_contention = measurement.locks.as_ref().map(lock_contention);
    let diagnosis = diagnose(&Facts {
        process: &process,
        threads: &threads,
        locks: lock_contention.as_ref(),
        children: &children,
    });
    Ok(Report {
        schema: SCHEMA,
        pid,
        duration_s: wall_s,
        mode,
        interpreter: measurement.interpreter,
        process,
        threads,
        diagnosis,
        ended: ending,
        command_exit_code,
        measured_by,
        lock_contention,
        gils: gil_reports,
        estimate,
        children,
        precise_probes,
    })
}
