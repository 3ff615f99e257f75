#![no_main]
//! Fuzz target `imap_session`: see `tiermail::fuzzing::imap_session` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::imap_session(data));
