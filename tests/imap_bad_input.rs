//! Malformed, out-of-order and hostile IMAP input: each gets the right
//! tagged (or untagged) answer, the session goes on, and nothing is stored.

mod common;

use common::imap::Imap;
use common::{Client, TestServer};

#[derive(Clone, Copy, Debug)]
enum Setup {
    /// Plain port, not logged in (plaintext login is off on this server).
    Plain,
    /// TLS port, not logged in.
    Tls,
    /// Logged in over TLS.
    Authed,
    /// Logged in over TLS with INBOX selected.
    Selected,
    /// Logged in over TLS with INBOX examined (read-only).
    Examined,
}
use Setup::*;

const MAX: usize = 10_000;

struct Case {
    setup: Setup,
    input: Vec<u8>,
    /// Expected start of the line that ends the exchange.
    expect: &'static str,
}

fn case(setup: Setup, input: &str, expect: &'static str) -> Case {
    Case {
        setup,
        input: input.as_bytes().to_vec(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // Syntax.
        case(Plain, "\r\n", "* BAD"),
        case(Plain, "a\r\n", "* BAD"),
        case(Plain, "a FROB\r\n", "a BAD"),
        case(Plain, "a SELECT\r\n", "a BAD"),
        case(Plain, "a LOGIN\r\n", "a BAD"),
        case(Plain, "a LOGIN alice\r\n", "a BAD"),
        case(Plain, "a NOOP extra\r\n", "a BAD"),
        case(Plain, "a NO\0OP\r\n", "a BAD"),
        case(Plain, "a NOOP\n", "a BAD"),
        case(Plain, "a CAPABILITY (\r\n", "a BAD"),
        case(Plain, "+ NOOP\r\n", "* BAD"),
        // Order and state.
        case(Plain, "a SELECT INBOX\r\n", "a BAD"),
        case(Plain, "a FETCH 1 FLAGS\r\n", "a BAD"),
        case(Plain, "a IDLE\r\n", "a BAD"),
        case(Plain, "a APPEND INBOX {3+}\r\nabc\r\n", "a BAD"),
        // Privacy: no login in the clear unless configured.
        case(
            Plain,
            "a LOGIN alice@example.test \"correct horse\"\r\n",
            "a NO [PRIVACYREQUIRED]",
        ),
        case(Plain, "a AUTHENTICATE PLAIN\r\n", "a NO [PRIVACYREQUIRED]"),
        case(Tls, "a STARTTLS\r\n", "a BAD"),
        // Authentication.
        case(
            Tls,
            "a LOGIN alice@example.test wrong\r\n",
            "a NO [AUTHENTICATIONFAILED]",
        ),
        case(
            Tls,
            "a LOGIN nobody@example.test wrong\r\n",
            "a NO [AUTHENTICATIONFAILED]",
        ),
        case(Tls, "a AUTHENTICATE PLAIN !!!!\r\n", "a BAD"),
        case(Tls, "a AUTHENTICATE PLAIN YWxpY2U=\r\n", "a BAD"),
        case(Tls, "a AUTHENTICATE CRAM-MD5\r\n", "a NO"),
        case(Tls, "a AUTHENTICATE PLAIN\r\n*\r\n", "a BAD"),
        case(
            Tls,
            "a AUTHENTICATE PLAIN\r\nabc {5}\r\n",
            "a BAD [CANNOT] No literal is expected here",
        ),
        case(Authed, "a IDLE\r\nDONE {3+}\r\nabc\r\n", "a BAD [CANNOT]"),
        case(Authed, "a LOGIN x y\r\n", "a BAD"),
        // Mailboxes.
        case(Authed, "a SELECT Nowhere\r\n", "a NO [NONEXISTENT]"),
        case(Authed, "a EXAMINE \"\"\r\n", "a NO"),
        case(
            Authed,
            "a STATUS Nowhere (MESSAGES)\r\n",
            "a NO [NONEXISTENT]",
        ),
        case(Authed, "a CREATE INBOX\r\n", "a NO [ALREADYEXISTS]"),
        case(Authed, "a CREATE Sent\r\n", "a NO [ALREADYEXISTS]"),
        case(Authed, "a CREATE a//b\r\n", "a NO [CANNOT]"),
        case(Authed, "a CREATE \"x*\"\r\n", "a NO [CANNOT]"),
        case(Authed, "a DELETE INBOX\r\n", "a NO"),
        case(Authed, "a DELETE Nowhere\r\n", "a NO [NONEXISTENT]"),
        case(Authed, "a RENAME Nowhere Other\r\n", "a NO [NONEXISTENT]"),
        case(Authed, "a RENAME Sent Drafts\r\n", "a NO [ALREADYEXISTS]"),
        case(Authed, "a RENAME Sent Sent/Old\r\n", "a NO [CANNOT]"),
        case(Authed, "a SUBSCRIBE Nowhere\r\n", "a NO [NONEXISTENT]"),
        case(
            Authed,
            "a APPEND Nowhere {3+}\r\nabc\r\n",
            "a NO [TRYCREATE]",
        ),
        case(
            Authed,
            "a APPEND INBOX (\\Seen) \"bad date\" {3+}\r\nabc\r\n",
            "a BAD",
        ),
        case(Authed, "a FETCH 1 FLAGS\r\n", "a BAD"),
        case(Authed, "a STORE 1 +FLAGS (\\Seen)\r\n", "a BAD"),
        case(Authed, "a EXPUNGE\r\n", "a BAD"),
        case(Authed, "a IDLE\r\nFOO\r\n", "a BAD"),
        // Selected.
        case(Selected, "a FETCH 0 FLAGS\r\n", "a BAD"),
        case(Selected, "a FETCH 1:x FLAGS\r\n", "a BAD"),
        case(Selected, "a FETCH 1 (FLAGS\r\n", "a BAD"),
        case(Selected, "a FETCH 1 BODY[1.X]\r\n", "a BAD"),
        case(Selected, "a STORE 1 FLAGS.BAD (x)\r\n", "a BAD"),
        case(Selected, "a STORE 1 +FLAGS (\\Recent)\r\n", "a BAD"),
        case(Selected, "a COPY 1 Nowhere\r\n", "a NO [TRYCREATE]"),
        case(Selected, "a MOVE 1 Nowhere\r\n", "a NO [TRYCREATE]"),
        case(Selected, "a SEARCH FROB\r\n", "a BAD"),
        case(
            Selected,
            "a SEARCH CHARSET KOI8-R ALL\r\n",
            "a NO [BADCHARSET",
        ),
        case(
            Examined,
            "a STORE 1 +FLAGS (\\Seen)\r\n",
            "a NO [READ-ONLY]",
        ),
        case(Examined, "a EXPUNGE\r\n", "a NO [READ-ONLY]"),
    ];
    // Size limits: refused before the literal is read, or read and dropped.
    v.push(case(Authed, "a APPEND INBOX {999999}\r\n", "a NO [TOOBIG]"));
    let mut plus = format!("a APPEND INBOX {{{}+}}\r\n", MAX + 100).into_bytes();
    plus.extend(std::iter::repeat_n(b'x', MAX + 100));
    plus.extend_from_slice(b"\r\n");
    v.push(Case {
        setup: Authed,
        input: plus,
        expect: "a BAD [TOOBIG]",
    });
    let mut long = b"a NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'y', MAX + 70_000));
    long.extend_from_slice(b"\r\n");
    v.push(Case {
        setup: Plain,
        input: long,
        expect: "a BAD [TOOBIG]",
    });
    v
}

#[tokio::test]
async fn table_of_bad_imap_inputs() {
    let server = TestServer::start_with(|c| {
        c.imap.allow_plaintext_auth = false;
        c.limits.max_message_size = MAX;
        c.limits.max_errors = 1000;
        c.limits.max_auth_failures = 1000;
    })
    .await;
    for n in 0..2 {
        let mut c = Client::connect(server.smtp()).await;
        c.expect("EHLO client.test", "250").await;
        let body = format!("Subject: keep {n}\r\n\r\nkeep\r\n");
        let r = c
            .send_mail("a@remote.test", &["alice@example.test"], body.as_bytes())
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    let table = cases();
    assert!(table.len() >= 40, "{} cases", table.len());
    for (i, case) in table.iter().enumerate() {
        let mut c = match case.setup {
            Plain => Imap::connect(server.imap()).await,
            _ => Imap::connect_tls(server.imaps()).await,
        };
        match case.setup {
            Authed => c.log_in("alice@example.test").await,
            Selected => {
                c.log_in("alice@example.test").await;
                c.run("s SELECT INBOX").await;
            }
            Examined => {
                c.log_in("alice@example.test").await;
                c.run("s EXAMINE INBOX").await;
            }
            _ => {}
        }
        c.send(&case.input).await;
        // Read until a line that is tagged or an untagged BAD.
        let mut seen = String::new();
        let last = loop {
            let l = c.line().await;
            seen.push_str(&l);
            if l.starts_with("a ") || l.starts_with("* BAD") {
                break l;
            }
        };
        let shown = String::from_utf8_lossy(&case.input[..case.input.len().min(60)]).into_owned();
        assert!(
            last.starts_with(case.expect),
            "case {i} {shown:?}: expected {}, got {seen:?}",
            case.expect
        );
        let text = last.trim_end().rsplit(']').next().unwrap_or("").trim();
        assert!(
            text.len() > 3,
            "case {i} {shown:?}: no reason given in {last:?}"
        );
        // The session goes on.
        let r = c.run("z NOOP").await;
        assert!(
            r.ends_with("z OK NOOP completed\r\n"),
            "case {i} {shown:?}: after it: {r:?}"
        );
    }
    // Nothing half-done reached the store.
    let store = server.store();
    assert_eq!(server.inbox("alice@example.test").await.len(), 2);
    let names: Vec<String> = store
        .mailboxes("alice@example.test")
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["Drafts", "INBOX", "Junk", "Sent", "Trash"]);
    server.stop().await;
}

#[tokio::test]
async fn too_many_bad_commands_end_the_session() {
    let server = TestServer::start_with(|c| c.limits.max_errors = 3).await;
    let mut c = Imap::connect(server.imap()).await;
    for _ in 0..2 {
        let r = c.run("a FROB").await;
        assert!(r.starts_with("a BAD"), "{r}");
    }
    c.send(b"a FROB\r\n").await;
    assert!(c.line().await.starts_with("a BAD"));
    assert!(c.line().await.starts_with("* BYE"));
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_idle_connections_are_dropped() {
    let server = TestServer::start_with(|c| c.imap.unauthenticated_timeout_secs = 1).await;
    let mut c = Imap::connect(server.imap()).await;
    let l = c.line().await;
    assert!(l.starts_with("* BYE"), "{l}");
    server.stop().await;
}
