#![no_main]
//! Fuzz target `store_model`: see `tiermail::fuzzing::store_model` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::store_model(data));
