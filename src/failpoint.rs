//! Crash points for the crash tests: `TMTEST_FAILPOINT=<name>` in the
//! environment kills the process with SIGKILL when it reaches the point
//! of that name, as a power cut or `kill -9` would there. Without the
//! variable a point costs one environment lookup.

pub fn hit(name: &str) {
    if std::env::var("TMTEST_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint hit: killing the process");
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
