//! One process cannot fill the episode ring buffer every watched process
//! shares: between two drains each sends at most its share of records (here
//! set to 16), the rest counted as lost, and a process watched next to it
//! still gets its own share through. After a drain, each has its share again.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::kernel::{start_watched, wait_probe_and_debian_311};
use crate::common::*;
use gilscope::core::counters::WaitEpisode;
use gilscope::probes::wait::WaitProbe;

/// The share set for the test.
const SHARE: usize = 16;

/// Slack over the share: the kernel checks and adds without a lock, so each
/// CPU may admit one record past it at the same instant (2 CPUs here).
const RACE: usize = 4;

/// Records per process among `records`.
fn per_process(records: &[WaitEpisode]) -> HashMap<u32, usize> {
    let mut out = HashMap::new();
    for r in records {
        *out.entry(r.tgid).or_default() += 1;
    }
    out
}

#[test]
fn each_process_sends_at_most_its_share_of_episodes_between_drains() {
    let Some((_machine, python, probe)) = wait_probe_and_debian_311() else {
        return;
    };
    drop(probe);
    // Every merged take wait of 1 ms or more is an episode: CPU-bound threads
    // on one GIL make hundreds a second.
    let mut probe = WaitProbe::load_with_episodes(1_000_000).expect("load with episodes");
    probe.set_episode_share(SHARE as u32);
    let mut busy = start_watched(
        &mut probe,
        &python,
        &[&workload("cpu_threads.py"), "8", "4"],
        Duration::from_millis(200),
    );
    let mut quiet = start_watched(
        &mut probe,
        &python,
        &[&workload("cpu_threads.py"), "2", "4"],
        Duration::from_millis(200),
    );
    let (busy_pid, quiet_pid) = (busy.id(), quiet.id());
    let mut records = Vec::new();
    probe.drain_episodes(&mut records);
    let lost_before = probe.episodes_lost();

    let mut rounds = Vec::new();
    for _ in 0..3 {
        records.clear();
        std::thread::sleep(Duration::from_millis(700));
        probe.drain_episodes(&mut records);
        let counts = per_process(&records);
        rounds.push((
            counts.get(&busy_pid).copied().unwrap_or(0),
            counts.get(&quiet_pid).copied().unwrap_or(0),
        ));
    }
    let lost = probe.episodes_lost() - lost_before;
    let _ = busy.kill();
    let _ = quiet.kill();
    let _ = busy.wait();
    let _ = quiet.wait();
    eprintln!("records per 700 ms (8 threads, 2 threads), share {SHARE}: {rounds:?}; {lost} lost");
    for (busy_n, quiet_n) in &rounds {
        assert!(
            (SHARE..=SHARE + RACE).contains(busy_n),
            "the busy process sent {busy_n} records in a round: {rounds:?}"
        );
        assert!(
            (SHARE..=SHARE + RACE).contains(quiet_n),
            "the quiet process sent {quiet_n} records in a round: {rounds:?}"
        );
    }
    assert!(lost > 0, "records past the shares were not counted as lost");
}
