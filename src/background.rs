//! Threads for bulk background work (archive moves, backups, drills) that
//! run at a lower scheduling priority than everything else, so that copying
//! and checksumming gigabytes of mail yields the CPU to IMAP and SMTP
//! sessions (on a 2-core machine the difference is an interactive FETCH at
//! 0.2 ms or at several ms).

use std::sync::OnceLock;

use crossbeam_channel::{Sender, unbounded};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// `nice` value of the background threads (0 = normal, 19 = lowest).
const NICE: i32 = 10;

fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = unbounded::<Job>();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            // If a thread cannot start, the others do the work; with none,
            // `run` reports the error.
            let _ = std::thread::Builder::new()
                .name(format!("tiermail-bg-{i}"))
                .spawn(move || {
                    // SAFETY: setpriority only changes this thread's
                    // scheduling priority (Linux applies PRIO_PROCESS with
                    // who = 0 to the calling thread).
                    unsafe {
                        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
                    }
                    for job in rx {
                        // A job that panics loses its answer (its caller
                        // gets an error), never this thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
        }
        tx
    })
}

/// Runs `f` on a low-priority background thread and waits for its result;
/// an error when the job could not run or did not finish.
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, std::io::Error> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    pool()
        .send(job)
        .map_err(|_| std::io::Error::other("background threads are gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("background job failed without an answer"))
}

/// Runs a long job (a backup, a drill) on a thread of its own under
/// `SCHED_IDLE` (it gets the CPU only when nothing else wants it; measured:
/// with nice 10 a continuous backup doubled interactive p99 latency on a
/// 2-core machine), so that it never holds up the shared pool, and waits
/// for its result.
pub async fn run_alone<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, std::io::Error> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("tiermail-{name}"))
        .spawn(move || {
            idle_priority();
            let _ = tx.send(f());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other(format!("{name} job failed without an answer")))
}

/// Puts the calling thread under `SCHED_IDLE` (or `nice 10` where that is
/// refused).
pub fn idle_priority() {
    // SAFETY: sched_setscheduler and setpriority with pid 0 change only the
    // calling thread's scheduling; the parameter outlives the call.
    unsafe {
        let p = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
        }
    }
}
