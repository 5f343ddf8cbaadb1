//! Kernel maps that ran full. The wait probes count every insert they could not
//! make (a thread's waits then go uncounted, see
//! [`WaitProbe::entries_dropped`](crate::probes::wait::WaitProbe::entries_dropped));
//! this turns those counts into one warning per map per daemon lifetime and the
//! totals behind the `gilscope.bpf.entries.dropped` counter.

use std::collections::{HashMap, HashSet};

use crate::probes::condwait;
use crate::probes::layout::map_full_slot::{self, SLOTS};

/// Every map counted, futex probe first, then the musl condvar probe's: the
/// order of [`FullMaps::totals`].
pub const MAPS: usize = 2 * SLOTS;

/// Failed inserts of one probe, per map in slot order.
pub type Counts = [(&'static str, u64); SLOTS];

/// What a map's failed inserts mean, by slot (the same for both probes).
fn consequence(slot: usize) -> &'static str {
    match slot as u32 {
        map_full_slot::THREAD_WAITS => {
            "sleeps of threads without an entry were not counted; too many live threads are watched on this node"
        }
        map_full_slot::BLOCKED_BY => {
            "GIL waits were not attributed to their holder; too many (waiter, holder) pairs on this node"
        }
        map_full_slot::INFLIGHT => {
            "waits were not tracked at all; too many threads of watched processes blocked at once"
        }
        _ => "GIL waits are missing from the per-GIL figures; too many (process, GIL) pairs on this node",
    }
}

/// A map whose count rose since the last look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rise {
    pub map: &'static str,
    pub slot: usize,
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
    released: [u64; SLOTS],
    /// A musl process was watched: its maps' series are exported from then on.
    musl_seen: bool,
    last: HashMap<&'static str, u64>,
    warned: HashSet<&'static str>,
}

impl FullMaps {
    /// Whole counts per map now, from the futex probe's counts and those of the
    /// live musl probes (plus the released ones).
    pub fn totals<'a>(
        &mut self,
        futex: Counts,
        musl: impl Iterator<Item = &'a Counts>,
    ) -> [(&'static str, u64); MAPS] {
        let mut out = [("", 0); MAPS];
        out[..SLOTS].copy_from_slice(&futex);
        for (slot, name) in condwait::FULL_MAPS.iter().enumerate() {
            out[SLOTS + slot] = (name, self.released[slot]);
        }
        for counts in musl {
            self.musl_seen = true;
            for (slot, (_, n)) in counts.iter().enumerate() {
                out[SLOTS + slot].1 += n;
            }
        }
        out
    }

    /// Keeps the counts of a musl probe that goes away.
    pub fn release(&mut self, counts: &Counts) {
        for (kept, (_, n)) in self.released.iter_mut().zip(counts) {
            *kept += n;
        }
    }

    /// Whether the musl maps' series are exported (a musl process was watched).
    pub fn musl_seen(&self) -> bool {
        self.musl_seen
    }

    /// The maps whose count rose since the last call.
    pub fn rises(&mut self, totals: &[(&'static str, u64); MAPS]) -> Vec<Rise> {
        let mut out = Vec::new();
        for (i, (map, total)) in totals.iter().enumerate() {
            let last = self.last.insert(map, *total).unwrap_or(0);
            if *total > last {
                out.push(Rise {
                    map,
                    slot: i % SLOTS,
                    added: total - last,
                    total: *total,
                    first: self.warned.insert(map),
                });
            }
        }
        out
    }

    /// Logs the rises since the last call: a warning the first time a map is
    /// full, a debug line after that. `capacity` gives a map's size if known.
    pub fn report(
        &mut self,
        totals: &[(&'static str, u64); MAPS],
        capacity: impl Fn(&str) -> Option<u32>,
    ) {
        for rise in self.rises(totals) {
            let size = capacity(rise.map)
                .map(|n| format!(" ({n} entries)"))
                .unwrap_or_default();
            let what = consequence(rise.slot);
            // The futex probe's per-thread maps grow with --thread-capacity.
            let remedy = match rise.map {
                "thread_waits" | "inflight" | "blocked_by" => {
                    "; raise --thread-capacity (thread_capacity)"
                }
                _ => "",
            };
            if rise.first {
                tracing::warn!(
                    "kernel map {}{size} is full: {} {what}{remedy} (counted in \
                     gilscope.bpf.entries.dropped; this warning is given once)",
                    rise.map,
                    rise.added
                );
            } else {
                tracing::debug!(
                    "kernel map {} still full: {} more ({} in all)",
                    rise.map,
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

    fn futex(thread_waits: u64) -> Counts {
        [
            ("thread_waits", thread_waits),
            ("blocked_by", 0),
            ("inflight", 0),
            ("gil_waits", 0),
        ]
    }

    fn musl(cond_waits: u64) -> Counts {
        [
            ("cond_waits", cond_waits),
            ("cond_blocked_by", 0),
            ("cond_inflight", 0),
            ("cond_gil_waits", 0),
        ]
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
                map: "thread_waits",
                slot: 0,
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
        assert_eq!(t[SLOTS], ("cond_waits", 0));
        let live = musl(3);
        let t = full.totals(futex(0), [&live].into_iter());
        assert!(full.musl_seen());
        assert_eq!(t[SLOTS], ("cond_waits", 3));
        assert!(full.rises(&t)[0].first);
        full.release(&live);
        let other = musl(2);
        let t = full.totals(futex(0), [&other].into_iter());
        assert_eq!(t[SLOTS], ("cond_waits", 5), "the released 3 stay counted");
        assert!(!full.rises(&t)[0].first);
    }
}
