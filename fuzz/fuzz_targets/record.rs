#![no_main]
//! The record codec: see `idem_fuzz::record`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idem_fuzz::record::run(data));
