//! What a hostile scene must leave true for everyone else on the node: an
//! ordinary CPU-bound service watched next to the hostile target keeps its true
//! values, a service started during the scene is exported within two intervals,
//! the daemon stays alive in its memory bound, and the hostile target, when
//! refused, is refused in one clear line and exports nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{rss_mib, Daemon};
use crate::common::receivers::*;

/// An ordinary 4-thread CPU-bound service (its truth: the GIL held all the
/// time), started before the daemon so that both are judged in its first look.
pub struct Bystander {
    service: Running,
}

impl Bystander {
    pub fn start(python: &Path, marker: &str) -> Self {
        let service = workload_process(python, 120, &format!("{marker}-bystander"), marker);
        Self { service }
    }

    /// Asserts the module's promises, `what` naming the hostile target.
    pub fn check(&self, daemon: &mut Daemon, python: &Path, marker: &str, what: &str) {
        let utilization = daemon.spinning_utilization(self.service.0.id());
        assert!(
            utilization >= 0.9,
            "next to {what}, the bystander's GIL utilization is {utilization:.2}"
        );
        let started = unix_now();
        let newcomer = workload_process(python, 20, &format!("{marker}-newcomer"), marker);
        let first = first_export(daemon, newcomer.0.id(), Duration::from_secs(30))
            .unwrap_or_else(|| panic!("next to {what}, a newcomer was never exported"));
        let after = first - started;
        eprintln!("next to {what}: the newcomer was exported after {after:.2} s");
        assert!(
            after <= 2.0,
            "next to {what}, the newcomer was exported after {after:.2} s"
        );
        daemon.assert_running();
        let rss = rss_mib(daemon.pid());
        assert!(rss <= 64.0, "next to {what}, daemon RSS {rss:.1} MiB");
    }
}

/// Asserts that process `pid` was refused in one log line holding `reason`,
/// waiting up to 10 s for it, and that nothing of it was exported.
pub fn assert_refused(daemon: &Daemon, pid: u32, reason: &str) {
    let needle = format!("not watching process {pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains(&needle) {
        assert!(
            Instant::now() < deadline,
            "process {pid} was not refused in 10 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Two more looks at the process: still one line.
    std::thread::sleep(Duration::from_secs(2));
    let lines = daemon.lines_about(pid);
    assert!(
        lines.len() == 1 && lines[0].contains(reason),
        "expected one line refusing process {pid} for {reason:?}: {lines:?}"
    );
    let exported = format!("count({{process.pid=\"{pid}\"}})");
    let series = scalar(&promql(daemon.vm_port, &exported));
    assert!(
        series.is_none(),
        "the refused process {pid} has {series:?} series"
    );
}

/// When the first sample of process `pid` was taken (its Unix time), waiting
/// up to `within` for one.
pub fn first_export(daemon: &Daemon, pid: u32, within: Duration) -> Option<f64> {
    let query = format!(
        "min(tfirst_over_time({{__name__=\"process.thread.count\",process.pid=\"{pid}\"}}[10m]))"
    );
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = scalar(&promql(daemon.vm_port, &query)) {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
