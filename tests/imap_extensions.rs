//! The IMAP extensions past RFC 3501 that modern clients resynchronise
//! and size folders with, as transcripts after their RFCs' examples:
//! QRESYNC (RFC 7162).

mod common;

use common::imap::Imap;
use common::{Client, TestServer};

const USER: &str = "alice@example.test";

async fn deliver(server: &TestServer, n: usize) {
    let mut c = Client::connect(server.smtp()).await;
    c.expect("EHLO client.test", "250").await;
    for i in 0..n {
        let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        let r = c.send_mail("s@remote.test", &[USER], body.as_bytes()).await;
        assert!(r.starts_with("250"), "{r}");
    }
}

/// The number after `key` in `text` (e.g. "HIGHESTMODSEQ ").
fn number(text: &str, key: &str) -> u64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + key.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {text}"))
}

/// A session with QRESYNC on, nothing selected.
async fn qresync_session(server: &TestServer) -> Imap {
    let mut c = Imap::login(server.imap(), USER).await;
    let r = c.run("e ENABLE QRESYNC").await;
    assert_eq!(r, "* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n");
    c
}

/// Marks `uids` \Deleted and expunges them, from a session of its own.
async fn expunge(server: &TestServer, uids: &str) {
    let mut c = Imap::login(server.imap(), USER).await;
    c.run("s SELECT INBOX").await;
    let r = c
        .run(&format!("d UID STORE {uids} +FLAGS.SILENT (\\Deleted)"))
        .await;
    assert!(r.ends_with("d OK UID STORE completed\r\n"), "{r}");
    let r = c.run(&format!("x UID EXPUNGE {uids}")).await;
    assert!(r.ends_with("x OK UID EXPUNGE completed\r\n"), "{r}");
    c.run("z LOGOUT").await;
}

/// The client's model after its first sync: UIDs 2..=10 (1 went before),
/// UIDVALIDITY and HIGHESTMODSEQ. Then, while it is away, 3, 4 and 7 are
/// expunged and 5 and 9 flagged.
async fn away_and_back(server: &TestServer) -> (u64, u64) {
    deliver(server, 10).await;
    expunge(server, "1").await;
    let mut c = qresync_session(server).await;
    let r = c.run("s SELECT INBOX").await;
    let (uv, m0) = (number(&r, "UIDVALIDITY "), number(&r, "HIGHESTMODSEQ "));
    c.run("z LOGOUT").await;
    expunge(server, "3:4,7").await;
    let mut c = Imap::login(server.imap(), USER).await;
    c.run("s SELECT INBOX").await;
    let r = c.run("f UID STORE 5,9 +FLAGS.SILENT (\\Flagged)").await;
    assert!(r.ends_with("f OK UID STORE completed\r\n"), "{r}");
    c.run("z LOGOUT").await;
    (uv, m0)
}

#[tokio::test]
async fn qresync_select_reports_what_vanished_and_what_changed() {
    let mut server = TestServer::start().await;
    let (uv, m0) = away_and_back(&server).await;
    // The history is on disk, not only in memory.
    server.restart().await;
    let mut c = qresync_session(&server).await;
    let r = c
        .run(&format!("a SELECT INBOX (QRESYNC ({uv} {m0} 1:10))"))
        .await;
    // Left: 2 5 6 8 9 10; UID 1 went before the client's modseq.
    assert!(r.contains("* 6 EXISTS\r\n"), "{r}");
    assert!(r.contains("* VANISHED (EARLIER) 3:4,7\r\n"), "{r}");
    let vanished_at = r.find("* VANISHED").unwrap();
    let fetches: Vec<&str> = r.lines().filter(|l| l.contains(" FETCH ")).collect();
    assert_eq!(fetches.len(), 2, "{r}");
    assert!(
        fetches[0].starts_with("* 2 FETCH (FLAGS (\\Flagged) UID 5 MODSEQ ("),
        "{r}"
    );
    assert!(
        fetches[1].starts_with("* 5 FETCH (FLAGS (\\Flagged) UID 9 MODSEQ ("),
        "{r}"
    );
    assert!(r.find("* 2 FETCH").unwrap() > vanished_at, "{r}");
    assert!(r.ends_with("a OK [READ-WRITE] SELECT completed\r\n"), "{r}");
    // Without known UIDs: everything up to the last UID is asked about.
    let r = c
        .run(&format!("b EXAMINE INBOX (QRESYNC ({uv} {m0}))"))
        .await;
    assert!(r.starts_with("* OK [CLOSED] "), "{r}");
    assert!(r.contains("* VANISHED (EARLIER) 3:4,7\r\n"), "{r}");
    // Known UIDs narrow the answer.
    let r = c
        .run(&format!("c EXAMINE INBOX (QRESYNC ({uv} {m0} 4:6))"))
        .await;
    assert!(r.contains("* VANISHED (EARLIER) 4\r\n"), "{r}");
    // Another UIDVALIDITY: a plain SELECT, the client must start over.
    let r = c
        .run(&format!("d SELECT INBOX (QRESYNC ({} {m0} 1:10))", uv + 1))
        .await;
    assert!(!r.contains("VANISHED") && !r.contains("FETCH"), "{r}");
    // Up to date: nothing to report.
    let now = number(&r, "HIGHESTMODSEQ ");
    let r = c
        .run(&format!("e SELECT INBOX (QRESYNC ({uv} {now} 1:10))"))
        .await;
    assert!(!r.contains("VANISHED") && !r.contains("FETCH"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn qresync_needs_enable_and_vanished_needs_uid_fetch_changedsince() {
    let server = TestServer::start().await;
    deliver(&server, 2).await;
    let mut c = Imap::login(server.imap(), USER).await;
    let r = c.run("a SELECT INBOX (QRESYNC (1 1))").await;
    assert_eq!(r, "a BAD ENABLE QRESYNC first\r\n");
    c.run("s SELECT INBOX").await;
    let r = c
        .run("b UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        .await;
    assert!(r.starts_with("b BAD "), "{r}");
    let r = c.run("e ENABLE QRESYNC").await;
    assert!(r.contains("* ENABLED QRESYNC\r\n"), "{r}");
    let r = c.run("c FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)").await;
    assert!(r.starts_with("c BAD "), "{r}");
    let r = c.run("d UID FETCH 1:* (FLAGS) (VANISHED)").await;
    assert!(r.starts_with("d BAD "), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn uid_fetch_vanished_reports_expunges_in_the_set() {
    let server = TestServer::start().await;
    let (_, m0) = away_and_back(&server).await;
    let mut c = qresync_session(&server).await;
    c.run("s SELECT INBOX").await;
    // RFC 7162 3.2.6's example, on this mailbox.
    let r = c
        .run(&format!(
            "a UID FETCH 4:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)"
        ))
        .await;
    let mut lines = r.lines();
    assert_eq!(lines.next(), Some("* VANISHED (EARLIER) 4,7"), "{r}");
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("* 2 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ ("),
        "{r}"
    );
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("* 5 FETCH (UID 9 FLAGS (\\Flagged) MODSEQ ("),
        "{r}"
    );
    assert_eq!(lines.next(), Some("a OK UID FETCH completed"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn with_qresync_expunges_are_announced_as_vanished() {
    let server = TestServer::start().await;
    deliver(&server, 5).await;
    let mut q = qresync_session(&server).await;
    q.run("s SELECT INBOX").await;
    let mut plain = Imap::login(server.imap(), USER).await;
    plain.run("s SELECT INBOX").await;
    expunge(&server, "2,4:5").await;
    let r = q.run("n NOOP").await;
    assert_eq!(r, "* VANISHED 2,4:5\r\nn OK NOOP completed\r\n");
    // The same change, without QRESYNC: EXPUNGE by sequence number.
    let r = plain.run("n NOOP").await;
    assert_eq!(
        r,
        "* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n* 3 EXPUNGE\r\nn OK NOOP completed\r\n"
    );
    // A session's own EXPUNGE too.
    q.run("d STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let r = q.run("x EXPUNGE").await;
    assert_eq!(r, "* VANISHED 1\r\nx OK EXPUNGE completed\r\n");
    server.stop().await;
}

#[tokio::test]
async fn past_the_history_horizon_the_answer_is_a_safe_superset() {
    let mut server = TestServer::start_with(|c| c.store.vanished_keep_days = 0).await;
    let (uv, m0) = away_and_back(&server).await;
    // The history is dropped at start-up once older than the horizon.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    server.restart().await;
    let mut c = qresync_session(&server).await;
    let r = c
        .run(&format!("a EXAMINE INBOX (QRESYNC ({uv} {m0} 1:10))"))
        .await;
    // Every UID the client may know that is gone, UID 1 included.
    assert!(r.contains("* VANISHED (EARLIER) 1,3:4,7\r\n"), "{r}");
    // Sequence match data: the client's first message (seq 1) is UID 2
    // here too, so nothing at or below UID 2 went since.
    let r = c
        .run(&format!("b EXAMINE INBOX (QRESYNC ({uv} {m0} 1:10 (1 2)))"))
        .await;
    assert!(r.contains("* VANISHED (EARLIER) 3:4,7\r\n"), "{r}");
    // A pair that no longer matches (the client's seq 5 was UID 6) says
    // nothing past the last one that does.
    let r = c
        .run(&format!(
            "c EXAMINE INBOX (QRESYNC ({uv} {m0} 1:10 (1,5 2,6)))"
        ))
        .await;
    assert!(r.contains("* VANISHED (EARLIER) 3:4,7\r\n"), "{r}");
    server.stop().await;
}

// ---- BINARY (RFC 3516) ----

const PARTS: &[u8] = b"From: a@remote.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9 =\r\nbar\r\n\
--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAE=\r\n\
--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n\
--b1--\r\n";

async fn append(c: &mut Imap, msg: &[u8]) {
    c.send(format!("ap APPEND INBOX {{{}+}}\r\n", msg.len()).as_bytes())
        .await;
    c.send(msg).await;
    c.send(b"\r\n").await;
    let r = c.until("ap").await;
    assert!(r.starts_with("ap OK "), "{r}");
}

#[tokio::test]
async fn binary_fetch_undoes_the_transfer_encoding() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), USER).await;
    append(&mut c, PARTS).await;
    c.run("s SELECT INBOX").await;
    let r = c
        .run("a FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.SIZE[1])")
        .await;
    assert_eq!(
        r,
        "* 1 FETCH (BINARY[2] \"%PDF-\" BINARY.SIZE[2] 5 BINARY.SIZE[1] 9)\r\na OK FETCH completed\r\n"
    );
    // Quoted-printable, soft line break joined, UTF-8 as bytes (the
    // CRLF before a boundary belongs to the boundary).
    let r = c.run("b FETCH 1 (BINARY.PEEK[1])").await;
    assert_eq!(
        r,
        "* 1 FETCH (BINARY[1] {9}\r\ncaf\u{e9} bar)\r\nb OK FETCH completed\r\n"
    );
    // NUL bytes come as a literal8.
    let r = c.run("c FETCH 1 (BINARY.PEEK[3])").await;
    assert_eq!(
        r,
        "* 1 FETCH (BINARY[3] ~{2}\r\n\u{0}\u{1})\r\nc OK FETCH completed\r\n"
    );
    // A partial range of the decoded bytes.
    let r = c.run("d FETCH 1 (BINARY.PEEK[2]<1.3>)").await;
    assert_eq!(
        r,
        "* 1 FETCH (BINARY[2] \"PDF\")\r\nd OK FETCH completed\r\n"
    );
    // An encoding no one can undo fails the FETCH.
    let r = c.run("e FETCH 1 (BINARY.PEEK[4])").await;
    assert!(r.starts_with("e NO [UNKNOWN-CTE] "), "{r}");
    // BINARY[] is the whole message; without PEEK it marks it \Seen.
    let r = c.run("f FETCH 1 (BINARY[])").await;
    assert!(
        r.starts_with(&format!(
            "* 1 FETCH (FLAGS (\\Seen \\Recent) BINARY[] {{{}}}\r\n",
            PARTS.len()
        )) || r.starts_with(&format!("* 1 FETCH (BINARY[] {{{}}}\r\n", PARTS.len())),
        "{r}"
    );
    assert!(r.contains("\\Seen"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn append_takes_a_binary_literal_without_nul_bytes() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), USER).await;
    let msg = "Subject: 8bit\r\nContent-Transfer-Encoding: binary\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    c.send(format!("a APPEND INBOX ~{{{}+}}\r\n", msg.len()).as_bytes())
        .await;
    c.send(msg).await;
    c.send(b"\r\n").await;
    let r = c.until("a").await;
    assert!(r.starts_with("a OK [APPENDUID "), "{r}");
    let with_nul = b"Subject: nul\r\nContent-Transfer-Encoding: binary\r\n\r\na\0b\r\n";
    c.send(format!("b APPEND INBOX ~{{{}}}\r\n", with_nul.len()).as_bytes())
        .await;
    assert_eq!(c.line().await, "+ Ready for literal data\r\n");
    c.send(with_nul).await;
    c.send(b"\r\n").await;
    let r = c.until("b").await;
    assert!(r.starts_with("b NO [UNKNOWN-CTE] "), "{r}");
    c.run("s SELECT INBOX").await;
    let r = c.run("f FETCH 1:* (BODY.PEEK[TEXT])").await;
    assert_eq!(
        r,
        "* 1 FETCH (BODY[TEXT] {8}\r\nna\u{ef}ve\r\n)\r\nf OK FETCH completed\r\n"
    );
    // A binary literal anywhere else is refused.
    let r = c.run("g SEARCH TEXT ~{1+}\r\nx").await;
    assert!(r.contains(" BAD "), "{r}");
    server.stop().await;
}

// ---- STATUS=SIZE (RFC 8438) ----

#[tokio::test]
async fn status_size_is_the_sum_of_the_message_sizes() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), USER).await;
    let a = b"Subject: a\r\n\r\naaaa\r\n";
    let b = b"Subject: bb\r\n\r\nbbbbbbbb\r\n";
    append(&mut c, a).await;
    append(&mut c, b).await;
    let total = a.len() + b.len();
    let r = c.run("a STATUS INBOX (MESSAGES SIZE)").await;
    assert_eq!(
        r,
        format!("* STATUS INBOX (MESSAGES 2 SIZE {total})\r\na OK STATUS completed\r\n")
    );
    // LIST-STATUS asks the same.
    let r = c.run("b LIST \"\" INBOX RETURN (STATUS (SIZE))").await;
    assert!(
        r.contains(&format!("* STATUS INBOX (SIZE {total})\r\n")),
        "{r}"
    );
    // Expunged mail no longer counts.
    c.run("s SELECT INBOX").await;
    c.run("d STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    c.run("x EXPUNGE").await;
    let r = c.run("e STATUS INBOX (SIZE)").await;
    assert!(
        r.starts_with(&format!("* STATUS INBOX (SIZE {})\r\n", b.len())),
        "{r}"
    );
    server.stop().await;
}

// ---- SORT (RFC 5256) and SORT=DISPLAY (RFC 5957) ----

#[tokio::test]
async fn sort_orders_by_base_subject_address_date_and_size() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), USER).await;
    append(
        &mut c,
        b"From: \"Zed\" <amy@x.test>\r\nDate: Thu, 3 Jan 2030 10:00:00 +0000\r\nSubject: Re: beta\r\n\r\nlong long body\r\n",
    )
    .await;
    append(
        &mut c,
        b"From: Amy <zoe@x.test>\r\nDate: Tue, 1 Jan 2030 23:00:00 -0500\r\nSubject: alpha\r\n\r\nb\r\n",
    )
    .await;
    append(
        &mut c,
        b"From: carl@x.test\r\nSubject: [list] Fwd: ALPHA (fwd)\r\n\r\nmid body\r\n",
    )
    .await;
    c.run("s SELECT INBOX").await;
    let sort = |crit: &str| format!("t SORT ({crit}) UTF-8 ALL");
    for (crit, want) in [
        // "alpha" and "ALPHA" are one base subject: the sequence decides.
        ("SUBJECT", "2 3 1"),
        ("REVERSE SUBJECT", "1 2 3"),
        ("FROM", "1 3 2"),
        ("DISPLAYFROM", "2 3 1"),
        // No Date header: the arrival (now), before 2030.
        ("DATE", "3 2 1"),
        ("REVERSE DATE", "1 2 3"),
        ("ARRIVAL", "1 2 3"),
        ("SIZE", "3 2 1"),
        ("SUBJECT REVERSE SIZE", "2 3 1"),
    ] {
        let r = c.run(&sort(crit)).await;
        assert_eq!(
            r,
            format!("* SORT {want}\r\nt OK SORT completed\r\n"),
            "{crit}"
        );
    }
    let r = c.run("u UID SORT (SIZE) UTF-8 SUBJECT alpha").await;
    assert_eq!(r, "* SORT 3 2\r\nu OK UID SORT completed\r\n");
    let r = c.run("v SORT (SUBJECT) ISO-8859-1 ALL").await;
    assert!(r.starts_with("v NO [BADCHARSET"), "{r}");
    let r = c.run("w SORT (SUBJECT) UTF-8 SUBJECT nothing").await;
    assert_eq!(r, "* SORT\r\nw OK SORT completed\r\n");
    server.stop().await;
}

#[tokio::test]
async fn thread_orderedsubject_groups_by_base_subject_in_date_order() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), USER).await;
    for (subject, day) in [
        ("alpha", 3),
        ("Re: alpha", 1),
        ("beta", 2),
        ("Fwd: alpha", 5),
    ] {
        let m = format!(
            "From: a@x.test\r\nDate: {day} Jan 2030 10:00:00 +0000\r\nSubject: {subject}\r\n\r\nb\r\n"
        );
        append(&mut c, m.as_bytes()).await;
    }
    c.run("s SELECT INBOX").await;
    // RFC 5256: the first by date is the parent of the others.
    let r = c.run("t THREAD ORDEREDSUBJECT UTF-8 ALL").await;
    assert_eq!(r, "* THREAD (2 (1)(4))(3)\r\nt OK THREAD completed\r\n");
    let r = c.run("u THREAD ORDEREDSUBJECT UTF-8 NOT SUBJECT fwd").await;
    assert_eq!(r, "* THREAD (2 1)(3)\r\nu OK THREAD completed\r\n");
    let r = c
        .run("v UID THREAD ORDEREDSUBJECT UTF-8 SUBJECT beta")
        .await;
    assert_eq!(r, "* THREAD (3)\r\nv OK UID THREAD completed\r\n");
    let r = c.run("w THREAD REFERENCES UTF-8 ALL").await;
    assert!(r.starts_with("w BAD "), "{r}");
    let r = c.run("x THREAD ORDEREDSUBJECT UTF-8 SUBJECT nothing").await;
    assert_eq!(r, "* THREAD\r\nx OK THREAD completed\r\n");
    server.stop().await;
}
