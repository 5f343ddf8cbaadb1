//! `gilscope check`: errors, measured truths, diagnoses, event loops, pools and quotas, thread
//! names, capabilities.

mod capabilities;
mod cpu_and_pools;
mod diagnoses;
mod diagnosis_matrix;
mod errors;
mod event_loops;
mod measures_truth;
mod thread_names;
