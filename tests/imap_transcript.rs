//! IMAP transcripts: raw bytes in, exact responses out, for the parts where
//! clients and servers most often disagree.

mod common;

use common::imap::Imap;
use common::{Client, TestServer};

async fn deliver(server: &TestServer, to: &str, body: &[u8]) {
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    let r = c.send_mail("sender@remote.test", &[to], body).await;
    assert!(r.starts_with("250"), "{r}");
}

#[tokio::test]
async fn literals_continuations_and_literal_plus() {
    let server = TestServer::start().await;
    let mut c = Imap::connect(server.imap()).await;
    // Synchronizing literal: the server asks for it with "+".
    c.send(b"a LOGIN {18}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data\r\n");
    c.send(b"alice@example.test \"correct horse\"\r\n").await;
    let r = c.until("a").await;
    assert!(r.starts_with("a OK [CAPABILITY IMAP4REV1 "), "{r}");
    // LITERAL+: no continuation, the data follows at once.
    let msg = b"Subject: plus\r\n\r\nliteral plus\r\n";
    c.send(format!("b APPEND INBOX (\\Seen) {{{}+}}\r\n", msg.len()).as_bytes())
        .await;
    c.send(msg).await;
    c.send(b"\r\n").await;
    let r = c.until("b").await;
    assert!(r.starts_with("b OK [APPENDUID "), "{r}");
    assert!(r.ends_with(" 1] APPEND completed\r\n"), "{r}");
    let r = c.run("c SELECT INBOX").await;
    assert!(r.contains("* 1 EXISTS\r\n"), "{r}");
    let r = c.run("d FETCH 1 (FLAGS BODY.PEEK[TEXT])").await;
    assert_eq!(
        r,
        // The first session to select it sees the new message as \Recent.
        "* 1 FETCH (FLAGS (\\Seen \\Recent) BODY[TEXT] {14}\r\nliteral plus\r\n)\r\nd OK FETCH completed\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn partial_fetch_and_header_fields() {
    let server = TestServer::start().await;
    let body =
        b"Subject: partial\r\nX-Thing: one\r\nFrom: a@remote.test\r\n\r\n0123456789abcdef\r\n";
    deliver(&server, "alice@example.test", body).await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    c.run("s SELECT INBOX").await;
    let r = c.run("f FETCH 1 BODY.PEEK[TEXT]<4.6>").await;
    assert_eq!(
        r,
        "* 1 FETCH (BODY[TEXT]<4> \"456789\")\r\nf OK FETCH completed\r\n"
    );
    // A range past the end is cut short, not an error.
    let r = c.run("g FETCH 1 BODY.PEEK[TEXT]<16.100>").await;
    assert_eq!(
        r,
        "* 1 FETCH (BODY[TEXT]<16> {2}\r\n\r\n)\r\ng OK FETCH completed\r\n"
    );
    let r = c
        .run("h FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT X-THING)]")
        .await;
    assert_eq!(
        r,
        "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT X-THING)] {34}\r\nSubject: partial\r\nX-Thing: one\r\n\r\n)\r\nh OK FETCH completed\r\n"
    );
    let r = c
        .run("i FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT X-THING RECEIVED RETURN-PATH)]")
        .await;
    assert_eq!(
        r,
        "* 1 FETCH (BODY[HEADER.FIELDS.NOT (SUBJECT X-THING RECEIVED RETURN-PATH)] {23}\r\nFrom: a@remote.test\r\n\r\n)\r\ni OK FETCH completed\r\n"
    );
    server.stop().await;
}

const ALTERNATIVE: &[u8] = b"From: =?UTF-8?Q?J=C3=B6rg?= <jorg@remote.test>\r\n\
To: friends: ann@remote.test, bo@remote.test;, carl@remote.test\r\n\
Subject: =?UTF-8?B?R3LDvMOfZQ==?=\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <alt@remote.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
plain text\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>html</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"a.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: Inner <inner@remote.test>\r\n\
Subject: inner\r\n\
\r\n\
inner body\r\n\
--outer--\r\n";

#[tokio::test]
async fn bodystructure_and_envelope() {
    let server = TestServer::start().await;
    deliver(&server, "alice@example.test", ALTERNATIVE).await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    c.run("s SELECT INBOX").await;
    let r = c.run("b FETCH 1 BODYSTRUCTURE").await;
    assert_eq!(
        r,
        "* 1 FETCH (BODYSTRUCTURE (((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL)\
(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 11 1 NIL NIL NIL NIL) \"ALTERNATIVE\" (\"BOUNDARY\" \"inner\") NIL NIL NIL)\
(\"APPLICATION\" \"PDF\" (\"NAME\" \"a.pdf\") NIL NIL \"BASE64\" 12 NIL (\"ATTACHMENT\" (\"FILENAME\" \"a.pdf\")) NIL NIL)\
(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 61 (NIL \"inner\" ((\"Inner\" NIL \"inner\" \"remote.test\")) ((\"Inner\" NIL \"inner\" \"remote.test\")) ((\"Inner\" NIL \"inner\" \"remote.test\")) NIL NIL NIL NIL NIL) \
(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"outer\") NIL NIL NIL))\r\n\
b OK FETCH completed\r\n"
    );
    let r = c.run("e FETCH 1 ENVELOPE").await;
    assert_eq!(
        r,
        "* 1 FETCH (ENVELOPE (\"Tue, 24 Nov 2026 10:00:00 +0000\" \"=?UTF-8?B?R3LDvMOfZQ==?=\" \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"remote.test\")) ((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"remote.test\")) \
((\"=?utf-8?b?SsO2cmc=?=\" NIL \"jorg\" \"remote.test\")) \
((NIL NIL \"friends\" NIL)(NIL NIL \"ann\" \"remote.test\")(NIL NIL \"bo\" \"remote.test\")(NIL NIL NIL NIL)(NIL NIL \"carl\" \"remote.test\")) \
NIL NIL NIL \"<alt@remote.test>\"))\r\ne OK FETCH completed\r\n"
    );
    // Sections inside the structure.
    let r = c
        .run("p FETCH 1 (BODY.PEEK[1.2] BODY.PEEK[3.HEADER] BODY.PEEK[2.MIME])")
        .await;
    assert!(r.contains("BODY[1.2] \"<p>html</p>\""), "{r}");
    assert!(
        r.contains(
            "BODY[3.HEADER] {51}\r\nFrom: Inner <inner@remote.test>\r\nSubject: inner\r\n\r\n"
        ),
        "{r}"
    );
    assert!(r.contains("BODY[2.MIME] {"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn sequence_set_edge_cases() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        deliver(
            &server,
            "bob@example.test",
            format!("Subject: m{n}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    let mut c = Imap::login(server.imap(), "bob@example.test").await;
    c.run("s SELECT INBOX").await;
    let uids = |r: &str| -> Vec<String> {
        r.lines()
            .filter(|l| l.starts_with("* "))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(uids(&c.run("a FETCH * UID").await), ["5"]);
    assert_eq!(
        uids(&c.run("b FETCH 1:* UID").await),
        ["1", "2", "3", "4", "5"]
    );
    assert_eq!(uids(&c.run("c FETCH 4:2 UID").await), ["2", "3", "4"]);
    assert_eq!(uids(&c.run("d FETCH 5,1,3 UID").await), ["1", "3", "5"]);
    assert_eq!(uids(&c.run("e FETCH *:4 UID").await), ["4", "5"]);
    // UID ranges beyond the last UID still include the last message.
    assert_eq!(uids(&c.run("f UID FETCH 4:100 FLAGS").await), ["4", "5"]);
    let r = c.run("g UID FETCH 100:* FLAGS").await;
    assert_eq!(uids(&r), ["5"], "{r}");
    let r = c.run("h SEARCH 2:4 NOT 3").await;
    assert!(r.starts_with("* SEARCH 2 4\r\n"), "{r}");
    let r = c.run("i FETCH 9 UID").await;
    assert_eq!(r, "i OK FETCH completed\r\n");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_sessions_see_expunges_with_their_own_numbers() {
    let server = TestServer::start().await;
    for n in 1..=4 {
        deliver(
            &server,
            "carol@example.test",
            format!("Subject: m{n}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    let mut a = Imap::login(server.imap(), "carol@example.test").await;
    let mut b = Imap::login(server.imap(), "carol@example.test").await;
    a.run("a1 SELECT INBOX").await;
    b.run("b1 SELECT INBOX").await;
    // A deletes messages 2 and 3 and flags 4.
    a.run("a2 STORE 2:3 +FLAGS.SILENT (\\Deleted)").await;
    let r = a.run("a3 EXPUNGE").await;
    assert_eq!(
        r,
        "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\na3 OK EXPUNGE completed\r\n"
    );
    a.run("a4 STORE 2 +FLAGS.SILENT (\\Flagged)").await;
    // B is not told during FETCH (RFC 3501 7.4.1)...
    let r = b.run("b2 FETCH 4 (FLAGS)").await;
    assert!(!r.contains("EXPUNGE"), "{r}");
    assert!(r.ends_with("b2 OK FETCH completed\r\n"), "{r}");
    // ...but at NOOP, with B's own numbering.
    let r = b.run("b3 NOOP").await;
    assert_eq!(r, "* 2 EXPUNGE\r\n* 2 EXPUNGE\r\nb3 OK NOOP completed\r\n");
    // New mail shows up as EXISTS, flag changes as FETCH.
    deliver(&server, "carol@example.test", b"Subject: m5\r\n\r\nx\r\n").await;
    a.run("a5 STORE 1 +FLAGS.SILENT (\\Answered)").await;
    let r = b.run("b4 NOOP").await;
    assert!(r.contains("* 3 EXISTS\r\n"), "{r}");
    assert!(
        r.contains("* 1 FETCH (FLAGS (\\Answered) UID 1)\r\n"),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test]
async fn condstore_modseq_changedsince_unchangedsince() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        deliver(
            &server,
            "alice@example.test",
            format!("Subject: m{n}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let r = c.run("e ENABLE CONDSTORE").await;
    assert_eq!(r, "* ENABLED CONDSTORE\r\ne OK ENABLE completed\r\n");
    let r = c.run("s SELECT INBOX").await;
    let highest: u64 = r
        .split("[HIGHESTMODSEQ ")
        .nth(1)
        .and_then(|x| x.split(']').next())
        .and_then(|x| x.parse().ok())
        .expect("HIGHESTMODSEQ in SELECT");
    let r = c.run("f STORE 2 +FLAGS (\\Seen)").await;
    let after = highest + 1;
    assert_eq!(
        r,
        format!("* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({after}))\r\nf OK STORE completed\r\n")
    );
    let r = c
        .run(&format!("g FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"))
        .await;
    assert_eq!(
        r,
        format!("* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({after}))\r\ng OK FETCH completed\r\n")
    );
    // UNCHANGEDSINCE older than the message's modseq refuses the change.
    let r = c
        .run(&format!(
            "h STORE 1:2 (UNCHANGEDSINCE {highest}) +FLAGS (\\Flagged)"
        ))
        .await;
    assert!(
        r.ends_with("h OK [MODIFIED 2] Some messages were modified since UNCHANGEDSINCE\r\n"),
        "{r}"
    );
    assert!(
        r.contains("* 1 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ ("),
        "{r}"
    );
    let r = c.run(&format!("i SEARCH MODSEQ {after}")).await;
    assert!(r.starts_with("* SEARCH 1 2 (MODSEQ "), "{r}");
    let r = c.run("j STATUS INBOX (HIGHESTMODSEQ MESSAGES)").await;
    assert!(r.starts_with("* STATUS INBOX (HIGHESTMODSEQ "), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn uidplus_codes() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        deliver(
            &server,
            "bob@example.test",
            format!("Subject: m{n}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    }
    let mut c = Imap::login(server.imap(), "bob@example.test").await;
    let r = c.run("s SELECT Trash").await;
    let trash_validity = r
        .split("[UIDVALIDITY ")
        .nth(1)
        .and_then(|x| x.split(']').next())
        .unwrap()
        .to_string();
    c.run("t SELECT INBOX").await;
    let r = c.run("c UID COPY 1:2 Trash").await;
    assert_eq!(
        r,
        format!("c OK [COPYUID {trash_validity} 1:2 1:2] UID COPY completed\r\n")
    );
    let r = c.run("m UID MOVE 3 Trash").await;
    assert_eq!(
        r,
        format!(
            "* OK [COPYUID {trash_validity} 3 3] Moved\r\n* 3 EXPUNGE\r\nm OK UID MOVE completed\r\n"
        )
    );
    let r = c.run("x COPY 1 Nowhere").await;
    assert_eq!(r, "x NO [TRYCREATE] No such mailbox\r\n");
    let r = c.run("y SELECT Nowhere").await;
    assert_eq!(r, "y NO [NONEXISTENT] No such mailbox\r\n");
    server.stop().await;
}

#[tokio::test]
async fn starttls_then_login_and_sasl_ir() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.imap.allow_plaintext_auth = false).await;
    let tcp = tokio::net::TcpStream::connect(server.imap()).await.unwrap();
    let mut r = tokio::io::BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(
        line.contains("STARTTLS") && line.contains("LOGINDISABLED"),
        "{line}"
    );
    assert!(!line.contains("AUTH=PLAIN"), "{line}");
    // A command pipelined after STARTTLS in the clear must not run.
    r.get_mut()
        .write_all(b"a STARTTLS\r\nb LOGIN alice@example.test x\r\n")
        .await
        .unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "a OK Begin TLS negotiation now\r\n");
    let tls = common::tls_connect(r.into_inner()).await;
    let mut c = Imap::from_stream(Box::new(tls));
    let caps = c.run("c CAPABILITY").await;
    assert!(
        caps.contains("AUTH=PLAIN") && !caps.contains("LOGINDISABLED"),
        "{caps}"
    );
    assert!(!caps.contains("STARTTLS"), "{caps}");
    assert!(
        !caps.starts_with("b ") && !caps.contains("\r\nb "),
        "plaintext command ran: {caps}"
    );
    // SASL-IR: the initial response on the AUTHENTICATE line.
    let ir = common::plain("alice@example.test", common::PASSWORD);
    let r = c.run(&format!("d AUTHENTICATE PLAIN {ir}")).await;
    assert!(r.starts_with("d OK [CAPABILITY IMAP4REV1 "), "{r}");
    let r = c.run("e NAMESPACE").await;
    assert_eq!(
        r,
        "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\ne OK NAMESPACE completed\r\n"
    );
    let r = c.run("f ID NIL").await;
    assert!(r.starts_with("* ID (\"name\" \"tiermail\""), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn list_extended_selection_and_return_options() {
    let server = TestServer::start().await;
    deliver(&server, "bob@example.test", b"Subject: one\r\n\r\nx\r\n").await;
    let mut c = Imap::login(server.imap(), "bob@example.test").await;
    c.run("c CREATE Work/2026").await;
    c.run("s1 SUBSCRIBE INBOX").await;
    c.run("s2 SUBSCRIBE Work/2026").await;
    c.run("d DELETE Work/2026").await;
    let r = c.run("a LIST (SPECIAL-USE) \"\" \"*\"").await;
    assert_eq!(
        r,
        "* LIST (\\HasNoChildren \\Archive) \"/\" Archive\r\n\
* LIST (\\HasNoChildren \\Drafts) \"/\" Drafts\r\n\
* LIST (\\HasNoChildren \\Junk) \"/\" Junk\r\n\
* LIST (\\HasNoChildren \\Sent) \"/\" Sent\r\n\
* LIST (\\HasNoChildren \\Trash) \"/\" Trash\r\n\
a OK LIST completed\r\n"
    );
    // Subscriptions outlive their mailbox: \NonExistent.
    let r = c.run("b LIST (SUBSCRIBED) \"\" \"*\"").await;
    assert_eq!(
        r,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX\r\n\
* LIST (\\NonExistent \\Subscribed) \"/\" Work/2026\r\n\
b OK LIST completed\r\n"
    );
    let r = c
        .run("e LIST \"\" (INBOX Work) RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES UNSEEN))")
        .await;
    assert_eq!(
        r,
        "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX\r\n\
* LIST (\\HasNoChildren) \"/\" Work\r\n\
* STATUS INBOX (MESSAGES 1 UNSEEN 1)\r\n\
* STATUS Work (MESSAGES 0 UNSEEN 0)\r\n\
e OK LIST completed\r\n"
    );
    let r = c.run("f LIST (FOO) \"\" *").await;
    assert_eq!(r, "f BAD unknown selection option FOO\r\n");
    server.stop().await;
}
