//! The Archive folders as mail clients use them: sync clients upload into
//! Archive (APPEND), Thunderbird makes yearly folders (CREATE + UID MOVE),
//! clients subscribe to what they see, and every archived message shows
//! in exactly one folder.

mod common;

use std::sync::Arc;

use common::TestServer;
use common::imap::Imap;
use tiermail::archive::file::UserArchive;
use tiermail::archive::format::user_dir_name;

const DAY: i64 = 86_400;

async fn append(c: &mut Imap, tag: &str, mailbox: &str, extra: &str, raw: &[u8]) -> String {
    c.send(format!("{tag} APPEND {mailbox} {extra}{{{}+}}\r\n", raw.len()).as_bytes())
        .await;
    c.send(raw).await;
    c.send(b"\r\n").await;
    c.until(tag).await
}

fn archive_of(server: &TestServer, user: &str) -> UserArchive {
    let dir = server.config.archive.root.join(user_dir_name(user));
    UserArchive::open_read_only(&dir).unwrap()
}

/// The number in `* N EXISTS` of a SELECT/EXAMINE answer.
fn exists(r: &str) -> u32 {
    r.lines()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
        .unwrap_or_else(|| panic!("no EXISTS in {r}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_into_archive_archives_the_message() {
    let mut server = TestServer::start().await;
    let user = "alice@example.test";
    let mut c = Imap::login(server.imap(), user).await;
    let raw = b"From: a@d.org\r\nSubject: synced\r\n\r\nuploaded by a sync client\r\n";
    let r = append(
        &mut c,
        "a",
        "Archive",
        "(\\Seen $Work) \"01-Feb-2020 10:00:00 +0000\" ",
        raw,
    )
    .await;
    assert!(r.contains("a OK [APPENDUID "), "{r}");
    // A folder that does not exist yet: TRYCREATE, as for any mailbox.
    let r = append(&mut c, "b", "Archive/2020", "", raw).await;
    assert!(r.contains("b NO [TRYCREATE]"), "{r}");
    assert!(c.run("c CREATE Archive/2020").await.contains("c OK"));
    let r = append(
        &mut c,
        "d",
        "Archive/2020",
        "",
        b"Subject: two\r\n\r\n2\r\n",
    )
    .await;
    assert!(r.contains("d OK [APPENDUID "), "{r}");
    // In the archive file, fsynced before the OK: bytes, flags, date.
    let a = archive_of(&server, user);
    assert_eq!(a.len(), 2);
    let e = a.entries().next().unwrap();
    assert_eq!(e.folder, "");
    assert_eq!(e.flags, vec!["\\Seen".to_string(), "$Work".to_string()]);
    assert_eq!(e.internal_date, 1_580_551_200);
    assert_eq!(a.read(e.auid).unwrap().raw.as_slice(), raw);
    // Nothing went into the current store.
    assert!(server.inbox(user).await.is_empty());
    let r = c.run("e EXAMINE Archive").await;
    assert_eq!(exists(&r), 1, "{r}");
    let r = c.run("f FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])").await;
    assert!(r.contains("FLAGS (\\Seen $Work)"), "{r}");
    assert!(
        r.contains("INTERNALDATE \"01-Feb-2020 10:00:00 +0000\""),
        "{r}"
    );
    assert!(r.contains("uploaded by a sync client"), "{r}");
    // Still there after a restart, the empty-made folder too.
    assert!(c.run("g CREATE Archive/Empty").await.contains("g OK"));
    server.restart().await;
    let mut c = Imap::login(server.imap(), user).await;
    let r = c.run(r#"l LIST "" "Archive*""#).await;
    for f in ["Archive\r\n", "Archive/2020\r\n", "Archive/Empty\r\n"] {
        assert!(r.contains(&format!("\"/\" {f}")), "{f}: {r}");
    }
    assert_eq!(exists(&c.run("e EXAMINE Archive/2020").await), 1);
    assert_eq!(exists(&c.run("e EXAMINE Archive/Empty").await), 0);
    // An empty archive folder can be deleted; one with mail cannot.
    assert!(c.run("x DELETE Archive/Empty").await.contains("x OK"));
    let r = c.run("y DELETE Archive/2020").await;
    assert!(r.contains("y NO [INUSE]"), "{r}");
    let r = c.run(r#"l LIST "" "Archive*""#).await;
    assert!(!r.contains("Archive/Empty"), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yearly_archive_folders_like_thunderbird() {
    let server = TestServer::start().await;
    let user = "alice@example.test";
    let mut c = Imap::login(server.imap(), user).await;
    for i in 0..3 {
        let r = append(
            &mut c,
            "a",
            "INBOX",
            "",
            format!("Subject: y{i}\r\n\r\n{i}\r\n").as_bytes(),
        )
        .await;
        assert!(r.contains("a OK"), "{r}");
    }
    let r = c.run("c CREATE Archive/2024").await;
    assert!(r.contains("c OK CREATE completed"), "{r}");
    let r = c.run("c CREATE Archive/2024").await;
    assert!(r.contains("c NO [ALREADYEXISTS]"), "{r}");
    c.run("s SELECT INBOX").await;
    let r = c.run("m UID MOVE 1:2 Archive/2024").await;
    assert!(r.starts_with("* OK [COPYUID "), "{r}");
    assert!(
        r.contains("* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nm OK UID MOVE completed"),
        "{r}"
    );
    let r = c.run("t STATUS Archive/2024 (MESSAGES)").await;
    assert!(r.contains("(MESSAGES 2)"), "{r}");
    let r = c.run("t STATUS Archive (MESSAGES)").await;
    assert!(r.contains("(MESSAGES 0)"), "{r}");
    let r = c.run(r#"l LIST "" "Archive*""#).await;
    assert!(!r.contains("Archive/INBOX"), "{r}");
    let r = c.run("e EXAMINE Archive/2024").await;
    assert_eq!(exists(&r), 2, "{r}");
    let r = c
        .run("f FETCH 1:2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        .await;
    assert!(
        r.contains("Subject: y0") && r.contains("Subject: y1"),
        "{r}"
    );
    assert_eq!(server.inbox(user).await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_folders_can_be_subscribed() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    assert!(c.run("c CREATE Archive/2023").await.contains("c OK"));
    for f in ["Archive", "Archive/2023"] {
        let r = c.run(&format!("s SUBSCRIBE {f}")).await;
        assert!(r.contains("s OK"), "{f}: {r}");
    }
    let r = c.run("s SUBSCRIBE Archive/Nope").await;
    assert!(r.contains("s NO [NONEXISTENT]"), "{r}");
    let r = c.run(r#"l LSUB "" "*""#).await;
    assert!(
        r.contains("\"/\" Archive\r\n") && r.contains("\"/\" Archive/2023\r\n"),
        "{r}"
    );
    let r = c.run(r#"l LIST (SUBSCRIBED) "" "Archive*""#).await;
    assert!(
        r.contains("\\Archive \\Subscribed) \"/\" Archive\r\n"),
        "{r}"
    );
    assert!(r.contains("\\Subscribed) \"/\" Archive/2023\r\n"), "{r}");
    let r = c.run("u UNSUBSCRIBE Archive/2023").await;
    assert!(r.contains("u OK"), "{r}");
    let r = c.run(r#"l LSUB "" "*""#).await;
    assert!(!r.contains("Archive/2023"), "{r}");
    server.stop().await;
}

/// Archives aged mail from two folders with the agent; returns the app.
async fn archive_aged(server: &TestServer, user: &str) -> Arc<tiermail::server::App> {
    let mut c = Imap::login(server.imap(), user).await;
    assert!(c.run("c CREATE Lists").await.contains("c OK"));
    let old = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - 400 * DAY, 0)
        .unwrap()
        .format("%d-%b-%Y %H:%M:%S +0000")
        .to_string();
    for (i, mb) in ["INBOX", "INBOX", "Lists"].iter().enumerate() {
        let raw = format!("Subject: old {i}\r\n\r\n{i}\r\n");
        let r = append(
            &mut c,
            "a",
            mb,
            &format!("(\\Seen) \"{old}\" "),
            raw.as_bytes(),
        )
        .await;
        assert!(r.contains("a OK"), "{r}");
    }
    let app = server.app();
    let cfg = Arc::new(server.config.archive.clone());
    let line = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg)
        .await
        .unwrap();
    assert!(line.contains("archived 3"), "{line}");
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_archived_message_is_in_exactly_one_folder() {
    let server = TestServer::start().await;
    let user = "bob@example.test";
    archive_aged(&server, user).await;
    let mut c = Imap::login(server.imap(), user).await;
    let r = append(&mut c, "a", "Archive", "", b"Subject: direct\r\n\r\nd\r\n").await;
    assert!(r.contains("a OK"), "{r}");
    // Every folder LIST shows, counted: four messages, four places.
    let r = c.run(r#"l LIST "" "Archive*""#).await;
    let folders: Vec<&str> = r
        .lines()
        .filter_map(|l| l.strip_prefix("* LIST ")?.rsplit(' ').next())
        .collect();
    assert_eq!(
        folders,
        ["Archive", "Archive/INBOX", "Archive/Lists"],
        "{r}"
    );
    let mut total = 0;
    let mut subjects = Vec::new();
    for f in &folders {
        let r = c.run(&format!("e EXAMINE {f}")).await;
        let n = exists(&r);
        total += n;
        if n > 0 {
            let r = c
                .run("f FETCH 1:* BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
                .await;
            subjects.extend(
                r.lines()
                    .filter(|l| l.starts_with("Subject:"))
                    .map(str::to_string),
            );
        }
    }
    assert_eq!(total, 4);
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 4, "{subjects:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_shows_everything_in_archive_as_well() {
    let server = TestServer::start_with(|c| c.archive.all_in_one = true).await;
    let user = "bob@example.test";
    archive_aged(&server, user).await;
    let mut c = Imap::login(server.imap(), user).await;
    assert_eq!(exists(&c.run("e EXAMINE Archive").await), 3);
    assert_eq!(exists(&c.run("e EXAMINE Archive/INBOX").await), 2);
    assert_eq!(exists(&c.run("e EXAMINE Archive/Lists").await), 1);
    server.stop().await;
}
