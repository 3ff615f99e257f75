//! SMTP, submission and LMTP delivery against a server on an ephemeral port:
//! every accepted message is stored byte for byte, behind our trace headers.

mod common;

use common::{Client, PASSWORD, TestServer, plain, starttls_client, strip_trace};

fn lettre_send(
    addr: std::net::SocketAddr,
    from: &str,
    to: &[&str],
    raw: &[u8],
) -> Result<(), String> {
    use lettre::Transport;
    let transport = lettre::SmtpTransport::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .build();
    let envelope = lettre::address::Envelope::new(
        Some(from.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap();
    // lettre ends DATA with "\r\n.\r\n" after the bytes it is given, so
    // the message's own final CRLF is the one it adds.
    let raw = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    transport
        .send_raw(&envelope, raw)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

const SIMPLE: &[u8] = b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: hello\r\n\
Message-ID: <1@remote.test>\r\n\r\nHi Alice,\r\n.this line starts with a dot\r\n..and this with two\r\n\r\nBob\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_delivers_byte_exact() {
    let srv = TestServer::start().await;
    let addr = srv.smtp();
    tokio::task::spawn_blocking(move || {
        lettre_send(addr, "bob@remote.test", &["alice@example.test"], SIMPLE)
    })
    .await
    .unwrap()
    .unwrap();
    let inbox = srv.inbox("alice@example.test").await;
    assert_eq!(inbox.len(), 1);
    let (trace, body) = strip_trace(&inbox[0]);
    assert_eq!(
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(SIMPLE),
        "stored bytes = received bytes"
    );
    let trace = String::from_utf8_lossy(trace);
    assert!(
        trace.starts_with("Return-Path: <bob@remote.test>\r\n"),
        "{trace}"
    );
    assert!(trace.contains("with ESMTP id "), "{trace}");
    assert!(trace.contains("for <alice@example.test>"), "{trace}");
    let meta = srv
        .store()
        .messages("alice@example.test", "INBOX")
        .await
        .unwrap();
    assert_eq!(meta[0].1.summary.subject, "hello");
    assert_eq!(meta[0].1.size as usize, inbox[0].len());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_multi_recipient_stores_once_per_user() {
    let srv = TestServer::start().await;
    let addr = srv.smtp();
    let rcpts = [
        "alice@example.test",
        "bob@example.test",
        "al@example.test",
        "Carol@Example.TEST",
    ];
    tokio::task::spawn_blocking(move || lettre_send(addr, "x@remote.test", &rcpts, SIMPLE))
        .await
        .unwrap()
        .unwrap();
    for user in [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ] {
        let inbox = srv.inbox(user).await;
        assert_eq!(
            inbox.len(),
            1,
            "{user} gets exactly one copy (alias folded)"
        );
        assert_eq!(strip_trace(&inbox[0]).1, SIMPLE);
        assert!(!String::from_utf8_lossy(strip_trace(&inbox[0]).0).contains("for <"));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_reports_unknown_user_and_relay() {
    let srv = TestServer::start().await;
    let addr = srv.smtp();
    let e = tokio::task::spawn_blocking(move || {
        lettre_send(addr, "x@remote.test", &["nobody@example.test"], SIMPLE)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(e.contains("5.1.1") || e.contains("550"), "{e}");
    let e = tokio::task::spawn_blocking(move || {
        lettre_send(addr, "x@remote.test", &["victim@elsewhere.test"], SIMPLE)
    })
    .await
    .unwrap()
    .unwrap_err();
    assert!(e.contains("554") || e.contains("Relay"), "{e}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_in_one_write() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(srv.smtp()).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    for cap in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(cap), "EHLO lists {cap}: {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "no AUTH on the MX port");
    c.send(b"MAIL FROM:<p@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("550 5.1.1"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("354"));
    // Body, end of data and the next transaction in one write.
    c.send(
        b"Subject: piped\r\n\r\none\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("354"));
    c.send(b"Subject: second\r\n\r\ntwo\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert!(c.reply().await.starts_with("221"));
    assert_eq!(srv.inbox("alice@example.test").await.len(), 1);
    let bob = srv.inbox("bob@example.test").await;
    assert_eq!(bob.len(), 2);
    assert_eq!(strip_trace(&bob[1]).1, b"Subject: second\r\n\r\ntwo\r\n");
    assert!(bob[1].starts_with(b"Return-Path: <>\r\n"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_are_joined_exactly() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(srv.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    c.expect("MAIL FROM:<b@remote.test> BODY=8BITMIME", "250")
        .await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    // A chunk holding CRLF.CRLF and a line with a leading dot: BDAT is not dot-stuffed.
    let part1: &[u8] = b"Subject: chunked\r\n\r\nline one\r\n.\r\n";
    let part2: &[u8] = b"..still data\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes()).await;
    c.send(part1).await;
    assert!(c.reply().await.starts_with("250"));
    c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .await;
    c.send(part2).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    // BDAT 0 LAST closes a message whose chunks were all sent before.
    c.expect("MAIL FROM:<b@remote.test>", "250").await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.send(b"BDAT 8\r\nSubject:").await;
    assert!(c.reply().await.starts_with("250"));
    c.expect("DATA", "503").await;
    c.send(b"BDAT 0 LAST\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let inbox = srv.inbox("alice@example.test").await;
    let mut want = part1.to_vec();
    want.extend_from_slice(part2);
    assert_eq!(strip_trace(&inbox[0]).1, want.as_slice());
    assert_eq!(strip_trace(&inbox[1]).1, b"Subject:");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_and_smtputf8_messages() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(srv.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let latin1: &[u8] = b"Subject: caf\xe9\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nd\xe9j\xe0 vu \xff\r\n";
    c.expect("MAIL FROM:<l@remote.test> BODY=8BITMIME", "250")
        .await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.send(latin1).await;
    assert!(c.cmd(".").await.starts_with("250"));
    // Without SMTPUTF8 a UTF-8 address is refused...
    c.expect("MAIL FROM:<jörg@remote.test>", "553 5.6.7").await;
    // ...with it, accepted, and the trace says UTF8SMTP.
    let utf8 = "From: Jörg <jörg@remote.test>\r\nTo: alice@example.test\r\nSubject: Grüße aus Köln ✓\r\n\r\nViele Grüße — Jörg\r\n".as_bytes();
    c.expect("MAIL FROM:<jörg@remote.test> SMTPUTF8 BODY=8BITMIME", "250")
        .await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.send(utf8).await;
    assert!(c.cmd(".").await.starts_with("250"));
    let inbox = srv.inbox("alice@example.test").await;
    assert_eq!(strip_trace(&inbox[0]).1, latin1);
    let (trace, body) = strip_trace(&inbox[1]);
    assert_eq!(body, utf8);
    assert!(String::from_utf8_lossy(trace).contains("with UTF8SMTP id"));
    let meta = srv
        .store()
        .messages("alice@example.test", "INBOX")
        .await
        .unwrap();
    assert_eq!(meta[1].1.summary.subject, "Grüße aus Köln ✓");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_body_dot_stuffing_and_postmaster() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(srv.smtp()).await;
    c.expect("HELO client.test", "250").await;
    c.expect("MAIL FROM:<e@remote.test>", "250").await;
    c.expect("RCPT TO:<postmaster>", "250").await;
    c.expect("DATA", "354").await;
    assert!(
        c.cmd(".").await.starts_with("250"),
        "empty message accepted"
    );
    c.expect("MAIL FROM:<e@remote.test>", "250").await;
    c.expect("RCPT TO:<bob@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.send(b"..first line was dot-stuffed\r\n").await;
    assert!(c.cmd(".").await.starts_with("250"));
    let carol = srv.inbox("carol@example.test").await;
    assert_eq!(carol.len(), 1, "postmaster goes to its alias owner");
    assert_eq!(strip_trace(&carol[0]).1, b"");
    assert!(
        String::from_utf8_lossy(strip_trace(&carol[0]).0).contains("with SMTP id"),
        "HELO sessions say SMTP"
    );
    assert_eq!(
        strip_trace(&srv.inbox("bob@example.test").await[0]).1,
        b".first line was dot-stuffed\r\n"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_starttls_then_auth() {
    let srv = TestServer::start_with(|c| c.smtp.allow_plaintext_auth = false).await;
    // Before TLS: no AUTH offered, AUTH refused, MAIL needs authentication.
    let mut c = Client::connect(srv.submission()).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)),
        "538 5.7.11",
    )
    .await;
    c.expect("MAIL FROM:<alice@example.test>", "530 5.7.0")
        .await;
    drop(c);
    // After STARTTLS: EHLO again, AUTH offered, login, deliver.
    let mut c = starttls_client(srv.submission()).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.expect("MAIL FROM:<alice@example.test>", "530").await;
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice@example.test", "wrong")),
        "535 5.7.8",
    )
    .await;
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)),
        "235 2.7.0",
    )
    .await;
    c.expect("AUTH PLAIN", "503").await;
    let r = c
        .send_mail(
            "alice@example.test",
            &["bob@example.test"],
            b"Subject: over tls\r\n\r\nsecret\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    // Authenticated users still cannot relay (no smarthost yet), with a clear reason.
    c.expect("MAIL FROM:<alice@example.test>", "250").await;
    let r = c.cmd("RCPT TO:<friend@elsewhere.test>").await;
    assert!(r.starts_with("550 5.7.1") && r.contains("relay"), "{r}");
    let bob = srv.inbox("bob@example.test").await;
    assert!(String::from_utf8_lossy(strip_trace(&bob[0]).0).contains("with ESMTPSA id"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_submission_with_auth_login() {
    let srv = TestServer::start_with(|c| c.smtp.allow_plaintext_auth = false).await;
    let mut c = Client::connect_tls(srv.submissions()).await;
    let ehlo = c.expect("EHLO client.test", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"));
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    c.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    c.expect(&b("bob@example.test"), "334 UGFzc3dvcmQ6").await;
    c.expect(&b(PASSWORD), "235").await;
    let r = c
        .send_mail(
            "bob@example.test",
            &["alice@example.test"],
            b"Subject: 465\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250"));
    assert_eq!(srv.inbox("alice@example.test").await.len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_ip() {
    let srv = TestServer::start_with(|c| c.limits.max_auth_failures = 3).await;
    let mut c = Client::connect(srv.submission()).await;
    c.expect("EHLO client.test", "250").await;
    for _ in 0..3 {
        c.expect(
            &format!("AUTH PLAIN {}", plain("alice@example.test", "nope")),
            "535",
        )
        .await;
    }
    // Now even the right password is refused from this address, on any connection.
    let mut c2 = Client::connect(srv.submission()).await;
    c2.expect("EHLO client.test", "250").await;
    c2.expect(
        &format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)),
        "454 4.7.0",
    )
    .await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_replies_per_recipient() {
    let srv = TestServer::start().await;
    let mut c = Client::connect(srv.lmtp()).await;
    c.expect("EHLO mta.test", "500").await;
    let lhlo = c.expect("LHLO mta.test", "250").await;
    assert!(lhlo.contains("PIPELINING") && lhlo.contains("ENHANCEDSTATUSCODES"));
    c.expect("MAIL FROM:<sender@remote.test>", "250").await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("RCPT TO:<ghost@example.test>", "550 5.1.1").await;
    c.expect("RCPT TO:<bob@example.test>", "250").await;
    c.expect("RCPT TO:<al@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.send(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n").await;
    // One reply per accepted recipient, in RCPT order.
    for who in ["alice@example.test", "bob@example.test", "al@example.test"] {
        let r = c.reply().await;
        assert!(r.starts_with("250 2.1.5") && r.contains(who), "{r}");
    }
    c.expect("NOOP", "250").await;
    assert_eq!(srv.inbox("alice@example.test").await.len(), 1);
    assert_eq!(srv.inbox("bob@example.test").await.len(), 1);
    let trace = String::from_utf8_lossy(strip_trace(&srv.inbox("bob@example.test").await[0]).0)
        .into_owned();
    assert!(trace.contains("with LMTP id"), "{trace}");
    // A message over the limit: one refusal per recipient.
    c.expect("MAIL FROM:<sender@remote.test>", "250").await;
    c.expect("RCPT TO:<alice@example.test>", "250").await;
    c.expect("RCPT TO:<bob@example.test>", "250").await;
    c.expect("DATA", "354").await;
    c.send(b"Subject: has a nul\r\n\r\na\0b\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("554 5.6.0"));
    assert!(c.reply().await.starts_with("554 5.6.0"));
    c.expect("QUIT", "221").await;
    assert_eq!(srv.inbox("alice@example.test").await.len(), 1);
    srv.stop().await;
}
