#![no_main]
//! Operation sequences against a model: see `idem_fuzz::ops`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idem_fuzz::ops::run_bytes(data));
