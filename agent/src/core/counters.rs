//! The counters the kernel keeps, as plain domain data: what crosses from the
//! probes layer into the measuring core. No kernel padding, no kernel-side
//! state, no map names as strings; the probes convert their map values into
//! these once, when they read them.
//!
//! Every counter struct is cumulative and has `since` (what accumulated since
//! an earlier reading) and `add` (the sum of two), both saturating, generated
//! from its field list by the `counters!` macro so no field can be forgotten.

use std::collections::HashMap;

use crate::core::stacks::FrameSamples;

/// log2(ns) histogram slots: slot i counts durations in [2^i, 2^(i+1)) ns, the
/// same boundaries as an OpenTelemetry exponential histogram at scale 0.
pub const HIST_SLOTS: usize = 64;

/// A log2(ns) histogram (see [`HIST_SLOTS`]).
pub type Hist = [u64; HIST_SLOTS];

/// Distinct GIL holders an episode names (the first ones seen during the wait).
pub const EPISODE_HOLDERS: usize = 4;

/// One cumulative figure: a count, or a histogram of counts.
pub trait Counter: Copy {
    /// Nothing counted yet.
    const ZERO: Self;
    /// What accumulated since `prev`; a figure that went back (its kernel entry
    /// was deleted and made again) gives 0, not a wrapped number.
    fn since(&self, prev: &Self) -> Self;
    /// Adds `other` to this figure (saturating: a sum never wraps).
    fn add(&mut self, other: &Self);
}

impl Counter for u64 {
    const ZERO: Self = 0;
    fn since(&self, prev: &Self) -> Self {
        self.saturating_sub(*prev)
    }
    fn add(&mut self, other: &Self) {
        *self = self.saturating_add(*other);
    }
}

impl<const N: usize> Counter for [u64; N] {
    const ZERO: Self = [0; N];
    fn since(&self, prev: &Self) -> Self {
        let mut out = *self;
        for (o, p) in out.iter_mut().zip(prev) {
            *o = o.saturating_sub(*p);
        }
        out
    }
    fn add(&mut self, other: &Self) {
        for (o, a) in self.iter_mut().zip(other) {
            *o = o.saturating_add(*a);
        }
    }
}

/// A struct of [`Counter`] fields with `Default` (all zero), `since` and `add`
/// over every field, and `Counter` itself (so counter structs nest).
macro_rules! counters {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)+
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)+
        }

        impl Counter for $name {
            const ZERO: Self = Self { $($field: <$ty as Counter>::ZERO,)+ };
            fn since(&self, prev: &Self) -> Self {
                Self { $($field: self.$field.since(&prev.$field),)+ }
            }
            fn add(&mut self, other: &Self) {
                $(self.$field.add(&other.$field);)+
            }
        }

        impl Default for $name {
            fn default() -> Self {
                <Self as Counter>::ZERO
            }
        }

        impl $name {
            /// What accumulated since `prev` (saturating, see [`Counter::since`]).
            pub fn since(&self, prev: &Self) -> Self {
                Counter::since(self, prev)
            }

            /// Adds every figure of `other` (saturating).
            pub fn add(&mut self, other: &Self) {
                Counter::add(self, other)
            }
        }
    };
}

counters! {
    /// How one thread blocked, cumulative: GIL waits (take side, the GIL's
    /// mutex, forced switches), other futex waits, sleeps in other syscalls by
    /// family, and the GIL retakes after those sleeps.
    pub struct ThreadWaits {
        /// Waiting to take the GIL, timed-out slices merged into one wait.
        pub take_wait_ns: u64,
        /// Merged take waits.
        pub take_waits: u64,
        /// Take futex calls (musl: condvar wait calls) behind those waits.
        pub take_futex_calls: u64,
        /// Contending on the GIL's mutex.
        pub mutex_wait_ns: u64,
        pub mutex_waits: u64,
        /// Inside `drop_gil`, waiting for another thread to take it (forced switch).
        pub drop_wait_ns: u64,
        pub drop_waits: u64,
        /// Futex waits not on the GIL (locks, queues, conditions).
        pub other_wait_ns: u64,
        pub other_waits: u64,
        /// Take waits by length.
        pub take_hist: Hist,
        /// epoll/poll/select: an event loop's idle wait.
        pub poll_wait_ns: u64,
        pub poll_waits: u64,
        /// read/recv/accept families.
        pub read_wait_ns: u64,
        pub read_waits: u64,
        /// nanosleep/clock_nanosleep (`time.sleep`).
        pub sleep_wait_ns: u64,
        pub sleep_waits: u64,
        /// Any other syscall, or none (page fault).
        pub block_other_ns: u64,
        pub block_others: u64,
        /// Wakes from non-GIL sleeps: each must retake the GIL.
        pub block_returns: u64,
        /// Take waits that began right after such a wake (the rest found the GIL free).
        pub retake_waits: u64,
        pub retake_wait_ns: u64,
        /// Retake waits by length.
        pub retake_hist: Hist,
    }
}

/// A waiting thread and the GIL holder (its `PyThreadState *`, 0: unreadable)
/// it waited behind: who blocked whom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockedKey {
    pub waiter_tid: u32,
    pub holder_tstate: u64,
}

counters! {
    /// GIL wait one waiter spent behind one holder.
    pub struct BlockedWait {
        pub wait_ns: u64,
        /// Wait segments (take slices) behind that holder.
        pub segments: u64,
    }
}

counters! {
    /// GIL wait all waiters of a process spent behind holders running one
    /// Python stack (kept per stack id in the holders module).
    pub struct HolderWait {
        pub wait_ns: u64,
        /// Wait segments (take slices) that began behind that stack.
        pub segments: u64,
    }
}

counters! {
    /// Take-side wait on one GIL (a subinterpreter's own, or the main one).
    pub struct GilWait {
        pub take_wait_ns: u64,
        pub take_waits: u64,
    }
}

/// The wait counters of one process, cumulative since it was first watched.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WaitCounters {
    /// tid -> how that thread blocked.
    pub threads: HashMap<u32, ThreadWaits>,
    /// (waiter tid, holder thread state) -> wait behind that holder.
    pub blocked_by: HashMap<BlockedKey, BlockedWait>,
    /// GIL address -> take-side wait on that GIL.
    pub gils: HashMap<u64, GilWait>,
}

impl WaitCounters {
    /// What accumulated since `prev` (a thread or key absent from `prev` is new).
    pub fn since(&self, prev: &Self) -> Self {
        Self {
            threads: since_by_key(&self.threads, &prev.threads),
            blocked_by: since_by_key(&self.blocked_by, &prev.blocked_by),
            gils: since_by_key(&self.gils, &prev.gils),
        }
    }
}

/// `cur - prev` entry by entry; an entry new in `cur` counts from zero.
fn since_by_key<K: Copy + Eq + std::hash::Hash, V: Counter>(
    cur: &HashMap<K, V>,
    prev: &HashMap<K, V>,
) -> HashMap<K, V> {
    cur.iter()
        .map(|(k, v)| (*k, prev.get(k).map_or(*v, |p| v.since(p))))
        .collect()
}

counters! {
    /// How one thread parked on PyMutexes (free-threaded builds), cumulative.
    pub struct LockWaits {
        /// Parked waiting for a lock.
        pub park_ns: u64,
        pub parks: u64,
        /// Parked waiting for an event (thread join, start-up): not contention.
        pub event_ns: u64,
        pub events: u64,
        /// Lock parks by length.
        pub park_hist: Hist,
    }
}

counters! {
    /// Parking on one lock, by all threads of a process.
    pub struct LockParks {
        pub park_ns: u64,
        pub parks: u64,
    }
}

/// PyMutex contention of one process, cumulative since the probes were attached.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockCounters {
    /// tid -> that thread's parking.
    pub threads: HashMap<u32, LockWaits>,
    /// Lock address -> parking on it.
    pub locks: HashMap<u64, LockParks>,
}

counters! {
    /// Exact `take_gil`/`drop_gil` timing of one thread (`--precise`), cumulative.
    pub struct PreciseGil {
        /// Every `take_gil`, the uncontended ones included.
        pub take_calls: u64,
        /// Entry to return of `take_gil`.
        pub take_ns: u64,
        /// `take_gil` return to the next `drop_gil` entry.
        pub hold_ns: u64,
        pub holds: u64,
        /// `take_gil` calls by length.
        pub take_hist: Hist,
    }
}

counters! {
    /// The event-loop iterations of one thread, cumulative: each runs from a
    /// poll-family return (epoll_wait, poll, select and their variants) to
    /// the thread's next poll-family call, the time its loop ran callbacks.
    pub struct LoopIterations {
        /// Finished iterations, and their total length.
        pub iterations: u64,
        pub busy_ns: u64,
        /// Iterations at least as long as the probe's threshold
        /// (`LONG_ITERATION_NS` of the event-loop analysis), and their total length.
        pub long_iterations: u64,
        pub long_ns: u64,
        /// Poll-family calls returned, and how many of them were epoll calls
        /// (an event loop's selector; a socket timeout polls one fd with poll()).
        pub polls: u64,
        pub epolls: u64,
        /// Iterations by length.
        pub hist: Hist,
    }
}

/// One thread's event-loop iterations as the kernel keeps them: the counters,
/// the longest iteration, and the iteration running now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopThread {
    pub counted: LoopIterations,
    /// The longest finished iteration (over what `counted` covers).
    pub max_ns: u64,
    /// CLOCK_MONOTONIC ns at which the iteration running now began; `None`
    /// while the thread is inside a poll-family call. A sampler reads the
    /// loop thread's stack while this is long ago.
    pub running_since_ns: Option<u64>,
}

impl LoopThread {
    /// What happened since `prev` (the same thread, read earlier). The longest
    /// iteration is exact when it is new; otherwise it happened before, and
    /// the interval's longest is bounded by its histogram's top bucket.
    pub fn since(&self, prev: &Self) -> Self {
        let counted = self.counted.since(&prev.counted);
        let max_ns = if self.max_ns > prev.max_ns {
            self.max_ns
        } else {
            match counted.hist.iter().rposition(|&n| n > 0) {
                Some(slot) => top_of_slot(slot).min(self.max_ns),
                None => 0,
            }
        };
        Self {
            counted,
            max_ns,
            running_since_ns: self.running_since_ns,
        }
    }

    /// Adds another thread's (or an earlier part's) figures: the exited
    /// threads' row. The sum runs no iteration now.
    pub fn add(&mut self, other: &Self) {
        self.counted.add(&other.counted);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.running_since_ns = None;
    }
}

/// The largest duration of log2 slot `slot` (see [`HIST_SLOTS`]).
fn top_of_slot(slot: usize) -> u64 {
    match u32::try_from(slot + 1) {
        Ok(bits) if bits < 64 => (1u64 << bits) - 1,
        _ => u64::MAX,
    }
}

/// The event-loop iterations of every thread of one process that ever
/// returned from a poll-family call while watched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopCounters {
    /// CLOCK_MONOTONIC ns when they were read (the kernel's clock).
    pub at_ns: u64,
    /// tid -> its iterations.
    pub threads: HashMap<u32, LoopThread>,
    /// The frames the loop threads ran while an iteration was long, sampled
    /// by the watcher (empty where no one samples them).
    pub code: FrameSamples,
}

impl LoopCounters {
    /// What happened since `prev` (a thread absent from `prev` is new).
    pub fn since(&self, prev: &Self) -> Self {
        Self {
            at_ns: self.at_ns,
            threads: self
                .threads
                .iter()
                .map(|(tid, t)| (*tid, prev.threads.get(tid).map_or(*t, |p| t.since(p))))
                .collect(),
            code: self.code.since(&prev.code),
        }
    }
}

/// One event-loop iteration that blocked its loop (at least the probe's
/// threshold), as the kernel recorded it when it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LongIteration {
    /// The process and the loop thread.
    pub tgid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC ns: the poll return that began it, the next poll call.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// The kernel maps that can run full: the futex probe's per-thread, per-GIL
/// and holder-stack maps, then their counterparts of musl's condvar probe (the
/// same number, in the same order), then the event-loop probe's per-thread
/// map. An insert that finds one full loses a wait (or its holder's stack, or
/// a thread's loop iterations), and the probes count every such insert, so a
/// report or the daemon can say which map and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelMap {
    /// Per-thread wait counters.
    ThreadWaits,
    /// (waiter, holder) pairs.
    BlockedBy,
    /// Waits in progress.
    Inflight,
    /// Per (process, GIL) take waits.
    GilWaits,
    /// Distinct GIL holder stacks per process.
    HolderStacks,
    /// Per (process, holder stack) GIL waits.
    HolderWaits,
    /// musl: per-thread condvar-wait counters.
    CondWaits,
    /// musl: (waiter, holder) pairs.
    CondBlockedBy,
    /// musl: condvar waits in progress.
    CondInflight,
    /// musl: per (process, GIL) take waits.
    CondGilWaits,
    /// musl: distinct GIL holder stacks.
    CondHolderStacks,
    /// musl: per (process, holder stack) GIL waits.
    CondHolderWaits,
    /// Per-thread event-loop iterations.
    LoopThreads,
}

impl KernelMap {
    /// Every map, the futex probe's first.
    pub const ALL: [Self; 13] = [
        Self::ThreadWaits,
        Self::BlockedBy,
        Self::Inflight,
        Self::GilWaits,
        Self::HolderStacks,
        Self::HolderWaits,
        Self::CondWaits,
        Self::CondBlockedBy,
        Self::CondInflight,
        Self::CondGilWaits,
        Self::CondHolderStacks,
        Self::CondHolderWaits,
        Self::LoopThreads,
    ];

    /// The map's name in the BPF object (and in logs and metric attributes).
    pub fn name(self) -> &'static str {
        match self {
            Self::ThreadWaits => "thread_waits",
            Self::BlockedBy => "blocked_by",
            Self::Inflight => "inflight",
            Self::GilWaits => "gil_waits",
            Self::HolderStacks => "holder_stacks",
            Self::HolderWaits => "holder_waits",
            Self::CondWaits => "cond_waits",
            Self::CondBlockedBy => "cond_blocked_by",
            Self::CondInflight => "cond_inflight",
            Self::CondGilWaits => "cond_gil_waits",
            Self::CondHolderStacks => "cond_holder_stacks",
            Self::CondHolderWaits => "cond_holder_waits",
            Self::LoopThreads => "loop_threads",
        }
    }

    /// A map of musl's condvar probe (it exists only while a musl process is watched).
    pub fn is_condwait(self) -> bool {
        matches!(
            self,
            Self::CondWaits
                | Self::CondBlockedBy
                | Self::CondInflight
                | Self::CondGilWaits
                | Self::CondHolderStacks
                | Self::CondHolderWaits
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Inserts the kernel could not make because a map was full, per map,
/// cumulative since the probe was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntriesDropped([u64; KernelMap::ALL.len()]);

impl EntriesDropped {
    /// Failed inserts into `map`.
    pub fn get(&self, map: KernelMap) -> u64 {
        self.0[map.index()]
    }

    /// Sets the count of `map` (as a probe read it).
    pub fn set(&mut self, map: KernelMap, n: u64) {
        self.0[map.index()] = n;
    }

    /// Adds every count of `other` (another probe's, or a released one's).
    pub fn add(&mut self, other: &Self) {
        self.0.add(&other.0);
    }

    /// Every map and its count, in [`KernelMap::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (KernelMap, u64)> + '_ {
        KernelMap::ALL.into_iter().map(|m| (m, self.get(m)))
    }
}

/// One long GIL wait of one thread, as the kernel recorded it when it ended:
/// the raw material of a contention span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitEpisode {
    /// The process.
    pub tgid: u32,
    /// The waiting thread.
    pub tid: u32,
    /// CLOCK_MONOTONIC ns.
    pub start_ns: u64,
    pub end_ns: u64,
    /// The GIL waited for (a subinterpreter's own, or the main one).
    pub gil_addr: u64,
    /// `PyThreadState *` of the holders seen, in order; 0 = unused slot.
    pub holders: [u64; EPISODE_HOLDERS],
    /// Take futex calls (timed-out slices plus the last one).
    pub slices: u32,
    /// The wait began right after a wake from a non-GIL sleep (a retake).
    pub retake: bool,
    /// The holder's stack when the wait's last slice began (a
    /// holder stack id, as the holders module counts waits by); `None` where holders' stacks are
    /// not captured.
    pub holder_stack: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_counters_subtract_every_field() {
        let mut prev = ThreadWaits {
            take_wait_ns: 100,
            take_waits: 1,
            ..ThreadWaits::default()
        };
        prev.take_hist[3] = 1;
        let mut cur = ThreadWaits {
            take_wait_ns: 350,
            take_waits: 3,
            other_wait_ns: 9,
            retake_wait_ns: 4,
            ..ThreadWaits::default()
        };
        cur.take_hist[3] = 2;
        cur.take_hist[63] = 5;
        cur.retake_hist[1] = 1;
        let d = cur.since(&prev);
        assert_eq!((d.take_wait_ns, d.take_waits, d.other_wait_ns), (250, 2, 9));
        assert_eq!((d.take_hist[3], d.take_hist[63]), (1, 5));
        assert_eq!((d.retake_wait_ns, d.retake_hist[1]), (4, 1));
        // A counter that went backwards (entry re-created) gives 0, not a wrap.
        assert_eq!(prev.since(&cur).take_wait_ns, 0);
        let b = BlockedWait {
            wait_ns: 10,
            segments: 2,
        };
        let before = BlockedWait {
            wait_ns: 4,
            segments: 1,
        };
        assert_eq!(
            b.since(&before),
            BlockedWait {
                wait_ns: 6,
                segments: 1
            }
        );
    }

    #[test]
    fn adding_sums_every_field_and_never_wraps() {
        let mut a = ThreadWaits {
            take_wait_ns: 1,
            block_returns: 2,
            ..ThreadWaits::default()
        };
        a.retake_hist[5] = 7;
        let mut b = ThreadWaits {
            take_wait_ns: 10,
            block_returns: u64::MAX,
            sleep_waits: 3,
            ..ThreadWaits::default()
        };
        b.retake_hist[5] = 1;
        a.add(&b);
        assert_eq!((a.take_wait_ns, a.sleep_waits), (11, 3));
        assert_eq!(a.block_returns, u64::MAX);
        assert_eq!(a.retake_hist[5], 8);
        assert_eq!(a.since(&a), ThreadWaits::default());
    }

    #[test]
    fn counters_of_a_process_count_new_keys_from_zero() {
        let key = BlockedKey {
            waiter_tid: 7,
            holder_tstate: 0xa,
        };
        let mut prev = WaitCounters::default();
        prev.gils.insert(
            0x1000,
            GilWait {
                take_wait_ns: 5,
                take_waits: 1,
            },
        );
        let mut cur = prev.clone();
        cur.gils.insert(
            0x1000,
            GilWait {
                take_wait_ns: 8,
                take_waits: 1,
            },
        );
        cur.blocked_by.insert(
            key,
            BlockedWait {
                wait_ns: 3,
                segments: 1,
            },
        );
        let d = cur.since(&prev);
        assert_eq!(d.gils[&0x1000].take_wait_ns, 3);
        assert_eq!(d.blocked_by[&key].wait_ns, 3, "a new pair counts whole");
    }

    #[test]
    fn every_kernel_map_has_its_own_count_and_name() {
        let mut a = EntriesDropped::default();
        a.set(KernelMap::ThreadWaits, 5);
        let mut b = EntriesDropped::default();
        b.set(KernelMap::CondWaits, 2);
        b.set(KernelMap::ThreadWaits, 1);
        a.add(&b);
        let counts: Vec<(KernelMap, u64)> = a.iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            counts,
            [(KernelMap::ThreadWaits, 6), (KernelMap::CondWaits, 2)]
        );
        let names: std::collections::HashSet<&str> =
            KernelMap::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), KernelMap::ALL.len());
        // The futex probe's maps, as many of the condvar probe's, then the
        // event-loop probe's one.
        let per_wait_probe = (KernelMap::ALL.len() - 1) / 2;
        for (i, map) in KernelMap::ALL.iter().enumerate() {
            assert_eq!(map.index(), i, "ALL is in declaration order");
            let condwait = (per_wait_probe..2 * per_wait_probe).contains(&i);
            assert_eq!(map.is_condwait(), condwait, "{map:?}");
        }
        assert_eq!(KernelMap::ALL.last(), Some(&KernelMap::LoopThreads));
    }
}
