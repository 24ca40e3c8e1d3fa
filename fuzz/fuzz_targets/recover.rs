#![no_main]
//! Recovery of arbitrary segment files: see `idem_fuzz::recover`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idem_fuzz::recover::run(data));
