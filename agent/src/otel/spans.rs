//! GIL contention episodes, from kernel records to the spans of one interval.
//!
//! The wait probe sends one [`WaitEpisode`] per merged GIL wait over the span
//! threshold. Every poll the daemon drains them and [`Episodes::record`] resolves
//! the holder thread states to tids at once (a thread state is freed, and its
//! memory reused, when its thread exits). At the end of an interval
//! [`Episodes::take`] names the threads (names outlive their threads in the
//! watch, and are read at most one tick after a thread starts), merges the
//! records of one thread that follow each other
//! within [`MERGE_GAP_NS`], then lets through at most the per-process rate (a
//! token bucket driven by the episodes' own end times, so the limit holds
//! however late the interval flushes) and counts what it held back; those counts
//! become the `cpython.gil.episodes` counter next to the process's metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::core::counters::{LongIteration, WaitEpisode};
use crate::core::stacks::Frame;

use crate::otel::catalog::GIL_EPISODES;
use crate::otel::series::{Point, Value};
use crate::otel::Temporality;

/// GIL contention spans: which waits become spans and how many a process may send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanSettings {
    /// A merged GIL wait at least this long is an episode.
    pub threshold: Duration,
    /// Spans per second per process (token bucket refill; the burst is the same number).
    pub rate_per_second: f64,
}

/// Two long waits of one thread with less than this between them are one
/// episode: the thread got the GIL but ran under 1 ms (the kernel's own
/// slice-merging gap) before waiting again, so it was in effect still waiting.
/// Records are merged within one interval; a pair split by an interval
/// boundary stays two spans.
pub const MERGE_GAP_NS: u64 = 1_000_000;

/// The most records (GIL episodes, and long loop iterations apart) one
/// process keeps between two interval flushes; later ones are counted as
/// rate-limited at once. The bucket passes at most its burst plus its rate
/// times the interval, far fewer; this only bounds the memory a process that
/// makes thousands a second can take before the interval ends (issue 14).
pub const MAX_PENDING_RECORDS: usize = 4096;

/// One contention episode, resolved: what a span says.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub pid: u32,
    /// The waiting thread and its name (Python `threading` name, else the OS name).
    pub tid: u32,
    pub thread_name: String,
    /// CLOCK_MONOTONIC ns, as the kernel stamped them.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Time actually spent waiting (without the sub-millisecond runs between merged records).
    pub wait_ns: u64,
    /// Threads that held the GIL during the wait, in order seen (never the waiter).
    pub holders: Vec<(u32, String)>,
    /// take_gil futex calls (timed-out slices) over the episode.
    pub slices: u32,
    /// It began right after a blocking call returned (the GIL's residual latency).
    pub retake: bool,
    /// Kernel records merged into this one.
    pub records: u32,
    /// The holder's stack id (first record's that has one), named in `code`.
    pub holder_stack: Option<u64>,
    /// The code the holder ran when the wait (its last slice) began.
    pub code: Option<Frame>,
}

/// One event-loop iteration that blocked its loop, resolved: what its span says.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopIterationSpan {
    pub pid: u32,
    /// The loop thread and its name.
    pub tid: u32,
    pub thread_name: String,
    /// CLOCK_MONOTONIC ns: the poll return that began it, the next poll call.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the daemon knows about a watched process's threads, for resolving a record.
pub trait ThreadLookup {
    /// The tid behind a `PyThreadState *`, while that thread state still exists.
    fn tid_of_tstate(&self, tstate: u64) -> Option<u32>;
    /// A thread's name for people.
    fn thread_name(&self, tid: u32) -> String;
    /// The running frame of a captured holder stack, where it was named.
    fn holder_code(&self, stack: u64) -> Option<Frame>;
}

/// Whether every holder the record names is the waiter itself.
fn own_tstate_only(record: &WaitEpisode, threads: &dyn ThreadLookup) -> bool {
    let mut named = record.holders.iter().filter(|t| **t != 0).peekable();
    named.peek().is_some() && named.all(|t| threads.tid_of_tstate(*t) == Some(record.tid))
}

/// Token bucket of one process: `rate` spans a second, bursts up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ns: Option<u64>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_second,
            burst,
            tokens: burst,
            last_ns: None,
        }
    }

    /// Whether an event at `at_ns` (monotonic; events in time order) may pass.
    pub fn admit(&mut self, at_ns: u64) -> bool {
        if let Some(last) = self.last_ns {
            let elapsed_s = at_ns.saturating_sub(last) as f64 / 1e9;
            self.tokens = (self.tokens + elapsed_s * self.rate).min(self.burst);
        }
        self.last_ns = Some(self.last_ns.map_or(at_ns, |l| l.max(at_ns)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Merges consecutive records of the same thread on the same GIL whose gap is
/// below [`MERGE_GAP_NS`]; the result is ordered by end time.
pub fn merge(mut episodes: Vec<(u64, Episode)>) -> Vec<Episode> {
    episodes.sort_by_key(|(gil, e)| (e.pid, e.tid, *gil, e.start_ns));
    let mut out: Vec<(u64, Episode)> = Vec::with_capacity(episodes.len());
    for (gil, e) in episodes {
        match out.last_mut() {
            Some((g, last))
                if *g == gil
                    && last.pid == e.pid
                    && last.tid == e.tid
                    && e.start_ns.saturating_sub(last.end_ns) < MERGE_GAP_NS =>
            {
                last.end_ns = last.end_ns.max(e.end_ns);
                last.wait_ns += e.wait_ns;
                last.slices += e.slices;
                last.retake |= e.retake;
                last.records += e.records;
                last.holder_stack = last.holder_stack.or(e.holder_stack);
                for h in e.holders {
                    if !last.holders.iter().any(|(tid, _)| *tid == h.0) {
                        last.holders.push(h);
                    }
                }
            }
            _ => out.push((gil, e)),
        }
    }
    let mut merged: Vec<Episode> = out.into_iter().map(|(_, e)| e).collect();
    merged.sort_by_key(|e| e.end_ns);
    merged
}

/// Episode counts of one process, cumulative since it was first watched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpisodeCounts {
    pub exported: u64,
    pub rate_limited: u64,
}

/// Episodes of one process between two interval flushes, and its limiter.
#[derive(Debug)]
struct ProcessEpisodes {
    /// (GIL address, episode) as recorded, not yet merged.
    pending: Vec<(u64, Episode)>,
    /// Long event-loop iterations as recorded (they share the rate limit).
    pending_loops: Vec<LongIteration>,
    bucket: TokenBucket,
    counts: EpisodeCounts,
    /// Counts at the previous interval (delta temporality).
    reported: EpisodeCounts,
}

/// Every watched process's episodes.
#[derive(Debug)]
pub struct Episodes {
    settings: SpanSettings,
    processes: HashMap<u32, ProcessEpisodes>,
}

impl Episodes {
    /// No episodes yet.
    pub fn new(settings: SpanSettings) -> Self {
        Self {
            settings,
            processes: HashMap::new(),
        }
    }

    /// Resolves one kernel record of process `record.tgid` and keeps it for the interval.
    pub fn record(&mut self, record: &WaitEpisode, threads: &dyn ThreadLookup) {
        let mut holders: Vec<(u32, String)> = Vec::new();
        for tstate in record.holders.iter().copied().filter(|t| *t != 0) {
            if let Some(tid) = threads.tid_of_tstate(tstate) {
                if tid != record.tid && !holders.iter().any(|(t, _)| *t == tid) {
                    holders.push((tid, String::new()));
                }
            }
        }
        if holders.is_empty() && own_tstate_only(record, threads) {
            // Not a wait behind another thread: glibc's pthread_cond_signal (drop_gil
            // signalling gil->cond) can block on a futex word inside the condvar
            // until the woken waiters leave, and the dropping thread is still
            // gil->last_holder then. Seen only under CPU starvation; not contention.
            return;
        }
        let episode = Episode {
            pid: record.tgid,
            tid: record.tid,
            thread_name: String::new(),
            start_ns: record.start_ns,
            end_ns: record.end_ns,
            wait_ns: record.end_ns.saturating_sub(record.start_ns),
            holders,
            slices: record.slices,
            retake: record.retake,
            records: 1,
            holder_stack: record.holder_stack,
            code: None,
        };
        let p = self.process(record.tgid);
        if p.pending.len() >= MAX_PENDING_RECORDS {
            p.counts.rate_limited += 1;
            return;
        }
        p.pending.push((record.gil_addr, episode));
    }

    /// Keeps one long event-loop iteration of process `it.tgid` for the interval.
    pub fn record_long_iteration(&mut self, it: &LongIteration) {
        let p = self.process(it.tgid);
        if p.pending_loops.len() < MAX_PENDING_RECORDS {
            p.pending_loops.push(*it);
        }
    }

    /// The interval's long iterations of `pid` that pass its rate limit (the
    /// same bucket as its GIL episodes), in end order, threads named.
    pub fn take_long_iterations(
        &mut self,
        pid: u32,
        threads: &dyn ThreadLookup,
    ) -> Vec<LoopIterationSpan> {
        let Some(p) = self.processes.get_mut(&pid) else {
            return Vec::new();
        };
        let mut pending = std::mem::take(&mut p.pending_loops);
        pending.sort_by_key(|it| it.end_ns);
        pending
            .into_iter()
            .filter(|it| p.bucket.admit(it.end_ns))
            .map(|it| LoopIterationSpan {
                pid,
                tid: it.tid,
                thread_name: threads.thread_name(it.tid),
                start_ns: it.start_ns,
                end_ns: it.end_ns,
            })
            .collect()
    }

    /// The episodes of process `pid`, made on first use.
    fn process(&mut self, pid: u32) -> &mut ProcessEpisodes {
        let burst = self.settings.rate_per_second.max(1.0);
        let rate = self.settings.rate_per_second;
        self.processes
            .entry(pid)
            .or_insert_with(|| ProcessEpisodes {
                pending: Vec::new(),
                pending_loops: Vec::new(),
                bucket: TokenBucket::new(rate, burst),
                counts: EpisodeCounts::default(),
                reported: EpisodeCounts::default(),
            })
    }

    /// The interval's episodes of `pid` that pass its rate limit (merged, in end
    /// order, threads named); the others are counted as rate-limited.
    pub fn take(&mut self, pid: u32, threads: &dyn ThreadLookup) -> Vec<Episode> {
        let Some(p) = self.processes.get_mut(&pid) else {
            return Vec::new();
        };
        let mut kept = Vec::new();
        for e in merge(std::mem::take(&mut p.pending)) {
            if p.bucket.admit(e.end_ns) {
                p.counts.exported += 1;
                let mut e = e;
                e.thread_name = threads.thread_name(e.tid);
                e.code = e.holder_stack.and_then(|s| threads.holder_code(s));
                for (tid, name) in e.holders.iter_mut() {
                    *name = threads.thread_name(*tid);
                }
                kept.push(e);
            } else {
                p.counts.rate_limited += 1;
            }
        }
        kept
    }

    /// Cumulative counts of `pid` (zero for a process without episodes).
    pub fn counts(&self, pid: u32) -> EpisodeCounts {
        self.processes
            .get(&pid)
            .map(|p| p.counts)
            .unwrap_or_default()
    }

    /// The `cpython.gil.episodes` points of `pid` for this interval; `start` is the
    /// counted window's start (first watched, or the previous interval under delta).
    pub fn points(&mut self, pid: u32, temporality: Temporality, start: Instant) -> Vec<Point> {
        let (cur, prev) = match self.processes.get_mut(&pid) {
            Some(p) => {
                let prev = p.reported;
                p.reported = p.counts;
                (p.counts, prev)
            }
            None => (EpisodeCounts::default(), EpisodeCounts::default()),
        };
        let (exported, limited) = match temporality {
            Temporality::Cumulative => (cur.exported, cur.rate_limited),
            Temporality::Delta => (
                cur.exported - prev.exported,
                cur.rate_limited - prev.rate_limited,
            ),
        };
        [("exported", exported), ("rate_limited", limited)]
            .into_iter()
            // Under delta an unchanged series is not re-sent (as for every counter).
            .filter(|(_, v)| temporality == Temporality::Cumulative || *v > 0)
            .map(|(outcome, v)| Point {
                metric: &GIL_EPISODES,
                attributes: vec![("outcome", outcome.to_string())],
                value: Value::Int(v as i64),
                start,
            })
            .collect()
    }

    /// Drops a released process.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn ep(tid: u32, start_ms: u64, end_ms: u64, holders: &[u32]) -> (u64, Episode) {
        (
            0x1000,
            Episode {
                pid: 7,
                tid,
                thread_name: format!("t{tid}"),
                start_ns: start_ms * MS,
                end_ns: end_ms * MS,
                wait_ns: (end_ms - start_ms) * MS,
                holders: holders.iter().map(|h| (*h, format!("t{h}"))).collect(),
                slices: 2,
                retake: false,
                records: 1,
                holder_stack: None,
                code: None,
            },
        )
    }

    #[test]
    fn records_of_one_thread_closer_than_the_gap_merge_and_others_do_not() {
        let mut late = ep(1, 200, 260, &[3]);
        late.0 = 0x2000; // another GIL: never merged with a wait on the first
        let merged = merge(vec![
            ep(1, 100, 160, &[2]),
            ep(2, 100, 170, &[1]),
            // 0.5 ms after thread 1's first record ended: the same episode.
            (0x1000, {
                let mut e = ep(1, 0, 60, &[3, 2]).1;
                e.start_ns = 160 * MS + MS / 2;
                e.end_ns = 230 * MS;
                e.wait_ns = e.end_ns - e.start_ns;
                e
            }),
            // 30 ms later: a new episode.
            ep(1, 261, 330, &[2]),
            late,
        ]);
        let of_1: Vec<&Episode> = merged.iter().filter(|e| e.tid == 1).collect();
        assert_eq!(of_1.len(), 3, "{merged:#?}");
        let first = of_1[0];
        assert_eq!((first.start_ns, first.end_ns), (100 * MS, 230 * MS));
        assert_eq!(first.wait_ns, 60 * MS + 69 * MS + MS / 2);
        assert_eq!(
            first.holders.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!((first.slices, first.records), (4, 2));
        assert_eq!(merged.iter().filter(|e| e.tid == 2).count(), 1);
        // Ordered by end time, as the token bucket needs.
        assert!(merged.windows(2).all(|w| w[0].end_ns <= w[1].end_ns));
    }

    /// A process that makes episodes faster than any interval can export
    /// keeps at most MAX_PENDING_RECORDS of them; every record is counted.
    #[test]
    fn a_flood_of_records_is_held_in_bounded_memory_and_counted() {
        let mut eps = Episodes::new(SpanSettings {
            threshold: std::time::Duration::from_millis(1),
            rate_per_second: 100.0,
        });
        let flood = 3 * MAX_PENDING_RECORDS as u64;
        for i in 0..flood {
            let record = WaitEpisode {
                tgid: 7,
                tid: 10,
                start_ns: i * 3 * MS,
                end_ns: i * 3 * MS + MS,
                gil_addr: 0x1000,
                ..WaitEpisode::default()
            };
            eps.record(&record, &Names);
        }
        assert_eq!(eps.processes[&7].pending.len(), MAX_PENDING_RECORDS);
        let kept = eps.take(7, &Names);
        let counts = eps.counts(7);
        assert_eq!(counts.exported, kept.len() as u64);
        assert_eq!(counts.exported + counts.rate_limited, flood);
        assert!(eps.processes[&7].pending.is_empty());
    }

    #[test]
    fn the_bucket_passes_the_burst_then_the_rate() {
        let mut b = TokenBucket::new(2.0, 3.0);
        // 10 events in the same instant: the burst of 3 passes.
        let passed = (0..10).filter(|_| b.admit(1_000 * MS)).count();
        assert_eq!(passed, 3);
        // One event every 250 ms for 5 s at 2/s: 10 pass (one per 500 ms).
        let passed = (1..=20)
            .filter(|i| b.admit(1_000 * MS + i * 250 * MS))
            .count();
        assert_eq!(passed, 10);
        // After a long quiet time the bucket is full again, but not fuller than the burst.
        let passed = (0..10).filter(|_| b.admit(100_000 * MS)).count();
        assert_eq!(passed, 3);
    }

    struct Names;
    impl ThreadLookup for Names {
        fn tid_of_tstate(&self, tstate: u64) -> Option<u32> {
            (tstate >= 0x100).then_some((tstate / 0x100) as u32)
        }
        fn thread_name(&self, tid: u32) -> String {
            format!("cpu-{tid}")
        }
        fn holder_code(&self, stack: u64) -> Option<Frame> {
            (stack >= 0x10).then(|| Frame {
                function: format!("f{stack}"),
                file: "/srv/app.py".into(),
                line: Some(stack as u32),
            })
        }
    }

    #[test]
    fn the_limit_counts_what_it_holds_back_per_process() {
        let mut eps = Episodes::new(SpanSettings {
            threshold: std::time::Duration::from_millis(50),
            rate_per_second: 1.0,
        });
        // 20 episodes of process 7 over 2.5 s (every 125 ms), 1 of process 8.
        for i in 0..20u64 {
            let record = WaitEpisode {
                tgid: 7,
                tid: 10 + (i % 4) as u32,
                start_ns: i * 125 * MS,
                end_ns: i * 125 * MS + 60 * MS,
                gil_addr: 0x1000,
                // The waiter itself and an unresolvable tstate are left out.
                holders: [0x100 * (10 + ((i + 1) % 4)), 0x100 * (10 + (i % 4)), 0x7, 0],
                slices: 3,
                retake: false,
                holder_stack: Some(0x10 + i),
            };
            eps.record(&record, &Names);
        }
        eps.record(
            &WaitEpisode {
                tgid: 8,
                tid: 1,
                start_ns: 0,
                end_ns: 80 * MS,
                ..WaitEpisode::default()
            },
            &Names,
        );
        // A signal-side block of the dropping thread itself: not an episode.
        eps.record(
            &WaitEpisode {
                tgid: 7,
                tid: 12,
                start_ns: 0,
                end_ns: 300 * MS,
                holders: [0x100 * 12, 0, 0, 0],
                ..WaitEpisode::default()
            },
            &Names,
        );
        let kept = eps.take(7, &Names);
        // The burst (1) at 60 ms, then one a second: at 1.06 s and 2.06 s.
        assert_eq!(kept.len(), 3, "{kept:#?}");
        assert_eq!(
            kept.iter().map(|e| e.end_ns / MS).collect::<Vec<_>>(),
            vec![60, 1060, 2060]
        );
        assert_eq!(
            eps.counts(7),
            EpisodeCounts {
                exported: 3,
                rate_limited: 17
            }
        );
        assert_eq!(kept[0].holders, vec![(11, "cpu-11".to_string())]);
        assert_eq!(kept[0].thread_name, "cpu-10");
        // The holder's code is named when the interval is taken (stack 0x10).
        assert_eq!(
            kept[0].code.as_ref().map(|f| f.function.as_str()),
            Some("f16")
        );
        assert_eq!(eps.take(8, &Names).len(), 1);
        // Long loop iterations share the bucket: 2.06 s took the last token, so
        // of three ending at 2.1-2.3 s none passes, and one at 3.2 s does.
        for end_ms in [2100, 2200, 2300, 3200] {
            eps.record_long_iteration(&LongIteration {
                tgid: 7,
                tid: 10,
                start_ns: (end_ms - 40) * MS,
                end_ns: end_ms * MS,
            });
        }
        let loops = eps.take_long_iterations(7, &Names);
        assert_eq!(loops.len(), 1, "{loops:?}");
        assert_eq!(
            (loops[0].end_ns / MS, loops[0].thread_name.as_str()),
            (3200, "cpu-10")
        );
        let now = Instant::now();
        let points = eps.points(7, Temporality::Delta, now);
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].value, Value::Int(17));
        // Nothing new: under delta nothing is re-sent; cumulative keeps the totals.
        assert!(eps.points(7, Temporality::Delta, now).is_empty());
        let points = eps.points(7, Temporality::Cumulative, now);
        assert_eq!(points[0].value, Value::Int(3));
        eps.forget(7);
        assert_eq!(eps.counts(7), EpisodeCounts::default());
    }
}
