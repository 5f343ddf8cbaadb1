//! `gilscope check`: errors, measured truths, diagnoses, event loops, pools and quotas, thread
//! names, capabilities, the GIL contention profile.

mod capabilities;
mod contention_profile;
mod cpu_and_pools;
mod diagnoses;
mod diagnosis_matrix;
mod errors;
mod event_loops;
mod measures_truth;
mod thread_names;
