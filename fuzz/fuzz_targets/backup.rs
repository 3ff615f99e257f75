#![no_main]
//! Fuzz target `backup`: see `tiermail::fuzzing::backup` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::backup(data));
