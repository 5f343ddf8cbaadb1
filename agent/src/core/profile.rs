//! The GIL contention profile of one process: which Python code held the GIL
//! while other threads waited, weighted by the wait spent behind it. Made from
//! the holder stacks the kernel captured when each wait began (exact, not
//! sampled) and user space named. Users act on code, not on threads: this is
//! what tells them which function to move to a process or out of the GIL.
//!
//! Everything is bounded (top functions and stacks, the rest in one "other"
//! row) and honest: waits behind a holder whose stack was not captured, or
//! whose code could not be named, are an [`UNKNOWN_FUNCTION`] row, so the
//! shares always add up to 1.

use std::collections::HashMap;

use serde::Serialize;

use crate::core::holders::{HolderWaits, NamedHolderWait};
use crate::core::stacks::{Frame, UNKNOWN_FUNCTION};

/// Functions listed at most; the rest are summed into one [`OTHER_FUNCTION`] row.
pub const TOP_FUNCTIONS: usize = 50;
/// Stacks listed at most; the rest are summed into one [`OTHER_FUNCTION`] stack.
pub const TOP_STACKS: usize = 20;
/// The function of the row that sums what the top lists leave out.
pub const OTHER_FUNCTION: &str = "[other]";

const NS: f64 = 1e9;

/// One holder function and the GIL wait spent behind it (as the running, or
/// leaf, frame of the holder's stack).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionWait {
    pub function: String,
    pub file: String,
    /// The line of the function the most wait was spent behind.
    pub line: Option<u32>,
    pub wait_s: f64,
    /// Share of all the GIL wait in the process's profile.
    pub share: f64,
}

/// One holder stack, root first, and the GIL wait spent behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StackWait {
    pub frames: Vec<Frame>,
    pub wait_s: f64,
    /// The same wait in ns, exact (pictures are weighted by it).
    #[serde(skip)]
    pub wait_ns: u64,
}

/// The contention profile of one process (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContentionProfile {
    /// All GIL wait the profile attributes (behind known and unknown code).
    pub wait_s: f64,
    /// By wait, largest first; at most [`TOP_FUNCTIONS`] and an other row.
    pub functions: Vec<FunctionWait>,
    /// By wait, largest first; at most [`TOP_STACKS`] and an other stack.
    pub stacks: Vec<StackWait>,
    /// Captured frames whose code could not be named (shown as unknown).
    pub frames_unnamed: u64,
}

impl ContentionProfile {
    /// The profile of the named holder waits of one measurement.
    pub fn of(waits: &HolderWaits) -> Self {
        let total_ns: u64 = waits.stacks.iter().map(|w| w.wait.wait_ns).sum();
        Self {
            wait_s: total_ns as f64 / NS,
            functions: functions(&waits.stacks, total_ns),
            stacks: stacks(&waits.stacks),
            frames_unnamed: waits.frames_unnamed,
        }
    }

    /// The functions with the most wait behind them, at most `n`, leaving out
    /// the other and unknown rows (what a diagnosis names).
    pub fn top_functions(&self, n: usize) -> impl Iterator<Item = &FunctionWait> {
        self.functions
            .iter()
            .filter(|f| f.function != OTHER_FUNCTION && f.function != UNKNOWN_FUNCTION)
            .take(n)
    }
}

/// The running (leaf) frame of a named wait's stack, or the unknown frame.
fn leaf(w: &NamedHolderWait) -> Frame {
    w.stack
        .as_ref()
        .and_then(|s| s.frames.last())
        .cloned()
        .unwrap_or_else(Frame::unknown)
}

/// The wait behind one function, in all and by line.
#[derive(Default)]
struct LineWaits {
    ns: u64,
    by_line: HashMap<Option<u32>, u64>,
}

/// Waits summed by (function, file), each given its line with the most wait;
/// largest first, ties by name, then the top [`TOP_FUNCTIONS`] kept.
fn functions(waits: &[NamedHolderWait], total_ns: u64) -> Vec<FunctionWait> {
    let mut by_fn: HashMap<(String, String), LineWaits> = HashMap::new();
    for w in waits.iter().filter(|w| w.wait.wait_ns > 0) {
        let f = leaf(w);
        let entry = by_fn.entry((f.function, f.file)).or_default();
        entry.ns += w.wait.wait_ns;
        *entry.by_line.entry(f.line).or_default() += w.wait.wait_ns;
    }
    let mut rows: Vec<(u64, FunctionWait)> = by_fn
        .into_iter()
        .map(|((function, file), LineWaits { ns, by_line })| {
            let line = by_line
                .into_iter()
                .max_by_key(|(line, ns)| (*ns, std::cmp::Reverse(*line)))
                .and_then(|(line, _)| line);
            (ns, function_wait(function, file, line, ns, total_ns))
        })
        .collect();
    rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.function.cmp(&b.1.function))
            .then_with(|| a.1.file.cmp(&b.1.file))
    });
    let rest: u64 = rows.iter().skip(TOP_FUNCTIONS).map(|(ns, _)| ns).sum();
    let mut out: Vec<FunctionWait> = rows.into_iter().take(TOP_FUNCTIONS).map(|r| r.1).collect();
    if rest > 0 {
        out.push(function_wait(
            OTHER_FUNCTION.into(),
            String::new(),
            None,
            rest,
            total_ns,
        ));
    }
    out
}

fn function_wait(
    function: String,
    file: String,
    line: Option<u32>,
    ns: u64,
    total_ns: u64,
) -> FunctionWait {
    FunctionWait {
        function,
        file,
        line,
        wait_s: ns as f64 / NS,
        share: if total_ns > 0 {
            ns as f64 / total_ns as f64
        } else {
            0.0
        },
    }
}

/// Waits summed by whole stack (frames with their lines), largest first, the
/// top [`TOP_STACKS`] kept and the rest one other stack.
fn stacks(waits: &[NamedHolderWait]) -> Vec<StackWait> {
    let mut by_stack: HashMap<Vec<Frame>, u64> = HashMap::new();
    for w in waits.iter().filter(|w| w.wait.wait_ns > 0) {
        let frames = match &w.stack {
            Some(s) if !s.frames.is_empty() => s.frames.clone(),
            _ => vec![Frame::unknown()],
        };
        *by_stack.entry(frames).or_default() += w.wait.wait_ns;
    }
    let mut rows: Vec<(Vec<Frame>, u64)> = by_stack.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest: u64 = rows.iter().skip(TOP_STACKS).map(|(_, ns)| ns).sum();
    let mut out: Vec<StackWait> = rows
        .into_iter()
        .take(TOP_STACKS)
        .map(|(frames, ns)| stack_wait(frames, ns))
        .collect();
    if rest > 0 {
        let other = Frame {
            function: OTHER_FUNCTION.into(),
            file: String::new(),
            line: None,
        };
        out.push(stack_wait(vec![other], rest));
    }
    out
}

fn stack_wait(frames: Vec<Frame>, ns: u64) -> StackWait {
    StackWait {
        frames,
        wait_s: ns as f64 / NS,
        wait_ns: ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::HolderWait;
    use crate::core::stacks::Stack;

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            file: "app.py".into(),
            line: Some(line),
        }
    }

    fn named(frames: Vec<Frame>, wait_ns: u64) -> NamedHolderWait {
        NamedHolderWait {
            stack: Some(Stack {
                frames,
                truncated: false,
            }),
            wait: HolderWait {
                wait_ns,
                segments: 1,
            },
        }
    }

    #[test]
    fn functions_are_ranked_by_the_wait_behind_them_and_shares_add_up_to_one() {
        let main = frame("main", 3);
        let waits = HolderWaits {
            stacks: vec![
                named(vec![main.clone(), frame("spin", 10)], 300),
                named(vec![main.clone(), frame("spin", 11)], 400),
                named(vec![main.clone(), frame("crunch", 20)], 200),
                named(vec![], 50),
                NamedHolderWait {
                    stack: None,
                    wait: HolderWait {
                        wait_ns: 50,
                        segments: 1,
                    },
                },
            ],
            frames_unnamed: 2,
        };
        let p = ContentionProfile::of(&waits);
        let names: Vec<(&str, Option<u32>)> = p
            .functions
            .iter()
            .map(|f| (f.function.as_str(), f.line))
            .collect();
        // spin's hottest line is 11; the empty and the missing stack are unknown.
        assert_eq!(
            names,
            [
                ("spin", Some(11)),
                ("crunch", Some(20)),
                (UNKNOWN_FUNCTION, None)
            ]
        );
        assert!((p.functions[0].share - 0.7).abs() < 1e-12);
        let shares: f64 = p.functions.iter().map(|f| f.share).sum();
        assert!((shares - 1.0).abs() < 1e-12);
        assert!((p.wait_s - 1e-6).abs() < 1e-15);
        // Stacks keep their lines apart; the unknown ones are one stack.
        assert_eq!(p.stacks.len(), 4);
        assert_eq!(p.stacks[0].wait_ns, 400);
        assert_eq!(p.stacks[0].frames, [main, frame("spin", 11)]);
        assert_eq!(p.stacks[3].frames, [Frame::unknown()]);
        assert_eq!(p.stacks.iter().map(|s| s.wait_ns).sum::<u64>(), 1000);
        assert_eq!(p.frames_unnamed, 2);
        let top: Vec<&str> = p.top_functions(5).map(|f| f.function.as_str()).collect();
        assert_eq!(top, ["spin", "crunch"]);
    }

    #[test]
    fn beyond_the_top_lists_the_rest_is_one_other_row() {
        let stacks = (0..TOP_FUNCTIONS as u64 + 5)
            .map(|i| named(vec![frame(&format!("f{i:03}"), 1)], 1000 - i))
            .collect();
        let p = ContentionProfile::of(&HolderWaits {
            stacks,
            frames_unnamed: 0,
        });
        assert_eq!(p.functions.len(), TOP_FUNCTIONS + 1);
        let other = p.functions.last().expect("other row");
        assert_eq!(other.function, OTHER_FUNCTION);
        let rest: u64 = (TOP_FUNCTIONS as u64..TOP_FUNCTIONS as u64 + 5)
            .map(|i| 1000 - i)
            .sum();
        assert!((other.wait_s - rest as f64 / NS).abs() < 1e-15);
        assert_eq!(p.stacks.len(), TOP_STACKS + 1);
        assert_eq!(p.stacks[TOP_STACKS].frames[0].function, OTHER_FUNCTION);
        let total: u64 = p.stacks.iter().map(|s| s.wait_ns).sum();
        assert_eq!(total as f64 / NS, p.wait_s);
        let shares: f64 = p.functions.iter().map(|f| f.share).sum();
        assert!((shares - 1.0).abs() < 1e-12);
    }

    #[test]
    fn no_waits_make_an_empty_profile() {
        let p = ContentionProfile::of(&HolderWaits::default());
        assert_eq!(p, ContentionProfile::default());
    }
}
