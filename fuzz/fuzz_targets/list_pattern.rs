#![no_main]
//! Fuzz target `list_pattern`: see `tiermail::fuzzing::list_pattern` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::list_pattern(data));
