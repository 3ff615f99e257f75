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
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)"#).await;
    assert_eq!(r, top);
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "*""#).await;
    assert!(r.contains(&format!("* LIST (\\HasChildren) \"/\" Foo{ci}\r\n* LIST (\\HasNoChildren \\Subscribed) \"/\" Foo/Bar\r\n")), "{r}");
    // Without RECURSIVEMATCH only the subscriptions themselves.
    let r = c.run(r#"l LIST (SUBSCRIBED) "" "%""#).await;
    assert_eq!(r, "* LIST (\\HasChildren \\Subscribed) \"/\" Fruit\r\n* LIST (\\HasNoChildren \\Subscribed) \"/\" Tofu\r\nl OK LIST completed\r\n");
    // A subscription outlives its mailbox and its parent: the parent is
    // listed as nonexistent, for its subscribed child.
    c.run("d DELETE Baz/Qux").await;
    c.run("d DELETE Baz").await;
    let r = c.run(r#"l LIST (SUBSCRIBED RECURSIVEMATCH) "" "B%""#).await;
    assert_eq!(r, format!("* LIST (\\NonExistent) \"/\" Baz{ci}\r\nl OK LIST completed\r\n"));
    server.stop().await;
}
