//! The measuring core, pure: cumulative counters in, reports out. Turns two
//! snapshots into a measurement, analyses it, folds exited threads, and says
//! what it means.

pub mod analyse;
pub mod assess;
pub mod counters;
pub mod cpu;
pub mod diagnose;
pub mod event_loop;
pub mod holders;
pub mod profile;
pub mod report;
pub mod retire;
pub mod samples;
pub mod stacks;
#[cfg(test)]
pub mod test_log;
