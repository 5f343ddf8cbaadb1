//! A set of watched CPython processes: every one on the host the rules admit
//! (`top`, `run`), a few chosen pids (`top --pid`), or the children of a
//! measured process (`check`'s pool workers). One [`Session`] per member, one
//! GIL sampler thread for all, one retry policy ([`Discovery`]): a process
//! that is not CPython is refused once and looked at again only after an
//! `exec`; one whose GIL is not ready yet is retried until it is (or refused
//! after a while); one that exits or execs into another program leaves.
//! Nothing here prints or exports: the front ends read the members.

use std::collections::{BTreeMap, HashMap};

use crate::core::counters::WaitCounters;
use crate::cpython::gil_sampler::SamplerPool;
use crate::os::process::{descendants, same_executable, start_ticks};
use crate::probes::event_loop::LoopProbe;
use crate::probes::wait::WaitProbe;
use crate::watch::discover::{Discovery, Identity, Listing, Rules, Verdict};
use crate::watch::session::{Session, SessionOptions, Snapshot};

/// Which processes a fleet watches.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every CPython process of the host that the rules admit.
    Host(Rules),
    /// Just these pids.
    Pids(Vec<u32>),
    /// The descendants of `root` (pool workers), at most `max` of them; those
    /// that start after the first look are counted from their birth.
    Descendants { root: u32, max: usize },
}

/// One watched process, its snapshots, and what the front end keeps with it.
pub struct Member<T> {
    pub session: Session,
    pub identity: Identity,
    /// When watching began (kernel counters at zero).
    pub first: Snapshot,
    /// The end of the last interval.
    pub prev: Snapshot,
    pub extra: T,
}

/// The watched processes of one scope.
pub struct Fleet<T = ()> {
    scope: Scope,
    discovery: Discovery,
    /// One sampler thread for every member (none: not sampled).
    sampler: Option<SamplerPool>,
    /// The event-loop probe every member is watched by, where it is loaded.
    loops: Option<LoopProbe>,
    /// Members capture the GIL holders' code (see [`Fleet::name_code`]).
    name_code: bool,
    members: BTreeMap<u32, Member<T>>,
    own_pid: u32,
    /// Descendants found at the first look existed before measuring began.
    looked: bool,
}

/// The same process still runs under this pid (not exited, not exec'd into something else).
fn still_same(identity: &Identity) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", identity.pid))
        .is_ok_and(|exe| same_executable(&identity.exe, &exe))
        && start_ticks(identity.pid) == Some(identity.start_ticks)
}

impl<T> Fleet<T> {
    /// An empty fleet; members are sampled `sample_hz` times a second when given.
    pub fn new(scope: Scope, sample_hz: Option<u32>) -> Self {
        Self {
            scope,
            discovery: Discovery::default(),
            sampler: sample_hz.map(SamplerPool::start),
            loops: None,
            name_code: false,
            members: BTreeMap::new(),
            own_pid: std::process::id(),
            looked: false,
        }
    }

    /// Measures the event loops of the members that join from now on.
    pub fn watch_loops(&mut self, loops: LoopProbe) {
        self.loops = Some(loops);
    }

    /// Members that join from now on capture the GIL holder's code at each
    /// wait (the contention profile) and name it at each interval: for a
    /// watcher of a few processes that shows code (`top`).
    pub fn name_code(&mut self) {
        self.name_code = true;
    }

    /// The event-loop probe the members are watched by, if loaded.
    pub fn loops(&self) -> Option<&LoopProbe> {
        self.loops.as_ref()
    }

    /// The pids to judge in this look.
    fn listing(&mut self) -> Listing {
        match &self.scope {
            Scope::Host(_) => self.discovery.list(),
            Scope::Pids(pids) => Listing {
                pids: pids.clone(),
                complete: true,
            },
            Scope::Descendants { root, .. } => Listing {
                pids: descendants(*root),
                complete: true,
            },
        }
    }

    /// Looks for new processes and attaches to those the discovery admits;
    /// `join` makes each new member's extra data. Returns the pids that joined.
    pub fn discover(
        &mut self,
        probe: &mut WaitProbe,
        mut join: impl FnMut(&Session, &Identity) -> T,
    ) -> Vec<u32> {
        let listing = self.listing();
        let all = Rules::all();
        let (rules, max) = match &self.scope {
            Scope::Host(rules) => (rules, usize::MAX),
            Scope::Pids(_) => (&all, usize::MAX),
            Scope::Descendants { max, .. } => (&all, *max),
        };
        let mut joined = Vec::new();
        for &pid in &listing.pids {
            if self.members.len() >= max {
                break;
            }
            if self.members.contains_key(&pid) {
                continue;
            }
            let Verdict::Attach(identity) = self.discovery.judge(pid, rules, self.own_pid) else {
                continue;
            };
            let opts = SessionOptions {
                loops: self.loops.as_ref(),
                holders: self.name_code,
                ..SessionOptions::watcher(self.sampler.as_ref())
            };
            match Session::attach(pid, probe, &opts) {
                Ok(mut session) => {
                    if self.looked && matches!(self.scope, Scope::Descendants { .. }) {
                        session.count_from_birth();
                    }
                    let extra = join(&session, &identity);
                    let first = session.first_snapshot();
                    self.members.insert(
                        pid,
                        Member {
                            session,
                            identity,
                            prev: first.clone(),
                            first,
                            extra,
                        },
                    );
                    joined.push(pid);
                }
                Err(e) => self.discovery.retry_later(identity, &e),
            }
        }
        self.discovery.end_poll(&listing);
        self.looked = true;
        joined
    }

    /// Refreshes every member from procfs (per-thread CPU, GIL list, names);
    /// with `full` false only the members that used CPU. A member that exec'd
    /// into another program stops being counted.
    pub fn refresh(&mut self, probe: &mut WaitProbe, full: bool) {
        for m in self.members.values_mut() {
            if m.session.alive && !still_same(&m.identity) {
                m.session.stop_counting(probe);
            }
            if full {
                m.session.refresh(probe);
            } else {
                m.session.refresh_if_busy(probe);
            }
        }
    }

    /// A full refresh of every member with its holders resolved while their
    /// threads live (a measurement that reports blocked-by pairs).
    pub fn tick(&mut self, probe: &mut WaitProbe) {
        for m in self.members.values_mut() {
            if m.session.alive && !still_same(&m.identity) {
                m.session.stop_counting(probe);
            }
            m.session.tick(probe);
        }
    }

    /// The kernel counters of every member, read in one pass over the maps
    /// (not one per process); holders seen are resolved on the way.
    pub fn read_counters(&mut self, probe: &WaitProbe) -> HashMap<u32, WaitCounters> {
        let mut all = match probe.read_all() {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!("cannot read the kernel counters: {e}");
                HashMap::new()
            }
        };
        all.retain(|pid, _| self.members.contains_key(pid));
        for (pid, m) in self.members.iter_mut() {
            if let Some(counters) = all.get(pid) {
                m.session.learn_holders(counters);
            }
        }
        all
    }

    /// Ends an interval for every member: its snapshot now (from `counters`,
    /// as read by [`Fleet::read_counters`]) is handed to `each` with the
    /// member, then becomes the member's `prev`.
    pub fn end_interval(
        &mut self,
        probe: &WaitProbe,
        mut counters: HashMap<u32, WaitCounters>,
        mut each: impl FnMut(&mut Member<T>, &Snapshot),
    ) {
        for (pid, m) in self.members.iter_mut() {
            let waits = counters.remove(pid).unwrap_or_default();
            let cur = m.session.snapshot_with(waits, probe);
            each(m, &cur);
            m.prev = cur;
        }
    }

    /// The members, by pid.
    pub fn members(&self) -> &BTreeMap<u32, Member<T>> {
        &self.members
    }

    /// The members, by pid, to change their extra data.
    pub fn members_mut(&mut self) -> &mut BTreeMap<u32, Member<T>> {
        &mut self.members
    }

    /// Takes the members that exited (or exec'd) out of the fleet: `last_word`
    /// sees each before its kernel state is released.
    pub fn release_gone(
        &mut self,
        probe: &mut WaitProbe,
        mut last_word: impl FnMut(&Member<T>),
    ) -> Vec<Member<T>> {
        let gone: Vec<u32> = self
            .members
            .iter()
            .filter(|(_, m)| !m.session.alive)
            .map(|(pid, _)| *pid)
            .collect();
        let mut out = Vec::with_capacity(gone.len());
        for pid in gone {
            if let Some(mut m) = self.members.remove(&pid) {
                last_word(&m);
                m.session.release(probe);
                out.push(m);
            }
        }
        out
    }

    /// Stops watching every member and releases the kernel state; returns them
    /// (their figures stay readable).
    pub fn finish(mut self, probe: &mut WaitProbe) -> Vec<Member<T>> {
        let members = std::mem::take(&mut self.members);
        members
            .into_values()
            .map(|mut m| {
                m.session.release(probe);
                m
            })
            .collect()
    }

    /// Processes remembered as refused (not CPython, or excluded by the rules).
    pub fn refused(&self) -> usize {
        self.discovery.refused_count()
    }
}
