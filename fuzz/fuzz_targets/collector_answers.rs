//! libFuzzer entry point; the body is `gilscope_fuzz::collector_answers` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gilscope_fuzz::collector_answers(data));
