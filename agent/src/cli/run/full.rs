//! Kernel maps that ran full. The wait probes count every insert they could not
//! make (a thread's waits then go uncounted, see
//! [`WaitProbe::entries_dropped`](crate::probes::wait::WaitProbe::entries_dropped));
//! this turns those counts into one warning per map per daemon lifetime and the
//! totals behind the `gilscope.bpf.entries.dropped` counter.

use std::collections::{HashMap, HashSet};

use crate::core::counters::{EntriesDropped, KernelMap};

/// Every map counted, futex probe first, then the musl condvar probe's: the
/// order of [`EntriesDropped::iter`].
pub const MAPS: usize = KernelMap::ALL.len();

/// What a map's failed inserts mean (the same for both probes' counterparts).
fn consequence(map: KernelMap) -> &'static str {
    match map {
        KernelMap::ThreadWaits | KernelMap::CondWaits => {
            "sleeps of threads without an entry were not counted; too many live threads are watched on this node"
        }
        KernelMap::BlockedBy | KernelMap::CondBlockedBy => {
            "GIL waits were not attributed to their holder; too many (waiter, holder) pairs on this node"
        }
        KernelMap::Inflight | KernelMap::CondInflight => {
            "waits were not tracked at all; too many threads of watched processes blocked at once"
        }
        KernelMap::GilWaits | KernelMap::CondGilWaits => {
            "GIL waits are missing from the per-GIL figures; too many (process, GIL) pairs on this node"
        }
        KernelMap::HolderStacks | KernelMap::CondHolderStacks => {
            "GIL waits were not attributed to the holder's code; too many distinct holder stacks on this node"
        }
        KernelMap::HolderWaits | KernelMap::CondHolderWaits => {
            "GIL waits behind some holder stacks were not counted; too many (process, stack) pairs on this node"
        }
        KernelMap::LoopThreads => {
            "event-loop iterations of threads without an entry were not counted; too many polling threads are watched on this node"
        }
    }
}

/// A map whose count rose since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rise {
    pub map: KernelMap,
    /// Failed inserts since the last look.
    pub added: u64,
    /// The whole count so far.
    pub total: u64,
    /// The first rise of this map: warn (later ones are only logged at debug).
    pub first: bool,
}

/// Totals and warnings of the map-full counters over the daemon's lifetime.
#[derive(Debug, Default)]
pub struct FullMaps {
    /// Counts of musl probes already released, so a total never goes down.
    released: EntriesDropped,
    /// A musl process was watched: its maps' series are exported from then on.
    musl_seen: bool,
    last: HashMap<KernelMap, u64>,
    warned: HashSet<KernelMap>,
}

impl FullMaps {
    /// Whole counts per map now, from the futex probe's counts and those of the
    /// live musl probes (plus the released ones).
    pub fn totals<'a>(
        &mut self,
        futex: EntriesDropped,
        musl: impl Iterator<Item = &'a EntriesDropped>,
    ) -> EntriesDropped {
        let mut out = futex;
        out.add(&self.released);
        for counts in musl {
            self.musl_seen = true;
            out.add(counts);
        }
        out
    }

    /// Keeps the counts of a musl probe that goes away.
    pub fn release(&mut self, counts: &EntriesDropped) {
        self.released.add(counts);
    }

    /// Whether the musl maps' series are exported (a musl process was watched).
    pub fn musl_seen(&self) -> bool {
        self.musl_seen
    }

    /// The maps whose count rose since the last call.
    pub fn rises(&mut self, totals: &EntriesDropped) -> Vec<Rise> {
        let mut out = Vec::new();
        for (map, total) in totals.iter() {
            let last = self.last.insert(map, total).unwrap_or(0);
            if total > last {
                out.push(Rise {
                    map,
                    added: total - last,
                    total,
                    first: self.warned.insert(map),
                });
            }
        }
        out
    }

    /// Logs the rises since the last call: a warning the first time a map is
    /// full, a debug line after that. `capacity` gives a map's size if known.
    pub fn report(&mut self, totals: &EntriesDropped, capacity: impl Fn(KernelMap) -> Option<u32>) {
        for rise in self.rises(totals) {
            let size = capacity(rise.map)
                .map(|n| format!(" ({n} entries)"))
                .unwrap_or_default();
            let what = consequence(rise.map);
            // The futex probe's per-thread maps grow with --thread-capacity.
            let remedy = match rise.map {
                KernelMap::ThreadWaits | KernelMap::Inflight | KernelMap::BlockedBy => {
                    "; raise --thread-capacity (thread_capacity)"
                }
                _ => "",
            };
            // A per-thread map also refuses a process past its share of it.
            let share = match rise.map {
                KernelMap::ThreadWaits | KernelMap::CondWaits => {
                    " (or a process holds its share of it: an eighth, at least 1,024 entries)"
                }
                _ => "",
            };
            if rise.first {
                tracing::warn!(
                    "kernel map {}{size} is full{share}: {} {what}{remedy} (counted in \
                     gilscope.bpf.entries.dropped; this warning is given once)",
                    rise.map.name(),
                    rise.added
                );
            } else {
                tracing::debug!(
                    "kernel map {} still full: {} more ({} in all)",
                    rise.map.name(),
                    rise.added,
                    rise.total
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn futex(thread_waits: u64) -> EntriesDropped {
        let mut counts = EntriesDropped::default();
        counts.set(KernelMap::ThreadWaits, thread_waits);
        counts
    }

    fn musl(cond_waits: u64) -> EntriesDropped {
        let mut counts = EntriesDropped::default();
        counts.set(KernelMap::CondWaits, cond_waits);
        counts
    }

    #[test]
    fn a_map_is_reported_first_once_then_only_when_it_rises() {
        let mut full = FullMaps::default();
        let t = full.totals(futex(0), std::iter::empty());
        assert!(full.rises(&t).is_empty(), "nothing full, nothing said");
        let t = full.totals(futex(5), std::iter::empty());
        assert_eq!(
            full.rises(&t),
            [Rise {
                map: KernelMap::ThreadWaits,
                added: 5,
                total: 5,
                first: true
            }]
        );
        let t = full.totals(futex(5), std::iter::empty());
        assert!(full.rises(&t).is_empty(), "no rise, no line");
        let t = full.totals(futex(12), std::iter::empty());
        let again = full.rises(&t);
        assert_eq!((again[0].added, again[0].first), (7, false));
    }

    #[test]
    fn musl_counts_survive_the_release_of_their_probe() {
        let mut full = FullMaps::default();
        let t = full.totals(futex(0), std::iter::empty());
        assert!(!full.musl_seen());
        assert_eq!(t.get(KernelMap::CondWaits), 0);
        let live = musl(3);
        let t = full.totals(futex(0), [&live].into_iter());
        assert!(full.musl_seen());
        assert_eq!(t.get(KernelMap::CondWaits), 3);
        assert!(full.rises(&t)[0].first);
        full.release(&live);
        let other = musl(2);
        let t = full.totals(futex(0), [&other].into_iter());
        assert_eq!(
            t.get(KernelMap::CondWaits),
            5,
            "the released 3 stay counted"
        );
        assert!(!full.rises(&t)[0].first);
    }
}
