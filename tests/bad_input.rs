//! Malformed, out-of-order and hostile SMTP/LMTP input: every case gets the
//! right reply, the session stays usable, and afterwards the store holds
//! exactly the messages that were accepted.

mod common;

use common::{Client, PASSWORD, TestServer, plain};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Clone, Copy, Debug)]
enum Port {
    Mx,
    Submission,
    Submissions,
    Lmtp,
}

/// Where the session is before the hostile input arrives.
#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Just the greeting.
    Fresh,
    /// After EHLO (LHLO on LMTP).
    Hello,
    /// After EHLO and MAIL.
    Mail,
    /// After EHLO, MAIL and RCPT alice.
    Rcpt,
    /// Authenticated on submissions (implicit TLS).
    Authed,
}

struct Case {
    name: &'static str,
    port: Port,
    setup: Setup,
    input: &'static [u8],
    /// Expected reply prefixes, in order (several for pipelined input).
    replies: &'static [&'static str],
}

const fn case(
    name: &'static str,
    port: Port,
    setup: Setup,
    input: &'static [u8],
    replies: &'static [&'static str],
) -> Case {
    Case {
        name,
        port,
        setup,
        input,
        replies,
    }
}

use Port::*;
use Setup::*;

const MAX_SIZE: usize = 2000;
const OVERSIZE_DATA: &[u8] = &[b'x'; 3000];

fn cases() -> Vec<Case> {
    vec![
        // Syntax.
        case("unknown verb", Mx, Fresh, b"FROB x\r\n", &["500 5.5.1"]),
        case("empty line", Mx, Fresh, b"\r\n", &["500"]),
        case("bare LF line", Mx, Fresh, b"XYZZY\n", &["500 5.5.1"]),
        case("EHLO without domain", Mx, Fresh, b"EHLO\r\n", &["501"]),
        case("HELO without domain", Mx, Fresh, b"HELO\r\n", &["501"]),
        case(
            "NUL byte in command",
            Mx,
            Fresh,
            b"NO\0OP\r\n",
            &["500 5.5.2"],
        ),
        case(
            "MAIL with unclosed path",
            Mx,
            Hello,
            b"MAIL FROM:<a@b.test\r\n",
            &["501"],
        ),
        case("MAIL with no path", Mx, Hello, b"MAIL FROM:\r\n", &["501"]),
        case(
            "MAIL with unknown parameter",
            Mx,
            Hello,
            b"MAIL FROM:<a@b.test> FROB=1\r\n",
            &["555 5.5.4"],
        ),
        case(
            "RCPT without domain",
            Mx,
            Mail,
            b"RCPT TO:<alice>\r\n",
            &["501 5.1.3"],
        ),
        case("BDAT with bad size", Mx, Rcpt, b"BDAT lots\r\n", &["501"]),
        // Order.
        case(
            "MAIL before EHLO",
            Mx,
            Fresh,
            b"MAIL FROM:<a@b.test>\r\n",
            &["503 5.5.1"],
        ),
        case(
            "RCPT before MAIL",
            Mx,
            Hello,
            b"RCPT TO:<alice@example.test>\r\n",
            &["503 5.5.1"],
        ),
        case("DATA before MAIL", Mx, Hello, b"DATA\r\n", &["503 5.5.1"]),
        case(
            "DATA without recipients",
            Mx,
            Mail,
            b"DATA\r\n",
            &["554 5.5.1"],
        ),
        case(
            "nested MAIL",
            Mx,
            Mail,
            b"MAIL FROM:<b@b.test>\r\n",
            &["503 5.5.1"],
        ),
        case(
            "BDAT before MAIL (chunk still consumed)",
            Mx,
            Hello,
            b"BDAT 5 LAST\r\nhello",
            &["503 5.5.1"],
        ),
        case(
            "DATA after BDAT",
            Mx,
            Rcpt,
            b"BDAT 3\r\nabcDATA\r\n",
            &["250", "503 5.5.1"],
        ),
        case(
            "RCPT after BDAT",
            Mx,
            Rcpt,
            b"BDAT 3\r\nabcRCPT TO:<bob@example.test>\r\n",
            &["250", "503 5.5.1"],
        ),
        case(
            "STARTTLS inside a transaction",
            Mx,
            Mail,
            b"STARTTLS\r\n",
            &["503 5.5.1"],
        ),
        case(
            "STARTTLS on implicit TLS",
            Submissions,
            Hello,
            b"STARTTLS\r\n",
            &["503 5.5.1"],
        ),
        case(
            "LHLO on the SMTP port",
            Mx,
            Fresh,
            b"LHLO x.test\r\n",
            &["500 5.5.1"],
        ),
        case(
            "EHLO on the LMTP port",
            Lmtp,
            Fresh,
            b"EHLO x.test\r\n",
            &["500 5.5.1"],
        ),
        case(
            "LMTP MAIL before LHLO",
            Lmtp,
            Fresh,
            b"MAIL FROM:<a@b.test>\r\n",
            &["503 5.5.1"],
        ),
        case("EXPN", Mx, Hello, b"EXPN staff\r\n", &["502 5.5.1"]),
        // Policy.
        case(
            "SIZE above the limit",
            Mx,
            Hello,
            b"MAIL FROM:<a@b.test> SIZE=999999\r\n",
            &["552 5.3.4"],
        ),
        case(
            "non-ASCII sender without SMTPUTF8",
            Mx,
            Hello,
            "MAIL FROM:<jürgen@b.test>\r\n".as_bytes(),
            &["553 5.6.7"],
        ),
        case(
            "unknown local user",
            Mx,
            Mail,
            b"RCPT TO:<nobody@example.test>\r\n",
            &["550 5.1.1"],
        ),
        case(
            "relay attempt",
            Mx,
            Mail,
            b"RCPT TO:<victim@elsewhere.test>\r\n",
            &["554 5.7.1"],
        ),
        case(
            "too many recipients",
            Mx,
            Rcpt,
            b"RCPT TO:<bob@example.test>\r\nRCPT TO:<carol@example.test>\r\n",
            &["250", "452 4.5.3"],
        ),
        case(
            "oversize DATA body",
            Mx,
            Rcpt,
            b"DATA\r\n",
            &["354"], // body sent by the runner, see below
        ),
        case(
            "oversize BDAT chunk",
            Mx,
            Rcpt,
            b"BDAT 3000 LAST\r\n",
            &[], // body sent by the runner, see below
        ),
        case(
            "oversize over several BDAT chunks",
            Mx,
            Rcpt,
            b"BDAT 1500\r\n",
            &[],
        ),
        case(
            "NUL byte in message body",
            Mx,
            Rcpt,
            b"DATA\r\nSubject: x\r\n\r\nbad\0byte\r\n.\r\n",
            &["354", "554 5.6.0"],
        ),
        case(
            "overlong command line",
            Mx,
            Hello,
            b"", // built by the runner
            &["500 5.5.2"],
        ),
        // Authentication.
        case(
            "AUTH on the MX port",
            Mx,
            Hello,
            b"AUTH PLAIN AGFsaWNlAHg=\r\n",
            &["502 5.5.1"],
        ),
        case(
            "AUTH before TLS",
            Submission,
            Hello,
            b"AUTH PLAIN AGFsaWNlAHg=\r\n",
            &["538 5.7.11"],
        ),
        case(
            "MAIL without AUTH on submission",
            Submission,
            Hello,
            b"MAIL FROM:<alice@example.test>\r\n",
            &["530"],
        ),
        case(
            "wrong password",
            Submissions,
            Hello,
            b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==\r\n",
            &["535 5.7.8"],
        ),
        case(
            "AUTH with invalid base64",
            Submissions,
            Hello,
            b"AUTH PLAIN !!!notbase64\r\n",
            &["501 5.5.2"],
        ),
        case(
            "AUTH PLAIN without NUL separators",
            Submissions,
            Hello,
            b"AUTH PLAIN YWxpY2U=\r\n",
            &["501 5.5.2"],
        ),
        case(
            "AUTH unknown mechanism",
            Submissions,
            Hello,
            b"AUTH CRAM-MD5\r\n",
            &["504 5.5.4"],
        ),
        case(
            "AUTH cancelled",
            Submissions,
            Hello,
            b"AUTH LOGIN\r\n*\r\n",
            &["334", "501 5.7.0"],
        ),
        case(
            "AUTH twice",
            Submissions,
            Authed,
            b"AUTH PLAIN AGFsaWNlAHg=\r\n",
            &["503 5.5.1"],
        ),
        case(
            "authenticated relay to a remote domain",
            Submissions,
            Authed,
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<someone@elsewhere.test>\r\n",
            &["250", "550 5.7.1"],
        ),
    ]
}

async fn open(server: &TestServer, port: Port) -> Client {
    match port {
        Mx => Client::connect(server.smtp()).await,
        Submission => Client::connect(server.submission()).await,
        Submissions => Client::connect_tls(server.submissions()).await,
        Lmtp => Client::connect(server.lmtp()).await,
    }
}

async fn prepare(c: &mut Client, port: Port, setup: Setup) {
    let hello = if matches!(port, Lmtp) {
        "LHLO client.test"
    } else {
        "EHLO client.test"
    };
    if matches!(setup, Fresh) {
        return;
    }
    c.expect(hello, "250").await;
    if matches!(setup, Authed) {
        let auth = format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD));
        c.expect(&auth, "235").await;
        return;
    }
    if matches!(setup, Mail | Rcpt) {
        c.expect("MAIL FROM:<sender@remote.test>", "250").await;
    }
    if matches!(setup, Rcpt) {
        c.expect("RCPT TO:<alice@example.test>", "250").await;
    }
}

/// Sends a good message to alice on a fresh connection; returns its body.
async fn good_message(server: &TestServer, n: usize) -> Vec<u8> {
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let body = format!("Subject: good {n}\r\n\r\nAccepted message {n}.\r\n").into_bytes();
    let r = c
        .send_mail("sender@remote.test", &["alice@example.test"], &body)
        .await;
    assert!(r.starts_with("250"), "{r}");
    c.expect("QUIT", "221").await;
    body
}

#[tokio::test]
async fn table_of_bad_inputs() {
    let server = TestServer::start_with(|c| {
        c.smtp.allow_plaintext_auth = false;
        c.limits.max_message_size = MAX_SIZE;
        c.limits.max_recipients = 2;
        c.limits.max_line_length = 512;
        c.limits.max_errors = 1000;
        c.limits.max_auth_failures = 1000;
    })
    .await;
    let table = cases();
    assert!(table.len() >= 30, "the table has {} cases", table.len());

    let mut accepted = vec![good_message(&server, 0).await];
    for (i, case) in table.iter().enumerate() {
        let mut c = open(&server, case.port).await;
        prepare(&mut c, case.port, case.setup).await;
        let mut got = Vec::new();
        match case.name {
            "overlong command line" => {
                let mut line = b"NOOP ".to_vec();
                line.resize(5000, b'a');
                line.extend_from_slice(b"\r\n");
                c.send(&line).await;
            }
            "oversize DATA body" => {
                c.send(case.input).await;
                got.push(c.reply().await);
                c.send(OVERSIZE_DATA).await;
                c.send(b"\r\n.\r\n").await;
            }
            "oversize BDAT chunk" => {
                c.send(case.input).await;
                c.send(OVERSIZE_DATA).await;
            }
            "oversize over several BDAT chunks" => {
                c.send(case.input).await;
                c.send(&OVERSIZE_DATA[..1500]).await;
                got.push(c.reply().await);
                c.send(b"BDAT 1500 LAST\r\n").await;
                c.send(&OVERSIZE_DATA[..1500]).await;
            }
            _ => c.send(case.input).await,
        }
        let expected: Vec<&str> = match case.name {
            "oversize DATA body" => vec!["354", "552 5.3.4"],
            "oversize BDAT chunk" => vec!["552 5.3.4"],
            "oversize over several BDAT chunks" => vec!["250", "552 5.3.4"],
            _ => case.replies.to_vec(),
        };
        while got.len() < expected.len() {
            got.push(c.reply().await);
        }
        for (want, reply) in expected.iter().zip(&got) {
            assert!(
                reply.starts_with(want),
                "case {i} `{}`: expected {want}, got {reply:?} (all: {got:?})",
                case.name
            );
            // Every refusal says why.
            let text = reply.lines().last().unwrap_or("");
            assert!(
                text.len() > 10,
                "case `{}`: reply without text: {text:?}",
                case.name
            );
        }
        // The session goes on.
        c.expect("NOOP", "250").await;
        c.expect("RSET", "250").await;
        c.expect("QUIT", "221").await;
        // Every few cases, show that good mail still gets through.
        if i % 10 == 9 {
            accepted.push(good_message(&server, i).await);
        }
    }
    accepted.push(good_message(&server, 9999).await);

    let stored = server.inbox("alice@example.test").await;
    assert_eq!(
        stored.len(),
        accepted.len(),
        "exactly the accepted messages"
    );
    for (s, a) in stored.iter().zip(&accepted) {
        assert_eq!(common::strip_trace(s).1, &a[..]);
    }
    for user in ["bob@example.test", "carol@example.test"] {
        assert!(server.inbox(user).await.is_empty(), "{user} got nothing");
    }
    server.stop().await;
}

#[tokio::test]
async fn disconnect_mid_data_stores_nothing() {
    let server = TestServer::start().await;
    for cut in [
        &b"Subject: half\r\n\r\nhalf a body"[..],
        b"Subject: half\r\n\r\nbody\r\n",
        b"Subject: half\r\n\r\nbody\r\n.",
    ] {
        let mut c = Client::connect(server.smtp()).await;
        c.expect("EHLO client.test", "250").await;
        c.expect("MAIL FROM:<a@remote.test>", "250").await;
        c.expect("RCPT TO:<bob@example.test>", "250").await;
        c.expect("DATA", "354").await;
        c.send(cut).await;
        c.stream.shutdown().await.unwrap();
        drop(c);
    }
    // BDAT cut off mid-chunk and between chunks.
    for input in [&b"BDAT 100 LAST\r\nonly forty bytes"[..], b"BDAT 4\r\nabcd"] {
        let mut c = Client::connect(server.smtp()).await;
        c.expect("EHLO client.test", "250").await;
        c.expect("MAIL FROM:<a@remote.test>", "250").await;
        c.expect("RCPT TO:<bob@example.test>", "250").await;
        c.send(input).await;
        drop(c);
    }
    // Let the sessions notice the close, then a good message proves the
    // server still works and is the only thing stored.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let r = c
        .send_mail(
            "a@remote.test",
            &["bob@example.test"],
            b"Subject: whole\r\n\r\nok\r\n",
        )
        .await;
    assert!(r.starts_with("250"), "{r}");
    let inbox = server.inbox("bob@example.test").await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(
        common::strip_trace(&inbox[0]).1,
        b"Subject: whole\r\n\r\nok\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let server = TestServer::start_with(|c| c.limits.max_errors = 5).await;
    let mut c = Client::connect(server.smtp()).await;
    for _ in 0..4 {
        c.expect("BOGUS", "500").await;
    }
    let r = c.cmd("BOGUS").await;
    assert!(r.starts_with("500"), "{r}");
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.try_reply().await.is_none(), "connection closed");
    server.stop().await;
}

#[tokio::test]
async fn idle_client_gets_421_timeout() {
    let server = TestServer::start_with(|c| c.limits.command_timeout_secs = 1).await;
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.try_reply().await.is_none(), "connection closed");
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_answers_421_and_recovers() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    let mut a = Client::connect(server.smtp()).await;
    let mut b = Client::connect(server.lmtp()).await;
    // The limit is server-wide, across listeners.
    let tcp = tokio::net::TcpStream::connect(server.submission())
        .await
        .unwrap();
    let mut over = Client::unread(tcp);
    let r = over.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert!(over.try_reply().await.is_none());
    a.expect("NOOP", "250").await;
    b.expect("NOOP", "250").await;
    a.expect("QUIT", "221").await;
    drop(a);
    // A freed slot is usable again.
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let tcp = tokio::net::TcpStream::connect(server.smtp()).await.unwrap();
        let mut c = Client::unread(tcp);
        let r = c.reply().await;
        if r.starts_with("220") {
            again = Some(c);
            break;
        }
    }
    let mut c = again.expect("a slot frees up after QUIT");
    c.expect("NOOP", "250").await;
    server.stop().await;
}
