#![no_main]
//! Fuzz target `wal`: see `tiermail::fuzzing::wal` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::wal(data));
