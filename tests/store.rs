//! The current store on its own: group commit, UID and UIDVALIDITY
//! stability, user placement. (Crash recovery is tested on the real binary
//! in crash.rs.)

use std::sync::Arc;

use tiermail::config::Config;
use tiermail::store::{Delivery, Outcome, Store, Summary};

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
            .map(|i| store.group_of(&format!("u{i}@example.test")).id)
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
            assert_eq!(store.group_of(&user).id, *group);
        }
        assert_eq!(store.mailboxes("u0@example.test").await.unwrap(), validity);
        store.shutdown();
    }
    // A different group count never moves existing users.
    cfg.store.groups = 7;
    let store = Store::open(&cfg.server.data_dir, &cfg.store).unwrap();
    for (i, g) in placement.iter().enumerate() {
        assert_eq!(store.group_of(&format!("u{i}@example.test")).id, *g);
    }
    store.shutdown();
}
