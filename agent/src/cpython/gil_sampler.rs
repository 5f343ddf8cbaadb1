//! GIL hold share by sampling, never by tracing.
//!
//! A background thread reads the GIL struct (`locked`, `last_holder`,
//! `switch_number`) from the target's memory at a fixed rate without stopping it.
//! The fraction of samples with the GIL locked is the GIL utilization; the holder
//! of each locked sample gives per-thread hold shares; the `switch_number` delta
//! gives GIL switches per second. Runs of samples with the same holder and no
//! hand-over in between are hold stretches: how long one thread kept the GIL in
//! one go (an event loop running CPU work inline shows long ones). The target
//! pays nothing.
//!
//! One [`SamplerPool`] thread samples any number of processes in one pass per
//! period (the daemon watches many); each process keeps its own tally.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::samples::{GilSamples, HoldStretches, StretchTracker};
use crate::cpython::find::locate::{read_gil_state, GilSite};
use crate::cpython::remote::memory::RemoteMemory;
use crate::cpython::tstate::TstateResolver;

/// One sampled process: what is read, and the tally it feeds.
struct Member {
    pid: u32,
    mem: RemoteMemory,
    gil: GilSite,
    resolver: Arc<TstateResolver>,
    state: Mutex<MemberState>,
}

/// The tally of one process and its stretch cutter, locked together.
#[derive(Default)]
struct MemberState {
    tally: GilSamples,
    stretches: StretchTracker,
}

impl Member {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemberState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes one sample of one process's GIL and adds it to its tally: the single
/// sampling step of every sampler (the daemon's shared one and `check`'s own).
/// `origin` is the pool's clock origin for stretch times.
fn sample_once(member: &Member, origin: Instant) {
    let read = read_gil_state(member.pid, &member.mem, &member.gil);
    let mut guard = member.lock();
    let MemberState { tally, stretches } = &mut *guard;
    let state = match read {
        Ok(state) => state,
        Err(_) => {
            tally.failed_reads += 1;
            return;
        }
    };
    let now = Instant::now();
    if let Some(enabled) = state.enabled {
        if tally.gil_enabled.is_some_and(|was| was != enabled) {
            tally.gil_enabled_changes += 1;
        }
        tally.gil_enabled = Some(enabled);
    }
    tally.samples += 1;
    let mut holder = 0;
    if state.locked {
        tally.locked += 1;
        holder = member.resolver.tid_of(state.last_holder).unwrap_or(0);
        *tally.held_by.entry(holder).or_default() += 1;
    }
    let at_ns = u64::try_from(now.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX);
    stretches.sample(at_ns, state.locked, holder, state.switch_number);
    tally.first_switch.get_or_insert((now, state.switch_number));
    tally.last_switch = Some((now, state.switch_number));
}

/// What the pool's thread and its handles share.
struct PoolShared {
    stop: AtomicBool,
    members: Mutex<Vec<Arc<Member>>>,
}

impl PoolShared {
    fn members(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Member>>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One thread that samples the GIL of every process added to it, all in one pass
/// per period. A daemon watching 50 processes wakes 10 times a second instead of
/// 500 (one thread per process cost ~1 % of a core at 50 processes); each process
/// keeps its own tally, so its numbers do not depend on who else is sampled.
pub struct SamplerPool {
    shared: Arc<PoolShared>,
    handle: Option<JoinHandle<()>>,
}

impl SamplerPool {
    /// Starts the sampling thread at `hz` passes per second (no process yet).
    pub fn start(hz: u32) -> Self {
        let shared = Arc::new(PoolShared {
            stop: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
        });
        let inner = Arc::clone(&shared);
        let period = Duration::from_secs_f64(1.0 / f64::from(hz.max(1)));
        let handle = std::thread::Builder::new()
            .name("gil-sampler".into())
            .spawn(move || Self::sample_loop(&inner, period));
        let handle = match handle {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!("cannot start the GIL sampler thread: {e}; hold shares will be 0");
                None
            }
        };
        Self { shared, handle }
    }

    fn sample_loop(shared: &PoolShared, period: Duration) {
        let origin = Instant::now();
        let mut next = origin;
        while !shared.stop.load(Ordering::Relaxed) {
            for member in shared.members().iter() {
                sample_once(member, origin);
            }
            next += period;
            let now = Instant::now();
            if next > now {
                // Parked, not slept: dropping the pool wakes it at once.
                std::thread::park_timeout(next - now);
            } else {
                next = now; // fell behind: do not burst to catch up
            }
        }
    }

    /// Starts sampling the GIL `gil` of `pid` on this pool's thread; the process
    /// is sampled until the returned handle is stopped or dropped.
    pub fn add(&self, pid: u32, gil: GilSite, resolver: Arc<TstateResolver>) -> SampledProcess {
        let member = Arc::new(Member {
            pid,
            mem: RemoteMemory::new(pid),
            gil,
            resolver,
            state: Mutex::new(MemberState::default()),
        });
        self.shared.members().push(Arc::clone(&member));
        SampledProcess {
            member,
            pool: Arc::downgrade(&self.shared),
        }
    }

    /// How many processes are sampled now.
    pub fn len(&self) -> usize {
        self.shared.members().len()
    }

    /// Whether no process is sampled now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SamplerPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// One process on a [`SamplerPool`]: [`SampledProcess::snapshot`] says what was
/// seen so far, [`SampledProcess::stop`] (or dropping it) takes it off the pool.
pub struct SampledProcess {
    member: Arc<Member>,
    pool: std::sync::Weak<PoolShared>,
}

impl SampledProcess {
    /// The tally so far, with the hold stretches that have ended, without stopping.
    pub fn snapshot(&self) -> GilSamples {
        let state = self.member.lock();
        let mut out = state.tally.clone();
        out.stretches.clone_from(&state.stretches.by_thread);
        out
    }

    /// Takes the per-thread tallies of retired threads out of the tables (a
    /// long-lived process's exited threads must not grow them forever): their
    /// locked samples, summed, and their hold stretches.
    pub fn take_threads(&self, tids: &[u32]) -> (u64, Vec<HoldStretches>) {
        let mut state = self.member.lock();
        let held = tids
            .iter()
            .filter_map(|tid| state.tally.held_by.remove(tid))
            .sum();
        let stretches = tids
            .iter()
            .filter_map(|tid| state.stretches.by_thread.remove(tid))
            .collect();
        (held, stretches)
    }

    /// Takes the process off the pool and returns its tally (the stretch in
    /// progress counted as ended).
    pub fn stop(self) -> GilSamples {
        self.leave();
        let mut state = self.member.lock();
        state.stretches.close();
        let mut out = state.tally.clone();
        out.stretches = std::mem::take(&mut state.stretches.by_thread);
        out
    }

    /// Off the pool: no sample is taken after this returns.
    fn leave(&self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.members().retain(|m| !Arc::ptr_eq(m, &self.member));
        }
    }
}

impl Drop for SampledProcess {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::layout::versions::ThreadIdField;

    const MS: u64 = 1_000_000;

    /// A GIL struct (default layout) in this process's own memory, read back
    /// through `process_vm_readv` as the sampler reads a target's.
    fn fake_gil(locked: bool, holder: u64) -> Box<[u64; 26]> {
        let mut gil = Box::new([0u64; 26]);
        gil[0] = 5000; // switch interval, µs
        gil[1] = holder; // last_holder
        gil[2] = u64::from(locked);
        gil[3] = 7; // switch_number: no hand-over while sampled
        gil
    }

    fn site(gil: &[u64; 26]) -> GilSite {
        GilSite {
            addr: gil.as_ptr() as u64,
            layout: crate::cpython::layout::versions::GIL_LAYOUT_DEFAULT,
            thread_id: ThreadIdField::NativeThreadId(0),
            free_threaded: false,
            enabled_off: None,
            interpreters: None,
        }
    }

    #[test]
    fn one_pool_thread_samples_each_process_into_its_own_tally() {
        let pid = std::process::id();
        // A thread state whose native_thread_id (offset 0 here) is 4242.
        let tstate = Box::new(4242u64);
        let held = fake_gil(true, &*tstate as *const u64 as u64);
        let free = fake_gil(false, 0);
        let resolver = || {
            Arc::new(TstateResolver::new(
                RemoteMemory::new(pid),
                ThreadIdField::NativeThreadId(0),
                None,
            ))
        };
        let pool = SamplerPool::start(200);
        let a = pool.add(pid, site(&held), resolver());
        let b = pool.add(pid, site(&free), resolver());
        assert_eq!(pool.len(), 2);
        std::thread::sleep(Duration::from_millis(300));
        let a_seen = a.stop();
        assert_eq!(pool.len(), 1, "a stopped process leaves the pool");
        let b_mid = b.snapshot();
        std::thread::sleep(Duration::from_millis(100));
        let b_seen = b.snapshot();
        drop(b);
        assert!(pool.is_empty(), "a dropped handle leaves the pool");

        assert!(a_seen.samples >= 10, "{a_seen:?}");
        assert_eq!(a_seen.failed_reads, 0);
        assert_eq!(a_seen.utilization(), 1.0);
        assert_eq!(a_seen.hold_share(4242), 1.0, "holder resolved to its tid");
        let stretch = a_seen.stretches[&4242];
        assert_eq!(stretch.hist.iter().sum::<u64>(), 1, "one unbroken stretch");
        assert!(stretch.max_ns >= 200 * MS, "{stretch:?}");
        assert_eq!(b_mid.utilization(), 0.0);
        assert!(b_seen.samples > b_mid.samples, "b is sampled after a left");
        assert!(b_seen.held_by.is_empty());
    }

    #[test]
    fn a_stretch_ends_at_a_hand_over_a_new_holder_or_a_free_gil() {
        let mut t = StretchTracker::default();
        // Thread 7 holds from 0 to 96 ms without a hand-over (25 samples, 4 ms apart).
        for i in 0..25 {
            t.sample(i * 4 * MS, true, 7, 10);
        }
        // A hand-over back to 7 (switch_number moved) starts a new stretch of 8 ms.
        for i in 25..28 {
            t.sample(i * 4 * MS, true, 7, 12);
        }
        // Thread 8 for one sample, then the GIL is free.
        t.sample(112 * MS, true, 8, 13);
        t.sample(116 * MS, false, 8, 13);
        t.close();
        let seven = t.by_thread[&7];
        assert_eq!(seven.max_ns, 96 * MS);
        assert_eq!(seven.hist.iter().sum::<u64>(), 2);
        assert_eq!(seven.hist[26], 1, "96 ms is in [2^26, 2^27) ns");
        assert_eq!(seven.hist[22], 1, "8 ms is in [2^22, 2^23) ns");
        assert_eq!(t.by_thread[&8].max_ns, 0);
    }

    #[test]
    fn an_interval_keeps_only_the_stretches_that_ended_in_it() {
        let mut before = HoldStretches::default();
        before.hist[26] = 1; // one 96 ms stretch
        before.max_ns = 96 * MS;
        let mut now = before;
        now.hist[22] += 2; // then two ~5 ms stretches
        let d = now.since(&before);
        assert_eq!(d.hist.iter().sum::<u64>(), 2);
        assert_eq!(
            d.max_ns,
            1 << 23,
            "bounded by the 5 ms bucket, not the old 96 ms"
        );
        assert_eq!(now.since(&now).max_ns, 0);
    }
}
