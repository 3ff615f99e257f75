#![no_main]
//! Fuzz target `config`: see `tiermail::fuzzing::config` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::config(data));
