//! The kernel side: its state after a measurement, full maps, thread churn, a churned GIL holder, intervals of a watched process, GIL holders' stacks, a tid reused by another process, a process's share of the thread map and of the episode ring.

mod episode_share;
mod holder_churn;
mod holder_stacks;
mod kernel_state;
mod map_full;
mod thread_churn;
mod thread_share;
mod tid_reuse;
mod watch_intervals;
