//! libFuzzer entry point; the body is `gilscope_fuzz::memory_walkers` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gilscope_fuzz::memory_walkers(data));
