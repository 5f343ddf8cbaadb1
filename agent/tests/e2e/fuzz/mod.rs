//! The fuzz targets' bodies over the committed seeds and past crashes.

mod fuzz_corpus;
