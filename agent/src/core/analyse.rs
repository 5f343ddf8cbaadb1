//! Turns raw counters (kernel maps, procfs samples, GIL samples) into a [`Report`].
//!
//! Pure functions over plain data: no I/O, so every ratio here is unit-tested
//! with made-up inputs. Userspace never re-derives what the kernel counted; it
//! only takes differences, sums and ratios.

use std::collections::{BTreeMap, HashMap};

use crate::core::counters::{
    Counter, Hist, LockCounters, LockParks, LoopCounters, PreciseGil, ThreadWaits, WaitCounters,
    HIST_SLOTS,
};
use crate::core::cpu::ThreadSample;
use crate::core::cpu::Throttling;
use crate::core::holders::HolderWaits;
use crate::core::report::{
    BlockedBy, Estimate, GilReport, HotLock, InterpreterInfo, LockContention, Mode, ProcessReport,
    ThreadReport,
};
use crate::core::samples::GilSamples;

const NS: f64 = 1e9;

/// Everything one measurement collected, before any arithmetic.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub pid: u32,
    pub wall_s: f64,
    pub mode: Mode,
    pub interpreter: InterpreterInfo,
    /// procfs counters when measuring began (empty for a launched command: it starts at 0).
    pub cpu_start: BTreeMap<u32, ThreadSample>,
    /// The last procfs counters seen of every thread, including threads that exited.
    pub cpu_end: BTreeMap<u32, ThreadSample>,
    pub waits: WaitCounters,
    pub precise: Option<PreciseCounters>,
    pub gil: GilSamples,
    /// Holder thread state -> tid, for the blocked-by attribution.
    pub holder_tids: HashMap<u64, u32>,
    /// PyMutex parking, where the parking lot was probed.
    pub locks: Option<LockCounters>,
    /// Every GIL watched, the main interpreter's first.
    pub gil_addrs: Vec<u64>,
    /// CPU limits and throttling of the process's cgroup over the measurement.
    pub cpu_env: CpuEnvironment,
    /// Python `threading` names by tid, the last one seen of each thread.
    pub python_names: HashMap<u32, String>,
    /// The GIL wait behind each named holder stack (`None`: not captured).
    pub holders: Option<HolderWaits>,
    /// Event-loop iterations per thread; `None` where the event-loop probe is not loaded.
    pub loops: Option<LoopCounters>,
}

/// How much CPU the process could have had: affinity, cgroup quota, throttling.
#[derive(Debug, Clone, Default)]
pub struct CpuEnvironment {
    /// CPUs in the process's affinity mask.
    pub affinity_cpus: usize,
    /// The tightest cgroup CPU quota, in cores.
    pub cpu_limit_cores: Option<f64>,
    /// Throttling during the measurement.
    pub throttling: Throttling,
}

impl CpuEnvironment {
    /// Cores the process could use at most.
    pub fn cores_available(&self) -> f64 {
        let cpus = self.affinity_cpus.max(1) as f64;
        self.cpu_limit_cores.map_or(cpus, |q| q.min(cpus))
    }
}

/// The model of [`estimate`], stated in the report.
pub const SPEEDUP_MODEL: &str =
    "speedup = min(Σ (cpu + r × GIL wait), cores × wall) / Σ cpu, with r = cpu / (wall − GIL wait \
     − run-queue) per thread: without the GIL a thread would run through its GIL waits as busily \
     as it runs when nothing holds it back, and the process gets no more cores than it may use \
     (affinity, CPU quota)";

/// The speedup available without the GIL, Amdahl-style (see [`SPEEDUP_MODEL`]).
pub fn estimate(process: &ProcessReport, threads: &[ThreadReport]) -> Estimate {
    let wall = process.wall_s;
    let wanted_s: f64 = threads
        .iter()
        .map(|t| {
            let free = (wall - t.gil_wait_s - t.runqueue_wait_s).max(0.0);
            // How busy the thread is when it can run; a thread that only ever waited
            // (free ≈ 0) is taken as CPU-bound.
            let intensity = if free > 1e-3 {
                (t.cpu_s / free).clamp(0.0, 1.0)
            } else {
                1.0
            };
            (t.cpu_s + intensity * t.gil_wait_s).min(wall)
        })
        .sum();
    let cap_s = process.cores_available.max(1e-9) * wall;
    let new_cpu_s = wanted_s.min(cap_s).max(process.cpu_s);
    let speedup = if process.cpu_s > 0.0 && wall > 0.0 {
        (new_cpu_s / process.cpu_s).max(1.0)
    } else {
        1.0
    };
    Estimate {
        speedup_without_gil: speedup,
        cpu_demand_cores: ratio(wanted_s.min(cap_s), wall),
        model: SPEEDUP_MODEL.to_string(),
    }
}

/// Take-side wait per GIL, in the order the GILs were found.
pub fn gils(m: &Measurement) -> Vec<GilReport> {
    m.gil_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let v = m.waits.gils.get(addr).copied().unwrap_or_default();
            GilReport {
                address: format!("{addr:#x}"),
                main: i == 0,
                gil_wait_s: v.take_wait_ns as f64 / NS,
                gil_waits: v.take_waits,
            }
        })
        .collect()
}

/// What `--precise` measured.
#[derive(Debug, Clone, Default)]
pub struct PreciseCounters {
    pub threads: HashMap<u32, PreciseGil>,
    /// drop_gil was probed, so hold times are exact.
    pub holds_exact: bool,
}

/// A value at quantile `q` of a log2(ns) histogram, in µs, interpolated inside its bucket.
pub fn percentile_us(hist: &[u64; HIST_SLOTS], q: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (slot, &count) in hist.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let low = 2f64.powi(slot as i32);
            let within = ((rank - seen as f64) / count as f64).clamp(0.0, 1.0);
            return (low + within * low) / 1e3;
        }
        seen += count;
    }
    2f64.powi(HIST_SLOTS as i32 - 1) / 1e3
}

/// A value at quantile `q` over `zeros` zero-length events plus those of a log2(ns)
/// histogram, in µs: retake latency over all returns from blocking calls, where a
/// retake that found the GIL free never blocked (so is not in the histogram) and counts as 0.
pub fn percentile_with_zeros_us(hist: &[u64; HIST_SLOTS], zeros: u64, q: f64) -> f64 {
    let waited: u64 = hist.iter().sum();
    let total = zeros + waited;
    if waited == 0 {
        return 0.0;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    if rank <= zeros as f64 {
        return 0.0;
    }
    percentile_us(hist, (rank - zeros as f64) / waited as f64)
}

fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// Maximum number of locks listed in `top_locks`.
const TOP_LOCKS: usize = 10;

/// Totals, percentiles and the hottest locks of PyMutex parking.
pub fn lock_contention(locks: &LockCounters) -> LockContention {
    let mut hist = Hist::ZERO;
    for w in locks.threads.values() {
        hist.add(&w.park_hist);
    }
    let mut top: Vec<(u64, LockParks)> = locks.locks.iter().map(|(a, v)| (*a, *v)).collect();
    top.sort_by(|a, b| b.1.park_ns.cmp(&a.1.park_ns).then(a.0.cmp(&b.0)));
    LockContention {
        wait_s: locks.threads.values().map(|w| w.park_ns).sum::<u64>() as f64 / NS,
        waits: locks.threads.values().map(|w| w.parks).sum(),
        wait_p50_us: percentile_us(&hist, 0.5),
        wait_p99_us: percentile_us(&hist, 0.99),
        top_locks: top
            .into_iter()
            .take(TOP_LOCKS)
            .map(|(address, v)| HotLock {
                address: format!("{address:#x}"),
                wait_s: v.park_ns as f64 / NS,
                waits: v.parks,
            })
            .collect(),
    }
}

/// Per-thread rows and process totals of one measurement.
pub fn analyse(m: &Measurement) -> (ProcessReport, Vec<ThreadReport>) {
    let threads: Vec<ThreadReport> = thread_order(m)
        .into_iter()
        .map(|tid| thread_report(m, tid))
        .collect();
    (process_report(m, &threads), threads)
}

/// Every thread seen (by procfs or the kernel), the main thread first, then
/// in creation order.
fn thread_order(m: &Measurement) -> Vec<u32> {
    let mut tids: Vec<u32> = m
        .cpu_end
        .keys()
        .chain(m.waits.threads.keys())
        .copied()
        .collect();
    tids.sort_unstable();
    tids.dedup();
    tids.sort_by_key(|&tid| (tid != m.pid, tid));
    tids
}

/// GIL wait, hold time and hold share of one thread: exact where `--precise`
/// measured them, else the wait from the kernel's counters and the share from
/// the GIL sampler (hold time unknown).
fn gil_times(m: &Measurement, tid: u32, w: &ThreadWaits) -> (f64, Option<f64>, f64) {
    let precise = m.precise.as_ref().and_then(|p| p.threads.get(&tid));
    let gil_wait_s = match precise {
        Some(p) => p.take_ns as f64 / NS,
        None => (w.take_wait_ns + w.mutex_wait_ns) as f64 / NS,
    };
    let holds_exact = m.precise.as_ref().is_some_and(|p| p.holds_exact);
    let gil_hold_s = holds_exact.then(|| precise.map_or(0.0, |p| p.hold_ns as f64 / NS));
    let gil_hold_share = match gil_hold_s {
        Some(hold) => ratio(hold, m.wall_s),
        None => m.gil.hold_share(tid),
    };
    (gil_wait_s, gil_hold_s, gil_hold_share)
}

/// Whom `tid` waited behind for the GIL, longest first (holders resolved to
/// tids where known, 0 otherwise).
fn blocked_by(m: &Measurement, tid: u32) -> Vec<BlockedBy> {
    let mut blocked: HashMap<u32, u64> = HashMap::new();
    for (key, val) in m
        .waits
        .blocked_by
        .iter()
        .filter(|(k, _)| k.waiter_tid == tid)
    {
        let holder = m.holder_tids.get(&key.holder_tstate).copied().unwrap_or(0);
        *blocked.entry(holder).or_default() += val.wait_ns;
    }
    let mut out: Vec<BlockedBy> = blocked
        .into_iter()
        .map(|(tid, ns)| BlockedBy {
            tid,
            gil_wait_s: ns as f64 / NS,
        })
        .collect();
    out.sort_by(|a, b| {
        b.gil_wait_s
            .total_cmp(&a.gil_wait_s)
            .then(a.tid.cmp(&b.tid))
    });
    out
}

/// The row of one thread.
fn thread_report(m: &Measurement, tid: u32) -> ThreadReport {
    let end = m.cpu_end.get(&tid);
    let start = m.cpu_start.get(&tid);
    let delta = |f: fn(&ThreadSample) -> u64| -> f64 {
        let e = end.map(f).unwrap_or(0);
        let s = start.map(f).unwrap_or(0);
        e.saturating_sub(s) as f64 / NS
    };
    let w = m.waits.threads.get(&tid).copied().unwrap_or_default();
    let lock = m.locks.as_ref().and_then(|l| l.threads.get(&tid));
    let (gil_wait_s, gil_hold_s, gil_hold_share) = gil_times(m, tid, &w);
    let stretches = m.gil.stretches.get(&tid);
    let os_name = end.map(|s| s.os_name.clone()).unwrap_or_default();
    let python_name = m.python_names.get(&tid).cloned();
    // Returns from blocking calls whose retake found the GIL free.
    let free_retakes = w.block_returns.saturating_sub(w.retake_waits);
    ThreadReport {
        tid,
        name: python_name.clone().unwrap_or_else(|| os_name.clone()),
        python_name,
        os_name,
        cpu_s: delta(|s| s.on_cpu_ns),
        runqueue_wait_s: delta(|s| s.runqueue_ns),
        gil_wait_s,
        gil_waits: w.take_waits,
        gil_wait_p50_us: percentile_us(&w.take_hist, 0.5),
        gil_wait_p99_us: percentile_us(&w.take_hist, 0.99),
        gil_hold_s,
        gil_hold_share,
        drop_wait_s: w.drop_wait_ns as f64 / NS,
        futex_wait_s: w.other_wait_ns as f64 / NS,
        lock_wait_s: lock.map_or(0.0, |l| l.park_ns as f64 / NS),
        lock_waits: lock.map_or(0, |l| l.parks),
        blocked_by: blocked_by(m, tid),
        poll_wait_s: w.poll_wait_ns as f64 / NS,
        poll_waits: w.poll_waits,
        io_wait_s: w.read_wait_ns as f64 / NS,
        io_waits: w.read_waits,
        sleep_wait_s: w.sleep_wait_ns as f64 / NS,
        sleep_waits: w.sleep_waits,
        other_block_s: w.block_other_ns as f64 / NS,
        other_blocks: w.block_others,
        block_returns: w.block_returns,
        retake_waits: w.retake_waits,
        retake_wait_s: w.retake_wait_ns as f64 / NS,
        retake_p50_us: percentile_with_zeros_us(&w.retake_hist, free_retakes, 0.5),
        retake_p99_us: percentile_with_zeros_us(&w.retake_hist, free_retakes, 0.99),
        // Interpolating inside a log2 bucket can overshoot the longest stretch seen.
        hold_stretch_p99_ms: stretches.map_or(0.0, |s| {
            (percentile_us(&s.hist, 0.99) / 1e3).min(s.max_ns as f64 / 1e6)
        }),
        hold_stretch_max_ms: stretches.map_or(0.0, |s| s.max_ns as f64 / 1e6),
    }
}

/// The process totals over its thread rows.
fn process_report(m: &Measurement, threads: &[ThreadReport]) -> ProcessReport {
    let mut hist = Hist::ZERO;
    for w in m.waits.threads.values() {
        hist.add(&w.take_hist);
    }
    let sum = |f: fn(&ThreadReport) -> f64| threads.iter().map(f).sum::<f64>();
    let cpu_s = sum(|t| t.cpu_s);
    let gil_wait_s = sum(|t| t.gil_wait_s);
    let gil_hold_s = m
        .precise
        .as_ref()
        .filter(|p| p.holds_exact)
        .map(|_| sum(|t| t.gil_hold_s.unwrap_or(0.0)));
    let throttling = &m.cpu_env.throttling;
    ProcessReport {
        wall_s: m.wall_s,
        cpu_s,
        runqueue_wait_s: sum(|t| t.runqueue_wait_s),
        gil_wait_s,
        gil_waits: threads.iter().map(|t| t.gil_waits).sum(),
        gil_wait_p50_us: percentile_us(&hist, 0.5),
        gil_wait_p99_us: percentile_us(&hist, 0.99),
        gil_hold_s,
        gil_utilization: match gil_hold_s {
            Some(hold) => ratio(hold, m.wall_s).min(1.0),
            None => m.gil.utilization(),
        },
        gil_queue_length: ratio(gil_wait_s, m.wall_s),
        effective_parallelism: ratio(cpu_s, m.wall_s),
        gil_switches_per_s: m.gil.switches_per_s(),
        futex_wait_s: sum(|t| t.futex_wait_s),
        poll_wait_s: sum(|t| t.poll_wait_s),
        io_wait_s: sum(|t| t.io_wait_s),
        sleep_wait_s: sum(|t| t.sleep_wait_s),
        other_block_s: sum(|t| t.other_block_s),
        throttled_s: throttling.throttled_ns as f64 / NS,
        throttled_period_share: ratio(
            throttling.throttled_periods as f64,
            throttling.periods as f64,
        ),
        cpu_limit_cores: m.cpu_env.cpu_limit_cores,
        cores_available: m.cpu_env.cores_available(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::{BlockedKey, BlockedWait};

    fn hist_with(slot: usize, count: u64) -> [u64; HIST_SLOTS] {
        let mut h = [0; HIST_SLOTS];
        h[slot] = count;
        h
    }

    #[test]
    fn percentiles_land_inside_the_right_log2_bucket() {
        // 100 waits in [2^22, 2^23) ns = [4.19 ms, 8.39 ms)
        let h = hist_with(22, 100);
        let p50 = percentile_us(&h, 0.5);
        assert!((4194.0..8389.0).contains(&p50), "{p50}");
        assert!(percentile_us(&h, 0.99) > p50);
        assert_eq!(percentile_us(&[0; HIST_SLOTS], 0.5), 0.0);
    }

    /// A GIL build of CPython `version` on glibc, as the report describes it.
    fn glibc_gil_build(version: &str, stripped: bool) -> InterpreterInfo {
        InterpreterInfo {
            executable: "python3".into(),
            library: None,
            version: version.into(),
            stripped,
            gil_enabled: true,
            gil_enabled_changed: false,
            free_threaded: false,
            libc: "glibc",
        }
    }

    fn sample(tid: u32, cpu_ms: u64) -> ThreadSample {
        ThreadSample {
            tid,
            os_name: format!("t{tid}"),
            on_cpu_ns: cpu_ms * 1_000_000,
            runqueue_ns: 0,
        }
    }

    #[test]
    fn four_serialized_threads_give_queue_length_three_and_parallelism_one() {
        let pid = 100;
        let mut cpu_end = BTreeMap::new();
        let mut waits = WaitCounters::default();
        for tid in 101..=104 {
            cpu_end.insert(tid, sample(tid, 1000)); // 1 s CPU each over 4 s
            waits.threads.insert(
                tid,
                ThreadWaits {
                    take_wait_ns: 3_000_000_000,
                    take_waits: 600,
                    take_hist: hist_with(22, 600),
                    ..ThreadWaits::default()
                },
            );
            waits.blocked_by.insert(
                BlockedKey {
                    waiter_tid: tid,
                    holder_tstate: 0xdead,
                },
                BlockedWait {
                    wait_ns: 3_000_000_000,
                    segments: 600,
                },
            );
        }
        let m = Measurement {
            pid,
            wall_s: 4.0,
            mode: Mode::Default,
            interpreter: glibc_gil_build("3.11.7", false),
            cpu_start: BTreeMap::new(),
            cpu_end,
            waits,
            precise: None,
            gil: GilSamples {
                samples: 1000,
                locked: 990,
                ..GilSamples::default()
            },
            holder_tids: HashMap::from([(0xdead, 101)]),
            locks: None,
            gil_addrs: vec![0x1000],
            cpu_env: CpuEnvironment {
                affinity_cpus: 2,
                cpu_limit_cores: None,
                throttling: Throttling::default(),
            },
            python_names: HashMap::new(),
            holders: None,
            loops: None,
        };
        let (process, threads) = analyse(&m);
        assert_eq!(threads.len(), 4);
        assert!((process.gil_queue_length - 3.0).abs() < 1e-9);
        assert!((process.effective_parallelism - 1.0).abs() < 1e-9);
        assert!((process.gil_utilization - 0.99).abs() < 1e-9);
        assert_eq!(process.gil_waits, 2400);
        assert_eq!(
            threads[1].blocked_by,
            vec![BlockedBy {
                tid: 101,
                gil_wait_s: 3.0
            }]
        );
        assert!(process.gil_hold_s.is_none());
        // 4 threads wanting a core each, 2 cores, 1 core used now: 2x.
        let e = estimate(&process, &threads);
        assert!((e.speedup_without_gil - 2.0).abs() < 1e-9, "{e:?}");
        assert!((e.cpu_demand_cores - 2.0).abs() < 1e-9);
    }

    #[test]
    fn threads_that_mostly_sleep_gain_little_from_losing_the_gil() {
        let thread = |tid, cpu_s, gil_wait_s| ThreadReport {
            tid,
            name: String::new(),
            python_name: None,
            os_name: String::new(),
            cpu_s,
            gil_wait_s,
            ..ThreadReport::default()
        };
        let mut process = ProcessReport {
            cores_available: 2.0,
            ..ProcessReport::default()
        };
        process.wall_s = 3.0;
        // A spinner (3 s CPU) and a sleeper that runs 1 % of the time it is free
        // and waits 2.5 s for the GIL: the sleeper would gain ~25 ms, not 2.5 s.
        let threads = [thread(1, 3.0, 0.0), thread(2, 0.005, 2.5)];
        process.cpu_s = 3.005;
        let e = estimate(&process, &threads);
        assert!(e.speedup_without_gil < 1.01, "{e:?}");
        // An idle process has nothing to gain.
        process.cpu_s = 0.0;
        assert_eq!(estimate(&process, &[]).speedup_without_gil, 1.0);
    }

    #[test]
    fn a_cpu_quota_caps_the_cores_available() {
        let env = CpuEnvironment {
            affinity_cpus: 8,
            cpu_limit_cores: Some(0.2),
            throttling: Throttling::default(),
        };
        assert!((env.cores_available() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn free_retakes_count_as_zero_latency() {
        // 100 returns from blocking calls, 30 of which waited ~5 ms for the GIL.
        let h = hist_with(22, 30);
        assert_eq!(percentile_with_zeros_us(&h, 70, 0.5), 0.0);
        assert!(percentile_with_zeros_us(&h, 70, 0.99) > 4194.0);
        // 60 of 100 waited: the median is a wait.
        let h = hist_with(22, 60);
        let p50 = percentile_with_zeros_us(&h, 40, 0.5);
        assert!((4194.0..8389.0).contains(&p50), "{p50}");
        assert_eq!(percentile_with_zeros_us(&[0; HIST_SLOTS], 5, 0.99), 0.0);
    }

    #[test]
    fn a_thread_is_named_by_python_when_known_and_by_its_comm_otherwise() {
        let pid = 100;
        let cpu_end = BTreeMap::from([(101, sample(101, 10)), (102, sample(102, 10))]);
        let m = Measurement {
            pid,
            wall_s: 1.0,
            mode: Mode::Default,
            interpreter: glibc_gil_build("3.12.1", true),
            cpu_start: BTreeMap::new(),
            cpu_end,
            waits: WaitCounters::default(),
            precise: None,
            gil: GilSamples::default(),
            holder_tids: HashMap::new(),
            locks: None,
            gil_addrs: vec![0x1000],
            python_names: HashMap::from([(101, "cpu-0".to_string())]),
            loops: None,
            cpu_env: CpuEnvironment::default(),
            holders: None,
        };
        let (_, threads) = analyse(&m);
        assert_eq!(threads[0].name, "cpu-0");
        assert_eq!(threads[0].python_name.as_deref(), Some("cpu-0"));
        assert_eq!(threads[0].os_name, "t101");
        assert_eq!(threads[1].name, "t102");
        assert_eq!(threads[1].python_name, None);
    }

    #[test]
    fn hot_locks_are_ranked_by_park_time() {
        use crate::core::counters::LockWaits;
        let mut locks = LockCounters::default();
        locks.threads.insert(
            7,
            LockWaits {
                park_ns: 3_000_000,
                parks: 3,
                park_hist: hist_with(20, 3),
                ..LockWaits::default()
            },
        );
        locks.locks.insert(
            0x10,
            LockParks {
                park_ns: 1_000_000,
                parks: 1,
            },
        );
        locks.locks.insert(
            0x20,
            LockParks {
                park_ns: 2_000_000,
                parks: 2,
            },
        );
        let c = lock_contention(&locks);
        assert_eq!(c.waits, 3);
        assert!((c.wait_s - 0.003).abs() < 1e-12);
        assert_eq!(c.top_locks[0].address, "0x20");
        assert_eq!(c.top_locks[1].waits, 1);
    }
}
