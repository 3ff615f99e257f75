//! IMAP under pipelining and concurrent sessions: every command that
//! follows a literal in the same read is answered, whatever the literal's
//! size; long pipelined bursts are answered in order; and the stress
//! checker finds nothing wrong with several sessions on one mailbox.

mod common;

use std::time::Duration;

use common::imap::Imap;
use common::{PASSWORD, TestServer};

/// A message of exactly `n` bytes (headers while they fit, then body
/// lines).
fn message(n: usize) -> Vec<u8> {
    let head = b"Subject: sized\r\n\r\n";
    if n < head.len() {
        return vec![b'a'; n];
    }
    let mut m = head.to_vec();
    while m.len() < n {
        let left = n - m.len();
        if left >= 78 {
            m.extend_from_slice(&[b'x'; 76]);
            m.extend_from_slice(b"\r\n");
        } else {
            m.extend(std::iter::repeat_n(b'y', left));
        }
    }
    m
}

const SIZES: [usize; 10] = [
    0,
    1,
    100,
    4095,
    16383,
    16384,
    16385,
    65536,
    178_000,
    1 << 20,
];

const FOLLOWERS: [&str; 5] = [
    "NOOP",
    "STATUS INBOX (MESSAGES UIDNEXT)",
    "LIST \"\" *",
    "SELECT INBOX",
    "FETCH 1 (FLAGS UID)",
];

/// Reads until the tagged reply of `tag`, failing after 20 s.
async fn answer(c: &mut Imap, tag: &str) -> String {
    match tokio::time::timeout(Duration::from_secs(20), c.until(tag)).await {
        Ok(r) => r,
        Err(_) => panic!("no tagged reply for {tag}"),
    }
}

#[tokio::test]
async fn a_command_after_a_literal_in_the_same_read_is_answered() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    c.run("s SELECT INBOX").await;
    for (i, size) in SIZES.iter().enumerate() {
        for (j, next) in FOLLOWERS.iter().enumerate() {
            // LITERAL+: the command, its literal and the next command in
            // one write.
            let mut w = format!("a{i}x{j} APPEND INBOX {{{size}+}}\r\n").into_bytes();
            w.extend_from_slice(&message(*size));
            w.extend_from_slice(format!("\r\nb{i}x{j} {next}\r\n").as_bytes());
            c.send(&w).await;
            let r = answer(&mut c, &format!("a{i}x{j}")).await;
            assert!(
                r.contains(&format!("a{i}x{j} OK")) || (*size == 0 && r.contains(" NO ")),
                "{size}: {r}"
            );
            let r = answer(&mut c, &format!("b{i}x{j}")).await;
            assert!(
                r.contains(&format!("b{i}x{j} OK")),
                "{next} after {size}: {r}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_command_after_a_synchronizing_literal_is_answered() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    c.run("s SELECT INBOX").await;
    for (i, size) in SIZES.iter().enumerate().filter(|(_, s)| **s > 0) {
        let next = FOLLOWERS[i % FOLLOWERS.len()];
        c.send(format!("a{i} APPEND INBOX {{{size}}}\r\n").as_bytes())
            .await;
        let go = tokio::time::timeout(Duration::from_secs(10), c.line())
            .await
            .expect("continuation");
        assert!(go.starts_with('+'), "{go}");
        // The literal, the end of the command and the next one at once.
        let mut w = message(*size);
        w.extend_from_slice(format!("\r\nb{i} {next}\r\n").as_bytes());
        c.send(&w).await;
        let r = answer(&mut c, &format!("a{i}")).await;
        assert!(r.contains(&format!("a{i} OK")), "{size}: {r}");
        let r = answer(&mut c, &format!("b{i}")).await;
        assert!(r.contains(&format!("b{i} OK")), "{next} after {size}: {r}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_pipelined_commands_is_answered_in_order() {
    let server = TestServer::start().await;
    let mut c = Imap::login(server.imap(), "alice@example.test").await;
    c.run("s SELECT INBOX").await;
    let mut w = Vec::new();
    for i in 0..100 {
        let cmd = match i % 10 {
            0 => "NOOP".to_string(),
            1 => "STATUS INBOX (MESSAGES UNSEEN)".to_string(),
            2 => "FETCH 1:* (FLAGS UID)".to_string(),
            3 => "STORE 1 +FLAGS ($Label1)".to_string(),
            4 => "SEARCH UNSEEN".to_string(),
            5 => "LIST \"\" *".to_string(),
            6 => {
                let m = message(300 + i);
                let mut a = format!("APPEND INBOX {{{}+}}\r\n", m.len()).into_bytes();
                a.extend_from_slice(&m);
                w.extend_from_slice(format!("p{i} ").as_bytes());
                w.extend_from_slice(&a);
                w.extend_from_slice(b"\r\n");
                continue;
            }
            7 => "UID FETCH 1:* (BODY.PEEK[HEADER])".to_string(),
            8 => "STORE 1:* -FLAGS ($Label1)".to_string(),
            _ => "CHECK".to_string(),
        };
        w.extend_from_slice(format!("p{i} {cmd}\r\n").as_bytes());
    }
    c.send(&w).await;
    for i in 0..100 {
        let r = answer(&mut c, &format!("p{i}")).await;
        let tagged = r.lines().last().unwrap_or_default();
        assert!(tagged.starts_with(&format!("p{i} OK")), "p{i}: {r}");
        // Nothing of a later command before this one's completion.
        for later in [i + 1, i + 2] {
            assert!(!r.contains(&format!("\np{later} ")), "p{i}: {r}");
        }
    }
    let r = c.run("n STATUS INBOX (MESSAGES)").await;
    assert!(r.contains("(MESSAGES 10)"), "{r}");
    server.stop().await;
}

/// A number field of the checker's one-line JSON report.
fn field(report: &str, name: &str) -> u64 {
    let key = format!("\"{name}\": ");
    let at = report
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
        + key.len();
    let digits: String = report[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {report}"))
}

/// The stress checker of `tiermail-load` as a regression test: ten
/// sessions of one user pipelining the whole command mix on INBOX, half
/// of them with QRESYNC, reconnecting and checking their resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_checker_finds_no_violations_and_no_stalls() {
    let server = TestServer::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tiermail-load"))
        .args([
            "imap-stress",
            "--addr",
            &server.imap().to_string(),
            "--clients",
            "10",
            "--seconds",
            "30",
            "--pipeline",
            "6",
            "--qresync",
            "2",
            "--user",
            "alice@example.test",
            "--password",
            PASSWORD,
        ])
        .output()
        .await
        .expect("tiermail-load runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(field(&text, "commands") > 1000, "{text}");
    // Half the clients come back with SELECT … QRESYNC now and then.
    assert!(field(&text, "resyncs") > 5, "{text}");
    // The checker prints the trace of a client's first violations.
    let err = String::from_utf8_lossy(&out.stderr);
    let err = &err[err.len().saturating_sub(40_000)..];
    assert_eq!(field(&text, "violations"), 0, "{text}\n{err}");
    assert_eq!(field(&text, "stalls"), 0, "{text}");
    server.stop().await;
}

/// The FETCH lines of a transcript, as (sequence number, line).
fn fetches(r: &str) -> Vec<(u32, String)> {
    r.lines()
        .filter_map(|l| {
            let (n, tail) = l.strip_prefix("* ")?.split_once(' ')?;
            if !tail.starts_with("FETCH (") {
                return None;
            }
            Some((n.parse().ok()?, l.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_updates_are_coalesced_and_sent_in_bounded_rounds() {
    let server = TestServer::start_with(|c| c.imap.max_flag_updates = 100).await;
    let mut a = Imap::login(server.imap(), "alice@example.test").await;
    let mut b = Imap::login(server.imap(), "alice@example.test").await;
    let mut w = Vec::new();
    for i in 0..400 {
        let m = format!("Subject: n{i}\r\n\r\n{i}\r\n");
        w.extend_from_slice(format!("f{i} APPEND INBOX {{{}+}}\r\n{m}\r\n", m.len()).as_bytes());
    }
    b.send(&w).await;
    answer(&mut b, "f399").await;
    a.run("s SELECT INBOX").await;
    b.run("s SELECT INBOX").await;
    // Many changes while the first session does not ask.
    for flag in ["\\Flagged", "$One", "$Two", "\\Answered", "$Three"] {
        let r = b.run(&format!("t STORE 1:* +FLAGS.SILENT ({flag})")).await;
        assert!(r.contains("t OK"), "{r}");
    }
    // Each NOOP reports at most one round; every message once, at its
    // latest flags, however many times it changed.
    let mut seen = std::collections::BTreeMap::new();
    for round in 0..10 {
        let r = a.run(&format!("n{round} NOOP")).await;
        let f = fetches(&r);
        assert!(f.len() <= 100, "round {round}: {} updates", f.len());
        for (n, line) in f {
            assert!(
                line.contains("\\Flagged") && line.contains("$Three"),
                "{line}"
            );
            assert!(seen.insert(n, line).is_none(), "message {n} reported twice");
        }
    }
    assert_eq!(seen.len(), 400);
    // In IDLE the rounds follow each other without the client asking.
    a.send(b"i IDLE\r\n").await;
    let go = a.line().await;
    assert!(go.starts_with('+'), "{go}");
    b.run("t STORE 1:* -FLAGS.SILENT ($One)").await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 400 {
        let l = tokio::time::timeout(Duration::from_secs(20), a.line())
            .await
            .unwrap_or_else(|_| panic!("IDLE reported {} of 400", got.len()));
        if let Some((n, line)) = fetches(&l).into_iter().next() {
            assert!(!line.contains("$One"), "{line}");
            assert!(got.insert(n), "message {n} reported twice");
        }
    }
    a.send(b"DONE\r\n").await;
    answer(&mut a, "i").await;
    server.stop().await;
}
