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
use common::daemon::cli;
use common::imap::Imap;
use tiermail::backup::format::{self, Kind};
use tiermail::backup::session::Mode;
use tiermail::backup::{restore, target};
use tiermail::config::Config;
use tiermail::store::Store;
use tiermail::store::export as manifest;

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
    backup_as(server, Mode::Auto).await
}

async fn backup_as(server: &TestServer, mode: Mode) -> String {
    let app = server.app();
    app.backup
        .run_once(
            app.store.clone(),
            Arc::new(server.config.backup.clone()),
            mode,
        )
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
    let (_, rebuilt) = restore::materialize_chain(
        &restore::chain_of(&file).unwrap(),
        &|id| Some(scratch.path().join(format!("{id}.redb"))),
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(rebuilt.len(), 2);
    for r in &rebuilt {
        let got = tiermail::store::export::Rebuilt::open(&r.path)
            .unwrap()
            .manifest_verified(tiermail::store::export::ImageKind::Segments)
            .unwrap();
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
        for (_, seg) in tiermail::store::export::wal_segments(&g.dir.join("wal")).unwrap() {
            std::fs::copy(&seg, wal.join(seg.file_name().unwrap())).unwrap();
        }
    }
    let reports = restore::restore(
        &restore::Options::new(fresh_data.clone(), file.clone()),
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
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, msgs) in &want {
            assert_eq!(&got[name], msgs, "{user} {name}");
        }
    }
    assert!(messages > 200, "{messages}");
    restored.shutdown();

    // One group alone.
    let one = tempfile::tempdir().unwrap();
    let reports = restore::restore(
        &restore::Options {
            group: Some(1),
            ..restore::Options::new(one.path(), &file)
        },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].id, 1);
    assert!(one.path().join("groups/g001/store.redb").exists());
    assert!(!one.path().join("groups/g000").exists());
    let e = restore::restore(
        &restore::Options {
            group: Some(7),
            ..restore::Options::new(one.path(), &file)
        },
        &|_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("no storage group 7"), "{e}");
}

/// A backup whose patch holds records (writes run while it is taken).
async fn backup_with_patch(server: &TestServer) -> PathBuf {
    let stop = Arc::new(AtomicBool::new(false));
    let smtp = server.smtp();
    let writers: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = common::Client::connect(smtp).await;
                c.expect("EHLO load.test", "250").await;
                let mut n = 50_000 * (t + 1);
                while !stop.load(Ordering::Relaxed) {
                    c.send_mail("load@remote.test", &[USERS[n % 3]], &message(n, 500))
                        .await;
                    n += 1;
                }
            })
        })
        .collect();
    let target = &server.config.backup.targets[0];
    let mut found = None;
    for _ in 0..20 {
        backup_as(server, Mode::Full).await;
        let file = backups(target).pop().unwrap();
        let d = restore::describe(&file).unwrap();
        if d.groups.iter().any(|(s, e)| e.end_lsn > s.image_lsn) {
            found = Some(file);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    found.expect("a backup with a patch")
}

fn tiermail_cli(server: &TestServer) -> std::process::Command {
    let cfg = common::daemon::write_config(server.dir.path(), "");
    common::daemon::tiermail(&cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_are_refused_with_the_spot_named() {
    let server = TestServer::start_with(|c| c.store.groups = 1).await;
    smtp_deliver(server.smtp(), 0, 300, 20_000).await;
    let good = backup_with_patch(&server).await;
    let bytes = std::fs::read(&good).unwrap();

    // Where the first image, log-or-patch and trailer blocks are.
    let mut r = format::Reader::new(&bytes[..]).unwrap();
    let mut image = None;
    let mut patch = None;
    let mut segment = None;
    while let Some(b) = r.next_block().unwrap() {
        match b.kind {
            Kind::Segment if segment.is_none() => segment = Some(b.offset),
            Kind::Image if image.is_none() && b.payload.len() > 100 => image = Some(b.offset),
            Kind::Patch if patch.is_none() && !b.payload.is_empty() => patch = Some(b.offset),
            _ => {}
        }
    }
    let trailer = bytes.len() as u64 - (format::BLOCK_OVERHEAD + 12);
    let spots = [
        ("segment", segment.unwrap()),
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
        let out = tiermail_cli(&server)
            .arg("restore")
            .arg("--data-dir")
            .arg(&data)
            .arg(&path)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: restore passed");
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
    let segments = || {
        tiermail::store::export::wal_segments(&g.dir.join("wal"))
            .unwrap()
            .len()
    };
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
        tiermail::store::export::wal_segments(&g.dir.join("wal"))
            .unwrap()
            .len(),
        1
    );
}

async fn cli_async(config: &Path, args: &[&str]) -> (bool, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&config, &a)
    })
    .await
    .unwrap()
}

async fn alice_inbox_offline(config: &Path) -> Vec<Vec<u8>> {
    let cfg = Config::load(Some(config)).unwrap();
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let inbox = common::inbox_of(&store, "alice@example.test")
        .await
        .iter()
        .map(|m| common::strip_trace(m).1.to_vec())
        .collect();
    store.shutdown();
    inbox
}

async fn to_alice(addr: std::net::SocketAddr, range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    let mut c = common::Client::connect(addr).await;
    c.expect("EHLO load.test", "250").await;
    let mut v = Vec::new();
    for n in range {
        let m = message(n, 800);
        let r = c
            .send_mail("load@remote.test", &["alice@example.test"], &m)
            .await;
        assert!(r.starts_with("250"), "{r}");
        v.push(m);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_between_two_backups() {
    use common::daemon::{Daemon, write_config};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[store]\ngroups = 2\n");
    let daemon = Daemon::start(&config);
    let smtp = daemon.addr("smtp");
    let a = to_alice(smtp, 0..10).await;
    let (ok, out) = cli_async(&config, &["backup", "run"]).await;
    assert!(ok, "{out}");
    let b = to_alice(smtp, 10..20).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let until = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _c = to_alice(smtp, 20..30).await;
    let (ok, out) = cli_async(&config, &["backup", "run"]).await;
    assert!(ok, "{out}");
    let _d = to_alice(smtp, 30..40).await;
    assert!(daemon.terminate().success());

    let t = until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (ok, out) = cli_async(&config, &["restore", "--until", &t]).await;
    assert!(
        !ok && out.contains("--force"),
        "a live store is not replaced unasked: {out}"
    );
    let (ok, out) = cli_async(&config, &["restore", "--until", &t, "--force"]).await;
    assert!(ok, "{out}");
    let mut want: Vec<Vec<u8>> = a.into_iter().chain(b).collect();
    assert_eq!(alice_inbox_offline(&config).await, want, "{out}");

    // The restored store takes new mail after the point in time.
    let daemon = Daemon::start(&config);
    want.extend(to_alice(daemon.addr("smtp"), 100..103).await);
    assert!(daemon.terminate().success());
    assert_eq!(alice_inbox_offline(&config).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_mail_comes_back_into_a_restored_folder() {
    use common::daemon::{Daemon, write_config};
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let daemon = Daemon::start(&config);
    let imap = daemon.addr("imap");
    let mut c = Imap::login(imap, "alice@example.test").await;
    let r = c.run("w1 CREATE Work").await;
    assert!(r.contains("w1 OK"), "{r}");
    let mut sent = Vec::new();
    for (i, (mailbox, flags)) in [
        ("INBOX", "\\Seen"),
        ("INBOX", "\\Flagged"),
        ("INBOX", ""),
        ("Work", "\\Seen \\Answered"),
        ("Work", "$Label1"),
    ]
    .into_iter()
    .enumerate()
    {
        let msg = message(i, 600);
        c.send(
            format!(
                "a{i} APPEND {mailbox} ({flags}) \"01-Jan-2025 10:00:0{i} +0000\" {{{}+}}\r\n",
                msg.len()
            )
            .as_bytes(),
        )
        .await;
        c.send(&msg).await;
        c.send(b"\r\n").await;
        let r = c.until(&format!("a{i}")).await;
        assert!(r.contains("OK"), "{r}");
        sent.push((mailbox, flags, msg));
    }
    let mut bob = Imap::login(imap, "bob@example.test").await;
    let r = bob.run("b1 STATUS INBOX (MESSAGES)").await;
    assert!(r.contains("MESSAGES 0"), "{r}");
    let (ok, out) = cli_async(&config, &["backup", "run"]).await;
    assert!(ok, "{out}");

    // The user loses everything.
    let r = c.run("d1 SELECT INBOX").await;
    assert!(r.contains("d1 OK"), "{r}");
    let r = c.run("d2 STORE 1:* +FLAGS (\\Deleted)").await;
    assert!(r.contains("d2 OK"), "{r}");
    let r = c.run("d3 EXPUNGE").await;
    assert!(r.contains("d3 OK"), "{r}");
    let r = c.run("d4 DELETE Work").await;
    assert!(r.contains("d4 OK"), "{r}");

    let (ok, out) = cli_async(
        &config,
        &[
            "restore",
            "--user",
            "alice@example.test",
            "--into-folder",
            "Restored",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("restored 5 messages"), "{out}");

    let r = c.run("l1 LIST \"\" \"Restored*\"").await;
    assert!(
        r.contains("Restored/INBOX") && r.contains("Restored/Work"),
        "{r}"
    );
    for folder in ["INBOX", "Work"] {
        let r = c.run(&format!("s1 SELECT Restored/{folder}")).await;
        assert!(r.contains("s1 OK"), "{r}");
        let want: Vec<_> = sent.iter().filter(|(m, _, _)| *m == folder).collect();
        assert!(r.contains(&format!("* {} EXISTS", want.len())), "{r}");
        for (i, (_, flags, msg)) in want.iter().enumerate() {
            let r = c
                .run(&format!(
                    "f1 FETCH {} (FLAGS INTERNALDATE BODY.PEEK[])",
                    i + 1
                ))
                .await;
            for f in flags.split_whitespace() {
                assert!(r.contains(f), "{folder} {i} flag {f}: {r}");
            }
            assert!(r.contains("01-Jan-2025 10:00:0"), "{r}");
            let text = String::from_utf8_lossy(msg);
            assert!(r.contains(text.as_ref()), "{folder} {i}: {r}");
        }
    }
    // Nobody else's mail moved.
    let r = bob.run("b2 LIST \"\" \"*\"").await;
    assert!(!r.contains("Restored"), "{r}");
    drop(daemon);
}

/// Unmounts a test mount when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_full_mirror_leaves_no_partial_file_and_the_other_completes() {
    let targets = tempfile::tempdir().unwrap();
    let good = targets.path().join("good");
    let missing = targets.path().join("missing");
    let full = targets.path().join("full");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&full).unwrap();
    // A real full disk: a 256 KiB tmpfs.
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a small tmpfs needs root");
    let _mount = Mount(full.clone());

    let (g, m, f) = (good.clone(), missing.clone(), full.clone());
    let server = TestServer::start_with(move |c| {
        c.store.groups = 2;
        c.backup.targets = vec![g, m, f];
        // Let the small file system really fill up.
        c.backup.min_free_mib = 0;
    })
    .await;
    smtp_deliver(server.smtp(), 0, 150, 8000).await;
    let app = server.app();
    let line = app
        .backup
        .run_once(
            app.store.clone(),
            Arc::new(server.config.backup.clone()),
            Mode::Auto,
        )
        .await
        .expect("one good target is enough");
    assert!(
        line.contains("PARTIAL") && line.contains("1 of 3 targets"),
        "{line}"
    );
    assert!(line.contains(&missing.display().to_string()), "{line}");
    assert!(line.contains(&full.display().to_string()), "{line}");
    let status = app
        .backup
        .status(&server.config.backup, &server.config.server.data_dir);
    assert!(status.contains(&full.display().to_string()), "{status}");

    let written = backups(&good);
    assert_eq!(written.len(), 1);
    format::verify(std::fs::File::open(&written[0]).unwrap()).unwrap();
    assert!(
        std::fs::metadata(&written[0]).unwrap().len() > 256 << 10,
        "the backup is larger than the full target"
    );
    assert!(!missing.exists(), "a missing target is never created");
    let left: Vec<_> = std::fs::read_dir(&full).unwrap().collect();
    assert!(left.is_empty(), "nothing left on the full target: {left:?}");
    // The server serves on.
    smtp_deliver(server.smtp(), 1000, 3, 1000).await;

    // A target never gets filled below the free-space reserve (the data
    // disk must keep room for deliveries).
    let mut cfg = server.config.backup.clone();
    cfg.targets = vec![good.clone()];
    cfg.min_free_mib = 1 << 40;
    let e = app
        .backup
        .run_once(app.store.clone(), Arc::new(cfg), Mode::Auto)
        .await
        .unwrap_err();
    assert!(
        e.contains("min_free_mib") && e.contains(&good.display().to_string()),
        "{e}"
    );
    assert_eq!(backups(&good).len(), 1, "nothing new written");

    // A drill needs room for the rebuilt store, and never takes the last.
    let data = &server.config.server.data_dir;
    let mut cfg = server.config.backup.clone();
    cfg.targets = vec![good.clone()];
    cfg.min_free_mib = 1 << 40;
    let e = app.backup.drill_once(&cfg, data, None).await.unwrap_err();
    assert!(e.contains("not enough room"), "{e}");
    cfg.min_free_mib = 0;
    let ok = app.backup.drill_once(&cfg, data, None).await.unwrap();
    assert!(ok.contains("ok: ") && ok.contains("150 messages"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_drills_retention_and_status() {
    use common::daemon::{Daemon, write_config};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = write_config(
        dir.path(),
        &format!(
            "[backup]\nschedule = \"off\"\ndrill_schedule = \"off\"\nmax_staleness = \"1h\"\n\
             keep = 2\nfull_every = \"0\"\ntargets = [\"{d}/data/backups\"]\n"
        ),
    );
    let daemon = Daemon::start(&config);
    to_alice(daemon.addr("smtp"), 0..20).await;
    let (_, status) = cli_async(&config, &["status"]).await;
    assert!(status.contains("STALE: no backup"), "{status}");
    assert!(status.contains("drill: never run"), "{status}");
    for _ in 0..3 {
        let (ok, out) = cli_async(&config, &["backup", "run"]).await;
        assert!(ok, "{out}");
    }
    let target = dir.path().join("data/backups");
    assert_eq!(backups(&target).len(), 2, "keep = 2");
    let (ok, out) = cli_async(&config, &["backup", "drill"]).await;
    assert!(
        ok && out.contains("ok: ") && out.contains("20 messages"),
        "{out}"
    );
    let (_, status) = cli_async(&config, &["status"]).await;
    assert!(
        status.contains("backup: last run") && status.contains(" ok: "),
        "{status}"
    );
    assert!(status.contains("backup: lag: newest backup"), "{status}");
    assert!(!status.contains("STALE"), "{status}");
    assert!(
        status.contains("drill: ") && status.contains("ok: "),
        "{status}"
    );
    let (ok, list) = cli_async(&config, &["backup", "list"]).await;
    assert!(ok && list.matches(".tmbak").count() == 2, "{list}");
    assert!(list.contains("4 groups"), "{list}");
    assert!(daemon.terminate().success());

    // Continuous: the next backup starts when the last ends; a drill on
    // its own schedule; both in status.
    let config = write_config(
        dir.path(),
        &format!(
            "[backup]\nschedule = \"continuous\"\ncontinuous_interval = \"1s\"\n\
             full_every = \"0\"\ndrill_schedule = \"every 1s\"\n\
             keep = 3\ntargets = [\"{d}/data/backups\"]\n"
        ),
    );
    let daemon = Daemon::start(&config);
    let first = backups(&target).last().cloned();
    let mut newer = 0;
    for _ in 0..200 {
        newer = backups(&target)
            .iter()
            .filter(|p| Some(*p) > first.as_ref())
            .count();
        if newer >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(newer >= 2, "continuous backups keep coming");
    // Retention runs right after each backup is in place.
    let mut kept = usize::MAX;
    for _ in 0..100 {
        kept = backups(&target).len();
        if kept <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(kept <= 3, "keep = 3: {kept} backups");
    let (_, status) = cli_async(&config, &["status"]).await;
    assert!(status.contains("backup: next run"), "{status}");
    assert!(status.contains("drill: next run"), "{status}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_backup_leaves_nothing_behind() {
    let server = TestServer::start_with(|c| c.store.groups = 1).await;
    smtp_deliver(server.smtp(), 0, 300, 50_000).await;
    let app = server.app();
    let target = server.config.backup.targets[0].clone();
    let mut cancelled = 0;
    for _ in 0..5 {
        let before = backups(&target).len();
        let run = {
            let (app, cfg) = (app.clone(), Arc::new(server.config.backup.clone()));
            tokio::spawn(async move {
                app.backup
                    .run_once(app.store.clone(), cfg, Mode::Auto)
                    .await
            })
        };
        // Cancel as soon as the backup is under way (what shutdown does).
        let mut seen = false;
        for _ in 0..2000 {
            let st = app
                .backup
                .status(&server.config.backup, &server.config.server.data_dir);
            if st.contains("backup: running") {
                app.backup.cancel();
                seen = true;
                break;
            }
            if run.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let result = run.await.unwrap();
        if seen && let Err(e) = &result {
            assert!(e.contains("cancelled"), "{e}");
            cancelled += 1;
            assert_eq!(backups(&target).len(), before, "no new backup");
        }
        let partials: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
            .collect();
        assert!(partials.is_empty(), "{partials:?}");
        if cancelled > 0 {
            break;
        }
    }
    assert!(cancelled > 0, "no backup was caught running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_a_block_cross_block_boundaries() {
    let server = TestServer::start_with(|c| c.store.groups = 1).await;
    smtp_deliver(server.smtp(), 0, 3, 1000).await;
    backup_now(&server).await;
    // 12 MB: more than one 8 MiB block, as segment bytes and as a log record.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while big.len() < 12 << 20 {
        big.extend_from_slice(format!("{i:016x} big message line\r\n").as_bytes());
        i += 1;
    }
    let store = server.store();
    store
        .deliver(tiermail::store::Delivery {
            user: "bob@example.test".into(),
            mailbox: "INBOX".into(),
            summary: tiermail::store::Summary::parse(&big),
            raw: Arc::new(big.clone()),
            internal_date: 1_700_000_000,
            flags: vec![],
        })
        .await
        .unwrap();
    let until = chrono::Utc::now() + chrono::Duration::seconds(1);
    backup_as(&server, Mode::Full).await;
    let target = &server.config.backup.targets[0];
    let files = backups(target);
    let (first, second) = (files[0].clone(), files[1].clone());
    format::verify(std::fs::File::open(&second).unwrap()).unwrap();
    let d = restore::describe(&second).unwrap();
    assert!(
        d.groups[0].0.log_from <= d.groups[0].0.image_lsn,
        "has log files"
    );

    // From the image of the second backup, and by replaying its log on top
    // of the first: the same bytes both ways.
    for (file, later, until) in [
        (second.clone(), vec![], None),
        (first.clone(), vec![second.clone()], Some(until)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        restore::restore(
            &restore::Options {
                until,
                later,
                ..restore::Options::new(&data, file)
            },
            &|_, _| {},
        )
        .unwrap();
        let restored = Store::open(&data, &Config::for_testing(dir.path()).store).unwrap();
        let inbox = common::inbox_of(&restored, "bob@example.test").await;
        assert!(inbox.iter().any(|m| m == &big), "the big message came back");
        restored.shutdown();
    }
}

/// Bytes of every mailbox of every test user.
async fn all_state(store: &Arc<Store>) -> Vec<UserState> {
    let mut v = Vec::new();
    for u in USERS {
        v.push(user_state(store, u).await);
    }
    v
}

fn header_of(file: &Path) -> tiermail::backup::marks::Header {
    restore::describe(file).unwrap().header
}

/// After a full backup, the next ones hold only the log written since
/// (their size follows the new mail, not the store), name the backup they
/// continue, and restore, verify and drill as one chain; a chain with a
/// missing or damaged link is refused with the link named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_backups_hold_the_new_mail_and_restore_as_a_chain() {
    let server = TestServer::start_with(|c| c.store.groups = 2).await;
    smtp_deliver(server.smtp(), 0, 200, 20_000).await;
    backup_now(&server).await;
    let target = server.config.backup.targets[0].clone();
    let full = backups(&target).pop().unwrap();
    assert!(
        header_of(&full).parent.is_none(),
        "the first backup is full"
    );
    let full_size = std::fs::metadata(&full).unwrap().len();

    smtp_deliver(server.smtp(), 1000, 10, 20_000).await;
    let line = backup_now(&server).await;
    assert!(line.contains("incremental on"), "{line}");
    let inc1 = backups(&target).pop().unwrap();
    let h = header_of(&inc1);
    let full_name = full.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(h.parent.as_deref(), Some(full_name.as_str()));
    assert_eq!(h.base.as_deref(), Some(full_name.as_str()));
    let inc1_size = std::fs::metadata(&inc1).unwrap().len();
    // Ten messages of 20 KB: about 200 KB of log, not the 4 MB store.
    assert!(
        (200_000..600_000).contains(&inc1_size),
        "incremental of {inc1_size} bytes after a full one of {full_size}"
    );

    // Flags, an expunge and more mail, then a second incremental.
    let mut c = Imap::login(server.imap(), USERS[0]).await;
    let r = c.run("a SELECT INBOX").await;
    assert!(r.contains("a OK"), "{r}");
    let r = c.run("b UID STORE 1:5 +FLAGS (\\Seen $Tagged)").await;
    assert!(r.contains("b OK"), "{r}");
    let r = c.run("c UID STORE 6 +FLAGS (\\Deleted)").await;
    assert!(r.contains("c OK"), "{r}");
    let r = c.run("d EXPUNGE").await;
    assert!(r.contains("d OK"), "{r}");
    smtp_deliver(server.smtp(), 2000, 5, 3_000).await;
    backup_now(&server).await;
    let inc2 = backups(&target).pop().unwrap();
    let h = header_of(&inc2);
    assert_eq!(
        h.parent,
        inc1.file_name().map(|n| n.to_string_lossy().into_owned())
    );
    assert_eq!(h.base.as_deref(), Some(full_name.as_str()));
    assert!(std::fs::metadata(&inc2).unwrap().len() < 100_000);
    let live = all_state(&server.store()).await;

    let out = tiermail_cli(&server)
        .args(["backup", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  full  ") && text.contains(&format!("incremental on {full_name}")),
        "{text}"
    );

    // verify checks the whole chain, drill restores it and compares.
    let out = tiermail_cli(&server)
        .args(["backup", "verify"])
        .arg(&inc2)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("incremental, 3 backups"),
        "{text}"
    );
    let out = tiermail_cli(&server)
        .args(["backup", "drill"])
        .arg(&inc2)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ok: ") && text.contains("3 users"),
        "{text}"
    );

    // Restored from the chain (no live log), the store is the live one.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    restore::restore(&restore::Options::new(&data, &inc2), &|_, _| {}).unwrap();
    let restored = Store::open(&data, &Config::for_testing(dir.path()).store).unwrap();
    assert_eq!(
        all_state(&restored).await,
        live,
        "the chain restores the live state"
    );
    restored.shutdown();

    // A chain with a link missing is refused, naming it.
    let lonely = tempfile::tempdir().unwrap();
    let copy = lonely.path().join(inc2.file_name().unwrap());
    std::fs::copy(&inc2, &copy).unwrap();
    std::fs::copy(&full, lonely.path().join(full.file_name().unwrap())).unwrap();
    let err = restore::chain_of(&copy).unwrap_err().to_string();
    assert!(
        err.contains("chain is broken")
            && err.contains(&*inc1.file_name().unwrap().to_string_lossy()),
        "{err}"
    );

    // A damaged link: restore of the chain's last file names the damage.
    std::fs::copy(&inc1, lonely.path().join(inc1.file_name().unwrap())).unwrap();
    let mut bytes = std::fs::read(&inc1).unwrap();
    let mut r = format::Reader::new(&bytes[..]).unwrap();
    let mut patch = None;
    while let Some(b) = r.next_block().unwrap() {
        if b.kind == Kind::Patch && patch.is_none() {
            patch = Some(b.offset);
        }
    }
    let at = patch.expect("an incremental holds its log as a patch");
    bytes[at as usize + 5 + 7] ^= 0x20;
    std::fs::write(lonely.path().join(inc1.file_name().unwrap()), &bytes).unwrap();
    let data = lonely.path().join("data");
    let err = restore::restore(&restore::Options::new(&data, &copy), &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("at byte {at}")), "{err}");
    assert!(
        !data.join("groups/g000/store.redb").exists(),
        "nothing restored"
    );

    // `backup run --full` starts a new chain.
    let out = tiermail_cli(&server)
        .args(["backup", "run", "--full"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("(full,"), "{text}");
    assert!(header_of(&backups(&target).pop().unwrap()).parent.is_none());
}

/// A backup written before body segments were copied whole (its image
/// holds every message's bytes) restores and drills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_the_inline_kind_still_restores() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/backup-v1");
    let file = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| target::started_at(p).is_some())
        .expect("a backup in tests/data/backup-v1");
    assert_eq!(
        header_of(&file).image,
        tiermail::store::export::ImageKind::Inline
    );
    let dir = tempfile::tempdir().unwrap();
    let report = tiermail::backup::drill::drill(&file, &dir.path().join("scratch")).unwrap();
    assert!(report.ok() && report.messages > 0, "{}", report.summary());
    let data = dir.path().join("data");
    restore::restore(&restore::Options::new(&data, &file), &|_, _| {}).unwrap();
    let mut cfg = Config::for_testing(dir.path()).store;
    cfg.groups = 2;
    let store = Store::open(&data, &cfg).unwrap();
    common::assert_store_v1_contents(&store).await;
    store.shutdown();
}

/// With `schedule = "continuous"` backups follow each other, incremental
/// after the first, but no sooner than `continuous_interval` apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_backups_are_incremental_and_spaced() {
    let server = TestServer::start_with(|c| {
        c.store.groups = 1;
        c.backup.schedule = "continuous".into();
        c.backup.continuous_interval = "3s".into();
    })
    .await;
    smtp_deliver(server.smtp(), 0, 5, 2_000).await;
    let target = server.config.backup.targets[0].clone();
    let t = std::time::Instant::now();
    while backups(&target).len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "no second backup");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = backups(&target);
    let (a, b) = (
        target::started_at(&all[0]).unwrap(),
        target::started_at(&all[1]).unwrap(),
    );
    assert!(
        b - a >= chrono::Duration::milliseconds(2_900),
        "{a} then {b}"
    );
    assert!(header_of(&all[0]).parent.is_none());
    assert!(
        header_of(&all[1]).parent.is_some(),
        "the second is incremental"
    );
}
