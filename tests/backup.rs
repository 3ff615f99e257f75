//! Online backup and restore end to end: a backup taken under load restores
//! to exactly the live state at its end LSN and, rolled forward, to the
//! live state; damaged backups are refused with the spot named; mirror
//! targets fail independently; the write-ahead log is kept until a backup
//! holds it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::TestServer;
use common::imap::Imap;
use tiermail::backup::format::{self, Kind};
use tiermail::backup::{manifest, restore, target};
use tiermail::config::Config;
use tiermail::store::Store;

const USERS: [&str; 3] = [
    "alice@example.test",
    "bob@example.test",
    "carol@example.test",
];

fn message(n: usize, size: usize) -> Vec<u8> {
    let mut b = format!(
        "From: load@remote.test\r\nSubject: backup {n}\r\nMessage-Id: <{n}@backup.test>\r\n\r\n"
    )
    .into_bytes();
    while b.len() < size {
        b.extend_from_slice(format!("line {} of message {n}\r\n", b.len()).as_bytes());
    }
    b
}

async fn smtp_deliver(addr: std::net::SocketAddr, first: usize, count: usize, size: usize) {
    let mut c = common::Client::connect(addr).await;
    c.expect("EHLO load.test", "250").await;
    for n in first..first + count {
        let r = c
            .send_mail("load@remote.test", &[USERS[n % 3]], &message(n, size))
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
}

async fn backup_now(server: &TestServer) -> String {
    let app = server.app();
    app.backup
        .run_once(app.store.clone(), Arc::new(server.config.backup.clone()))
        .await
        .expect("backup succeeds")
}

fn backups(dir: &Path) -> Vec<PathBuf> {
    target::backups(dir).unwrap_or_default()
}

/// Every mailbox of a user: name -> (uid, flags, bytes) by UID.
type UserState = BTreeMap<String, Vec<(u32, Vec<String>, Vec<u8>)>>;

async fn user_state(store: &Arc<Store>, user: &str) -> UserState {
    let mut out = UserState::new();
    for (name, _) in store.mailboxes(user).await.unwrap() {
        let mut v = Vec::new();
        for (uid, meta) in store.messages(user, &name).await.unwrap() {
            let raw = store.raw(user, &name, uid).await.unwrap().unwrap();
            let mut flags = meta.flags.clone();
            flags.sort();
            v.push((uid, flags, raw));
        }
        out.insert(name, v);
    }
    out
}

/// Load from several clients: SMTP deliveries, and over IMAP flag changes,
/// expunges and moves, until `stop`.
async fn churn(
    smtp: std::net::SocketAddr,
    imap: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) {
    let mut tasks = Vec::new();
    for t in 0..2 {
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = common::Client::connect(smtp).await;
            c.expect("EHLO load.test", "250").await;
            let mut n = 100_000 * (t + 1);
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .send_mail("load@remote.test", &[USERS[n % 3]], &message(n, 3000))
                    .await;
                assert!(r.starts_with("250"), "{r}");
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for user in USERS {
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Imap::login(imap, user).await;
            let r = c.run("c0 SELECT INBOX").await;
            assert!(r.contains("c0 OK"), "{r}");
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let cmd = match i % 4 {
                    0 => format!("c{i} UID STORE {}:* +FLAGS (\\Seen)", i * 3),
                    1 => format!("c{i} UID STORE {} +FLAGS (\\Deleted)", i * 2),
                    2 => format!("c{i} EXPUNGE"),
                    _ => format!("c{i} UID MOVE {}:{} Trash", i, i + 2),
                };
                let r = c.run(&cmd).await;
                assert!(r.contains(&format!("c{i} OK")), "{cmd}: {r}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_the_live_state() {
    let server = TestServer::start_with(|c| c.store.groups = 2).await;
    smtp_deliver(server.smtp(), 0, 300, 20_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(churn(
        server.smtp(),
        server.imap(),
        stop.clone(),
        done.clone(),
    ));
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back up while the load runs, until one backup has caught writes in
    // its patch (the load makes that the rule, not the exception).
    let target = &server.config.backup.targets[0];
    let mut patched = None;
    for _ in 0..10 {
        let line = backup_now(&server).await;
        assert!(line.contains("ok"), "{line}");
        let file = backups(target).pop().unwrap();
        let d = restore::describe(&file).unwrap();
        if d.groups.iter().any(|(s, e)| e.end_lsn > s.image_lsn) {
            patched = Some(file);
            break;
        }
    }
    let file = patched.expect("some backup caught writes in its patch");
    let before_stop = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < before_stop + 30 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    // Image + patch is the live state at the backup's end LSN: the per-user
    // digests the backup took from the live store then match the rebuilt
    // databases.
    let scratch = tempfile::tempdir().unwrap();
    let (_, rebuilt) = restore::materialize(
        &file,
        &|id| Some(scratch.path().join(format!("{id}.redb"))),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(rebuilt.len(), 2);
    for r in &rebuilt {
        let db = redb::Database::open(&r.path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let got = manifest::compute(&txn, &Default::default()).unwrap();
        assert!(
            manifest::differences(&r.manifest, &got).is_empty(),
            "{:?}",
            manifest::differences(&r.manifest, &got)
        );
        assert!(r.manifest.values().map(|d| d.messages).sum::<u64>() > 0);
    }

    // Rolled forward with the live log, the restore equals the live store
    // now (UIDs, flags, bytes of every message in every mailbox).
    let fresh = tempfile::tempdir().unwrap();
    let fresh_data = fresh.path().join("data");
    for g in server.store().groups() {
        let wal = fresh_data.join(format!("groups/g{:03}/wal", g.id));
        std::fs::create_dir_all(&wal).unwrap();
        for (_, seg) in tiermail::store::wal::list_segments(&g.dir.join("wal")).unwrap() {
            std::fs::copy(&seg, wal.join(seg.file_name().unwrap())).unwrap();
        }
    }
    let reports = restore::restore(
        &restore::Options {
            data_dir: fresh_data.clone(),
            file: file.clone(),
            group: None,
            until: None,
            later: vec![],
            force: false,
        },
        &|_, _| {},
    )
    .unwrap();
    assert!(reports.iter().any(|r| r.replayed > 0), "{reports:?}");
    let mut cfg = Config::for_testing(fresh.path());
    cfg.store.groups = 2;
    let restored = Store::open(&fresh_data, &cfg.store).unwrap();
    let live = server.store();
    let mut messages = 0;
    for user in USERS {
        let want = user_state(&live, user).await;
        let got = user_state(&restored, user).await;
        messages += want.values().map(Vec::len).sum::<usize>();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        for (name, msgs) in &want {
            assert_eq!(&got[name], msgs, "{user} {name}");
        }
    }
    assert!(messages > 200, "{messages}");
    restored.shutdown();
}

/// A backup whose patch holds records (writes run while it is taken).
async fn backup_with_patch(server: &TestServer) -> PathBuf {
    let stop = Arc::new(AtomicBool::new(false));
    let smtp = server.smtp();
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = common::Client::connect(smtp).await;
            c.expect("EHLO load.test", "250").await;
            let mut n = 50_000;
            while !stop.load(Ordering::Relaxed) {
                c.send_mail("load@remote.test", &[USERS[n % 3]], &message(n, 500))
                    .await;
                n += 1;
            }
        })
    };
    let target = &server.config.backup.targets[0];
    let mut found = None;
    for _ in 0..20 {
        backup_now(server).await;
        let file = backups(target).pop().unwrap();
        let d = restore::describe(&file).unwrap();
        if d.groups.iter().any(|(s, e)| e.end_lsn > s.image_lsn) {
            found = Some(file);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    found.expect("a backup with a patch")
}

fn tiermail_cli(server: &TestServer) -> std::process::Command {
    let cfg = common::daemon::write_config(server.dir.path(), "");
    common::daemon::tiermail(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_with_the_spot_named() {
    let server = TestServer::start_with(|c| c.store.groups = 1).await;
    smtp_deliver(server.smtp(), 0, 200, 4000).await;
    let good = backup_with_patch(&server).await;
    let bytes = std::fs::read(&good).unwrap();

    // Where the first image, log-or-patch and trailer blocks are.
    let mut r = format::Reader::new(&bytes[..]).unwrap();
    let mut image = None;
    let mut patch = None;
    while let Some(b) = r.next_block().unwrap() {
        match b.kind {
            Kind::Image if image.is_none() && b.payload.len() > 100 => image = Some(b.offset),
            Kind::Patch if patch.is_none() && !b.payload.is_empty() => patch = Some(b.offset),
            _ => {}
        }
    }
    let trailer = bytes.len() as u64 - (format::BLOCK_OVERHEAD + 12);
    let spots = [
        ("image", image.unwrap()),
        ("patch", patch.unwrap()),
        ("trailer", trailer),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, at) in spots {
        let mut bad = bytes.clone();
        bad[at as usize + 5 + 7] ^= 0x20;
        let path = dir.path().join(format!("{what}.tmbak"));
        std::fs::write(&path, &bad).unwrap();

        let out = tiermail_cli(&server)
            .args(["backup", "verify"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: verify passed");
        assert!(
            err.contains(&format!("at byte {at}")) && err.contains("DAMAGED"),
            "{what} at {at}: {err}"
        );

        let data = dir.path().join(format!("restore-{what}"));
        let e = restore::restore(
            &restore::Options {
                data_dir: data.clone(),
                file: path.clone(),
                group: None,
                until: None,
                later: vec![],
                force: false,
            },
            &|_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("at byte {at}")), "{what}: {e}");
        assert!(
            !data.join("groups/g000/store.redb").exists()
                && !data.join("groups/g000/store.redb.restoring").exists(),
            "{what}: nothing restored from a damaged file"
        );
    }
    // The intact file verifies.
    let out = tiermail_cli(&server)
        .args(["backup", "verify"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_kept_until_a_backup_holds_it() {
    let server = TestServer::start_with(|c| {
        c.store.groups = 1;
        c.store.wal_segment_bytes = 1 << 20;
        c.store.checkpoint_records = 50;
    })
    .await;
    smtp_deliver(server.smtp(), 0, 300, 20_000).await;
    let g = server.store().groups()[0].clone();
    g.checkpoint().await.unwrap();
    let segments = || tiermail::store::wal::list_segments(&g.dir.join("wal")).unwrap().len();
    assert!(segments() > 3, "no backup yet: every segment kept");
    backup_now(&server).await;
    assert_eq!(segments(), 1, "backed up and checkpointed: pruned");
    // Without backup targets the checkpoint alone prunes.
    let plain = TestServer::start_with(|c| {
        c.store.groups = 1;
        c.store.wal_segment_bytes = 1 << 20;
        c.backup.targets.clear();
    })
    .await;
    smtp_deliver(plain.smtp(), 0, 300, 20_000).await;
    let g = plain.store().groups()[0].clone();
    g.checkpoint().await.unwrap();
    assert_eq!(
        tiermail::store::wal::list_segments(&g.dir.join("wal"))
            .unwrap()
            .len(),
        1
    );
}
