//! Exited threads of a long-lived process, folded into one row: the pure
//! bookkeeping (which threads are due, the row's sums, the rebase of an earlier
//! snapshot). Taking their entries out of the kernel maps and the sampler is
//! `watch::retire`'s.
//!
//! The kernel keeps each thread's cumulative counters under its tid until user
//! space deletes them, and a watcher keeps each thread's last CPU figures so an
//! exited thread keeps its share. A server that starts a thread per request
//! would fill the 65,536-entry kernel maps shared by every watched process (new
//! threads then go uncounted) and the watcher's own tables. So a thread gone
//! from procfs for [`RETIRE_AFTER`], or the oldest gone ones beyond
//! [`GONE_KEPT`], is *retired*: its last counters are added to one row under
//! [`EXITED_TID`] and its kernel entries are deleted.
//!
//! Intervals stay exact: [`rebase`] moves every thread of the earlier snapshot
//! that the later one no longer lists into that row, so the row's difference is
//! exactly what the retired threads did in between, and process totals never
//! jump or fall.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::core::counters::{
    BlockedKey, BlockedWait, LoopCounters, LoopThread, ThreadWaits, WaitCounters,
};
use crate::core::cpu::ThreadSample;
use crate::core::samples::{GilSamples, HoldStretches};

/// The tid of the row that stands for every retired thread. No kernel tid is
/// this large (`pid_max` is at most 2^22), and 0 already means "unknown holder".
pub const EXITED_TID: u32 = u32::MAX;

/// The name of that row in reports.
pub const EXITED_NAME: &str = "(exited threads)";

/// How long an exited thread keeps its own row before it is folded away: long
/// enough that the interval in which it exited (10 s by default in `run`, 1 s in
/// `top`) still shows it by name.
pub const RETIRE_AFTER: Duration = Duration::from_secs(30);

/// Exited threads kept by name per process; older ones are retired sooner. A
/// thread-per-request server at 1000 requests/s then holds at most this many
/// dead threads' kernel entries, not 30,000.
pub const GONE_KEPT: usize = 64;

/// How often a watcher looks for exited threads to retire (a look that finds
/// some reads one kernel map in full).
pub const RETIRE_EVERY: Duration = Duration::from_secs(5);

/// A thread must have been gone this long before it is retired, so that a
/// thread that appeared in the kernel maps just before its first procfs read
/// is not taken for a dead one.
const MIN_GONE: Duration = Duration::from_secs(2);

/// How long a released tid is still filtered out of kernel reads: a read taken
/// before the release (the daemon reads all processes at once) still lists it.
const RECENT_FOR: Duration = Duration::from_secs(60);

/// What the retired threads of one process did, and which threads are gone.
#[derive(Debug, Default)]
pub struct Retirement {
    /// Threads gone (from procfs, or seen only in the kernel maps) and since when.
    gone: HashMap<u32, Instant>,
    /// Released lately, and when.
    recent: HashMap<u32, Instant>,
    cpu_ns: u64,
    runqueue_ns: u64,
    waits: ThreadWaits,
    /// Holder thread state -> the retired threads' waits behind it.
    blocked: HashMap<u64, BlockedWait>,
    held_by: u64,
    stretches: HoldStretches,
    /// The retired threads' event-loop iterations (`None`: no loop thread retired).
    loops: Option<LoopThread>,
    /// Threads retired so far.
    retired: u64,
    /// When [`Retirement::look`] last looked for due threads.
    looked: Option<Instant>,
}

impl Retirement {
    /// Threads retired so far (for logs and tests).
    pub fn retired(&self) -> u64 {
        self.retired
    }

    /// Threads gone and still held by name.
    pub fn gone(&self) -> usize {
        self.gone.len()
    }

    /// Notes which of `known` tids are not in `live` (sorted), from `now` on;
    /// a gone tid seen alive again (a new thread with a reused tid) is not gone.
    pub fn note(&mut self, known: impl Iterator<Item = u32>, live: &[u32], now: Instant) {
        self.gone.retain(|tid, _| live.binary_search(tid).is_err());
        for tid in known {
            if tid != EXITED_TID && live.binary_search(&tid).is_err() {
                self.gone.entry(tid).or_insert(now);
            }
        }
    }

    /// The gone threads to retire now: gone for [`RETIRE_AFTER`], and the
    /// oldest beyond [`GONE_KEPT`] once gone for a moment.
    pub fn due(&self, now: Instant) -> Vec<u32> {
        let mut by_age: Vec<(Instant, u32)> = self.gone.iter().map(|(t, at)| (*at, *t)).collect();
        by_age.sort_unstable();
        let excess = by_age.len().saturating_sub(GONE_KEPT);
        by_age
            .iter()
            .enumerate()
            .filter(|(i, (at, _))| {
                let age = now.saturating_duration_since(*at);
                age >= RETIRE_AFTER || (*i < excess && age >= MIN_GONE)
            })
            .map(|(_, (_, tid))| *tid)
            .collect()
    }

    /// The threads to retire now ([`Retirement::due`]), looking at most every
    /// [`RETIRE_EVERY`] (between looks: none): a look that finds some makes the
    /// caller read a kernel map in full.
    pub fn look(&mut self, now: Instant) -> Vec<u32> {
        if self
            .looked
            .is_some_and(|at| now.saturating_duration_since(at) < RETIRE_EVERY)
        {
            return Vec::new();
        }
        self.looked = Some(now);
        self.due(now)
    }

    /// Adds the last figures of retired threads to the row: their CPU, the
    /// kernel entries just taken for them, and what the GIL sampler saw of them.
    pub fn fold(
        &mut self,
        tids: &[u32],
        cpu: &mut BTreeMap<u32, ThreadSample>,
        taken: &WaitCounters,
        now: Instant,
    ) {
        for tid in tids {
            if let Some(sample) = cpu.remove(tid) {
                self.cpu_ns += sample.on_cpu_ns;
                self.runqueue_ns += sample.runqueue_ns;
            }
            if let Some(w) = taken.threads.get(tid) {
                self.waits.add(w);
            }
            self.gone.remove(tid);
            self.recent.insert(*tid, now);
        }
        for (key, val) in &taken.blocked_by {
            self.blocked.entry(key.holder_tstate).or_default().add(val);
        }
        self.retired += tids.len() as u64;
        self.recent
            .retain(|_, at| now.saturating_duration_since(*at) < RECENT_FOR);
    }

    /// Folds the sampler's per-thread tallies of retired threads (taken out of
    /// the sampler by the caller) into the row.
    pub fn fold_samples(&mut self, held_by: u64, stretches: &[HoldStretches]) {
        self.held_by += held_by;
        for s in stretches {
            add_stretches(&mut self.stretches, s);
        }
    }

    /// Folds the event-loop iterations of retired threads (taken out of the
    /// event-loop probe by the caller) into the row.
    pub fn fold_loops(&mut self, taken: &HashMap<u32, LoopThread>) {
        for t in taken.values() {
            self.loops.get_or_insert_with(LoopThread::default).add(t);
        }
    }

    /// Puts the row's event-loop iterations into a snapshot's, and drops
    /// released threads that a read taken before their release still listed.
    pub fn apply_loops(&self, loops: &mut LoopCounters, live: &[u32]) {
        let stale = |tid: &u32| self.recent.contains_key(tid) && live.binary_search(tid).is_err();
        loops.threads.retain(|tid, _| !stale(tid));
        if let Some(row) = self.loops {
            loops.threads.insert(EXITED_TID, row);
        }
    }

    /// Puts the row into a snapshot's figures, and drops released threads that
    /// a kernel read taken before their release still listed.
    pub fn apply(
        &self,
        threads: &mut BTreeMap<u32, ThreadSample>,
        waits: &mut WaitCounters,
        gil: &mut GilSamples,
        live: &[u32],
    ) {
        let stale = |tid: &u32| self.recent.contains_key(tid) && live.binary_search(tid).is_err();
        waits.threads.retain(|tid, _| !stale(tid));
        waits.blocked_by.retain(|k, _| !stale(&k.waiter_tid));
        if self.retired == 0 {
            return;
        }
        threads.insert(
            EXITED_TID,
            ThreadSample {
                on_cpu_ns: self.cpu_ns,
                runqueue_ns: self.runqueue_ns,
                ..exited_sample()
            },
        );
        waits.threads.insert(EXITED_TID, self.waits);
        for (holder, val) in &self.blocked {
            waits.blocked_by.insert(exited_key(*holder), *val);
        }
        if self.held_by > 0 {
            gil.held_by.insert(EXITED_TID, self.held_by);
        }
        if self.stretches != HoldStretches::default() {
            gil.stretches.insert(EXITED_TID, self.stretches);
        }
    }
}

/// The blocked-by key of the exited-threads row behind `holder`.
fn exited_key(holder: u64) -> BlockedKey {
    BlockedKey {
        waiter_tid: EXITED_TID,
        holder_tstate: holder,
    }
}

/// `prev` as it would read had every thread that `cur` no longer lists been
/// retired already: their figures move into the exited-threads row. The
/// difference `cur - rebase(prev, cur)` is then exact for every row, the
/// exited one included (threads leave a snapshot only by being retired).
pub fn rebase(
    prev_threads: &BTreeMap<u32, ThreadSample>,
    prev_waits: &WaitCounters,
    prev_gil: &GilSamples,
    cur_threads: &BTreeMap<u32, ThreadSample>,
    cur_waits: &WaitCounters,
    cur_gil: &GilSamples,
) -> (BTreeMap<u32, ThreadSample>, WaitCounters, GilSamples) {
    let mut threads = prev_threads.clone();
    rebase_cpu(&mut threads, cur_threads);
    let mut waits = prev_waits.clone();
    rebase_waits(&mut waits, cur_waits);
    let mut gil = prev_gil.clone();
    rebase_samples(&mut gil, cur_gil);
    (threads, waits, gil)
}

/// [`rebase`] of the event-loop iterations: `prev` as it would read had every
/// thread that `cur` no longer lists been retired already.
pub fn rebase_loops(prev: &LoopCounters, cur: &LoopCounters) -> LoopCounters {
    let mut out = prev.clone();
    for tid in left(prev.threads.keys(), |t| cur.threads.contains_key(t)) {
        if let Some(t) = out.threads.remove(&tid) {
            out.threads.entry(EXITED_TID).or_default().add(&t);
        }
    }
    out
}

/// The tids among `prev` that the later snapshot no longer lists (`listed`
/// says whether it does), the exited-threads row aside.
fn left<'a>(prev: impl Iterator<Item = &'a u32>, listed: impl Fn(&u32) -> bool) -> Vec<u32> {
    prev.filter(|t| **t != EXITED_TID && !listed(t))
        .copied()
        .collect()
}

/// The exited-threads row of the procfs figures, empty.
fn exited_sample() -> ThreadSample {
    ThreadSample {
        tid: EXITED_TID,
        os_name: EXITED_NAME.to_string(),
        on_cpu_ns: 0,
        runqueue_ns: 0,
    }
}

/// [`rebase`] of the procfs figures.
fn rebase_cpu(threads: &mut BTreeMap<u32, ThreadSample>, cur: &BTreeMap<u32, ThreadSample>) {
    for tid in left(threads.keys(), |t| cur.contains_key(t)) {
        if let Some(s) = threads.remove(&tid) {
            let row = threads.entry(EXITED_TID).or_insert_with(exited_sample);
            row.on_cpu_ns += s.on_cpu_ns;
            row.runqueue_ns += s.runqueue_ns;
        }
    }
}

/// [`rebase`] of the kernel's wait counters: the threads' own, and the
/// blocked-by pairs they were the waiter of (kept per holder in the row).
fn rebase_waits(waits: &mut WaitCounters, cur: &WaitCounters) {
    let gone: HashSet<u32> = left(waits.threads.keys(), |t| cur.threads.contains_key(t))
        .into_iter()
        .collect();
    for tid in &gone {
        if let Some(w) = waits.threads.remove(tid) {
            waits.threads.entry(EXITED_TID).or_default().add(&w);
        }
    }
    let moved: Vec<(BlockedKey, BlockedWait)> = waits
        .blocked_by
        .iter()
        .filter(|(k, _)| gone.contains(&k.waiter_tid))
        .map(|(k, v)| (*k, *v))
        .collect();
    for (key, val) in moved {
        waits.blocked_by.remove(&key);
        waits
            .blocked_by
            .entry(exited_key(key.holder_tstate))
            .or_default()
            .add(&val);
    }
}

/// [`rebase`] of the GIL sampler's tallies.
fn rebase_samples(gil: &mut GilSamples, cur: &GilSamples) {
    for tid in left(gil.held_by.keys(), |t| cur.held_by.contains_key(t)) {
        if let Some(n) = gil.held_by.remove(&tid) {
            *gil.held_by.entry(EXITED_TID).or_default() += n;
        }
    }
    for tid in left(gil.stretches.keys(), |t| cur.stretches.contains_key(t)) {
        if let Some(s) = gil.stretches.remove(&tid) {
            add_stretches(gil.stretches.entry(EXITED_TID).or_default(), &s);
        }
    }
}

fn add_stretches(into: &mut HoldStretches, s: &HoldStretches) {
    for (a, b) in into.hist.iter_mut().zip(s.hist.iter()) {
        *a += b;
    }
    into.max_ns = into.max_ns.max(s.max_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tid: u32, cpu_ns: u64) -> ThreadSample {
        ThreadSample {
            tid,
            os_name: format!("t{tid}"),
            on_cpu_ns: cpu_ns,
            runqueue_ns: cpu_ns / 10,
        }
    }

    fn waits(take_ns: u64) -> ThreadWaits {
        ThreadWaits {
            take_wait_ns: take_ns,
            take_waits: take_ns / 1000,
            ..ThreadWaits::default()
        }
    }

    fn blocked(tid: u32, holder: u64) -> BlockedKey {
        BlockedKey {
            waiter_tid: tid,
            holder_tstate: holder,
        }
    }

    /// Sum of a figure over every row of an interval.
    fn total_cpu(cur: &BTreeMap<u32, ThreadSample>, prev: &BTreeMap<u32, ThreadSample>) -> u64 {
        cur.iter()
            .map(|(t, s)| {
                s.on_cpu_ns
                    .saturating_sub(prev.get(t).map_or(0, |p| p.on_cpu_ns))
            })
            .sum()
    }

    #[test]
    fn retiring_a_thread_keeps_every_interval_exact() {
        let t0 = Instant::now();
        let mut r = Retirement::default();
        // Snapshot A: threads 10 and 11 alive.
        let mut cpu: BTreeMap<u32, ThreadSample> =
            [(10, sample(10, 100)), (11, sample(11, 200))].into();
        let mut kernel = WaitCounters::default();
        kernel.threads.insert(10, waits(5_000));
        kernel.threads.insert(11, waits(7_000));
        kernel.blocked_by.insert(
            blocked(11, 0xa),
            BlockedWait {
                wait_ns: 7_000,
                segments: 3,
            },
        );
        let a_threads = cpu.clone();
        let a_waits = kernel.clone();
        let a_gil = GilSamples::default();

        // Thread 11 runs on (cpu 200 -> 260, waits 7000 -> 9000), exits, and is retired.
        cpu.insert(11, sample(11, 260));
        kernel.threads.insert(11, waits(9_000));
        kernel.blocked_by.insert(
            blocked(11, 0xa),
            BlockedWait {
                wait_ns: 9_000,
                segments: 4,
            },
        );
        r.note(cpu.keys().copied(), &[10], t0);
        assert_eq!(r.due(t0), Vec::<u32>::new(), "not before RETIRE_AFTER");
        let later = t0 + RETIRE_AFTER;
        assert_eq!(r.due(later), vec![11]);
        let taken = WaitCounters {
            threads: [(11, kernel.threads[&11])].into(),
            blocked_by: [(blocked(11, 0xa), kernel.blocked_by[&blocked(11, 0xa)])].into(),
            gils: HashMap::new(),
        };
        kernel.threads.remove(&11);
        kernel.blocked_by.clear();
        r.fold(&[11], &mut cpu, &taken, later);
        assert!(!cpu.contains_key(&11));
        assert_eq!(r.retired(), 1);

        // Snapshot B: thread 10 ran 50 ns more; 11 is only in the row.
        cpu.insert(10, sample(10, 150));
        kernel.threads.insert(10, waits(6_000));
        let mut b_threads = cpu.clone();
        let mut b_waits = kernel.clone();
        let mut b_gil = GilSamples::default();
        r.apply(&mut b_threads, &mut b_waits, &mut b_gil, &[10]);
        assert_eq!(b_threads[&EXITED_TID].on_cpu_ns, 260);
        assert_eq!(b_waits.threads[&EXITED_TID].take_wait_ns, 9_000);
        assert_eq!(b_waits.blocked_by[&exited_key(0xa)].wait_ns, 9_000);

        // A -> B: thread 10 +50, retired row +60 CPU and +2000 wait, nothing counted twice.
        let (pa, pw, _) = rebase(&a_threads, &a_waits, &a_gil, &b_threads, &b_waits, &b_gil);
        assert_eq!(total_cpu(&b_threads, &pa), 50 + 60);
        let d = b_waits.since(&pw);
        assert_eq!(d.threads[&10].take_wait_ns, 1_000);
        assert_eq!(d.threads[&EXITED_TID].take_wait_ns, 2_000);
        assert_eq!(d.blocked_by[&exited_key(0xa)].wait_ns, 2_000);
        assert_eq!(d.blocked_by[&exited_key(0xa)].segments, 1);

        // B -> B': nothing happened, the row does not move.
        let (pb, pbw, _) = rebase(&b_threads, &b_waits, &b_gil, &b_threads, &b_waits, &b_gil);
        assert_eq!(total_cpu(&b_threads, &pb), 0);
        assert_eq!(b_waits.since(&pbw).threads[&EXITED_TID].take_wait_ns, 0);
    }

    #[test]
    fn a_stale_kernel_read_does_not_count_a_released_thread_twice() {
        let t0 = Instant::now();
        let mut r = Retirement::default();
        let mut cpu: BTreeMap<u32, ThreadSample> = [(11, sample(11, 200))].into();
        let taken = WaitCounters {
            threads: [(11, waits(9_000))].into(),
            ..WaitCounters::default()
        };
        r.note([11].into_iter(), &[], t0);
        r.fold(&[11], &mut cpu, &taken, t0);
        // A read from before the release still lists 11.
        let mut stale = taken.clone();
        let mut threads = BTreeMap::new();
        r.apply(&mut threads, &mut stale, &mut GilSamples::default(), &[]);
        assert!(!stale.threads.contains_key(&11));
        assert_eq!(stale.threads[&EXITED_TID].take_wait_ns, 9_000);
        // A new thread that got tid 11 is counted as itself.
        let mut fresh = taken.clone();
        r.apply(&mut threads, &mut fresh, &mut GilSamples::default(), &[11]);
        assert!(fresh.threads.contains_key(&11));
    }

    #[test]
    fn beyond_the_kept_number_the_oldest_gone_threads_go_first() {
        let t0 = Instant::now();
        let mut r = Retirement::default();
        for i in 0..(GONE_KEPT as u32 + 10) {
            r.note(
                [1000 + i].into_iter(),
                &[],
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        // Not before they have been gone a moment.
        assert!(r.due(t0).is_empty());
        let due = r.due(t0 + MIN_GONE + Duration::from_secs(1));
        assert_eq!(due, (1000..1010).collect::<Vec<u32>>());
        // A tid alive again is not gone.
        r.note(std::iter::empty(), &[1000], t0);
        assert!(!r.due(t0 + RETIRE_AFTER * 2).contains(&1000));
    }

    #[test]
    fn a_look_for_due_threads_is_taken_at_most_every_few_seconds() {
        let t0 = Instant::now();
        let mut r = Retirement::default();
        r.note([11].into_iter(), &[], t0);
        let late = t0 + RETIRE_AFTER;
        assert_eq!(r.look(late), vec![11]);
        assert!(r.look(late + Duration::from_secs(1)).is_empty(), "too soon");
        assert_eq!(r.look(late + RETIRE_EVERY), vec![11], "still due");
    }

    #[test]
    fn hold_samples_of_retired_threads_move_into_the_row() {
        let mut prev = GilSamples::default();
        prev.held_by.insert(11, 40);
        prev.held_by.insert(10, 5);
        let mut cur = GilSamples::default();
        cur.held_by.insert(10, 9);
        cur.held_by.insert(EXITED_TID, 55);
        let (_, _, rebased) = rebase(
            &BTreeMap::new(),
            &WaitCounters::default(),
            &prev,
            &BTreeMap::new(),
            &WaitCounters::default(),
            &cur,
        );
        let d = cur.since(&rebased);
        assert_eq!(d.held_by[&10], 4);
        assert_eq!(d.held_by[&EXITED_TID], 15);
    }

    fn loop_thread(iterations: u64, long_ns: u64, max_ns: u64) -> LoopThread {
        let mut t = LoopThread::default();
        t.counted.iterations = iterations;
        t.counted.long_iterations = u64::from(long_ns > 0);
        t.counted.long_ns = long_ns;
        t.counted.hist[20] = iterations;
        t.max_ns = max_ns;
        t
    }

    #[test]
    fn a_retired_loop_thread_keeps_its_iterations_in_the_row_and_intervals_stay_exact() {
        let t0 = Instant::now();
        let mut r = Retirement::default();
        // Snapshot A: loop threads 10 and 11.
        let a = LoopCounters {
            at_ns: 1,
            threads: [
                (10, loop_thread(100, 0, 1_000)),
                (11, loop_thread(50, 0, 2_000)),
            ]
            .into(),
            code: Default::default(),
        };
        // Thread 11 iterates 30 more times, one of them long, exits and is retired.
        let taken: HashMap<u32, LoopThread> =
            [(11, loop_thread(80, 40_000_000, 40_000_000))].into();
        r.note([11].into_iter(), &[10], t0);
        r.fold(
            &[11],
            &mut BTreeMap::new(),
            &WaitCounters::default(),
            t0 + RETIRE_AFTER,
        );
        r.fold_loops(&taken);
        // Snapshot B: thread 10 iterated 5 more times; 11 lives on in the row only.
        let mut b = LoopCounters {
            at_ns: 2,
            threads: [(10, loop_thread(105, 0, 1_000))].into(),
            code: Default::default(),
        };
        r.apply_loops(&mut b, &[10]);
        assert_eq!(b.threads[&EXITED_TID].counted.iterations, 80);
        let d = b.since(&rebase_loops(&a, &b));
        assert_eq!(d.threads[&10].counted.iterations, 5);
        let row = d.threads[&EXITED_TID];
        assert_eq!(
            (row.counted.iterations, row.counted.long_ns),
            (30, 40_000_000)
        );
        assert_eq!(
            row.max_ns, 40_000_000,
            "the longest iteration is new: exact"
        );
        // B -> B: nothing moves.
        let again = b.since(&rebase_loops(&b, &b));
        assert_eq!(again.threads[&EXITED_TID].counted.iterations, 0);
        assert_eq!(again.threads[&EXITED_TID].max_ns, 0);
    }
}
