//! Online backup, restore and recovery.
//!
//! A current store of realistic corpus mail (about 2 GB, 50 users) is
//! backed up while the server runs. Printed, each measured in the same run:
//! - backup throughput against a plain sequential copy of the databases
//!   (`cp` + `sync` of the same store files into the same target disk);
//! - the size of an incremental backup after "one minute" of mail;
//! - restore time of the newest backup's chain (full + incrementals) into an
//!   empty data directory against a copy of the same bytes, and recovery
//!   time: restore + roll-forward of the log written after the backup by
//!   "10 minutes" of delivery load (30,000 messages, 50 a second);
//! - start-up of the recovered store (the log since the backup is kept but
//!   not read again);
//! - p99 latency of an IMAP FETCH and of an SMTP delivery without a backup
//!   and while backups run back to back (continuous), same clients, in
//!   alternating windows.
//!
//! Run:
//!
//!     cargo bench --bench backup_load                 # ~2 GB
//!     cargo bench --bench backup_load -- --quick      # ~200 MB

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::{fetcher, p99, sender};
use tiermail::backup::restore;
use tiermail::backup::session::Mode;
use tiermail::server::Server;
use tiermail::store::{Delivery, Store, Summary};

const USERS: usize = 50;
/// Alternating windows without and with backups for the latency figures.
const ROUNDS: usize = 4;

async fn fill(store: Arc<Store>, first: usize, until_bytes: u64, max: usize) -> (usize, u64) {
    let mut set = tokio::task::JoinSet::new();
    let mut bytes = 0u64;
    let mut n = first;
    while bytes < until_bytes && n - first < max {
        let user = format!("user{}@example.test", n % USERS);
        let raw = tiermail::corpus::message(7, n as u64, &user);
        bytes += raw.len() as u64;
        let d = Delivery {
            user,
            mailbox: "INBOX".into(),
            summary: Summary::parse(&raw),
            raw: Arc::new(raw),
            internal_date: chrono::Utc::now().timestamp(),
            flags: vec![],
        };
        let s = store.clone();
        set.spawn(async move { s.deliver(d).await.expect("delivered") });
        if set.len() >= 128 {
            set.join_next().await;
        }
        n += 1;
    }
    while set.join_next().await.is_some() {}
    (n - first, bytes)
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

/// `cp` of the store files into `dest`, then `sync`: the baseline.
fn raw_copy(files: &[PathBuf], dest: &Path) -> (u64, f64) {
    std::fs::create_dir_all(dest).unwrap();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let t = Instant::now();
    for (i, f) in files.iter().enumerate() {
        let ok = std::process::Command::new("cp")
            .arg(f)
            .arg(dest.join(format!("{i}.redb")))
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    assert!(
        std::process::Command::new("sync")
            .status()
            .unwrap()
            .success()
    );
    (bytes, t.elapsed().as_secs_f64())
}

/// The load of a latency window: a fetcher and a sender for `secs`.
async fn latencies(server: &Server, secs: u64) -> (Vec<f64>, Vec<f64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let f = tokio::spawn(fetcher(
        server.bound.imap.unwrap(),
        stop.clone(),
        Duration::from_millis(2),
    ));
    let s = tokio::spawn(sender(server.bound.smtp.unwrap(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    (f.await.unwrap(), s.await.unwrap())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (target_bytes, after_msgs, window) = if quick {
        (200_000_000u64, 3_000usize, 5u64)
    } else {
        (2_000_000_000u64, 30_000usize, 10u64)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dir, cfg) = common::bench_config("reader@example.test");
    rt.block_on(async {
        let server = Server::start(cfg.clone()).await.unwrap();
        let store = server.app.store.clone();
        let t = Instant::now();
        let (n, bytes) = fill(store.clone(), 0, target_bytes, usize::MAX).await;
        for i in 0..50 {
            let raw = tiermail::corpus::message(9, i, "reader@example.test");
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
        for g in store.groups() {
            g.checkpoint().await.unwrap();
        }
        println!(
            "tiermail backup_load: {n} corpus messages ({:.0} MB of mail) of {USERS} users loaded in {:.1}s",
            mb(bytes),
            t.elapsed().as_secs_f64()
        );

        // Baseline: a plain copy of the store files, then the backup.
        let mut files: Vec<PathBuf> = Vec::new();
        for g in store.groups() {
            files.push(g.dir.join("store.redb"));
            for (_, seg) in tiermail::store::export::body_segments(&g.dir.join("store.redb")).unwrap() {
                files.push(seg);
            }
        }
        let (cp_bytes, cp_secs) = raw_copy(&files, &dir.path().join("cp-baseline"));
        std::fs::remove_dir_all(dir.path().join("cp-baseline")).unwrap();
        let app = server.app.clone();
        let bcfg = Arc::new(cfg.backup.clone());
        let t = Instant::now();
        let line = app
            .backup
            .run_once(app.store.clone(), bcfg.clone(), Mode::Full)
            .await
            .expect("backup");
        let b_secs = t.elapsed().as_secs_f64();
        let file = tiermail::backup::drill::latest(&cfg.backup.targets).unwrap();
        let b_bytes = std::fs::metadata(&file).unwrap().len();
        println!("{line}");
        // The same bytes: the backup file copied with cp + sync.
        let (same_bytes, same_secs) = raw_copy(std::slice::from_ref(&file), &dir.path().join("cp-same"));
        std::fs::remove_dir_all(dir.path().join("cp-same")).unwrap();
        println!(
            "raw copy (cp + sync) of the backup's own bytes: {:.0} MB in {:.2}s = {:.0} MB/s; backup/copy throughput {:.2}x",
            mb(same_bytes),
            same_secs,
            mb(same_bytes) / same_secs,
            (mb(b_bytes) / b_secs) / (mb(same_bytes) / same_secs)
        );
        println!(
            "raw copy (cp + sync) of the store files: {:.0} MB in {:.2}s = {:.0} MB/s",
            mb(cp_bytes),
            cp_secs,
            mb(cp_bytes) / cp_secs
        );
        println!(
            "backup (image + logs + patch, fsync): {:.0} MB in {:.2}s = {:.0} MB/s; ratio to the raw copy {:.2}x by throughput, {:.2}x by time",
            mb(b_bytes),
            b_secs,
            mb(b_bytes) / b_secs,
            (mb(b_bytes) / b_secs) / (mb(cp_bytes) / cp_secs),
            cp_secs / b_secs
        );

        // An incremental backup after "one minute" of mail (3,000 messages,
        // 50 a second): its size follows that mail, not the store.
        let (minute, minute_bytes) = fill(store.clone(), 20_000_000, u64::MAX, after_msgs / 10).await;
        let t = Instant::now();
        let line = app
            .backup
            .run_once(app.store.clone(), bcfg.clone(), Mode::Auto)
            .await
            .expect("backup");
        let i_secs = t.elapsed().as_secs_f64();
        assert!(line.contains("incremental on"), "{line}");
        let inc = tiermail::backup::drill::latest(&cfg.backup.targets).unwrap();
        let i_bytes = std::fs::metadata(&inc).unwrap().len();
        println!(
            "incremental backup after {minute} messages ({:.1} MB of mail): {:.1} MB written in {:.2}s ({:.2}x the new mail; the full backup before it: {:.0} MB)",
            mb(minute_bytes),
            mb(i_bytes),
            i_secs,
            i_bytes as f64 / minute_bytes as f64,
            mb(b_bytes)
        );

        // Latency without and with continuous backups, in alternating
        // windows (the machine's own drift hits both conditions alike).
        let (mut f0, mut s0, mut f1, mut s1) = (vec![], vec![], vec![], vec![]);
        let mut runs = 0;
        for _ in 0..ROUNDS {
            let (f, s) = latencies(&server, window).await;
            f0.extend(f);
            s0.extend(s);
            let stop = Arc::new(AtomicBool::new(false));
            let looping = {
                let (app, bcfg, stop) = (app.clone(), bcfg.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut done = 0;
                    while !stop.load(Ordering::Relaxed) {
                        // The last one is cancelled at the window's end.
                        if app.backup.run_once(app.store.clone(), bcfg.clone(), Mode::Auto).await.is_ok() {
                            done += 1;
                        }
                    }
                    done
                })
            };
            let (f, s) = latencies(&server, window).await;
            f1.extend(f);
            s1.extend(s);
            stop.store(true, Ordering::Relaxed);
            app.backup.cancel();
            runs += looping.await.unwrap();
            // Let the last backup's writes drain before the next quiet window.
            tokio::task::spawn_blocking(|| std::process::Command::new("sync").status())
                .await
                .unwrap()
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (fp0, fp1, sp0, sp1) = (p99(&mut f0), p99(&mut f1), p99(&mut s0), p99(&mut s1));
        println!(
            "IMAP FETCH p99: {:.2} ms without backup, {:.2} ms during continuous backup ({runs} backups completed): {:.2}x ({} and {} fetches, {ROUNDS} alternating windows of {window}s each)",
            fp0,
            fp1,
            fp1 / fp0,
            f0.len(),
            f1.len()
        );
        println!(
            "SMTP delivery p99: {:.2} ms without backup, {:.2} ms during continuous backup: {:.2}x ({} and {} messages)",
            sp0,
            sp1,
            sp1 / sp0,
            s0.len(),
            s1.len()
        );

        // The newest backup, then "10 minutes" of mail: its log is what a
        // recovery replays.
        app.backup
            .run_once(app.store.clone(), bcfg.clone(), Mode::Auto)
            .await
            .expect("backup");
        let file = tiermail::backup::drill::latest(&cfg.backup.targets).unwrap();
        let (after, after_bytes) = fill(store.clone(), 10_000_000, u64::MAX, after_msgs).await;
        let wal_bytes: u64 = store.status().unwrap().iter().map(|g| g.wal_bytes).sum();
        println!(
            "after the backup: {after} messages ({:.0} MB) delivered, WAL now {:.0} MB",
            mb(after_bytes),
            mb(wal_bytes)
        );
        let fresh = dir.path().join("fresh");
        let fresh_data = fresh.join("data");
        for g in store.groups() {
            let wal = fresh_data.join(format!("groups/g{:03}/wal", g.id));
            std::fs::create_dir_all(&wal).unwrap();
            for (_, seg) in tiermail::store::export::wal_segments(&g.dir.join("wal")).unwrap() {
                std::fs::copy(&seg, wal.join(seg.file_name().unwrap())).unwrap();
            }
        }
        server.shutdown().await;

        // What a restore reads: the full backup and every incremental after
        // it. Copying those bytes is the baseline.
        let chain = restore::chain_of(&file).unwrap();
        let (chain_bytes, chain_cp) = raw_copy(&chain, &dir.path().join("cp-chain"));
        std::fs::remove_dir_all(dir.path().join("cp-chain")).unwrap();
        println!(
            "raw copy (cp + sync) of the restore's chain ({} files, {:.0} MB): {:.2}s",
            chain.len(),
            mb(chain_bytes),
            chain_cp
        );
        // Restore alone (no log to replay), then restore + roll-forward.
        let alone = dir.path().join("alone/data");
        let t = Instant::now();
        restore::restore(
            &restore::Options::new(alone.clone(), file.clone()),
            &|_, _| {},
        )
        .unwrap();
        let mut restored_bytes = 0u64;
        for g in std::fs::read_dir(alone.join("groups")).unwrap().flatten() {
            let db = g.path().join("store.redb");
            restored_bytes += std::fs::metadata(&db).map_or(0, |m| m.len());
            for (_, seg) in tiermail::store::export::body_segments(&db).unwrap() {
                restored_bytes += std::fs::metadata(seg).unwrap().len();
            }
        }
        let r_secs = t.elapsed().as_secs_f64();
        println!(
            "restore of {} and the {} backups before it ({:.0} MB) into an empty data directory: {:.1}s = {:.2}x the copy of the same bytes; files (redb + body segments) {:.0} MB (live store: {:.0} MB)",
            file.file_name().unwrap().to_string_lossy(),
            chain.len() - 1,
            mb(chain_bytes),
            r_secs,
            r_secs / chain_cp,
            mb(restored_bytes),
            mb(cp_bytes)
        );
        let t = Instant::now();
        let reports = restore::restore(
            &restore::Options::new(fresh_data.clone(), file.clone()),
            &|_, _| {},
        )
        .unwrap();
        let replayed: u64 = reports.iter().map(|r| r.replayed).sum();
        println!(
            "recovery (restore + roll-forward of {replayed} log records): {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let s = Store::open(&fresh_data, &cfg.store).unwrap();
        let replayed_at_start: u64 = s.groups().iter().map(|g| g.recovery.replayed).sum();
        println!(
            "start-up of the recovered store: {:.2}s ({replayed_at_start} records replayed; the kept log since the backup is skipped)",
            t.elapsed().as_secs_f64()
        );
        s.shutdown();
    });
}
