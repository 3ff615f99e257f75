//! IMAP protocol points that clients depend on, as transcripts: keyword
//! announcements, \Recent, implicit \Seen, FETCH items once each, SENT*
//! dates, ENVELOPE groups, nested message sections, LIST-EXTENDED
//! CHILDINFO, MOVE's responses.

mod common;

use common::TestServer;
use common::imap::Imap;

/// APPENDs `raw` to INBOX (LITERAL+).
async fn append(c: &mut Imap, tag: &str, extra: &str, raw: &[u8]) -> String {
    c.send(format!("{tag} APPEND INBOX {extra}{{{}+}}\r\n", raw.len()).as_bytes())
        .await;
    c.send(raw).await;
    c.send(b"\r\n").await;
    c.until(tag).await
}

#[tokio::test]
async fn envelope_groups_have_start_and_end_markers() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let raw = b"From: a@d.org\r\nTo: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n\
Cc: ann, team: t@d.org;, two@d.org\r\nBcc: undisclosed-recipients:;\r\nSubject: groups\r\n\r\nbody\r\n";
    append(&mut c, "a", "", raw).await;
    c.run("s SELECT INBOX").await;
    let r = c.run("e FETCH 1 ENVELOPE").await;
    let to = r#"((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")(NIL NIL NIL NIL))"#;
    // A bare word is an address without mailbox and domain, never a group start.
    let cc = r#"(("ann" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "team" NIL)(NIL NIL "t" "d.org")(NIL NIL NIL NIL)(NIL NIL "two" "d.org"))"#;
    let bcc = r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))"#;
    let want = format!(
        r#"* 1 FETCH (ENVELOPE (NIL "groups" ((NIL NIL "a" "d.org")) ((NIL NIL "a" "d.org")) ((NIL NIL "a" "d.org")) {to} {cc} {bcc} NIL NIL))"#
    );
    assert!(r.contains(&want), "{r}\nwant {want}");
    server.stop().await;
}

/// The literal of the first `BODY[<section>]` item in a FETCH response.
fn section_literal(r: &str, section: &str) -> String {
    let key = format!("BODY[{section}] ");
    let at = r.find(&key).unwrap_or_else(|| panic!("{section} in {r}")) + key.len();
    if let Some(q) = r[at..].strip_prefix('"') {
        return q[..q.find('"').unwrap()].to_string();
    }
    let at = at + 1;
    let close = at + r[at..].find('}').unwrap();
    let n: usize = r[at..close].parse().unwrap();
    let start = close + 3;
    r[start..start + n].to_string()
}

#[tokio::test]
async fn text_of_an_embedded_message_is_its_whole_body() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    let inner_body = "--in\r\nContent-Type: text/plain\r\n\r\nplain\r\n--in\r\n\
Content-Type: text/html\r\n\r\n<p>html</p>\r\n--in--\r\ninner epilogue\r\n";
    let inner = format!(
        "From: b@d.org\r\nSubject: inner\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=in\r\n\r\n{inner_body}"
    );
    let raw = format!(
        "From: a@d.org\r\nSubject: outer\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=out\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\n\
first\r\n--out\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--out--\r\nouter epilogue\r\n"
    );
    append(&mut c, "a", "", raw.as_bytes()).await;
    c.run("s SELECT INBOX").await;
    let r = c
        .run("f FETCH 1 (BODY.PEEK[2.TEXT] BODY.PEEK[2] BODY.PEEK[2.HEADER] BODY.PEEK[TEXT])")
        .await;
    let outer_text = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(section_literal(&r, "TEXT"), outer_text, "{r}");
    assert_eq!(section_literal(&r, "2.TEXT"), inner_body, "{r}");
    assert_eq!(section_literal(&r, "2"), inner, "{r}");
    let header = &inner[..inner.find("\r\n\r\n").unwrap() + 4];
    assert_eq!(section_literal(&r, "2.HEADER"), header, "{r}");
    // The parts of the embedded message are addressed through it.
    let r = c.run("g FETCH 1 (BODY.PEEK[2.2] BODY.PEEK[2.1])").await;
    assert_eq!(section_literal(&r, "2.2"), "<p>html</p>", "{r}");
    assert_eq!(section_literal(&r, "2.1"), "plain", "{r}");
    // A message that is one message/rfc822 body: its part 1 is the
    // embedded message, whose TEXT runs to the end, epilogue included.
    let forwarded = format!(
        "From: a@d.org\r\nSubject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n{inner}"
    );
    append(&mut c, "b", "", forwarded.as_bytes()).await;
    c.run("n NOOP").await;
    let r = c.run("h FETCH 2 (BODY.PEEK[1.TEXT] BODY.PEEK[1])").await;
    assert_eq!(section_literal(&r, "1.TEXT"), inner_body, "{r}");
    assert_eq!(section_literal(&r, "1"), inner, "{r}");
    server.stop().await;
}

#[tokio::test]
async fn recursivematch_reports_parents_of_subscribed_children() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    for m in ["Foo", "Foo/Bar", "Fruit", "Fruit/Apple", "Tofu", "Baz/Qux"] {
        let r = c.run(&format!("c CREATE {m}")).await;
        assert!(r.contains("c OK"), "{r}");
    }
    for m in ["Foo/Bar", "Fruit", "Fruit/Apple", "Tofu", "Baz/Qux"] {
        let r = c.run(&format!("s SUBSCRIBE {m}")).await;
        assert!(r.contains("s OK"), "{r}");
    }
    let ci = r#" ("CHILDINFO" ("SUBSCRIBED"))"#;
    let top = format!(
        "* LIST (\\HasChildren) \"/\" Baz{ci}\r\n\
         * LIST (\\HasChildren) \"/\" Foo{ci}\r\n\
         * LIST (\\HasChildren \\Subscribed) \"/\" Fruit{ci}\r\n\
         * LIST (\\HasNoChildren \\Subscribed) \"/\" Tofu\r\n\
         l OK LIST completed\r\n"
    );
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "%""#).await;
    assert_eq!(r, top);
    let r = c
        .run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)"#)
        .await;
    assert_eq!(r, top);
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "*""#).await;
    assert!(r.contains(&format!("* LIST (\\HasChildren) \"/\" Foo{ci}\r\n* LIST (\\HasNoChildren \\Subscribed) \"/\" Foo/Bar\r\n")), "{r}");
    // Without RECURSIVEMATCH only the subscriptions themselves.
    let r = c.run(r#"l LIST (SUBSCRIBED) "" "%""#).await;
    assert_eq!(
        r,
        "* LIST (\\HasChildren \\Subscribed) \"/\" Fruit\r\n* LIST (\\HasNoChildren \\Subscribed) \"/\" Tofu\r\nl OK LIST completed\r\n"
    );
    // A subscription outlives its mailbox and its parent: the parent is
    // listed as nonexistent, for its subscribed child.
    c.run("d DELETE Baz/Qux").await;
    c.run("d DELETE Baz").await;
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "B%""#).await;
    assert_eq!(
        r,
        format!("* LIST (\\NonExistent) \"/\" Baz{ci}\r\nl OK LIST completed\r\n")
    );
    server.stop().await;
}

/// APPENDs `n` small messages to INBOX.
async fn fill(c: &mut Imap, n: usize) {
    for i in 0..n {
        let raw = format!("From: a@d.org\r\nSubject: m{i}\r\n\r\nbody {i}\r\n");
        let r = append(c, "f", "", raw.as_bytes()).await;
        assert!(r.contains("f OK"), "{r}");
    }
}

#[tokio::test]
async fn move_reports_copyuid_expunges_and_exists() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 3).await;
    a.run("c CREATE Other").await;
    let r = a.run("s SELECT INBOX").await;
    assert!(r.contains("* 3 RECENT"), "{r}");
    let validity = r
        .split("UIDVALIDITY ")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .to_string();
    b.run("s SELECT INBOX").await;
    a.run("f STORE 1 +FLAGS (\\Flagged)").await;
    b.run("n NOOP").await;
    // Within the same mailbox: the moved messages get new UIDs at the end.
    let r = a.run("m UID MOVE 1:2 INBOX").await;
    assert_eq!(
        r,
        format!(
            "* OK [COPYUID {validity} 1:2 4:5] Moved\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 3 EXISTS\r\n* 3 RECENT\r\nm OK UID MOVE completed\r\n"
        )
    );
    // Moved with their flags; the copies are new here, so \Recent.
    let r = a.run("f FETCH 1:* (UID FLAGS)").await;
    assert!(r.contains("* 1 FETCH (UID 3 FLAGS (\\Recent))"), "{r}");
    assert!(
        r.contains("* 2 FETCH (UID 4 FLAGS (\\Flagged \\Recent))"),
        "{r}"
    );
    assert!(r.contains("* 3 FETCH (UID 5 FLAGS (\\Recent))"), "{r}");
    // The other session learns the same.
    let r = b.run("n NOOP").await;
    assert_eq!(
        r,
        "* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 3 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n"
    );
    // Into another mailbox, selected by the other session.
    b.run("s SELECT Other").await;
    let r = a.run("m MOVE 1 Other").await;
    assert!(r.starts_with("* OK [COPYUID "), "{r}");
    assert!(
        r.ends_with(" 3 1] Moved\r\n* 1 EXPUNGE\r\nm OK MOVE completed\r\n"),
        "{r}"
    );
    let r = b.run("n NOOP").await;
    assert_eq!(r, "* 1 EXISTS\r\n* 1 RECENT\r\nn OK NOOP completed\r\n");
    server.stop().await;
}

/// The position of `needle` in `r` (panics with the transcript if absent).
fn at(r: &str, needle: &str) -> usize {
    r.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in\n{r}"))
}

#[tokio::test]
async fn keywords_are_announced_before_they_are_used() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 2).await;
    a.run("s SELECT INBOX").await;
    let r = b.run("s SELECT INBOX").await;
    assert!(!r.contains("$Label3"), "{r}");
    // This session's own STORE: FLAGS and PERMANENTFLAGS first.
    let r = a.run("t STORE 1 +FLAGS ($Label3)").await;
    let flags = at(&r, "* FLAGS (");
    let perm = at(&r, "* OK [PERMANENTFLAGS (");
    let fetch = at(&r, "* 1 FETCH (FLAGS ($Label3 \\Recent))");
    assert!(flags < fetch && perm < fetch, "{r}");
    assert!(r[flags..perm].contains("$Label3"), "{r}");
    assert!(r[perm..fetch].contains("$Label3 \\*)]"), "{r}");
    // The other session: announced by its next command, then used.
    let r = b.run("n NOOP").await;
    let flags = at(&r, "* FLAGS (");
    let fetch = at(&r, "* 1 FETCH (FLAGS ($Label3) UID 1)");
    assert!(flags < fetch && r[flags..fetch].contains("$Label3"), "{r}");
    assert!(r[flags..fetch].contains("[PERMANENTFLAGS ("), "{r}");
    // An APPEND with a new keyword, seen by both.
    let r = append(&mut b, "a", "($Work) ", b"Subject: k\r\n\r\nk\r\n").await;
    let flags = at(&r, "* FLAGS (");
    assert!(
        flags < at(&r, "a OK") && r[flags..].contains("$Work"),
        "{r}"
    );
    let r = a.run("f FETCH 3 FLAGS").await;
    assert!(at(&r, "$Work") < at(&r, "* 3 FETCH"), "{r}");
    // Known keywords are not announced again.
    let r = a.run("t STORE 2 +FLAGS ($Label3)").await;
    assert!(!r.contains("* FLAGS"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn fetch_items_appear_once() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 2).await;
    a.run("s SELECT INBOX").await;
    b.run("s SELECT INBOX").await;
    let r = a.run("f FETCH 1 (FLAGS UID FLAGS UID)").await;
    assert_eq!(r.matches("FLAGS").count(), 1, "{r}");
    assert_eq!(r.matches("UID").count(), 1, "{r}");
    // A flag change by another session merges into the response built.
    b.run("t STORE 2 +FLAGS (\\Flagged)").await;
    let r = a.run("f FETCH 2 (UID FLAGS)").await;
    assert_eq!(
        r,
        "* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\nf OK FETCH completed\r\n"
    );
    b.run("t STORE 2 -FLAGS (\\Flagged)").await;
    let r = a.run("f FETCH 2 UID").await;
    for line in r.lines() {
        if line.contains("FETCH (") {
            assert!(line.matches("FLAGS").count() <= 1, "{r}");
            assert!(line.matches("UID").count() <= 1, "{r}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn recent_belongs_to_one_session() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 2).await;
    let r = a.run("t STATUS INBOX (MESSAGES RECENT)").await;
    assert!(r.contains("(MESSAGES 2 RECENT 2)"), "{r}");
    let r = a.run("s SELECT INBOX").await;
    assert!(r.contains("* 2 RECENT\r\n"), "{r}");
    let r = b.run("s SELECT INBOX").await;
    assert!(r.contains("* 0 RECENT\r\n"), "{r}");
    assert_eq!(
        a.run("r SEARCH RECENT").await,
        "* SEARCH 1 2\r\nr OK SEARCH completed\r\n"
    );
    assert_eq!(
        b.run("r SEARCH RECENT").await,
        "* SEARCH\r\nr OK SEARCH completed\r\n"
    );
    assert_eq!(
        b.run("r SEARCH OLD").await,
        "* SEARCH 1 2\r\nr OK SEARCH completed\r\n"
    );
    let r = a.run("f FETCH 1 FLAGS").await;
    assert!(r.contains("FLAGS (\\Recent)"), "{r}");
    // A new message is \Recent for exactly one of the two sessions.
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    append(&mut c, "a", "", b"Subject: new\r\n\r\nnew\r\n").await;
    let ra = a.run("n NOOP").await;
    let rb = b.run("n NOOP").await;
    let claimed = [&ra, &rb]
        .iter()
        .filter(|r| r.contains("* 1 RECENT") || r.contains("* 3 RECENT"))
        .count();
    assert!(
        ra.contains("* 3 EXISTS") && rb.contains("* 3 EXISTS"),
        "{ra}{rb}"
    );
    assert_eq!(claimed, 1, "{ra}{rb}");
    let na = a.run("r SEARCH NEW").await;
    let nb = b.run("r SEARCH NEW").await;
    assert_eq!(
        [&na, &nb]
            .iter()
            .filter(|r| r.starts_with("* SEARCH") && r.contains(" 3"))
            .count(),
        1,
        "{na}{nb}"
    );
    // \Recent is not the client's to set.
    let r = a.run("t STORE 1 +FLAGS (\\Recent)").await;
    assert!(r.starts_with("t BAD") || r.contains("\nt BAD"), "{r}");
    let r = append(&mut c, "b", "(\\Recent) ", b"Subject: x\r\n\r\nx\r\n").await;
    assert!(r.contains("b BAD"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn body_fetches_report_the_seen_they_set() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 5).await;
    a.run("s SELECT INBOX").await;
    for (n, item) in [
        (1, "BODY[]"),
        (2, "BODY[HEADER]"),
        (3, "RFC822"),
        (4, "RFC822.TEXT"),
    ] {
        let r = a.run(&format!("f FETCH {n} {item}")).await;
        let line = r.lines().next().unwrap();
        assert!(line.starts_with(&format!("* {n} FETCH (")), "{r}");
        assert!(r.contains("FLAGS (\\Seen \\Recent)"), "{item}: {r}");
        // Once seen, it is not reported again.
        let r = a.run(&format!("f FETCH {n} {item}")).await;
        assert!(!r.contains("FLAGS"), "{item}: {r}");
    }
    let r = a
        .run("f FETCH 5 (BODY.PEEK[] RFC822.HEADER RFC822.SIZE)")
        .await;
    assert!(!r.contains("FLAGS"), "{r}");
    let r = a.run("f FETCH 5 FLAGS").await;
    assert!(r.contains("FLAGS (\\Recent)"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn sent_dates_come_from_the_date_header() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    // 23:30 at -0500 is already 2 January in UTC: the Date header's own
    // day counts, and the internal date (in 2030) is not looked at.
    let late = b"Date: Mon, 1 Jan 2024 23:30:00 -0500\r\nSubject: late\r\n\r\nx\r\n";
    append(&mut a, "a", "\"01-Jan-2030 10:00:00 +0000\" ", late).await;
    // No Date header: the internal date stands in.
    let undated = b"Subject: undated\r\n\r\ny\r\n";
    append(&mut a, "b", "\"05-Mar-2023 10:00:00 +0000\" ", undated).await;
    // An unparsable Date header counts as none.
    let bad = b"Date: sometime soon\r\nSubject: bad\r\n\r\nz\r\n";
    append(&mut a, "c", "\"07-Jul-2022 10:00:00 +0000\" ", bad).await;
    a.run("s SELECT INBOX").await;
    let search = |q: &'static str| q;
    for (q, want) in [
        (search("SENTON 1-Jan-2024"), "* SEARCH 1"),
        (search("SENTON 2-Jan-2024"), "* SEARCH"),
        (search("SENTBEFORE 2-Jan-2024"), "* SEARCH 1 2 3"),
        (search("SENTBEFORE 1-Jan-2024"), "* SEARCH 2 3"),
        (search("SENTSINCE 1-Jan-2024"), "* SEARCH 1"),
        (search("SENTON 5-Mar-2023"), "* SEARCH 2"),
        (search("SENTON 7-Jul-2022"), "* SEARCH 3"),
        (search("ON 1-Jan-2030"), "* SEARCH 1"),
    ] {
        let r = a.run(&format!("q SEARCH {q}")).await;
        assert_eq!(r, format!("{want}\r\nq OK SEARCH completed\r\n"), "{q}");
    }
    server.stop().await;
}

/// A message that arrives and is expunged between two of a session's
/// commands was never announced: the session hears neither EXISTS nor an
/// EXPUNGE for it (an EXPUNGE would name a number the client never had).
#[tokio::test]
async fn a_message_that_came_and_went_is_not_expunged_at_the_client() {
    let server = TestServer::start().await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    fill(&mut a, 3).await;
    a.run("s SELECT INBOX").await;
    b.run("s SELECT INBOX").await;
    // While the first session is quiet: one old message goes, one new
    // comes and goes, one new stays.
    b.run("d STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    append(&mut b, "x", "(\\Deleted) ", b"Subject: brief\r\n\r\nx\r\n").await;
    append(&mut b, "y", "", b"Subject: stays\r\n\r\ny\r\n").await;
    let r = b.run("e EXPUNGE").await;
    assert!(r.contains("* 2 EXPUNGE\r\n* 3 EXPUNGE\r\n"), "{r}");
    let r = a.run("n NOOP").await;
    assert_eq!(
        r,
        "* 2 EXPUNGE\r\n* 3 EXISTS\r\n* 2 RECENT\r\nn OK NOOP completed\r\n"
    );
    let r = a.run("f FETCH 1:* (UID)").await;
    assert_eq!(
        r,
        "* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 3)\r\n* 3 FETCH (UID 5)\r\nf OK FETCH completed\r\n"
    );
    server.stop().await;
}
