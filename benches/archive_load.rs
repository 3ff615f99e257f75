//! The archive activity under load.
//!
//! N messages (sizes 2-64 KB, median 8 KB) of U users, all past the age
//! watermark, are archived by one run with the default seekers and
//! archivers. Printed: messages/s and MB/s of the run, the current store
//! before and after (messages and bytes of mail it holds, and its files),
//! and the p99 latency of an IMAP client fetching from a mailbox that is
//! not archived, measured once with the server idle and once during the
//! run, in the same process. One message in ten is recent and stays, so
//! the run moves 90% of the mail out; then a body segment reclaim gives the
//! space back online: the store's files (database, body segments; the WAL
//! reported apart) against the mail they hold before the run, after it and
//! after the reclaim, and the p99 of an IMAP FETCH and an SMTP delivery
//! during the reclaim against quiet windows before and after it. The same
//! load is then archived a second time with no reader, for the activity's
//! own rate.
//!
//!     cargo bench --bench archive_load                 # 200,000 messages, 200 users
//!     cargo bench --bench archive_load -- --quick      # 20,000 messages, 50 users
//!     cargo bench --bench archive_load -- --quick --seekers 1 --archivers 1

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{fetcher, p99, sender};
use tiermail::server::Server;
use tiermail::store::{Delivery, Store, Summary};

const SIZES: [usize; 9] = [2048, 4096, 6144, 8192, 8192, 8192, 12288, 32768, 65536];

fn message(n: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Load <load@remote.test>\r\nTo: user@example.test\r\nSubject: old mail {n}\r\n\
         Message-ID: <{n}@bench.test>\r\nDate: Mon, 02 Jan 2023 10:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = b"Archived text that nobody reads any more, kept for the record.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.resize(size - 2, b'z');
    m.extend_from_slice(b"\r\n");
    m
}

/// Delivers `total` messages; one in ten is recent (not archived). Returns
/// the bytes of all and of the recent ones.
async fn fill(store: Arc<Store>, users: usize, total: usize) -> (u64, u64) {
    let now = chrono::Utc::now().timestamp();
    let old = now - 400 * 86_400;
    let mut set = tokio::task::JoinSet::new();
    let mut bytes = 0u64;
    let mut recent = 0u64;
    for n in 0..total {
        let size = SIZES[n % SIZES.len()];
        let raw = message(n, size);
        bytes += raw.len() as u64;
        let young = n % 10 == 9;
        if young {
            recent += raw.len() as u64;
        }
        let d = Delivery {
            user: format!("user{}@example.test", n % users),
            mailbox: "INBOX".into(),
            summary: Summary::parse(&raw),
            raw: Arc::new(raw),
            internal_date: if young { now } else { old },
            flags: vec!["\\Seen".into()],
        };
        let s = store.clone();
        set.spawn(async move { s.deliver(d).await.expect("delivered") });
        if set.len() >= 256 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    (bytes, recent)
}

/// Messages, redb bytes, WAL bytes and body segment bytes of the store.
fn held(store: &Store) -> (u64, u64, u64, u64) {
    let st = store.status().unwrap();
    (
        st.iter().map(|g| g.messages).sum(),
        st.iter().map(|g| g.db_bytes).sum(),
        st.iter().map(|g| g.wal_bytes).sum(),
        st.iter().map(|g| g.body_bytes).sum(),
    )
}

/// FETCH and SMTP delivery latencies while `until` is not done.
async fn latencies_while(
    server: &Server,
    until: impl std::future::Future<Output = ()>,
) -> (Vec<f64>, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let f = tokio::spawn(fetcher(
        server.bound.imap.unwrap(),
        stop.clone(),
        Duration::from_millis(2),
    ));
    let s = tokio::spawn(sender(server.bound.smtp.unwrap(), stop.clone()));
    until.await;
    stop.store(true, Ordering::Relaxed);
    (f.await.unwrap(), s.await.unwrap())
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (total, users) = if quick { (20_000, 50) } else { (200_000, 200) };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, mut cfg) = common::bench_config("reader@example.test");
    cfg.archive.age_days = 30;
    let arg = |name: &str| -> Option<usize> {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
    };
    if let Some(n) = arg("--seekers") {
        cfg.archive.seekers = n;
    }
    if let Some(n) = arg("--archivers") {
        cfg.archive.archivers = n;
    }
    rt.block_on(async {
        let server = Server::start(cfg.clone()).await.unwrap();
        let store = server.app.store.clone();
        let t = Instant::now();
        let (bytes, recent) = fill(store.clone(), users, total).await;
        println!(
            "tiermail archive_load: {total} messages ({:.0} MB) of {users} users loaded in {:.1}s; seekers {}, archivers {}",
            bytes as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            cfg.archive.seeker_count(),
            cfg.archive.archiver_count()
        );
        // The reader's mailbox: recent mail, never archived.
        for n in 0..50 {
            let raw = message(n, 8192);
            store
                .deliver(Delivery {
                    user: "reader@example.test".into(),
                    mailbox: "INBOX".into(),
                    summary: Summary::parse(&raw),
                    raw: Arc::new(raw),
                    internal_date: chrono::Utc::now().timestamp(),
                    flags: vec![],
                })
                .await
                .unwrap();
        }
        let before = held(&store);
        let addr = server.bound.imap.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let idle_reader = tokio::spawn(fetcher(addr, stop.clone(), Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let mut idle = idle_reader.await.unwrap();

        let app = server.app.clone();
        let acfg = Arc::new(cfg.archive.clone());
        let t = Instant::now();
        let run = tokio::spawn(async move {
            app.archive
                .run_once(app.store.clone(), app.archives.clone(), acfg)
                .await
        });
        let stop = Arc::new(AtomicBool::new(false));
        let busy = tokio::spawn(fetcher(addr, stop.clone(), Duration::ZERO));
        let line = run.await.unwrap().expect("archive run");
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut during = busy.await.unwrap();
        let after = held(&store);
        println!("{line}");
        println!(
            "archive run with a concurrent reader: {:.1}s, {:.0} messages/s, {:.1} MB/s",
            secs,
            total as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        let reader_bytes = 50 * 8192u64;
        let (live_before, live_after) = (bytes + reader_bytes, recent + reader_bytes);
        let files = |h: &(u64, u64, u64, u64)| (h.1 + h.3) as f64;
        println!(
            "current store: {} -> {} messages ({:.0} -> {:.0} MB of mail); files (redb + body segments) {:.0} MB = {:.2}x the mail -> {:.0} MB = {:.2}x (redb {:.0} -> {:.0} MB, bodies {:.0} -> {:.0} MB; WAL, not counted, {:.0} -> {:.0} MB)",
            before.0,
            after.0,
            live_before as f64 / 1e6,
            live_after as f64 / 1e6,
            files(&before) / 1e6,
            files(&before) / live_before as f64,
            files(&after) / 1e6,
            files(&after) / live_after as f64,
            before.1 as f64 / 1e6,
            after.1 as f64 / 1e6,
            before.3 as f64 / 1e6,
            after.3 as f64 / 1e6,
            before.2 as f64 / 1e6,
            after.2 as f64 / 1e6
        );

        // Reclaim online, between two quiet windows of the same load.
        let window = Duration::from_secs(if quick { 5 } else { 10 });
        let (mut f0, mut s0) = latencies_while(&server, tokio::time::sleep(window)).await;
        let t = Instant::now();
        let mut report = Vec::new();
        let (mut f1, mut s1) = latencies_while(&server, async {
            report = store.reclaim(cfg.store.reclaim_dead_percent).await.expect("reclaim");
        })
        .await;
        let r_secs = t.elapsed().as_secs_f64();
        let (f, s) = latencies_while(&server, tokio::time::sleep(window)).await;
        f0.extend(f);
        s0.extend(s);
        let reclaimed = held(&store);
        let moved: u64 = report.iter().map(|(_, r)| r.moved_bytes).sum();
        let freed: u64 = report.iter().map(|(_, r)| r.freed_bytes).sum();
        let segs: u64 = report.iter().map(|(_, r)| r.segments).sum();
        println!(
            "reclaim: {segs} segments deleted, {:.0} MB moved, {:.0} MB freed in {r_secs:.1}s; files {:.0} MB = {:.2}x the {:.0} MB of mail left (redb {:.0} MB, bodies {:.0} MB; WAL {:.0} MB)",
            moved as f64 / 1e6,
            freed as f64 / 1e6,
            files(&reclaimed) / 1e6,
            files(&reclaimed) / live_after as f64,
            live_after as f64 / 1e6,
            reclaimed.1 as f64 / 1e6,
            reclaimed.3 as f64 / 1e6,
            reclaimed.2 as f64 / 1e6
        );
        let (fp0, fp1, sp0, sp1) = (p99(&mut f0), p99(&mut f1), p99(&mut s0), p99(&mut s1));
        println!(
            "during the reclaim: IMAP FETCH p99 {fp1:.2} ms vs {fp0:.2} ms quiet ({:.2}x); SMTP delivery p99 {sp1:.2} ms vs {sp0:.2} ms ({:.2}x) ({} and {} fetches, {} and {} deliveries)",
            fp1 / fp0,
            sp1 / sp0,
            f1.len(),
            f0.len(),
            s1.len(),
            s0.len()
        );
        println!(
            "archive files: {:.0} MB",
            dir_bytes(&cfg.archive.root) as f64 / 1e6
        );
        println!(
            "IMAP FETCH p99: idle {:.2} ms, during the run {:.2} ms ({} and {} fetches)",
            p99(&mut idle),
            p99(&mut during),
            idle.len(),
            during.len()
        );
        // The same load again, archived with no reader competing for the
        // CPU: the activity's own rate.
        let (bytes, _) = fill(store.clone(), users, total).await;
        let app = server.app.clone();
        let acfg = Arc::new(cfg.archive.clone());
        let t = Instant::now();
        app.archive
            .run_once(app.store.clone(), app.archives.clone(), acfg)
            .await
            .expect("second archive run");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "archive run without a concurrent reader: {:.1}s, {:.0} messages/s, {:.1} MB/s",
            secs,
            total as f64 / secs,
            bytes as f64 / 1e6 / secs
        );
        server.shutdown().await;
    });
}
