#![no_main]
//! Fuzz target `imap_command`: see `tiermail::fuzzing::imap_command` for what it drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tiermail::fuzzing::imap_command(data));
