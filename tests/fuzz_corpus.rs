//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same harnesses cargo-fuzz runs (`tiermail::fuzzing`), on the stable
//! toolchain: every input a fuzzer ever kept, and every crash it found
//! (fixed, then kept as a regression), must pass here. See docs/fuzzing.md.

use std::path::Path;

fn replay(target: &str) {
    tiermail::fuzzing::cleanup_at_exit();
    let f = tiermail::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a harness of that name");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let n = tiermail::fuzzing::replay(&dir, f);
    assert!(n > 0, "{} holds no inputs", dir.display());
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in tiermail::fuzzing::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        assert!(dir.is_dir(), "no corpus for {name}");
        let target = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(target.is_file(), "no fuzz target for {name}");
    }
}

macro_rules! corpus {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name));
        }
    )*};
}

corpus!(
    imap_command,
    imap_session,
    smtp_session,
    mime,
    list_pattern,
    wal,
    archive,
    backup,
    config,
    store_model
);
