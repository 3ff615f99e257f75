#![no_main]
//! Fuzz target `mime`: see `tiermail::fuzzing::mime` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::mime(data));
