#![no_main]
//! Fuzz target `smtp_session`: see `tiermail::fuzzing::smtp_session` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::smtp_session(data));
