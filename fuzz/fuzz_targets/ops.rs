#![no_main]
//! Operation sequences against a model: see `idem_fuzz::ops`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: idem_fuzz::ops::OpsInput| idem_fuzz::ops::run(&input));
