//! The archive agent end to end: age policy, exactly-once across a crash,
//! verification of archive files.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::TestServer;
use common::daemon::{Daemon, tiermail, write_config};
use common::imap::Imap;
use tiermail::archive::file::UserArchive;
use tiermail::archive::format::user_dir_name;

const DAY: i64 = 86_400;

fn imap_date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string()
}

/// APPENDs a message `days` old; returns its bytes.
async fn append(c: &mut Imap, mailbox: &str, days: i64, flags: &str, n: usize) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp();
    let msg = format!("Subject: m{n} aged {days}\r\nFrom: a@remote.test\r\n\r\nbody {n}\r\n")
        .into_bytes();
    let date = imap_date(now - days * DAY);
    c.send(
        format!(
            "a{n} APPEND {mailbox} ({flags}) \"{date}\" {{{}+}}\r\n",
            msg.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&msg).await;
    c.send(b"\r\n").await;
    let r = c.until(&format!("a{n}")).await;
    assert!(r.contains("OK [APPENDUID"), "{r}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_mail_moves_to_the_archive_and_idle_sessions_see_it_go() {
    let server = TestServer::start_with(|c| {
        c.archive.age_days = 30;
        c.archive.seekers = 2;
        c.archive.archivers = 2;
    })
    .await;
    let mut expected_archived: BTreeMap<String, Vec<(Vec<u8>, bool)>> = BTreeMap::new();
    let mut n = 0;
    for user in [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ] {
        let mut c = Imap::login(server.imap(), user).await;
        // 5, 15, ... 95 days: none near the 30-day watermark.
        for days in (5..=95).step_by(10) {
            n += 1;
            let seen = days % 20 == 5;
            let msg = append(&mut c, "INBOX", days, if seen { "\\Seen" } else { "" }, n).await;
            if days > 30 {
                expected_archived
                    .entry(user.into())
                    .or_default()
                    .push((msg, seen));
            }
        }
        // Kept: flagged old mail, and anything in Drafts.
        n += 1;
        append(&mut c, "INBOX", 60, "\\Flagged", n).await;
        n += 1;
        append(&mut c, "Drafts", 60, "\\Draft", n).await;
    }
    // An IMAP client sits on alice's INBOX while the run goes.
    let mut watcher = Imap::login(server.imap(), "alice@example.test").await;
    let r = watcher.run("s SELECT INBOX").await;
    assert!(r.contains("* 11 EXISTS"), "{r}");
    watcher.send(b"i IDLE\r\n").await;
    assert!(watcher.line().await.starts_with("+ "));

    let app = server.app();
    let cfg = Arc::new(server.config.archive.clone());
    // The dry run predicts the run exactly, and changes nothing.
    let plan = tiermail::archive::agent::simulate(&app.store, &app.archives, &cfg, None)
        .await
        .unwrap();
    assert_eq!(plan.len(), 3, "one INBOX row per user: {plan:?}");
    assert!(
        plan.iter()
            .all(|(_, folder, n, _)| folder == "INBOX" && *n == 7),
        "{plan:?}"
    );
    let planned_bytes: u64 = plan.iter().map(|r| r.3).sum();
    assert_eq!(
        app.store.tagged("alice@example.test").await.unwrap().len(),
        0
    );
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg.clone())
        .await
        .unwrap();
    assert!(line.contains("archived 21"), "{line}");
    assert!(
        line.contains(&format!("({planned_bytes} bytes)")),
        "{line} vs {planned_bytes}"
    );

    // The watcher, in IDLE, is told of the seven old messages leaving INBOX.
    let mut pushed = String::new();
    while pushed.matches(" EXPUNGE\r\n").count() < 7 {
        pushed.push_str(&watcher.line().await);
    }
    watcher.send(b"DONE\r\n").await;
    let r = watcher.until("i").await;
    assert!(r.ends_with("i OK IDLE terminated\r\n"), "{pushed}{r}");
    let r = watcher.run("f FETCH 1:* (INTERNALDATE FLAGS)").await;
    assert_eq!(r.matches("* ").count(), 4, "3 recent + 1 flagged: {r}");

    for (user, want) in &expected_archived {
        let dir = cfg.root.join(user_dir_name(user));
        assert!(UserArchive::verify(&dir).is_empty());
        let a = UserArchive::open(&dir, 1 << 30, false).unwrap();
        assert_eq!(a.len(), want.len(), "{user}");
        let mut got: Vec<(Vec<u8>, bool)> = a
            .entries()
            .map(|e| {
                let m = a.read(e.auid).unwrap();
                assert_eq!(e.folder, "INBOX");
                let body = common::strip_trace_opt(&m.raw);
                (body, e.flags.iter().any(|f| f == "\\Seen"))
            })
            .collect();
        let mut want = want.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{user}: bytes and flags kept");
        // Drafts untouched.
        let drafts = app.store.messages(user, "Drafts").await.unwrap();
        assert_eq!(drafts.len(), 1);
    }
    // The archive is a folder tree over IMAP: Archive and Archive/INBOX.
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let r = c.run("l LIST \"\" \"Archive*\"").await;
    assert!(
        r.contains("(\\HasChildren \\Archive) \"/\" Archive\r\n"),
        "{r}"
    );
    assert!(r.contains("\"/\" Archive/INBOX\r\n"), "{r}");
    let r = c.run("s STATUS Archive/INBOX (MESSAGES UNSEEN)").await;
    assert!(
        r.contains("* STATUS Archive/INBOX (MESSAGES 7 UNSEEN 4)"),
        "{r}"
    );
    let r = c.run("e EXAMINE Archive/INBOX").await;
    assert!(r.contains("* 7 EXISTS") && r.contains("[READ-ONLY]"), "{r}");
    let r = c.run("f FETCH 1:* (UID FLAGS BODY.PEEK[])").await;
    for (msg, _) in &expected_archived["alice@example.test"] {
        let text = String::from_utf8_lossy(msg);
        assert!(
            r.contains(text.as_ref()),
            "archived bytes served over IMAP: {r}"
        );
    }
    let r = c.run("g SEARCH SUBJECT \"aged 95\"").await;
    assert!(
        r.starts_with("* SEARCH 7\r\n") || r.starts_with("* SEARCH "),
        "{r}"
    );
    assert_eq!(r.matches("* SEARCH").count(), 1, "{r}");
    let r = c.run("h STORE 1 +FLAGS (\\Flagged)").await;
    assert!(r.starts_with("h NO [READ-ONLY]"), "{r}");
    // Each archived message is in one folder: what the agent moved from
    // INBOX is in Archive/INBOX, not in Archive as well.
    let r = c.run("j SELECT Archive").await;
    assert!(r.contains("* 0 EXISTS"), "{r}");
    // An unreachable archive root affects the Archive folders only.
    let root = cfg.root.clone();
    let moved = root.with_extension("away");
    std::fs::rename(&root, &moved).unwrap();
    app.archives.forget("alice@example.test");
    let r = c.run("k SELECT Archive/INBOX").await;
    assert!(r.contains("k NO [UNAVAILABLE]"), "{r}");
    let r = c.run("m SELECT INBOX").await;
    assert!(r.contains("* 4 EXISTS") && r.contains("m OK"), "{r}");
    std::fs::rename(&moved, &root).unwrap();
    let r = c.run("n SELECT Archive/INBOX").await;
    assert!(r.contains("* 7 EXISTS"), "{r}");

    // Seekers and archivers worked side by side: every seeker had users,
    // and the archivers shared the queue.
    let p = app.archive.last_progress().unwrap();
    let seekers = p.per_seeker.lock().unwrap().clone();
    let archivers = p.per_archiver.lock().unwrap().clone();
    assert_eq!(seekers.len(), 2);
    assert!(seekers.iter().all(|n| *n > 0), "{seekers:?}");
    assert_eq!(archivers.len(), 2);
    assert_eq!(archivers.iter().sum::<usize>(), 3, "{archivers:?}");

    // Both seekers had users; the second run finds nothing more to do.
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg)
        .await
        .unwrap();
    assert!(line.contains("archived 0"), "{line}");
    server.stop().await;
}

/// Every message of alice: (INBOX bodies, archived bodies).
async fn where_is_everything(config: &std::path::Path) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let cfg = tiermail::config::Config::load(Some(config)).unwrap();
    let store = tiermail::store::Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let inbox = common::inbox_of(&store, "alice@example.test").await;
    store.shutdown();
    let dir = cfg.archive.root.join(user_dir_name("alice@example.test"));
    let archived = match UserArchive::open(&dir, 1 << 30, false) {
        Ok(a) => a
            .entries()
            .map(|e| a.read(e.auid).unwrap().raw.to_vec())
            .collect(),
        Err(_) => Vec::new(),
    };
    (inbox, archived)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_archive_append_and_store_removal_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[archive]\nroot = \"{}/archive\"\nage_days = 30\nseekers = 1\narchivers = 1\n",
            dir.path().display()
        ),
    );
    // A root outside the data directory (a NAS) is made by the admin.
    std::fs::create_dir_all(dir.path().join("archive")).unwrap();
    let daemon = Daemon::start(&config);
    let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
    for i in 0..12 {
        append(&mut c, "INBOX", if i < 8 { 60 } else { 1 }, "", i).await;
    }
    drop(c);
    assert!(daemon.terminate().success());
    let (before, _) = where_is_everything(&config).await;
    assert_eq!(before.len(), 12);

    let out = tiermail(&config)
        .args(["archive", "simulate"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("alice@example.test\tINBOX\t8\t"), "{table}");

    // The archiver dies right after its archive file is fsynced.
    let out = tiermail(&config)
        .args(["archive", "run"])
        .env("TMTEST_FAILPOINT", "archive-after-append")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the failpoint aborts the run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (inbox, archived) = where_is_everything(&config).await;
    assert_eq!(archived.len(), 8, "appended and fsynced before the crash");
    assert_eq!(inbox.len(), 12, "not yet removed from the store");

    // Start-up finishes the interrupted move before serving anyone.
    let daemon = Daemon::start(&config);
    let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
    let r = c.run("s SELECT INBOX").await;
    assert!(r.contains("* 4 EXISTS"), "{r}");
    // A run through the server completes normally and moves nothing twice.
    let out = tiermail(&config).args(["archive", "run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("archived 0"));
    let status = tiermail(&config).arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("archive: last run"));
    assert!(daemon.terminate().success());

    let (inbox, archived) = where_is_everything(&config).await;
    let mut all: Vec<Vec<u8>> = inbox.iter().chain(archived.iter()).cloned().collect();
    let mut want = before.clone();
    all.sort();
    want.sort();
    assert_eq!(
        all, want,
        "each message in exactly one place, bytes unchanged"
    );
    assert_eq!(archived.len(), 8);

    // Legal discovery: mbox export opens in Python's mailbox module with
    // the same bytes; search finds across users.
    let mbox = dir.path().join("alice.mbox");
    let out = tiermail(&config)
        .args(["archive", "export", "alice@example.test", "--mbox"])
        .arg(&mbox)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let emls = dir.path().join("emls");
    std::fs::create_dir_all(&emls).unwrap();
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import mailbox,sys,os\n\
             m=mailbox.mbox(sys.argv[1])\n\
             for i,k in enumerate(m.keys()):\n    open(os.path.join(sys.argv[2],str(i)),'wb').write(m.get_bytes(k))\n\
             print(len(m))",
        )
        .arg(&mbox)
        .arg(&emls)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "8");
    let mut exported: Vec<Vec<u8>> = std::fs::read_dir(&emls)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let mut arch = archived.clone();
    exported.sort();
    arch.sort();
    assert_eq!(exported, arch, "mbox export is byte-exact");
    let out = tiermail(&config)
        .args([
            "archive",
            "search",
            "--all-users",
            "--subject",
            "aged 60",
            "--text",
            "body 3",
        ])
        .output()
        .unwrap();
    let hits = String::from_utf8_lossy(&out.stdout);
    assert_eq!(hits.lines().count(), 1, "{hits}");
    assert!(hits.starts_with("alice@example.test\tINBOX\t"), "{hits}");

    // Verify reports a damaged archive file, naming the spot.
    let out = tiermail(&config)
        .args(["archive", "verify"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice@example.test: ok"));
    let adir = dir
        .path()
        .join("archive")
        .join(user_dir_name("alice@example.test"));
    let file = adir.join("000001.tma");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[60] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let out = tiermail(&config)
        .args(["archive", "verify"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("alice@example.test: DAMAGED:") && text.contains("000001.tma at byte 32"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_the_activity_and_never_twice_at_once() {
    let server = TestServer::start_with(|c| {
        c.archive.age_days = 30;
        c.archive.schedule = "every 1s".into();
    })
    .await;
    let mut c = Imap::login(server.imap(), "bob@example.test").await;
    for n in 0..3 {
        append(&mut c, "INBOX", 40 + n as i64, "", n).await;
    }
    append(&mut c, "INBOX", 1, "", 9).await;
    // No trigger from us: the schedule moves the three old messages.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = server
            .app()
            .store
            .messages("bob@example.test", "INBOX")
            .await
            .unwrap();
        if left.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduled run never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let status = server.app().archive.status();
    assert!(status.contains("archive: next run 20"), "{status}");

    // Two triggers at once: never two runs; a refused one says why.
    let app = server.app();
    let cfg = Arc::new(server.config.archive.clone());
    let (a, b) = tokio::join!(
        app.archive
            .run_once(app.store.clone(), app.archives.clone(), cfg.clone()),
        app.archive
            .run_once(app.store.clone(), app.archives.clone(), cfg.clone()),
    );
    let refused = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(e) if e.contains("already in progress")))
        .count();
    // (Both may be refused if the scheduled run holds the guard just then.)
    assert!(refused >= 1 && !(a.is_ok() && b.is_ok()), "{a:?} {b:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_into_archive_archives_now_like_a_clients_archive_button() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "carol@example.test").await;
    let one = append(&mut c, "INBOX", 2, "\\Seen", 1).await;
    let two = append(&mut c, "INBOX", 3, "", 2).await;
    c.run("s SELECT INBOX").await;
    let r = c.run("m UID MOVE 1 Archive").await;
    assert!(r.starts_with("* OK [COPYUID "), "{r}");
    assert!(
        r.contains(" 1 1] Archived\r\n* 1 EXPUNGE\r\nm OK UID MOVE completed\r\n"),
        "{r}"
    );
    // COPY keeps the original; an archive folder must exist first.
    let r = c.run("k COPY 1 Archive/Kept").await;
    assert!(r.starts_with("k NO [TRYCREATE]"), "{r}");
    let r = c.run("k CREATE Archive/Kept").await;
    assert!(r.starts_with("k OK"), "{r}");
    let r = c.run("k COPY 1 Archive/Kept").await;
    assert!(r.starts_with("k OK [COPYUID "), "{r}");
    let r = c.run("s2 SELECT INBOX").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    // Each in the folder it was put into, once.
    let r = c.run("e EXAMINE Archive").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    let r = c.run("f FETCH 1:* (FLAGS BODY.PEEK[])").await;
    let text = String::from_utf8_lossy(&one);
    assert!(
        r.contains(text.as_ref()) && r.contains("FLAGS (\\Seen)"),
        "{r}"
    );
    let r = c.run("e EXAMINE Archive/Kept").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    let r = c.run("f FETCH 1:* (FLAGS BODY.PEEK[])").await;
    assert!(r.contains(String::from_utf8_lossy(&two).as_ref()), "{r}");
    // With the archive root gone, the move is refused and nothing moves.
    let root = server.config.archive.root.clone();
    std::fs::rename(&root, root.with_extension("away")).unwrap();
    server.app().archives.forget("carol@example.test");
    c.run("s3 SELECT INBOX").await;
    let r = c.run("n MOVE 1 Archive").await;
    assert!(r.starts_with("n NO [UNAVAILABLE]"), "{r}");
    let r = c.run("o NOOP").await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    assert_eq!(server.inbox("carol@example.test").await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_folders_are_read_write_and_honour_legal_hold_and_policies() {
    let server = TestServer::start_with(|c| {
        c.archive.legal_hold = vec!["bob@example.test".into()];
    })
    .await;
    let mut msgs = Vec::new();
    for user in ["alice@example.test", "bob@example.test"] {
        let mut c = Imap::login(server.imap(), user).await;
        for n in 0..3 {
            msgs.push(append(&mut c, "INBOX", 1, "", n).await);
        }
        c.run("s SELECT INBOX").await;
        let r = c.run("m MOVE 1:3 Archive").await;
        assert!(r.contains("m OK"), "{r}");
    }
    // alice: flags, expunge and restore inside the archive.
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let r = c.run("s SELECT Archive").await;
    assert!(
        r.contains("[READ-WRITE]") && r.contains("* 3 EXISTS"),
        "{r}"
    );
    let r = c.run("f STORE 1 +FLAGS (\\Flagged)").await;
    assert!(
        r.contains("* 1 FETCH (FLAGS (\\Flagged))") && r.contains("f OK"),
        "{r}"
    );
    let r = c.run("d STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    assert!(r.contains("d OK"), "{r}");
    let r = c.run("e EXPUNGE").await;
    assert!(r.contains("* 2 EXPUNGE\r\ne OK"), "{r}");
    let r = c.run("r UID MOVE 3 INBOX").await;
    assert!(
        r.contains("[COPYUID ") && r.contains("* 2 EXPUNGE") && r.contains("r OK"),
        "{r}"
    );
    // What the archive files say now, read back from disk.
    let dir = server
        .config
        .archive
        .root
        .join(user_dir_name("alice@example.test"));
    let a = UserArchive::open(&dir, 1 << 30, false).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(
        a.entries().next().unwrap().flags,
        vec!["\\Flagged".to_string()]
    );
    let inbox = server.inbox("alice@example.test").await;
    assert_eq!(inbox.len(), 1, "restored");
    assert_eq!(
        common::strip_trace_opt(&inbox[0]),
        msgs[2],
        "restored byte for byte"
    );

    // bob is on legal hold: nothing archived can be deleted or moved out.
    let mut b = Imap::login(server.imap(), "bob@example.test").await;
    b.run("s SELECT Archive").await;
    b.run("d STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let r = b.run("e EXPUNGE").await;
    assert!(r.starts_with("e NO [CANNOT] Legal hold"), "{r}");
    let r = b.run("m MOVE 2 INBOX").await;
    assert!(r.starts_with("m NO [CANNOT] Legal hold"), "{r}");
    let r = b.run("c COPY 2 INBOX").await;
    assert!(r.contains("c OK [COPYUID"), "{r}");
    let r = b.run("x CLOSE").await;
    assert!(r.contains("x OK"), "{r}");
    let dir = server
        .config
        .archive
        .root
        .join(user_dir_name("bob@example.test"));
    assert_eq!(UserArchive::open(&dir, 1 << 30, false).unwrap().len(), 3);
    server.stop().await;

    // Hidden and read-only policies.
    let hidden = TestServer::start_with(|c| c.archive.access = "hidden".into()).await;
    let mut c = Imap::login(hidden.imap(), "alice@example.test").await;
    let r = c.run("l LIST \"\" *").await;
    assert!(!r.contains("Archive"), "{r}");
    let r = c.run("s SELECT Archive").await;
    assert!(r.starts_with("s NO [NONEXISTENT]"), "{r}");
    hidden.stop().await;
    let ro = TestServer::start_with(|c| c.archive.access = "read-only".into()).await;
    let mut c = Imap::login(ro.imap(), "alice@example.test").await;
    append(&mut c, "INBOX", 1, "", 1).await;
    c.run("s SELECT INBOX").await;
    assert!(c.run("m MOVE 1 Archive").await.contains("m OK"));
    let r = c.run("a SELECT Archive").await;
    assert!(r.contains("[READ-ONLY]"), "{r}");
    let r = c.run("b MOVE 1 INBOX").await;
    assert!(r.starts_with("b NO [READ-ONLY]"), "{r}");
    ro.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_archived_mail_except_under_legal_hold() {
    let server = TestServer::start_with(|c| {
        c.archive.retention_days = 30;
        c.archive.age_days = 3650;
        c.archive.legal_hold = vec!["bob@example.test".into()];
    })
    .await;
    for user in ["alice@example.test", "bob@example.test"] {
        let mut c = Imap::login(server.imap(), user).await;
        append(&mut c, "INBOX", 100, "", 1).await;
        append(&mut c, "INBOX", 10, "", 2).await;
        c.run("s SELECT INBOX").await;
        assert!(c.run("m MOVE 1:2 Archive").await.contains("m OK"));
    }
    let app = server.app();
    let cfg = Arc::new(server.config.archive.clone());
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg.clone())
        .await
        .unwrap();
    assert!(line.contains("expired 1,"), "{line}");
    let files_of = |user: &str| -> Vec<u8> {
        let dir = cfg.root.join(user_dir_name(user));
        let mut all = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            all.extend(std::fs::read(e.unwrap().path()).unwrap());
        }
        all
    };
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let alice = files_of("alice@example.test");
    assert!(
        !contains(&alice, b"aged 100"),
        "expired bytes are gone from the files"
    );
    assert!(contains(&alice, b"aged 10\r\n"));
    let bob = files_of("bob@example.test");
    assert!(
        contains(&bob, b"aged 100") && contains(&bob, b"aged 10\r\n"),
        "legal hold"
    );
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let r = c.run("s SELECT Archive").await;
    assert!(r.contains("* 1 EXISTS"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_toml_overrides_the_archive_policy_per_user() {
    let server = TestServer::start_with(|c| {
        c.archive.age_days = 30;
        // carol is the last [[user]] table of the test users file.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&c.users.file)
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            b"archive = { age_days = 5, access = \"hidden\", legal_hold = true }\n",
        )
        .unwrap();
    })
    .await;
    for user in ["alice@example.test", "carol@example.test"] {
        let mut c = Imap::login(server.imap(), user).await;
        append(&mut c, "INBOX", 10, "", 1).await;
    }
    let app = server.app();
    let cfg = server.config.archive.clone();
    let plan = tiermail::archive::agent::simulate(&app.store, &app.archives, &cfg, None)
        .await
        .unwrap();
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert_eq!(
        plan[0].0, "carol@example.test",
        "only carol's 5-day watermark applies"
    );
    let policy = app.archives.policy(&cfg, "carol@example.test");
    assert!(policy.on_hold("carol@example.test") && policy.access == "hidden");
    let mut c = Imap::login(server.imap(), "carol@example.test").await;
    let r = c.run("l LIST \"\" *").await;
    assert!(!r.contains("Archive"), "hidden for carol: {r}");
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let r = a.run("l LIST \"\" *").await;
    assert!(r.contains("Archive"), "alice keeps the global policy: {r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_root_or_a_damaged_archive_stays_contained() {
    let server = TestServer::start_with(|c| c.archive.age_days = 30).await;
    for user in ["alice@example.test", "bob@example.test"] {
        let mut c = Imap::login(server.imap(), user).await;
        append(&mut c, "INBOX", 60, "", 1).await;
        append(&mut c, "INBOX", 70, "", 2).await;
    }
    let app = server.app();
    let cfg = Arc::new(server.config.archive.clone());
    // Root gone: the run fails naming it; mail still flows and reads.
    let away = cfg.root.with_extension("away");
    std::fs::rename(&cfg.root, &away).unwrap();
    let err = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg.clone())
        .await
        .unwrap_err();
    assert!(
        err.contains("archive") && err.contains("not available"),
        "{err}"
    );
    assert!(
        app.archive.status().contains("failed"),
        "{}",
        app.archive.status()
    );
    let mut smtp = common::Client::connect(server.smtp()).await;
    smtp.expect("EHLO t.test", "250").await;
    let r = smtp
        .send_mail(
            "x@remote.test",
            &["alice@example.test"],
            b"Subject: still\r\n\r\nhere\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(server.inbox("alice@example.test").await.len(), 3);
    // Back again: the next run archives.
    std::fs::rename(&away, &cfg.root).unwrap();
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg.clone())
        .await
        .unwrap();
    assert!(line.contains("archived 4"), "{line}");

    // alice's archive is damaged beyond repair (header of her only file):
    // only alice is affected.
    for user in ["alice@example.test", "bob@example.test"] {
        let mut c = Imap::login(server.imap(), user).await;
        append(&mut c, "INBOX", 80, "", 3).await;
    }
    let adir = cfg.root.join(user_dir_name("alice@example.test"));
    let file = adir.join("000001.tma");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] = b'X';
    std::fs::write(&file, bytes).unwrap();
    std::fs::remove_file(adir.join("000001.tmi")).unwrap();
    app.archives.forget("alice@example.test");
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg.clone())
        .await
        .unwrap();
    assert!(
        line.contains("archived 1") && line.contains("errors 1"),
        "{line}"
    );
    let mut b = Imap::login(server.imap(), "bob@example.test").await;
    assert!(b.run("s SELECT Archive/INBOX").await.contains("* 3 EXISTS"));
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let r = a.run("s SELECT Archive").await;
    assert!(r.contains("s NO [UNAVAILABLE]"), "{r}");
    let r = a.run("i SELECT INBOX").await;
    assert!(r.contains("i OK"), "alice's current mail is untouched: {r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_any_step_each_message_ends_up_in_exactly_one_place() {
    for point in [
        "archive-after-tag",
        "archive-before-append",
        "archive-torn-append",
        "archive-after-append",
        "archive-after-remove",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!(
                "[archive]\nroot = \"{}/archive\"\nage_days = 30\n",
                dir.path().display()
            ),
        );
        std::fs::create_dir_all(dir.path().join("archive")).unwrap();
        let daemon = Daemon::start(&config);
        let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
        for i in 0..12 {
            append(&mut c, "INBOX", if i < 8 { 60 } else { 1 }, "\\Seen", i).await;
        }
        drop(c);
        assert!(daemon.terminate().success());
        let (before, _) = where_is_everything(&config).await;

        let out = tiermail(&config)
            .args(["archive", "run"])
            .env("TMTEST_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{point}: the run was killed");
        let out = tiermail(&config).args(["archive", "run"]).output().unwrap();
        assert!(
            out.status.success(),
            "{point}: resumed run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (inbox, archived) = where_is_everything(&config).await;
        assert_eq!(archived.len(), 8, "{point}: archived once");
        assert_eq!(inbox.len(), 4, "{point}: the rest stays");
        let mut all: Vec<Vec<u8>> = inbox.into_iter().chain(archived).collect();
        let mut want = before;
        all.sort();
        want.sort();
        assert_eq!(
            all, want,
            "{point}: nothing lost, nothing doubled, bytes unchanged"
        );
        let v = tiermail(&config)
            .args(["archive", "verify"])
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
    }
}

/// MOVE out of an archive folder, killed (SIGKILL) between restoring into
/// the current store and deleting the archive copies, or right after the
/// delete: the next start finishes the move, each message ends up in
/// INBOX exactly once and the archive holds none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_out_of_the_archive_killed_between_steps_is_exactly_once() {
    for point in [
        "restore-before-archive-delete",
        "restore-after-archive-delete",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(
            dir.path(),
            &format!("[archive]\nroot = \"{}/archive\"\n", dir.path().display()),
        );
        std::fs::create_dir_all(dir.path().join("archive")).unwrap();
        let daemon = Daemon::start(&config);
        let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
        for i in 0..6 {
            append(&mut c, "INBOX", 1, "\\Seen", i).await;
        }
        c.run("s SELECT INBOX").await;
        let r = c.run("m MOVE 1:6 Archive").await;
        assert!(r.contains("m OK"), "{r}");
        drop(c);
        assert!(daemon.terminate().success());
        let (inbox, archived) = where_is_everything(&config).await;
        assert_eq!((inbox.len(), archived.len()), (0, 6));

        let daemon = Daemon::start_env(&config, &[("TMTEST_FAILPOINT", point)]);
        let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
        c.run("s SELECT Archive").await;
        c.send(b"m MOVE 1:6 INBOX\r\n").await;
        assert!(c.closed().await, "{point}: the server was killed");
        daemon.kill9();

        // The next start finishes the move before serving.
        let daemon = Daemon::start(&config);
        let mut c = Imap::login(daemon.addr("imap"), "alice@example.test").await;
        let r = c.run("s STATUS INBOX (MESSAGES)").await;
        assert!(r.contains("(MESSAGES 6)"), "{point}: {r}");
        let r = c.run("s STATUS Archive (MESSAGES)").await;
        assert!(r.contains("(MESSAGES 0)"), "{point}: {r}");
        drop(c);
        assert!(daemon.terminate().success());
        let (inbox, left) = where_is_everything(&config).await;
        assert!(left.is_empty(), "{point}: archive copies deleted");
        let mut got = inbox;
        let mut want = archived;
        got.sort();
        want.sort();
        assert_eq!(got, want, "{point}: each message once, bytes unchanged");
    }
}
