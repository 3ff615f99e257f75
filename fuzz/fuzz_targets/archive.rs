#![no_main]
//! Fuzz target `archive`: see `tiermail::fuzzing::archive` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::archive(data));
