//! The current store on its own: group commit, UID and UIDVALIDITY
//! stability, user placement. (Crash recovery is tested on the real binary
//! in crash.rs.)

mod common;

use std::sync::Arc;

use tiermail::config::Config;
use tiermail::store::{Delivery, Op, Outcome, Store, Summary};

fn delivery(user: &str, n: usize) -> Delivery {
    let raw = format!("Subject: m{n}\r\nFrom: a@remote.test\r\n\r\nbody {n}\r\n").into_bytes();
    Delivery {
        user: user.into(),
        mailbox: "INBOX".into(),
        summary: Summary::parse(&raw),
        raw: Arc::new(raw),
        internal_date: 1_700_000_000 + n as i64,
        flags: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 1;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    // Create the user first so every later delivery is one record.
    store.deliver(delivery("u@example.test", 0)).await.unwrap();
    let before = store.status().unwrap()[0].fsyncs;
    let tasks: Vec<_> = (1..=256)
        .map(|n| {
            let s = store.clone();
            tokio::spawn(async move { s.deliver(delivery("u@example.test", n)).await })
        })
        .collect();
    let mut uids = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Outcome::Appended { uid, .. } => uids.push(uid),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    uids.sort();
    assert_eq!(
        uids,
        (2..=257).collect::<Vec<u32>>(),
        "every UID once, none reused"
    );
    let fsyncs = store.status().unwrap()[0].fsyncs - before;
    assert!(
        fsyncs < 256,
        "256 concurrent deliveries took {fsyncs} fsyncs: no group commit"
    );
    println!("256 deliveries, {fsyncs} fsyncs");
    store.shutdown();
}

#[tokio::test]
async fn reopen_keeps_uids_uidvalidity_and_placement() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.checkpoint_interval_secs = 3600;
    cfg.store.checkpoint_records = 1_000_000;
    let (validity, placement) = {
        let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
        for n in 0..20 {
            store
                .deliver(delivery(&format!("u{}@example.test", n % 5), n))
                .await
                .unwrap();
        }
        let v: Vec<_> = store.mailboxes("u0@example.test").await.unwrap();
        let placement: Vec<u32> = (0..5)
            .map(|i| store.group_of(&format!("u{i}@example.test")).unwrap().id)
            .collect();
        store.shutdown();
        (v, placement)
    };
    for _ in 0..2 {
        let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
        for (i, group) in placement.iter().enumerate() {
            let user = format!("u{i}@example.test");
            let msgs = store.messages(&user, "INBOX").await.unwrap();
            assert_eq!(msgs.len(), 4, "{user}");
            assert_eq!(store.group_of(&user).unwrap().id, *group);
        }
        assert_eq!(store.mailboxes("u0@example.test").await.unwrap(), validity);
        store.shutdown();
    }
    // A different group count never moves existing users.
    cfg.store.groups = 7;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    for (i, g) in placement.iter().enumerate() {
        assert_eq!(
            store.group_of(&format!("u{i}@example.test")).unwrap().id,
            *g
        );
    }
    store.shutdown();
}

fn traced(rcpt: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "Return-Path: <list@remote.test>\r\nReceived: from mx ([127.0.0.1])\r\n\tby h (tiermail) with LMTP id {rcpt}\r\n\tfor <{rcpt}>; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn deliver_raw(user: &str, mailbox: &str, raw: Vec<u8>) -> Delivery {
    Delivery {
        user: user.into(),
        mailbox: mailbox.into(),
        summary: Summary::parse(&raw),
        raw: Arc::new(raw),
        internal_date: 1_700_000_000,
        flags: Vec::new(),
    }
}

async fn mailbox_id(store: &Arc<Store>, user: &str, name: &str) -> u64 {
    store.mailbox(user, name).await.unwrap().unwrap().id
}

/// One body, delivered to three users (two with their own trace headers,
/// one sharing another's bytes), COPYed and delivered again: stored once,
/// every message still returns its exact bytes, and the body leaves the
/// index when the last message referring to it is expunged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_stored_once_however_many_messages_refer_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 1;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let mut body = b"From: list@remote.test\r\nSubject: big\r\n\r\n".to_vec();
    while body.len() < 300_000 {
        body.extend_from_slice(format!("line {} of the one body\r\n", body.len()).as_bytes());
    }
    let users = [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ];
    let alice_raw = traced(users[0], &body);
    let bob_raw = traced(users[1], &body);
    store
        .deliver(deliver_raw(users[0], "INBOX", alice_raw.clone()))
        .await
        .unwrap();
    store
        .deliver(deliver_raw(users[1], "INBOX", bob_raw.clone()))
        .await
        .unwrap();
    store
        .deliver(deliver_raw(users[2], "INBOX", bob_raw.clone()))
        .await
        .unwrap();
    let inbox = mailbox_id(&store, users[0], "INBOX").await;
    let sent = mailbox_id(&store, users[0], "Sent").await;
    store
        .submit(
            users[0],
            Op::Copy {
                from: inbox,
                uids: vec![1],
                to: sent,
                remove: false,
            },
        )
        .await
        .unwrap();
    // The same message again (a client's APPEND of what it fetched).
    store
        .deliver(deliver_raw(users[0], "Drafts", alice_raw.clone()))
        .await
        .unwrap();

    let st = &store.status().unwrap()[0];
    assert_eq!(st.distinct_bodies, 1, "five messages, one body");
    assert!(
        st.body_bytes < body.len() as u64 + 4096,
        "{} bytes of segments for one body of {}",
        st.body_bytes,
        body.len()
    );
    for (user, mailbox, want) in [
        (users[0], "INBOX", &alice_raw),
        (users[0], "Sent", &alice_raw),
        (users[0], "Drafts", &alice_raw),
        (users[1], "INBOX", &bob_raw),
        (users[2], "INBOX", &bob_raw),
    ] {
        let got = store.raw(user, mailbox, 1).await.unwrap().unwrap();
        assert!(got == *want, "{user} {mailbox}: bytes differ");
    }

    // Expunge all but one: the body stays for the last.
    for (user, mailbox) in [
        (users[0], "INBOX"),
        (users[0], "Sent"),
        (users[0], "Drafts"),
        (users[1], "INBOX"),
    ] {
        let id = mailbox_id(&store, user, mailbox).await;
        store
            .submit(
                user,
                Op::Expunge {
                    mailbox_id: id,
                    uids: vec![1],
                },
            )
            .await
            .unwrap();
    }
    assert_eq!(store.status().unwrap()[0].distinct_bodies, 1);
    assert!(store.raw(users[2], "INBOX", 1).await.unwrap().unwrap() == bob_raw);
    // Deleting the mailbox of the last one drops it.
    store
        .submit(
            users[2],
            Op::RenameMailbox {
                user: users[2].into(),
                from: "INBOX".into(),
                to: "Old".into(),
            },
        )
        .await
        .unwrap();
    store
        .submit(
            users[2],
            Op::DeleteMailbox {
                user: users[2].into(),
                name: "Old".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(store.status().unwrap()[0].distinct_bodies, 0);

    // A new body after a restart (recovery replays what the checkpoint at
    // shutdown did not need to) is read back exactly.
    let other = traced(users[1], b"Subject: another\r\n\r\nsmall\r\n");
    store
        .deliver(deliver_raw(users[1], "INBOX", other.clone()))
        .await
        .unwrap();
    store.shutdown();
    drop(store);
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    assert!(store.raw(users[1], "INBOX", 2).await.unwrap().unwrap() == other);
    assert_eq!(store.status().unwrap()[0].distinct_bodies, 1);
    store.shutdown();
}

/// A store written by the previous format (bodies in a redb table, part of
/// the mail only in the log after a SIGKILL) is upgraded on first start:
/// every message keeps its UID, flags and bytes, and a second start finds
/// nothing to upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_store_is_upgraded_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    common::install_store_v1(dir.path());
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 2;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let moved: u64 = store.groups().iter().map(|g| g.upgrade.bodies_moved).sum();
    assert!(moved >= 5, "{moved} bodies moved");
    common::assert_store_v1_contents(&store).await;
    let st = store.status().unwrap();
    assert!(st.iter().map(|g| g.distinct_bodies).sum::<u64>() >= 4);
    store.shutdown();
    drop(store);

    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    assert!(store.groups().iter().all(|g| g.upgrade.bodies_moved == 0));
    common::assert_store_v1_contents(&store).await;
    store.shutdown();
}

/// `n` distinct messages of about `size` bytes for `user`'s INBOX.
async fn fill(store: &Arc<Store>, user: &str, n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut body = format!("Subject: m{i}\r\n\r\n").into_bytes();
        while body.len() < size {
            body.extend_from_slice(format!("{i:08} filler line of message {i}\r\n").as_bytes());
        }
        let raw = traced(user, &body);
        store
            .deliver(deliver_raw(user, "INBOX", raw.clone()))
            .await
            .unwrap();
        out.push(raw);
    }
    out
}

/// `user`'s INBOX holds every tenth of `raws` (and maybe later ones), each
/// byte for byte, and bob's INBOX holds `bob`.
async fn assert_kept(store: &Arc<Store>, user: &str, raws: &[Vec<u8>], bob: &[Vec<u8>]) {
    let uids: Vec<u32> = store
        .messages(user, "INBOX")
        .await
        .unwrap()
        .iter()
        .map(|(u, _)| *u)
        .filter(|u| *u <= raws.len() as u32)
        .collect();
    assert_eq!(
        uids,
        (10..=raws.len() as u32).step_by(10).collect::<Vec<_>>()
    );
    for uid in uids {
        let got = store.raw(user, "INBOX", uid).await.unwrap().unwrap();
        assert!(got == raws[uid as usize - 1], "uid {uid}");
    }
    for (i, want) in bob.iter().enumerate() {
        let got = store
            .raw("bob@example.test", "INBOX", i as u32 + 1)
            .await
            .unwrap();
        assert!(got.as_ref() == Some(want), "bob {}", i + 1);
    }
}

/// After 90% of the mail is expunged, a reclaim gives the space back while
/// sessions read and deliver: the segment files end within 1.25x of the
/// live bodies (plus the open segment), every remaining message reads back
/// byte for byte during and after it, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_shrinks_the_body_files_online() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 1;
    cfg.store.body_segment_mib = 1;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let user = "alice@example.test";
    let raws = fill(&store, user, 1500, 20_000).await;
    common::keep_every_tenth(&store, user, raws.len() as u32).await;
    let before = store.status().unwrap()[0].clone();
    assert!(
        before.body_segments >= 20,
        "{} segments",
        before.body_segments
    );

    // Readers and a writer run while the reclaim does.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop, raws) = (store.clone(), stop.clone(), raws.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for uid in (10..=raws.len() as u32).step_by(10) {
                    let got = store.raw(user, "INBOX", uid).await.unwrap().unwrap();
                    assert!(
                        got == raws[uid as usize - 1],
                        "uid {uid} read wrong during reclaim"
                    );
                    reads += 1;
                }
            }
            reads
        })
    };
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, "bob@example.test", 100, 20_000).await })
    };
    let report = store.reclaim(50).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    let bob = writer.await.unwrap();
    assert!(reads > 0);
    let (_, r) = report[0];
    assert!(r.segments >= 15, "{r:?}");

    let after = store.status().unwrap()[0].clone();
    let live: u64 = raws
        .iter()
        .skip(9)
        .step_by(10)
        .chain(bob.iter())
        .map(|r| r.len() as u64)
        .sum();
    println!(
        "body files {} -> {} bytes for {live} live bytes ({} -> {} segments; {r:?})",
        before.body_bytes, after.body_bytes, before.body_segments, after.body_segments
    );
    assert!(
        after.body_bytes as f64 <= live as f64 * 1.25 + (1 << 20) as f64,
        "{} bytes of segments for {live} live bytes",
        after.body_bytes
    );
    assert_kept(&store, user, &raws, &bob).await;
    store.shutdown();
    drop(store);
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    assert_kept(&store, user, &raws, &bob).await;
    store.shutdown();
}

/// A database file that is mostly free pages (90% of its messages
/// expunged) is rebuilt into a small one while a writer delivers and a
/// reader reads; every message, and the ones delivered during the rebuild,
/// are there afterwards and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mostly_free_database_is_rebuilt_online() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 1;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let user = "alice@example.test";
    let raws = fill(&store, user, 4000, 300).await;
    common::keep_every_tenth(&store, user, raws.len() as u32).await;
    store.groups()[0].checkpoint().await.unwrap();
    let before = store.status().unwrap()[0].db_bytes;

    let writer = {
        let store = store.clone();
        tokio::spawn(async move { fill(&store, "bob@example.test", 300, 300).await })
    };
    let g = store.groups()[0].clone();
    let rebuilt = tokio::task::spawn_blocking(move || g.compact_blocking(16 << 20, 1 << 20))
        .await
        .unwrap()
        .unwrap();
    let bob = writer.await.unwrap();
    let (was, now) = rebuilt.expect("the database was worth rebuilding");
    println!("database file {before} ({was}) -> {now} bytes");
    assert!(now * 2 < was, "{was} -> {now} bytes");
    // Status reports the new file (which the deliveries after the swap
    // may have grown a little), not the old one.
    let reported = store.status().unwrap()[0].db_bytes;
    assert!(
        reported >= now && reported * 2 < was,
        "{was} -> {reported} bytes"
    );

    assert_kept(&store, user, &raws, &bob).await;
    // Writes after the switch land in the new file.
    let late = traced(user, b"Subject: after\r\n\r\nafter the rebuild\r\n");
    store
        .deliver(deliver_raw(user, "INBOX", late.clone()))
        .await
        .unwrap();
    store.shutdown();
    drop(store);
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    assert_kept(&store, user, &raws, &bob).await;
    let last = *store
        .messages(user, "INBOX")
        .await
        .unwrap()
        .last()
        .map(|(u, _)| u)
        .unwrap();
    assert!(store.raw(user, "INBOX", last).await.unwrap().unwrap() == late);
    store.shutdown();
}

/// Deliveries, flag changes, copies, moves, expunges, renames and deletes
/// over IMAP keep each mailbox's digest equal to one computed from its
/// messages, before and after a restart; a store written before digests
/// were kept gets them at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_digests_follow_every_change() {
    use common::imap::Imap;
    let mut server = common::TestServer::start_with(|c| c.store.groups = 2).await;
    for n in 0..12 {
        for user in ["alice@example.test", "bob@example.test"] {
            server.store().deliver(delivery(user, n)).await.unwrap();
        }
    }
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    for cmd in [
        "a CREATE Work",
        "b SELECT INBOX",
        "c UID STORE 1:4 +FLAGS (\\Seen $Label1)",
        "d UID COPY 1:6 Work",
        "e UID MOVE 7:8 Work",
        "f UID STORE 9 +FLAGS (\\Deleted)",
        "g EXPUNGE",
        "h RENAME Work Projects",
        "i CREATE Gone",
        "j UID COPY 10:12 Gone",
        "k DELETE Gone",
        "l SELECT Projects",
        "m UID STORE 1:* -FLAGS (\\Seen)",
    ] {
        let tag = cmd.split(' ').next().unwrap();
        let r = c.run(cmd).await;
        assert!(r.contains(&format!("{tag} OK")), "{cmd}: {r}");
    }
    let check = |store: &Store| {
        let all = store.digest_check().unwrap();
        assert!(all.len() >= 3, "{all:?}");
        for (name, kept, again) in &all {
            assert_eq!(kept.as_ref(), Some(again), "{name}");
        }
        all
    };
    let before = check(&server.store());
    assert!(
        before
            .iter()
            .any(|(n, _, d)| n.ends_with("/Projects") && d.messages == 8),
        "{before:?}"
    );
    drop(c);
    server.restart().await;
    assert_eq!(check(&server.store()), before, "the same after a restart");
    server.stop().await;

    // The format 1 store (written before digests) gets them at its start.
    let dir = tempfile::tempdir().unwrap();
    common::install_store_v1(dir.path());
    let mut cfg = Config::for_testing(dir.path());
    cfg.store.groups = 2;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    let v1 = check(&store);
    assert!(v1.iter().any(|(_, _, d)| d.messages > 0), "{v1:?}");
    store.shutdown();
}
