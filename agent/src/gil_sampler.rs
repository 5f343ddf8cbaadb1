//! GIL hold share by sampling, never by tracing.
//!
//! A background thread reads the GIL struct (`locked`, `last_holder`,
//! `switch_number`) from the target's memory at a fixed rate without stopping it.
//! The fraction of samples with the GIL locked is the GIL utilization; the holder
//! of each locked sample gives per-thread hold shares; the `switch_number` delta
//! gives GIL switches per second. The target pays nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::memory::RemoteMemory;
use crate::python::locate::{read_gil_state, GilSite};
use crate::python::versions::ThreadIdField;

/// Maps `PyThreadState *` to kernel tids by reading `native_thread_id` (3.11+), or
/// the `pthread_t` and then glibc's `struct pthread` (3.8-3.10), from the target.
#[derive(Debug)]
pub struct TstateResolver {
    mem: RemoteMemory,
    field: ThreadIdField,
    /// Offset of the tid inside glibc's `struct pthread`, for [`ThreadIdField::PthreadOnly`].
    pthread_tid_off: Option<u64>,
    cache: Mutex<HashMap<u64, (Option<u32>, Instant)>>,
}

/// How long a tstate -> tid mapping is trusted (thread states are freed and reused).
const RESOLVE_TTL: Duration = Duration::from_secs(1);

impl TstateResolver {
    /// A resolver for one process.
    pub fn new(mem: RemoteMemory, field: ThreadIdField, pthread_tid_off: Option<u64>) -> Self {
        Self {
            mem,
            field,
            pthread_tid_off,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tid behind a thread state, `None` if unknown (null, freed, or no native id in this version).
    pub fn tid_of(&self, tstate: u64) -> Option<u32> {
        if tstate == 0 {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tid, at)) = cache.get(&tstate) {
            if at.elapsed() < RESOLVE_TTL || !self.can_read() {
                return *tid;
            }
        }
        let tid = self.read_tid(tstate);
        if tid.is_some() || !cache.contains_key(&tstate) {
            cache.insert(tstate, (tid, Instant::now()));
        }
        tid.or_else(|| cache.get(&tstate).and_then(|(t, _)| *t))
    }

    fn can_read(&self) -> bool {
        match self.field {
            ThreadIdField::NativeThreadId(_) => true,
            ThreadIdField::PthreadOnly(_) => self.pthread_tid_off.is_some(),
        }
    }

    fn read_tid(&self, tstate: u64) -> Option<u32> {
        let raw = match self.field {
            ThreadIdField::NativeThreadId(off) => {
                self.mem.read_u64(tstate.checked_add(off)?).ok()?
            }
            ThreadIdField::PthreadOnly(off) => {
                let pthread = self.mem.read_u64(tstate.checked_add(off)?).ok()?;
                let tid_at = pthread.checked_add(self.pthread_tid_off?)?;
                let mut buf = [0u8; 4];
                self.mem.read(tid_at, &mut buf).ok()?;
                u64::from(u32::from_le_bytes(buf))
            }
        };
        u32::try_from(raw).ok().filter(|tid| *tid != 0)
    }
}

/// What the sampler saw over a measurement.
#[derive(Debug, Default, Clone)]
pub struct GilSamples {
    pub samples: u64,
    pub locked: u64,
    /// Locked samples per holder tid (unresolvable holders under tid 0).
    pub held_by: HashMap<u32, u64>,
    pub first_switch: Option<(Instant, u64)>,
    pub last_switch: Option<(Instant, u64)>,
    /// Reads that failed (the process exited, or memory moved).
    pub failed_reads: u64,
    /// Free-threaded builds: whether the GIL was on at the last sample.
    pub gil_enabled: Option<bool>,
    /// How often the GIL was switched on or off between samples.
    pub gil_enabled_changes: u64,
}

impl GilSamples {
    /// Fraction of samples in which the GIL was held.
    pub fn utilization(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.locked as f64 / self.samples as f64
        }
    }

    /// GIL hand-overs between threads per second.
    pub fn switches_per_s(&self) -> f64 {
        match (self.first_switch, self.last_switch) {
            (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => {
                s1.wrapping_sub(s0) as f64 / (t1 - t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// What was sampled since `prev` (an earlier tally of the same sampler).
    pub fn since(&self, prev: &Self) -> Self {
        Self {
            samples: self.samples.saturating_sub(prev.samples),
            locked: self.locked.saturating_sub(prev.locked),
            held_by: self
                .held_by
                .iter()
                .map(|(tid, n)| (*tid, n.saturating_sub(*prev.held_by.get(tid).unwrap_or(&0))))
                .collect(),
            first_switch: prev.last_switch.or(self.first_switch),
            last_switch: self.last_switch,
            failed_reads: self.failed_reads.saturating_sub(prev.failed_reads),
            gil_enabled: self.gil_enabled,
            gil_enabled_changes: self
                .gil_enabled_changes
                .saturating_sub(prev.gil_enabled_changes),
        }
    }

    /// Share of all samples in which `tid` held the GIL.
    pub fn hold_share(&self, tid: u32) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        *self.held_by.get(&tid).unwrap_or(&0) as f64 / self.samples as f64
    }
}

/// A running sampler; [`GilSampler::snapshot`] says what it saw so far,
/// [`GilSampler::stop`] what it saw in all.
pub struct GilSampler {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<GilSamples>>,
    handle: JoinHandle<GilSamples>,
}

impl GilSampler {
    /// Starts sampling the GIL at `gil_addr` of `pid` at `hz` samples per second.
    pub fn start(pid: u32, gil: GilSite, resolver: Arc<TstateResolver>, hz: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let tally = Arc::new(Mutex::new(GilSamples::default()));
        let shared = Arc::clone(&tally);
        let period = Duration::from_secs_f64(1.0 / f64::from(hz.max(1)));
        let handle = std::thread::Builder::new()
            .name("gil-sampler".into())
            .spawn(move || {
                let mem = RemoteMemory::new(pid);
                let mut out = GilSamples::default();
                let mut next = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    match read_gil_state(pid, &mem, &gil) {
                        Ok(state) => {
                            let now = Instant::now();
                            if let Some(enabled) = state.enabled {
                                if out.gil_enabled.is_some_and(|was| was != enabled) {
                                    out.gil_enabled_changes += 1;
                                }
                                out.gil_enabled = Some(enabled);
                            }
                            out.samples += 1;
                            if state.locked {
                                out.locked += 1;
                                let tid = resolver.tid_of(state.last_holder).unwrap_or(0);
                                *out.held_by.entry(tid).or_default() += 1;
                            }
                            out.first_switch.get_or_insert((now, state.switch_number));
                            out.last_switch = Some((now, state.switch_number));
                        }
                        Err(_) => out.failed_reads += 1,
                    }
                    if let Ok(mut published) = shared.lock() {
                        published.clone_from(&out);
                    }
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now; // fell behind: do not burst to catch up
                    }
                }
                out
            });
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("cannot start the GIL sampler thread: {e}; hold shares will be 0");
                std::thread::spawn(GilSamples::default)
            }
        };
        Self {
            stop,
            tally,
            handle,
        }
    }

    /// The tally so far, without stopping.
    pub fn snapshot(&self) -> GilSamples {
        self.tally
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Stops sampling and returns the tally.
    pub fn stop(self) -> GilSamples {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}
