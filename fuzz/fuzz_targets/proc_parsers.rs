//! libFuzzer entry point; the body is `gilscope_fuzz::proc_parsers` (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gilscope_fuzz::proc_parsers(data));
