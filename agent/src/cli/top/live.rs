//! What `top` shows: every watched process's last interval, judged. A
//! [`Fleet`] of the host's CPython processes (or the chosen pids) with the one
//! wait probe they share; each refresh ends an interval for every member.

use crate::core::assess::assess;
use crate::core::profile::ContentionProfile;
use crate::core::report::{Diagnosis, Estimate, EventLoopReport, ProcessReport, ThreadReport};
use crate::error::Result;
use crate::probes::wait::WaitProbe;
use crate::watch::discover::Rules;
use crate::watch::fleet::{Fleet, Scope};

/// What one process did over the last interval.
#[derive(Debug, Clone)]
pub struct ProcessView {
    pub pid: u32,
    pub command: String,
    pub version: String,
    pub process: ProcessReport,
    pub threads: Vec<ThreadReport>,
    pub diagnosis: Vec<Diagnosis>,
    pub estimate: Estimate,
    /// The code that held the GIL while others waited (`None`: not captured).
    pub profile: Option<ContentionProfile>,
    /// The process's event loops and their lag.
    pub event_loops: Vec<EventLoopReport>,
}

/// The watched processes and the probe they share.
pub struct LiveSet {
    probe: WaitProbe,
    fleet: Fleet,
}

impl LiveSet {
    /// Loads the wait probe and the event-loop probe. `only`: watch just these pids (`--pid`), else every
    /// CPython process on the host.
    pub fn new(only: Option<Vec<u32>>, sample_hz: u32, event_loops: bool) -> Result<Self> {
        let scope = match only {
            Some(pids) => Scope::Pids(pids),
            None => Scope::Host(Rules::all()),
        };
        let probe = WaitProbe::load()?;
        let mut fleet = Fleet::new(scope, Some(sample_hz));
        if event_loops {
            if let Some(loops) = crate::probes::event_loop::load_or_warn() {
                fleet.watch_loops(loops);
            }
        }
        fleet.name_code();
        Ok(Self { probe, fleet })
    }

    /// Watches new processes, drops exited ones, and reports the interval since
    /// the previous refresh for every watched process, busiest GIL first.
    pub fn refresh(&mut self) -> Vec<ProcessView> {
        self.fleet.discover(&mut self.probe, |_, _| ());
        self.fleet.refresh(&mut self.probe, true);
        let counters = self.fleet.read_counters(&self.probe);
        let mut views = Vec::with_capacity(self.fleet.members().len());
        self.fleet.end_interval(&self.probe, counters, |m, cur| {
            if !m.session.alive {
                return;
            }
            let interval = m.session.measurement(&m.prev, cur);
            let judged = assess(&interval, &[]);
            views.push(ProcessView {
                pid: m.session.pid(),
                command: m.session.command.clone(),
                version: interval.interpreter.version.clone(),
                process: judged.process,
                threads: judged.threads,
                diagnosis: judged.diagnosis,
                estimate: judged.estimate,
                profile: judged.profile,
                event_loops: judged.event_loops,
            });
        });
        self.fleet.release_gone(&mut self.probe, |_| {});
        views.sort_by(|a, b| {
            b.process
                .gil_queue_length
                .total_cmp(&a.process.gil_queue_length)
                .then(a.pid.cmp(&b.pid))
        });
        views
    }

    /// Stops watching everything and releases the kernel state.
    pub fn close(mut self) {
        self.fleet.finish(&mut self.probe);
    }
}
