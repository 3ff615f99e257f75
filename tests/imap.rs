//! IMAP flows with a third-party client (async-imap): what a mail client
//! does every day, checked against what SMTP delivered.

mod common;

use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use common::{Client, PASSWORD, TestServer};
use futures::TryStreamExt;
use tokio::net::TcpStream;

type Session = async_imap::Session<TcpStream>;

async fn login(server: &TestServer, user: &str) -> Session {
    let tcp = TcpStream::connect(server.imap()).await.unwrap();
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.unwrap().expect("greeting");
    client
        .login(user, PASSWORD)
        .await
        .map_err(|(e, _)| e)
        .expect("login")
}

/// Delivers over SMTP; returns the bytes stored for `to` (trace included).
async fn deliver(server: &TestServer, to: &str, body: &[u8]) {
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.send_mail("sender@remote.test", &[to], body).await;
    assert!(r.starts_with("250"), "{r}");
}

fn corpus(n: u64) -> Vec<u8> {
    tiermail::corpus::message(42, n, "alice@example.test")
}

#[tokio::test]
async fn fetch_returns_exactly_what_smtp_delivered() {
    let server = TestServer::start().await;
    for n in 0..12 {
        deliver(&server, "alice@example.test", &corpus(n)).await;
    }
    let stored = server.inbox("alice@example.test").await;
    let mut s = login(&server, "alice@example.test").await;
    let mailboxes: Vec<String> = s
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .map_ok(|n| n.name().to_string())
        .try_collect()
        .await
        .unwrap();
    for m in ["INBOX", "Sent", "Drafts", "Trash", "Junk"] {
        assert!(mailboxes.contains(&m.to_string()), "{mailboxes:?}");
    }
    let mb = s.select("INBOX").await.unwrap();
    assert_eq!(mb.exists, 12);
    assert!(mb.uid_validity.is_some());
    let fetched: Vec<_> = s
        .fetch("1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(fetched.len(), 12);
    for f in &fetched {
        let i = f.message as usize - 1;
        assert_eq!(
            f.body().unwrap(),
            &stored[i][..],
            "message {} byte-exact",
            f.message
        );
        assert_eq!(f.size.unwrap() as usize, stored[i].len());
        // Without the trace headers it is what the client sent.
        assert_eq!(
            common::strip_trace(f.body().unwrap()).1,
            &corpus(i as u64)[..]
        );
    }
    // BODY.PEEK did not set \Seen; BODY[] does.
    let unseen = s.search("UNSEEN").await.unwrap();
    assert_eq!(unseen.len(), 12);
    let _: Vec<_> = s
        .fetch("1", "BODY[TEXT]")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(s.search("UNSEEN").await.unwrap().len(), 11);
    // ENVELOPE and BODYSTRUCTURE parse in a real client.
    let env: Vec<_> = s
        .fetch("1:*", "(ENVELOPE BODYSTRUCTURE)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(env.len(), 12);
    for f in &env {
        let e = f.envelope().expect("envelope");
        assert!(e.message_id.is_some());
        assert!(f.bodystructure().is_some());
    }
    s.logout().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn search_store_copy_move_expunge() {
    let server = TestServer::start().await;
    for n in 0..6 {
        let body = format!(
            "Subject: note {n}\r\nFrom: a@remote.test\r\n\r\nnumber {n} kiwi{}\r\n",
            n % 2
        );
        deliver(&server, "bob@example.test", body.as_bytes()).await;
    }
    let mut s = login(&server, "bob@example.test").await;
    s.select("INBOX").await.unwrap();
    let hits = s.search("SUBJECT \"note 3\"").await.unwrap();
    assert_eq!(hits.into_iter().collect::<Vec<_>>(), vec![4]);
    let hits = s.search("BODY kiwi1").await.unwrap();
    assert_eq!(hits.len(), 3);
    let _: Vec<_> = s
        .store("1:2", "+FLAGS (\\Flagged $Important)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(s.search("FLAGGED").await.unwrap().len(), 2);
    assert_eq!(s.search("KEYWORD $Important").await.unwrap().len(), 2);
    let uids = s.uid_search("FLAGGED").await.unwrap();
    assert_eq!(uids.len(), 2);

    // COPY keeps the source; MOVE removes it.
    s.copy("1:2", "Trash").await.unwrap();
    s.uid_mv("5:6", "Junk").await.unwrap();
    let mb = s.select("INBOX").await.unwrap();
    assert_eq!(mb.exists, 4);
    let trash = s.status("Trash", "(MESSAGES)").await.unwrap();
    assert_eq!(trash.exists, 2);
    let junk = s.select("Junk").await.unwrap();
    assert_eq!(junk.exists, 2);
    // Flags travel with copies.
    s.select("Trash").await.unwrap();
    assert_eq!(s.search("FLAGGED").await.unwrap().len(), 2);

    // Expunge \Deleted messages.
    s.select("INBOX").await.unwrap();
    let _: Vec<_> = s
        .store("1,3", "+FLAGS.SILENT (\\Deleted)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let gone: Vec<u32> = s.expunge().await.unwrap().try_collect().await.unwrap();
    // Numbered as the client sees them: 1 goes, then old 3 is number 2.
    assert_eq!(gone, vec![1, 2]);
    let mb = s.select("INBOX").await.unwrap();
    assert_eq!(mb.exists, 2);
    s.logout().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn append_rename_delete_folders() {
    let server = TestServer::start().await;
    let mut s = login(&server, "carol@example.test").await;
    s.create("Projects/2026").await.unwrap();
    let draft = b"Subject: draft\r\nFrom: carol@example.test\r\n\r\nnot yet\r\n";
    s.append("Projects/2026", Some("(\\Draft)"), None, draft)
        .await
        .unwrap();
    s.rename("Projects", "Work").await.unwrap();
    let names: Vec<String> = s
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .map_ok(|n| n.name().to_string())
        .try_collect()
        .await
        .unwrap();
    assert!(names.contains(&"Work/2026".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("Projects")),
        "{names:?}"
    );
    let mb = s.select("Work/2026").await.unwrap();
    assert_eq!(mb.exists, 1);
    let f: Vec<_> = s
        .fetch("1", "(FLAGS BODY.PEEK[])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(f[0].body().unwrap(), draft);
    assert!(f[0].flags().any(|fl| fl == async_imap::types::Flag::Draft));
    // A parent with children cannot go first.
    assert!(s.delete("Work").await.is_err());
    s.select("INBOX").await.unwrap();
    s.delete("Work/2026").await.unwrap();
    s.delete("Work").await.unwrap();
    assert!(s.select("Work/2026").await.is_err());
    // INBOX cannot be deleted.
    assert!(s.delete("INBOX").await.is_err());
    s.logout().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn idle_wakes_up_on_delivery() {
    let server = TestServer::start().await;
    let mut s = login(&server, "alice@example.test").await;
    s.select("INBOX").await.unwrap();
    let mut idle = s.idle();
    idle.init().await.unwrap();
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(20));
    let delivered = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        deliver(
            &server,
            "alice@example.test",
            b"Subject: ping\r\n\r\nwake up\r\n",
        )
        .await;
        Instant::now()
    };
    let (resp, at) = tokio::join!(wait, delivered);
    match resp.unwrap() {
        IdleResponse::NewData(d) => {
            let text = format!("{:?}", d.parsed());
            assert!(text.contains("Exists(1)"), "{text}");
        }
        other => panic!("IDLE ended without news: {other:?}"),
    }
    // The client heard of it promptly after the 250 (generous bound: this
    // checks that IDLE is pushed, not polled slowly).
    assert!(at.elapsed() < Duration::from_secs(5));
    let mut s = idle.done().await.unwrap();
    s.logout().await.unwrap();
    server.stop().await;
}
