//! Hostile input against the real `tiermail` binary, one finding of the
//! hardening review per test: each input gets its exact reply, the server
//! process is alive afterwards, a normal client (from another address) is
//! served meanwhile, the store holds exactly the acknowledged messages, and
//! where memory is the point the server's RSS stays under a bound derived
//! from its configured limits. A crash here is a dead process, not a
//! failed assertion in this one: every test runs its own daemon.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::daemon::{Daemon, write_config};
use common::imap::{Imap, tcp_from};
use common::{Client, PASSWORD, plain};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    _dir: tempfile::TempDir,
    d: Daemon,
}

impl Server {
    fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), extra);
        let d = Daemon::start(&config);
        Server { _dir: dir, d }
    }

    /// Like `start`, with every user's password hashed at argon2's
    /// default (production) cost.
    fn start_with_real_hashes(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let h = tiermail::auth::hash_password(PASSWORD).unwrap();
        let users: String = ["alice", "bob", "carol"]
            .iter()
            .map(|u| format!("[[user]]\naddress = \"{u}@example.test\"\npassword = \"{h}\"\n\n"))
            .collect();
        std::fs::write(dir.path().join("users.toml"), users).unwrap();
        let config = write_config(dir.path(), extra);
        let d = Daemon::start(&config);
        Server { _dir: dir, d }
    }

    fn imap(&self) -> SocketAddr {
        self.d.addr("imap")
    }
    fn smtp(&self) -> SocketAddr {
        self.d.addr("smtp")
    }

    /// Resident memory of the server process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.d.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    /// The process is alive and serves a normal client from an address of
    /// its own: IMAP login and STATUS, an SMTP greeting and NOOP.
    async fn alive_and_serving(&mut self) {
        assert!(
            self.d.child.try_wait().unwrap().is_none(),
            "the server process died; log:\n{}",
            self.d.log_text()
        );
        let mut c = Imap::connect_from("127.0.0.9", self.imap()).await;
        let r = c
            .run(&format!("n LOGIN bob@example.test \"{PASSWORD}\""))
            .await;
        assert!(r.contains("n OK"), "{r}");
        let r = c.run("s STATUS INBOX (MESSAGES)").await;
        assert!(r.contains("s OK"), "{r}");
        let mut s = Client::unread(tcp_from("127.0.0.9", self.smtp()).await);
        assert!(s.reply().await.starts_with("220"));
        s.expect("NOOP", "250").await;
    }

    /// The messages in a user's INBOX, as IMAP sees them.
    async fn inbox_count(&self, user: &str) -> usize {
        let mut c = Imap::connect_from("127.0.0.9", self.imap()).await;
        c.run(&format!("n LOGIN {user} \"{PASSWORD}\"")).await;
        let r = c.run("s STATUS INBOX (MESSAGES)").await;
        r.split("MESSAGES ")
            .nth(1)
            .and_then(|t| t.split(')').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{r}"))
    }
}

async fn login(addr: SocketAddr, user: &str) -> Imap {
    let mut c = Imap::connect(addr).await;
    let r = c.run(&format!("L LOGIN {user} \"{PASSWORD}\"")).await;
    assert!(r.contains("L OK"), "{r}");
    c
}

/// Delivers one message to alice over SMTP; returns the final reply.
async fn deliver(addr: SocketAddr, body: &[u8]) -> String {
    let mut c = Client::connect(addr).await;
    c.expect("EHLO hostile.test", "250").await;
    let mut stuffed = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    c.send_mail("a@remote.test", &["alice@example.test"], &stuffed)
        .await
}

/// Runs `f` under a deadline: a stalled server fails the test instead of
/// hanging the suite.
async fn within<T>(secs: u64, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("the exchange finished")
}

// 1, 2, 6: LIST patterns and parentheses from the client never recurse,
// never backtrack, and are bounded by the line and command limits.
#[tokio::test]
async fn list_patterns_and_parentheses() {
    within(300, async {
        // Limits raised so that the input reaches the matcher and the
        // extended-LIST parser instead of stopping at the line limit.
        let mut s =
            Server::start("[limits]\nmax_line_length = 300000\nmax_command_size = 400000\n");
        let mut c = login(s.imap(), "alice@example.test").await;
        let long = "a".repeat(40);
        let r = c.run(&format!("c CREATE {long}")).await;
        assert!(r.contains("c OK"), "{r}");
        // 200,000 wildcards in one command: one `*` once collapsed.
        let r = c
            .run(&format!("l1 LIST \"\" {}", "*".repeat(200_000)))
            .await;
        assert!(
            r.ends_with("l1 OK LIST completed\r\n"),
            "{}",
            &r[r.len().saturating_sub(200)..]
        );
        assert!(
            r.contains(&format!("\"/\" {long}\r\n")),
            "all mailboxes listed"
        );
        // ...and as a literal.
        c.send(format!("l2 LIST \"\" {{200000+}}\r\n{}\r\n", "*".repeat(200_000)).as_bytes())
            .await;
        let r = c.until("l2").await;
        assert!(r.ends_with("l2 OK LIST completed\r\n"), "{r}");
        // 100,000 parentheses.
        let r = c.run(&format!("l3 LIST {}", "(".repeat(100_000))).await;
        assert!(r.starts_with("l3 BAD"), "{r}");
        // A pattern a backtracking matcher needs hours for (it took 5.8 s
        // with ten `*a`, and grows ~20x per two more).
        let r = c
            .run(&format!("l4 LIST \"\" \"{}b\"", "*a".repeat(14)))
            .await;
        assert_eq!(r, "l4 OK LIST completed\r\n");
        let r = c
            .run(&format!("l5 LIST \"\" \"{}\"", "*a".repeat(20)))
            .await;
        assert!(
            r.contains(&long) && r.ends_with("l5 OK LIST completed\r\n"),
            "{r}"
        );
        s.alive_and_serving().await;

        // With the default limits the same inputs stop at the line limit.
        let mut s = Server::start("");
        let mut c = login(s.imap(), "alice@example.test").await;
        let r = c
            .run(&format!("l1 LIST \"\" {}", "*".repeat(200_000)))
            .await;
        assert_eq!(
            r,
            "l1 BAD [TOOBIG] Line exceeds the limit of 4096 bytes\r\n"
        );
        let r = c.run(&format!("l3 LIST {}", "(".repeat(100_000))).await;
        assert_eq!(
            r,
            "l3 BAD [TOOBIG] Line exceeds the limit of 4096 bytes\r\n"
        );
        c.send(format!("l2 LIST \"\" {{200000+}}\r\n{}\r\n", "*".repeat(200_000)).as_bytes())
            .await;
        let r = c.until("l2").await;
        assert_eq!(
            r,
            "l2 BAD [TOOBIG] Literal of 200000 bytes exceeds the limit of 65536 bytes\r\n"
        );
        let r = c.run("z NOOP").await;
        assert!(r.ends_with("z OK NOOP completed\r\n"), "{r}");
        s.alive_and_serving().await;
    })
    .await
}

// 3: a poison message (3,000 nested multiparts, accepted over port 25) and
// one nested 50,000 deep as message/rfc822 are described within the MIME
// depth limit, before and after a restart.
#[tokio::test]
async fn poison_messages_are_described_within_the_limit() {
    within(300, async {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), "");
        let mut s = Server {
            d: Daemon::start(&config),
            _dir: tempfile::tempdir().unwrap(),
        };
        let poison = tiermail::corpus::nested_multipart(3000);
        assert!(poison.len() > 200_000);
        let r = deliver(s.smtp(), &poison).await;
        assert!(r.starts_with("250"), "{r}");
        let r = deliver(s.smtp(), &tiermail::corpus::nested_rfc822(50_000)).await;
        assert!(r.starts_with("250"), "{r}");
        let check = |r: &str| {
            assert!(
                r.ends_with("f OK FETCH completed\r\n"),
                "{}",
                &r[r.len().saturating_sub(300)..]
            );
            assert_eq!(r.matches("* ").count(), 2, "both messages described");
            // 64 levels: about 64 parentheses deep, never 3,000.
            let (mut d, mut max) = (0, 0);
            for ch in r.chars() {
                match ch {
                    '(' => {
                        d += 1;
                        max = max.max(d);
                    }
                    ')' => d -= 1,
                    _ => {}
                }
            }
            assert!((60..=300).contains(&max), "nesting {max}");
        };
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        check(&c.run("f FETCH 1:* BODYSTRUCTURE").await);
        let r = c.run("b FETCH 1 BODY.PEEK[1.1.1.1]").await;
        assert!(r.ends_with("b OK FETCH completed\r\n"), "{r}");
        drop(c);
        s.d.terminate();
        s.d = Daemon::start(&config);
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        check(&c.run("f FETCH 1:* BODYSTRUCTURE").await);
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 2);
    })
    .await
}

// 4: twenty clients that have not logged in, each sending a 24 MB line
// without CRLF: the server holds at most a line's worth for each.
#[tokio::test]
async fn unauthenticated_long_lines_are_not_buffered() {
    within(300, async {
        let mut s = Server::start("");
        let before = s.rss();
        let mut clients = Vec::new();
        for i in 0..20 {
            clients.push(Imap::connect_from(&format!("127.0.1.{i}"), s.imap()).await);
        }
        let chunk = vec![b'x'; 1 << 20];
        for c in clients.iter_mut() {
            c.send(b"a LOGIN ").await;
        }
        for _ in 0..24 {
            for c in clients.iter_mut() {
                c.send(&chunk).await;
            }
        }
        // Every byte has been read (the socket accepted them all); wait for
        // the server to be done with them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = s.rss().saturating_sub(before);
        // Per connection: the line limit, one read buffer and the framer's
        // own state; plus a fixed allowance for the process itself.
        let bound = 20 * (4096 + 16 * 1024 + 64 * 1024) + (16 << 20);
        assert!(grown < bound, "RSS grew by {grown} bytes (bound {bound})");
        for c in clients.iter_mut() {
            c.send(b"\r\n").await;
            let r = c.line().await;
            assert_eq!(r, "a BAD [TOOBIG] Line exceeds the limit of 4096 bytes\r\n");
        }
        s.alive_and_serving().await;
    })
    .await
}

// 5: sizes from the wire are checked arithmetic: no wrap-around, no
// truncation, no acceptance of an impossible SIZE; on SMTP and LMTP.
#[tokio::test]
async fn bdat_and_size_arithmetic_is_checked() {
    within(300, async {
        let mut s = Server::start("");
        let before = s.rss();
        for (port, hello) in [("smtp", "EHLO x.test"), ("lmtp", "LHLO x.test")] {
            let addr = s.d.addr(port);
            let mut c = Client::connect(addr).await;
            c.expect(hello, "250").await;
            c.expect("MAIL FROM:<a@remote.test>", "250").await;
            c.expect("RCPT TO:<alice@example.test>", "250").await;
            c.send(b"BDAT 2\r\nab").await;
            assert!(c.reply().await.starts_with("250 2.0.0 2 bytes"));
            let r = c.cmd("BDAT 18446744073709551614 LAST").await;
            assert_eq!(
                r,
                "552 5.3.4 Chunk exceeds the message size limit of 26214400 bytes, closing connection"
            );
            assert!(c.try_reply().await.is_none(), "closed");

            let mut c = Client::connect(addr).await;
            c.expect(hello, "250").await;
            c.expect("MAIL FROM:<a@remote.test>", "250").await;
            c.expect("RCPT TO:<alice@example.test>", "250").await;
            let r = c.cmd("BDAT 99999999999999999999999999 LAST").await;
            assert_eq!(r, "501 5.5.4 Syntax: BDAT chunk-size [LAST]");
            c.expect("RSET", "250").await;
            let r = c.cmd("MAIL FROM:<a@remote.test> SIZE=99999999999999999999999").await;
            assert_eq!(r, "552 5.3.4 Message size exceeds the limit of 26214400 bytes");
            let r = c.cmd("MAIL FROM:<a@remote.test> SIZE=26214401").await;
            assert_eq!(r, "552 5.3.4 Message size exceeds the limit of 26214400 bytes");
            c.expect("MAIL FROM:<a@remote.test> SIZE=1000", "250").await;
            c.expect("QUIT", "221").await;
        }
        // A message over the limit in many chunks is read and dropped.
        let mut c = Client::connect(s.smtp()).await;
        c.expect("EHLO x.test", "250").await;
        c.expect("MAIL FROM:<a@remote.test>", "250").await;
        c.expect("RCPT TO:<alice@example.test>", "250").await;
        let chunk = vec![b'y'; 8 << 20];
        let mut replies = Vec::new();
        for i in 0..4 {
            let last = if i == 3 { " LAST" } else { "" };
            c.send(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes())
                .await;
            c.send(&chunk).await;
            replies.push(c.reply().await);
        }
        assert!(replies[..3].iter().all(|r| r.starts_with("250")) || replies[3].starts_with("552"), "{replies:?}");
        assert!(replies[3].starts_with("552 5.3.4"), "{replies:?}");
        let grown = s.rss().saturating_sub(before);
        assert!(grown < 64 << 20, "RSS grew by {grown}");
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 0);
    })
    .await
}

// 7: SEARCH BODY/TEXT is linear in the needle and capped.
#[tokio::test]
async fn search_needles_are_linear_and_capped() {
    within(600, async {
        let mut s =
            Server::start("[limits]\nmax_line_length = 300000\nmax_command_size = 400000\n");
        let body = format!("Subject: big\r\n\r\n{}\r\n", "a".repeat(2 << 20));
        assert!(deliver(s.smtp(), body.as_bytes()).await.starts_with("250"));
        let needle = "a".repeat(256 * 1024) + "c";
        let mut searches = Vec::new();
        for n in 0..2 {
            let needle = needle.clone();
            let addr = s.imap();
            searches.push(tokio::spawn(async move {
                let mut c = login(addr, "alice@example.test").await;
                c.run("s SELECT INBOX").await;
                c.send(
                    format!("q{n} SEARCH BODY {{{}+}}\r\n{needle}\r\n", needle.len()).as_bytes(),
                )
                .await;
                c.until(&format!("q{n}")).await
            }));
        }
        // Meanwhile another client logs in and is served.
        s.alive_and_serving().await;
        for (n, h) in searches.into_iter().enumerate() {
            let r = h.await.unwrap();
            assert_eq!(r, format!("* SEARCH\r\nq{n} OK SEARCH completed\r\n"));
        }
        // With default limits the needle is refused.
        let mut s = Server::start("");
        assert!(deliver(s.smtp(), body.as_bytes()).await.starts_with("250"));
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        let n = "a".repeat(5000);
        c.send(format!("q SEARCH BODY {{5000+}}\r\n{n}\r\n").as_bytes())
            .await;
        let r = c.until("q").await;
        assert_eq!(r, "q BAD search strings are limited to 4096 bytes\r\n");
        let r = c.run("q2 SEARCH BODY aaaa").await;
        assert_eq!(r, "* SEARCH 1\r\nq2 OK SEARCH completed\r\n");
        s.alive_and_serving().await;
    })
    .await
}

// 8: a client trickling one byte at a time is cut off when its command (or
// login phase) runs out of time, not kept alive by every byte.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    within(300, async {
        let mut s = Server::start(
            "[imap]\nunauthenticated_timeout_secs = 3\n[limits]\ncommand_timeout_secs = 3\n",
        );
        let _ = &mut s;
        let mut imap = Imap::connect(s.imap()).await;
        let mut smtp = Client::connect(s.smtp()).await;
        smtp.expect("EHLO slow.test", "250").await;
        let mut authed = login(s.imap(), "alice@example.test").await;
        let started = std::time::Instant::now();
        let mut imap_open = true;
        let mut smtp_open = true;
        let mut authed_open = true;
        // One byte every 300 ms, 40 s at most.
        for i in 0..130 {
            let b = [b"NOOP"[i % 4]];
            if imap_open {
                imap_open = imap.try_send(&b).await;
            }
            if smtp_open {
                smtp_open = smtp.stream.write_all(&b).await.is_ok();
            }
            if authed_open {
                authed_open = authed.try_send(&b).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !imap_open && !smtp_open && !authed_open {
                break;
            }
        }
        let _ = started;
        // Each was told why, then closed.
        let l = imap.line().await;
        assert_eq!(l, "* BYE Login timeout: log in sooner\r\n");
        assert!(imap.closed().await);
        let r = smtp.reply().await;
        assert_eq!(
            r,
            "421 4.4.2 Command not completed in time, closing connection"
        );
        let l = authed.line().await;
        assert_eq!(l, "* BYE Command not completed in time\r\n");
        assert!(authed.closed().await);
        // DATA trickled the same way.
        let mut smtp = Client::connect(s.smtp()).await;
        smtp.expect("EHLO slow.test", "250").await;
        smtp.expect("MAIL FROM:<a@remote.test>", "250").await;
        smtp.expect("RCPT TO:<alice@example.test>", "250").await;
        smtp.expect("DATA", "354").await;
        for _ in 0..60 {
            if smtp.stream.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let r = smtp.reply().await;
        assert_eq!(
            r,
            "421 4.4.2 Command not completed in time, closing connection"
        );
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 0);
    })
    .await
}

// 9: one address with 2,000 silent connections takes at most its share of
// unauthenticated slots; everyone else is served.
#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    within(300, async {
        let mut s = Server::start("");
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..2000 {
            let mut tcp = tcp_from("127.0.2.1", s.imap()).await;
            let mut first = [0u8; 128];
            let n = tcp.read(&mut first).await.unwrap_or(0);
            let text = String::from_utf8_lossy(&first[..n]).into_owned();
            if text.starts_with("* BYE Too many connections from your address") {
                refused += 1;
            } else {
                assert!(text.starts_with("* OK"), "{text}");
                held.push(tcp);
            }
        }
        assert_eq!(held.len(), 20, "the default share of one address");
        assert_eq!(refused, 1980);
        // SMTP counts against the same share.
        let mut tcp = tcp_from("127.0.2.1", s.smtp()).await;
        let mut first = [0u8; 128];
        let n = tcp.read(&mut first).await.unwrap();
        assert_eq!(
            &first[..n],
            b"421 4.7.0 Too many connections from your address, try again later\r\n"
        );
        // A TLS client from elsewhere logs in.
        let mut c = Imap::connect_tls(s.d.addr("imaps")).await;
        let r = c
            .run(&format!("t LOGIN carol@example.test \"{PASSWORD}\""))
            .await;
        assert!(r.contains("t OK"), "{r}");
        // A closed connection frees its slot (once the server has seen
        // the close), and so does a login.
        drop(held.pop());
        let mut again = loop {
            let mut tcp = tcp_from("127.0.2.1", s.imap()).await;
            let mut first = [0u8; 128];
            let n = tcp.read(&mut first).await.unwrap_or(0);
            if first[..n].starts_with(b"* OK") {
                let mut c = Imap::from_stream(Box::new(tcp));
                let r = c
                    .run(&format!("L LOGIN alice@example.test \"{PASSWORD}\""))
                    .await;
                assert!(r.contains("L OK"), "{r}");
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let r = again.run("s STATUS INBOX (MESSAGES)").await;
        assert!(r.contains("s OK"), "{r}");
        let mut extra = Imap::connect_from("127.0.2.1", s.imap()).await;
        let r = extra.run("n NOOP").await;
        assert!(r.contains("n OK"), "{r}");
        s.alive_and_serving().await;
    })
    .await
}

// 10: logins and message bodies do not leave memory behind, and all the
// messages in flight together are bounded by the in-flight budget.
#[tokio::test]
async fn logins_and_bodies_keep_memory_bounded() {
    within(600, async {
        // Production argon2 cost (19 MiB a check).
        let mut s = Server::start_with_real_hashes(
            "[limits]\nmax_inflight_mib = 64\nmax_unauthenticated_per_ip = 400\n",
        );
        let before = s.rss();
        let mut logins = Vec::new();
        for i in 0..300 {
            let addr = s.imap();
            let ip = format!("127.0.3.{}", i % 8);
            logins.push(tokio::spawn(async move {
                let mut c = Imap::connect_from(&ip, addr).await;
                let r = c
                    .run(&format!("L LOGIN bob@example.test \"{PASSWORD}\""))
                    .await;
                assert!(r.contains("L OK"), "{r}");
                c.run("o LOGOUT").await;
            }));
        }
        for l in logins {
            l.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let grown = s.rss().saturating_sub(before);
        // One argon2 buffer per core is kept for reuse, nothing else.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let bound = cores * (19 << 20) + (32 << 20);
        assert!(
            grown < bound,
            "RSS grew by {grown} after 300 logins (bound {bound})"
        );

        // Ten messages over the size limit: dropped as they arrive.
        let over = std::sync::Arc::new(vec![b'z'; 30 << 20]);
        let senders = send_at_once(s.smtp(), 10, over);
        for h in senders {
            // Over the size limit, or past the budget first: both drop it.
            let r = h.await.unwrap();
            assert!(
                r == "552 5.3.4 Message exceeds the size limit of 26214400 bytes"
                    || r == "452 4.3.1 Insufficient system storage, try again later",
                "{r}"
            );
        }
        let grown = s.rss().saturating_sub(before);
        let bound = cores * (19 << 20) + 3 * (64 << 20) + (32 << 20);
        assert!(
            grown < bound,
            "RSS grew by {grown} after 10 x 30 MB (bound {bound})"
        );
        // Ten 20 MB messages at once against a 64 MiB budget: some wait
        // for a retry (452), the rest are stored.
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        big.resize(20 << 20, b'w');
        let senders = send_at_once(s.smtp(), 10, std::sync::Arc::new(big));
        let mut stored = 0;
        let mut later = 0;
        for h in senders {
            let r = h.await.unwrap();
            if r.starts_with("250") {
                stored += 1;
            } else {
                assert_eq!(r, "452 4.3.1 Insufficient system storage, try again later");
                later += 1;
            }
        }
        assert!(later > 0, "the budget was never spent");
        assert!(stored > 0, "nothing got through");
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, stored);
    })
    .await
}

// 10: a FETCH of many large bodies holds a few of them at a time, not a
// batch of 64 (24 x 6 MB once held every body and its response at once).
#[tokio::test]
async fn fetch_holds_few_large_bodies_at_once() {
    within(600, async {
        let mut s = Server::start("");
        let mut body = b"Subject: large\r\n\r\n".to_vec();
        for i in 0..(6 << 20) / 64 {
            body.extend_from_slice(format!("{i:062}\r\n").as_bytes());
        }
        for _ in 0..24 {
            assert!(deliver(s.smtp(), &body).await.starts_with("250"));
        }
        let peak = || {
            let status = std::fs::read_to_string(format!("/proc/{}/status", s.d.pid())).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
                * 1024
        };
        let before = peak();
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        let r = c.run("f FETCH 1:* BODY.PEEK[]").await;
        assert!(r.contains("f OK"), "{}", &r[r.len().saturating_sub(200)..]);
        assert_eq!(r.matches(" FETCH (BODY[] {").count(), 24);
        let grown = peak().saturating_sub(before);
        // A message, its response and the output buffer, a few times over
        // (the suite runs beside it); all twenty-four would be 144 MB.
        let bound = 100 << 20;
        assert!(
            grown < bound,
            "peak RSS grew by {grown} during the FETCH (bound {bound})"
        );
        s.alive_and_serving().await;
    })
    .await
}

/// `n` SMTP clients sending `body` to alice at the same time; their
/// final replies.
fn send_at_once(
    addr: SocketAddr,
    n: usize,
    body: std::sync::Arc<Vec<u8>>,
) -> Vec<tokio::task::JoinHandle<String>> {
    (0..n)
        .map(|_| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.expect("EHLO big.test", "250").await;
                c.expect("MAIL FROM:<a@remote.test>", "250").await;
                c.expect("RCPT TO:<alice@example.test>", "250").await;
                c.expect("DATA", "354").await;
                c.send(&body).await;
                c.send(b"\r\n.\r\n").await;
                c.reply().await
            })
        })
        .collect()
}

// 11, 15: mailbox names are bounded in length, depth and number, must be
// valid modified UTF-7, and keywords are bounded per mailbox.
#[tokio::test]
async fn mailbox_names_and_keywords_are_bounded() {
    within(300, async {
        let mut s = Server::start("[limits]\nmax_mailboxes = 12\nmax_keywords = 10\n");
        let data = s._dir.path().join("data");
        let size = |p: &std::path::Path| -> u64 {
            fn walk(p: &std::path::Path) -> u64 {
                std::fs::read_dir(p)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| {
                                let m = e.metadata().unwrap();
                                if m.is_dir() { walk(&e.path()) } else { m.len() }
                            })
                            .sum()
                    })
                    .unwrap_or(0)
            }
            walk(p)
        };
        let mut c = login(s.imap(), "alice@example.test").await;
        let before = size(&data);
        // 6,000 levels in a 12,002-byte name.
        let deep = vec!["a"; 6001].join("/");
        c.send(format!("c1 CREATE {{{}+}}\r\n{deep}\r\n", deep.len()).as_bytes())
            .await;
        let r = c.until("c1").await;
        assert_eq!(
            r,
            "c1 NO [LIMIT] mailbox names are limited to 1024 bytes\r\n"
        );
        let r = c
            .run(&format!("c2 CREATE {}", vec!["b"; 33].join("/")))
            .await;
        assert_eq!(
            r,
            "c2 NO [LIMIT] mailbox names are limited to 32 hierarchy levels\r\n"
        );
        // 10 KB and 100 KB names.
        let ten = "n".repeat(10_000);
        c.send(format!("c3 CREATE {{10000+}}\r\n{ten}\r\n").as_bytes())
            .await;
        assert_eq!(
            c.until("c3").await,
            "c3 NO [LIMIT] mailbox names are limited to 1024 bytes\r\n"
        );
        let hundred = "n".repeat(100_000);
        c.send(format!("c4 CREATE {{100000+}}\r\n{hundred}\r\n").as_bytes())
            .await;
        assert_eq!(
            c.until("c4").await,
            "c4 BAD [TOOBIG] Literal of 100000 bytes exceeds the limit of 65536 bytes\r\n"
        );
        // Invalid modified UTF-7.
        for (i, bad) in ["&AGE-", "&AOk", "a&2D0-b"].iter().enumerate() {
            let r = c.run(&format!("u{i} CREATE \"{bad}\"")).await;
            assert!(
                r.starts_with(&format!("u{i} NO [CANNOT] invalid modified UTF-7")),
                "{r}"
            );
        }
        let r = c.run("u CREATE Entw&APw-rfe").await;
        assert_eq!(r, "u OK CREATE completed\r\n");
        // Five defaults + Entwürfe: six more fit, then the limit.
        for i in 0..6 {
            let r = c.run(&format!("m{i} CREATE box{i}")).await;
            assert_eq!(r, format!("m{i} OK CREATE completed\r\n"));
        }
        let r = c.run("m6 CREATE box6").await;
        assert_eq!(
            r,
            "m6 NO [LIMIT] limit reached: at most 12 mailboxes per user\r\n"
        );
        let r = c.run("m7 CREATE x/y").await;
        assert!(r.starts_with("m7 NO [LIMIT]"), "{r}");
        assert!(size(&data) - before < 1 << 20, "the store did not balloon");
        // Keywords: ten fit, the eleventh does not.
        assert!(
            deliver(s.smtp(), b"Subject: k\r\n\r\nk\r\n")
                .await
                .starts_with("250")
        );
        c.run("s SELECT INBOX").await;
        let ten: Vec<String> = (0..10).map(|i| format!("$K{i}")).collect();
        let r = c
            .run(&format!("k1 STORE 1 +FLAGS ({})", ten.join(" ")))
            .await;
        assert!(r.ends_with("k1 OK STORE completed\r\n"), "{r}");
        let r = c.run("k2 STORE 1 +FLAGS ($Eleven)").await;
        assert_eq!(
            r,
            "k2 NO [LIMIT] At most 10 keywords may be used in one mailbox\r\n"
        );
        let r = c.run("k3 STORE 1 +FLAGS ($K3 \\Seen)").await;
        assert!(r.ends_with("k3 OK STORE completed\r\n"), "{r}");
        let r = c
            .run("k4 APPEND INBOX ($New1) {14+}\r\nSubject: a\r\n\r\n")
            .await;
        assert_eq!(
            r,
            "k4 NO [LIMIT] At most 10 keywords may be used in one mailbox\r\n"
        );
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 1);
    })
    .await
}

// 12: one rule for NUL: BINARY decodes parts for FETCH, but a message
// with NUL bytes is never stored, whether it comes as a literal8, a
// literal or over SMTP.
#[tokio::test]
async fn nul_bytes_are_refused_everywhere() {
    within(300, async {
        let mut s = Server::start("");
        assert!(
            deliver(s.smtp(), b"Subject: b\r\n\r\nb\r\n")
                .await
                .starts_with("250")
        );
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        assert_eq!(
            c.run("b1 FETCH 1 BINARY.PEEK[1]").await,
            "* 1 FETCH (BINARY[1] {3}\r\nb\r\n)\r\nb1 OK FETCH completed\r\n"
        );
        assert_eq!(
            c.run("b2 FETCH 1 BINARY.SIZE[1]").await,
            "* 1 FETCH (BINARY.SIZE[1] 3)\r\nb2 OK FETCH completed\r\n"
        );
        c.send(b"b3 APPEND INBOX ~{5+}\r\nab\0cd\r\n").await;
        let r = c.until("b3").await;
        assert!(r.starts_with("b3 NO [UNKNOWN-CTE] "), "{r}");
        c.send(b"b4 APPEND INBOX ~{5}\r\n").await;
        assert_eq!(c.line().await, "+ Ready for literal data\r\n");
        c.send(b"ab\0cd\r\n").await;
        let r = c.until("b4").await;
        assert!(r.starts_with("b4 NO [UNKNOWN-CTE] "), "{r}");
        c.send(b"b5 APPEND INBOX {5+}\r\nab\0cd\r\n").await;
        assert!(c.until("b5").await.starts_with("b5 BAD"));
        // A literal8 outside APPEND is not a message.
        c.send(b"b6 SEARCH TEXT ~{2+}\r\nab\r\n").await;
        assert!(c.until("b6").await.starts_with("b6 BAD"));
        let r = c.run("z NOOP").await;
        assert!(r.ends_with("z OK NOOP completed\r\n"), "{r}");
        // SMTP refuses NUL too.
        let r = deliver(s.smtp(), b"Subject: nul\r\n\r\na\0b\r\n").await;
        assert_eq!(r, "554 5.6.0 Message contains NUL bytes");
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 1);
    })
    .await
}

// 13: failures count per IP and per account, successes reset neither,
// concurrent guesses from one IP are not all evaluated, and every failure
// is one fail2ban line.
#[tokio::test]
async fn login_throttle_counts_ips_and_accounts() {
    within(300, async {
        let mut s = Server::start("[limits]\nmax_unauthenticated_per_ip = 100\n");
        // Wrong passwords for alice from one address, a good login to bob
        // after every four: the fifth failure blocks the address (bob's
        // good password too) and the account.
        let mut replies = Vec::new();
        for i in 0..12 {
            let mut c = Imap::connect_from("127.0.4.1", s.imap()).await;
            if i % 5 == 4 {
                let r = c
                    .run(&format!("g LOGIN bob@example.test \"{PASSWORD}\""))
                    .await;
                replies.push(format!("good: {}", r.lines().last().unwrap()));
            } else {
                let r = c.run("w LOGIN alice@example.test wrong").await;
                replies.push(format!("bad: {}", r.trim_end()));
            }
        }
        let failed = replies
            .iter()
            .filter(|r| r.contains("AUTHENTICATIONFAILED"))
            .count();
        assert_eq!(failed, 5, "{replies:#?}");
        assert!(
            replies[10..].iter().all(|r| r.contains("NO [UNAVAILABLE]")),
            "{replies:#?}"
        );
        assert!(replies[4].starts_with("good: g OK"), "{replies:#?}");
        // The account is blocked from anywhere, even with its password...
        let mut c = Imap::connect_from("127.0.4.2", s.imap()).await;
        let r = c
            .run(&format!("a LOGIN alice@example.test \"{PASSWORD}\""))
            .await;
        assert_eq!(
            r,
            "a NO [UNAVAILABLE] Too many failed logins, try again later\r\n"
        );
        // ...other accounts from elsewhere are not.
        let r = c
            .run(&format!("b LOGIN carol@example.test \"{PASSWORD}\""))
            .await;
        assert!(r.contains("b OK"), "{r}");
        // 60 simultaneous wrong logins from a fresh address: checks take
        // turns, so only the first five are evaluated.
        let mut tasks = Vec::new();
        for _ in 0..60 {
            let addr = s.imap();
            tasks.push(tokio::spawn(async move {
                let mut c = Imap::connect_from("127.0.4.3", addr).await;
                c.run("w LOGIN carol@example.test wrong").await
            }));
        }
        let mut throttled = 0;
        for t in tasks {
            if t.await.unwrap().contains("NO [UNAVAILABLE]") {
                throttled += 1;
            }
        }
        assert_eq!(throttled, 55);
        // Failures are logged one line each, quoted, with the address.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = s.d.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("authentication failed: service=imap rip=127.0.4.1"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            line.contains("user=\"alice@example.test\" reason=bad-password"),
            "{line}"
        );
        let evaluated = log
            .lines()
            .filter(|l| l.contains("rip=127.0.4.3") && l.contains("reason=bad-password"))
            .count();
        assert_eq!(evaluated, 5, "password checks for the concurrent guesses");
        // An unknown user fails the same way (and is told apart only in the log).
        let mut c = Imap::connect_from("127.0.4.4", s.imap()).await;
        let r = c.run("u LOGIN nobody@example.test wrong").await;
        assert_eq!(r, "u NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
        // SMTP AUTH shares the counters: the blocked account stays blocked.
        let mut m = Client::connect(s.d.addr("submission")).await;
        m.expect("EHLO x.test", "250").await;
        let r = m
            .cmd(&format!(
                "AUTH PLAIN {}",
                plain("alice@example.test", PASSWORD)
            ))
            .await;
        assert_eq!(r, "454 4.7.0 Too many failed logins, try again later");
        s.alive_and_serving().await;
    })
    .await
}

// 14: an authenticated user sends only as themselves (or an alias).
#[tokio::test]
async fn submission_senders_are_the_users_own() {
    within(300, async {
        let mut s = Server::start("[smtp]\nsend_as_anyone = [\"carol@example.test\"]\n");
        let sub = s.d.addr("submission");
        let mut c = Client::connect(sub).await;
        c.expect("EHLO x.test", "250").await;
        c.expect(
            &format!("AUTH PLAIN {}", plain("alice@example.test", PASSWORD)),
            "235",
        )
        .await;
        assert_eq!(
            c.cmd("MAIL FROM:<bob@example.test>").await,
            "553 5.7.1 You may not send as <bob@example.test>"
        );
        assert_eq!(
            c.cmd("MAIL FROM:<stranger@remote.test>").await,
            "553 5.7.1 You may not send as <stranger@remote.test>"
        );
        c.expect("MAIL FROM:<al@example.test>", "250").await;
        c.expect("RSET", "250").await;
        c.expect("MAIL FROM:<Alice@Example.Test>", "250").await;
        c.expect("RSET", "250").await;
        c.expect("MAIL FROM:<>", "250").await;
        let mut c = Client::connect(sub).await;
        c.expect("EHLO x.test", "250").await;
        c.expect(
            &format!("AUTH PLAIN {}", plain("carol@example.test", PASSWORD)),
            "235",
        )
        .await;
        c.expect("MAIL FROM:<bob@example.test>", "250").await;
        s.alive_and_serving().await;
    })
    .await
}

// 16: replies name no server paths or OS errors; the log does.
#[tokio::test]
async fn replies_do_not_leak_internals() {
    within(300, async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nas");
        std::fs::create_dir_all(&root).unwrap();
        let extra = format!(
            "[archive]\nroot = \"{}\"\nage_days = 0\nschedule = \"off\"\n",
            root.display()
        );
        let config = write_config(dir.path(), &extra);
        let mut s = Server {
            d: Daemon::start(&config),
            _dir: tempfile::tempdir().unwrap(),
        };
        assert!(deliver(s.smtp(), b"Subject: a\r\n\r\na\r\n").await.starts_with("250"));
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        let r = c.run("m MOVE 1 Archive").await;
        assert!(r.contains("m OK"), "{r}");
        c.run("s2 SELECT Archive").await;
        // The NAS goes away.
        std::fs::rename(&root, dir.path().join("nas-gone")).unwrap();
        let r = c.run("f FETCH 1 BODY.PEEK[]").await;
        assert_eq!(
            r,
            "f NO [UNAVAILABLE] The archive is unavailable right now; current folders work as usual\r\n"
        );
        assert!(!r.contains(&dir.path().display().to_string()), "{r}");
        assert!(!r.contains("os error"), "{r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(s.d.log_text().contains("nas"), "the detail is in the log");
        s.alive_and_serving().await;
    })
    .await
}

// Generated sweeps: depth, length and count around every limit, each with
// its exact reply; the store ends up with exactly the acknowledged mail.
#[tokio::test]
async fn sweeps_of_depth_length_and_count() {
    within(600, async {
        let mut s = Server::start(
            "[limits]\nmax_message_size = 100000\nmax_recipients = 5\nmax_inflight_mib = 1\n",
        );
        let mut acknowledged = 0;
        // MIME depth.
        let depths = [1usize, 2, 10, 63, 64, 65, 100, 500, 1400];
        for d in depths {
            let r = deliver(s.smtp(), &tiermail::corpus::nested_multipart(d)).await;
            assert!(r.starts_with("250"), "depth {d}: {r}");
            acknowledged += 1;
        }
        let mut c = login(s.imap(), "alice@example.test").await;
        c.run("s SELECT INBOX").await;
        for (i, d) in depths.iter().enumerate() {
            let r = c.run(&format!("f{i} FETCH {} BODYSTRUCTURE", i + 1)).await;
            assert!(r.ends_with(&format!("f{i} OK FETCH completed\r\n")), "depth {d}");
            let mut nest: usize = 0;
            let mut max = 0;
            for ch in r.chars() {
                match ch {
                    '(' => {
                        nest += 1;
                        max = max.max(nest);
                    }
                    ')' => nest = nest.saturating_sub(1),
                    _ => {}
                }
            }
            assert!(max <= (*d).min(64) + 4, "depth {d}: {max} levels");
            assert_eq!(r.matches("\"MIXED\"").count(), (*d).min(63), "depth {d}");
        }
        // IMAP line length around 4096 (CRLF included).
        for len in [4094usize, 4095, 4096, 4097, 4098, 8192, 100_000] {
            let pad = len - "a STATUS \"\" (MESSAGES)\r\n".len();
            let line = format!("a STATUS \"{}\" (MESSAGES)\r\n", "x".repeat(pad));
            assert_eq!(line.len(), len);
            c.send(line.as_bytes()).await;
            let r = c.until("a").await;
            if len <= 4096 {
                assert_eq!(r, "a NO [NONEXISTENT] No such mailbox\r\n", "{len}");
            } else {
                assert_eq!(
                    r,
                    "a BAD [TOOBIG] Line exceeds the limit of 4096 bytes\r\n",
                    "{len}"
                );
            }
        }
        // APPEND literals around the message size limit.
        for (n, size) in [99_999usize, 100_000, 100_001].into_iter().enumerate() {
            let body = format!("Subject: s\r\n\r\n{}", "y".repeat(size - 14));
            assert_eq!(body.len(), size);
            c.send(format!("p{n} APPEND INBOX {{{size}}}\r\n").as_bytes())
                .await;
            let first = c.line().await;
            if size <= 100_000 {
                assert_eq!(first, "+ Ready for literal data\r\n");
                c.send(format!("{body}\r\n").as_bytes()).await;
                let r = c.until(&format!("p{n}")).await;
                assert!(r.contains(&format!("\r\np{n} OK [APPENDUID ")), "{r}");
                acknowledged += 1;
            } else {
                assert_eq!(
                    first,
                    format!(
                        "p{n} NO [TOOBIG] Literal of {size} bytes exceeds the limit of 100000 bytes\r\n"
                    )
                );
            }
            c.send(format!("q{n} APPEND INBOX {{{size}+}}\r\n{body}\r\n").as_bytes())
                .await;
            let r = c.until(&format!("q{n}")).await;
            if size <= 100_000 {
                assert!(r.contains(&format!("\r\nq{n} OK [APPENDUID ")), "{r}");
                acknowledged += 1;
            } else {
                assert_eq!(
                    r,
                    format!(
                        "q{n} BAD [TOOBIG] Literal of {size} bytes exceeds the limit of 100000 bytes\r\n"
                    )
                );
            }
        }
        // SMTP line length around 4096 and recipients around their limit.
        let mut m = Client::connect(s.smtp()).await;
        m.expect("EHLO sweep.test", "250").await;
        for len in [4094usize, 4095, 4096, 4097, 9000] {
            let line = format!("NOOP {}", "z".repeat(len - 7));
            let r = m.cmd(&line).await;
            if len <= 4096 {
                assert!(r.starts_with("250"), "{len}: {r}");
            } else {
                assert_eq!(r, "500 5.5.2 Line too long", "{len}");
            }
        }
        m.expect("MAIL FROM:<a@remote.test>", "250").await;
        for i in 0..7 {
            let r = m.cmd("RCPT TO:<alice@example.test>").await;
            if i < 5 {
                assert!(r.starts_with("250"), "{r}");
            } else {
                assert_eq!(r, "452 4.5.3 Too many recipients (at most 5)");
            }
        }
        // DATA around the size limit (dot-stuffing does not count).
        for (size, ok) in [(99_000usize, true), (100_000, true), (100_001, false)] {
            m.expect("RSET", "250").await;
            m.expect("MAIL FROM:<a@remote.test>", "250").await;
            m.expect("RCPT TO:<alice@example.test>", "250").await;
            let body = format!("Subject: d\r\n\r\n{}\r\n", ".".repeat(size - 16));
            let mut stuffed = body.clone().into_bytes();
            stuffed.splice(14..14, *b".");
            m.expect("DATA", "354").await;
            m.send(&stuffed).await;
            let r = m.cmd(".").await;
            if ok {
                assert!(r.starts_with("250"), "{size}: {r}");
                acknowledged += 1;
            } else {
                assert_eq!(r, "552 5.3.4 Message exceeds the size limit of 100000 bytes");
            }
        }
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, acknowledged);
    })
    .await
}

// Found by fuzzing (`mime`): mail-parser's own accessors index a part list
// that is empty for an empty message, so BODY[] or SEARCH of one killed
// the session. Empty and header-less messages are served like any other.
#[tokio::test]
async fn empty_and_unparsable_messages_are_served() {
    within(300, async {
        let mut s = Server::start("");
        let mut c = login(s.imap(), "alice@example.test").await;
        for (i, m) in ["", "\r\n", "no header at all", ":\r\n\r\n"].iter().enumerate() {
            let r = c
                .run(&format!("a{i} APPEND INBOX {{{}+}}\r\n{m}", m.len()))
                .await;
            assert!(r.contains(&format!("a{i} OK [APPENDUID ")), "{r}");
        }
        c.run("s SELECT INBOX").await;
        let r = c
            .run("f FETCH 1:* (BODY.PEEK[] BODY.PEEK[1] BODY.PEEK[HEADER] BODY.PEEK[TEXT] ENVELOPE BODYSTRUCTURE RFC822.SIZE)")
            .await;
        assert!(r.ends_with("f OK FETCH completed\r\n"), "{r}");
        assert!(r.starts_with("* 1 FETCH ("), "{r}");
        let r = c.run("q SEARCH OR BODY x TEXT \"no header\"").await;
        assert_eq!(r, "* SEARCH 3\r\nq OK SEARCH completed\r\n");
        let r = c.run("h SEARCH HEADER subject \"\"").await;
        assert_eq!(r, "* SEARCH\r\nh OK SEARCH completed\r\n");
        s.alive_and_serving().await;
        assert_eq!(s.inbox_count("alice@example.test").await, 4);
    })
    .await
}
