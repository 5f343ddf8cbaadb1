//! How a [`Session`] begins: on a running process whose GIL exists, or on a
//! command started suspended under ptrace and released only once the kernel
//! watches its GIL. Also the per-process probes a session may own: the musl
//! condvar probe (where GIL waits must be measured on musl), the `--precise`
//! uprobes and the PyMutex parking probe.

use std::process::Child;
use std::time::{Duration, Instant};

use super::holders::HolderCapture;
use super::{NameRefresh, Session};
use crate::core::report::{InterpreterInfo, PreciseProbes, ProbeSite};
use crate::core::samples::GilSamples;
use crate::cpython::find::elf::ElfImage;
use crate::cpython::find::functions::{self, FoundBy, FoundFunction};
use crate::cpython::find::locate::{self, GilSite, Interpreter};
use crate::cpython::find::poll;
use crate::cpython::gil_sampler::SamplerPool;
use crate::cpython::remote::memory::RemoteMemory;
use crate::error::{Error, Result};
use crate::os::threads::sample_threads;
use crate::probes::condwait::CondWaitProbe;
use crate::probes::event_loop::LoopProbe;
use crate::probes::lock::LockProbe;
use crate::probes::precise::{PreciseProbe, PreciseTargets};
use crate::probes::wait::WaitProbe;
use crate::probes::MAX_GILS;
use crate::watch::launch::{self, ChildStdout};

/// How long a launched interpreter may take to create its GIL.
const GIL_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a session's GIL samples are taken.
pub enum Sampling<'a> {
    /// Not sampled (hold shares and utilization stay 0).
    Off,
    /// On a sampler thread of the session's own, at this rate (`check`).
    Own(u32),
    /// On a pool shared by many sessions (`top`, `run`, pool workers).
    Shared(&'a SamplerPool),
}

/// What a session measures besides the GIL waits every session measures.
pub struct SessionOptions<'a> {
    pub sampling: Sampling<'a>,
    /// `--precise`: uprobes on `take_gil`/`drop_gil` (exact, costly where the GIL churns).
    pub precise: bool,
    /// PyMutex parking (3.13+ builds with a parking lot), a slow-path uprobe.
    pub locks: bool,
    pub names: NameRefresh,
    /// Capture the GIL holder's Python stack when each wait begins (the
    /// contention profile). Read by [`Session::snapshot`] and
    /// [`Session::final_snapshot`] only: a fleet's sessions leave it off.
    pub holders: bool,
    /// Event-loop lag, where the probe is loaded (one for every session).
    pub loops: Option<&'a LoopProbe>,
}

impl SessionOptions<'_> {
    /// GIL waits only, sampled on `pool` if given, names read when threads change.
    pub fn watcher(pool: Option<&SamplerPool>) -> SessionOptions<'_> {
        SessionOptions {
            sampling: pool.map_or(Sampling::Off, Sampling::Shared),
            precise: false,
            locks: false,
            names: NameRefresh::OnChangeOrEvery(Duration::from_secs(30)),
            holders: false,
            loops: None,
        }
    }
}

/// The attached `--precise` uprobes and where they went.
pub struct PreciseAttachment {
    pub probe: PreciseProbe,
    pub sites: PreciseProbes,
}

/// Probes attached to one process alone (the wait probe is shared by all).
#[derive(Default)]
pub struct OwnProbes {
    /// musl only: the condvar-wait probe that measures the GIL waits.
    pub condwait: Option<CondWaitProbe>,
    pub precise: Option<PreciseAttachment>,
    pub locks: Option<LockProbe>,
}

impl OwnProbes {
    /// Attaches what `opts` asks for, and on musl the condvar probe.
    fn attach(interp: &Interpreter, probe: &WaitProbe, opts: &SessionOptions) -> Result<Self> {
        Ok(Self {
            condwait: attach_condwait(interp, probe.episode_threshold_ns())?,
            precise: opts.precise.then(|| attach_precise(interp)).transpose()?,
            locks: if opts.locks {
                attach_locks(interp)?
            } else {
                None
            },
        })
    }
}

/// Probes PyMutex parking where the interpreter has a parking lot (3.13+): the
/// slow path only.
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
fn attach_condwait(
    interp: &Interpreter,
    episode_threshold_ns: u64,
) -> Result<Option<CondWaitProbe>> {
    match locate::require_measurable_libc(interp)?.cond_wait {
        Some(site) => {
            CondWaitProbe::attach_with_episodes(interp.pid, &site, episode_threshold_ns).map(Some)
        }
        None => Ok(None),
    }
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

/// Watches the event loops of the process of `interp` with `loops` (once its
/// libc is mapped: the GIL exists). A process whose poll functions cannot be
/// found or probed is measured without them, with a warning.
pub(super) fn watch_loops(loops: Option<&LoopProbe>, interp: &Interpreter) -> Option<LoopProbe> {
    let loops = loops?;
    let pid = interp.pid;
    let watched = poll::poll_functions(interp).and_then(|functions| {
        if functions.is_empty() {
            return Err(Error::Internal(
                "no mapped file defines epoll_wait (a stripped static build?)".into(),
            ));
        }
        loops.watch(pid, &functions)
    });
    match watched {
        Ok(()) => Some(loops.clone()),
        Err(e) => {
            tracing::warn!("event loops of process {pid} are not measured: {e}");
            None
        }
    }
}

/// Finds the GIL and checks that memory there looks like one.
fn validated_gil(interp: &Interpreter, mem: &RemoteMemory) -> Result<GilSite> {
    let site = interp.resolve_gil(mem)?;
    locate::read_gil_state(interp.pid, mem, &site)?;
    Ok(site)
}

/// Waits until the GIL of a starting interpreter exists and validates.
fn wait_for_gil(interp: &Interpreter, mem: &RemoteMemory, child: &mut Child) -> Result<GilSite> {
    let started = Instant::now();
    loop {
        match validated_gil(interp, mem) {
            Ok(site) => return Ok(site),
            Err(e) if started.elapsed() > GIL_INIT_TIMEOUT => return Err(e),
            Err(e @ (Error::UnsupportedVersion { .. } | Error::Permission { .. })) => {
                return Err(e)
            }
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Launch {
                        command: format!("pid {}", interp.pid),
                        why: format!("exited ({status}) before its GIL was initialized: {e}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Session {
    /// Starts watching a running CPython process whose GIL already exists.
    pub fn attach(pid: u32, probe: &mut WaitProbe, opts: &SessionOptions) -> Result<Self> {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::NoSuchProcess { pid });
        }
        let interp = locate::require_interpreter(pid)?;
        let mem = RemoteMemory::new(pid);
        let gil = validated_gil(&interp, &mem)?;
        let mut own = OwnProbes::attach(&interp, probe, opts)?;
        let cpu_start = sample_threads(pid)?;
        let gils = locate::all_gils(&mem, &gil, MAX_GILS);
        // Capturing before the waits are counted: every wait has its holder's stack.
        let holders = opts
            .holders
            .then(|| HolderCapture::start(&interp, mem, probe, &mut own))
            .flatten();
        probe.watch(pid, &gils, &gil.layout)?;
        if let Some(c) = own.condwait.as_mut() {
            c.watch(pid, &gils, &gil.layout)?;
        }
        let mut session = Session::new(interp, gil, own, cpu_start, gils, opts);
        session.holders = holders;
        if opts.holders {
            session.name_loop_code();
        }
        Ok(session)
    }

    /// Starts `argv` suspended, attaches before it runs any Python, releases it,
    /// and waits for its GIL. The session counts the command from its birth.
    pub fn launch(
        argv: &[String],
        stdout: ChildStdout,
        probe: &mut WaitProbe,
        opts: &SessionOptions,
    ) -> Result<(Self, Child)> {
        let mut own = None;
        let mut static_gil = None;
        let mut holders = None;
        let launched = launch::launch(argv, stdout, |interp| {
            let mut attached = OwnProbes::attach(interp, probe, opts)?;
            if let Some(site) = interp.static_gil() {
                // Waits are counted from the first instruction: capture from it too.
                if opts.holders {
                    let mem = RemoteMemory::new(interp.pid);
                    holders = HolderCapture::start(interp, mem, probe, &mut attached);
                }
                probe.watch(interp.pid, &[site.addr], &site.layout)?;
                static_gil = Some(site);
            }
            own = Some(attached);
            Ok(())
        })?;
        let interp = launched.interpreter;
        let mut child = launched.child;
        let mut own = own.unwrap_or_default();
        let mem = RemoteMemory::new(interp.pid);
        let gil = match wait_for_gil(&interp, &mem, &mut child) {
            Ok(site) => site,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = probe.unwatch(interp.pid);
                return Err(e);
            }
        };
        if opts.holders && holders.is_none() {
            holders = HolderCapture::start(&interp, mem, probe, &mut own);
        }
        if static_gil != Some(gil) {
            probe.watch(interp.pid, &[gil.addr], &gil.layout)?;
        }
        if let Some(c) = own.condwait.as_mut() {
            c.watch(interp.pid, &[gil.addr], &gil.layout)?;
        }
        let mut session = Session::new(interp, gil, own, Default::default(), vec![gil.addr], opts);
        session.holders = holders;
        if opts.holders {
            session.name_loop_code();
        }
        Ok((session, child))
    }
}

/// What a report says about the interpreter, from what was found and sampled.
pub fn interpreter_info(
    interp: &Interpreter,
    gil: &GilSite,
    samples: &GilSamples,
) -> InterpreterInfo {
    InterpreterInfo {
        executable: interp.executable.display().to_string(),
        library: interp
            .is_library
            .then(|| interp.path_in_process.display().to_string()),
        version: interp.file.version.to_string(),
        stripped: interp.file.stripped,
        gil_enabled: samples.gil_enabled.unwrap_or(!gil.free_threaded),
        gil_enabled_changed: samples.gil_enabled_changes > 0,
        free_threaded: gil.free_threaded,
        libc: interp.libc.name(),
    }
}
