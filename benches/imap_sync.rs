//! What a mail client pays to get back in sync with a large mailbox.
//!
//! A 100,000-message INBOX (`--messages`); a client that knew it comes
//! back after 100 changes made elsewhere (50 messages flagged, 50
//! expunged) and resynchronises:
//!
//! - with QRESYNC: `SELECT INBOX (QRESYNC (uidvalidity modseq 1:N))`,
//!   which answers with what vanished and what changed;
//! - without: `SELECT INBOX` and `FETCH 1:* (UID FLAGS)`, the full flag
//!   list every client without QRESYNC or CONDSTORE fetches.
//!
//! Bytes received and wall time of each, median of `--rounds` rounds
//! (alternating, fresh changes each round).
//!
//!     cargo bench --bench imap_sync
//!     cargo bench --bench imap_sync -- --quick

mod common;

use std::sync::Arc;
use std::time::Instant;

use tiermail::server::Server;
use tiermail::store::{Delivery, Store, Summary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "reader@example.test";

async fn fill(store: Arc<Store>, n: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let raw = format!(
            "From: s{i}@remote.test\r\nTo: {USER}\r\nSubject: message {i}\r\n\r\nbody {i}\r\n"
        )
        .into_bytes();
        let d = Delivery {
            user: USER.into(),
            mailbox: "INBOX".into(),
            summary: Summary::parse(&raw),
            raw: Arc::new(raw),
            internal_date: chrono::Utc::now().timestamp(),
            flags: vec![],
        };
        let s = store.clone();
        set.spawn(async move { s.deliver(d).await.expect("delivered") });
        if set.len() >= 128 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
}

struct Session {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes read since the last `take_bytes`.
    read: usize,
}

impl Session {
    async fn login(addr: std::net::SocketAddr) -> Session {
        let s = TcpStream::connect(addr).await.unwrap();
        let _ = s.set_nodelay(true);
        let mut c = Session {
            s,
            buf: Vec::new(),
            read: 0,
        };
        c.until(b"* OK").await;
        c.run("a", &format!("LOGIN {USER} bench")).await;
        c
    }

    /// Reads until the line starting with `prefix`; returns everything up
    /// to and including it.
    async fn until(&mut self, prefix: &[u8]) -> Vec<u8> {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let mut start = 0;
            while let Some(e) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                if self.buf[start..].starts_with(prefix) {
                    let out: Vec<u8> = self.buf.drain(..start + e + 2).collect();
                    return out;
                }
                start += e + 2;
            }
            let n = self.s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            self.read += n;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn run(&mut self, tag: &str, cmd: &str) -> Vec<u8> {
        self.s
            .write_all(format!("{tag} {cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let out = self.until(format!("{tag} ").as_bytes()).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.lines().last().unwrap_or("").contains(" OK "),
            "{cmd}: {}",
            &text[text.len().saturating_sub(300)..]
        );
        out
    }

    fn take_bytes(&mut self) -> usize {
        std::mem::take(&mut self.read)
    }
}

fn number(text: &str, key: &str) -> u64 {
    let at = text.find(key).expect(key) + key.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect(key)
}

/// 50 messages flagged and 50 expunged, from a session of their own.
async fn changes(addr: std::net::SocketAddr, round: u64, left: &mut Vec<u32>) {
    let mut c = Session::login(addr).await;
    c.run("s", "SELECT INBOX").await;
    let mut rng = tiermail::corpus::Rng::new(round + 1);
    let mut pick = |left: &mut Vec<u32>, remove: bool| -> u32 {
        let i = rng.below(left.len() as u64) as usize;
        if remove { left.remove(i) } else { left[i] }
    };
    let flagged: Vec<String> = (0..50).map(|_| pick(left, false).to_string()).collect();
    let gone: Vec<String> = (0..50).map(|_| pick(left, true).to_string()).collect();
    c.run(
        "f",
        &format!("UID STORE {} +FLAGS.SILENT (\\Flagged)", flagged.join(",")),
    )
    .await;
    c.run(
        "d",
        &format!("UID STORE {} +FLAGS.SILENT (\\Deleted)", gone.join(",")),
    )
    .await;
    c.run("x", &format!("UID EXPUNGE {}", gone.join(","))).await;
    c.run("z", "LOGOUT").await;
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut messages = if quick { 10_000 } else { 100_000 };
    let mut rounds = 5u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--messages" => messages = it.next().and_then(|v| v.parse().ok()).expect("a number"),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("a number"),
            _ => {}
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, cfg) = common::bench_config(USER);
    rt.block_on(async {
        let server = Server::start(cfg.clone()).await.unwrap();
        let addr = server.bound.imap.unwrap();
        let t = Instant::now();
        fill(server.app.store.clone(), messages).await;
        println!(
            "tiermail imap_sync: {messages} messages loaded in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let mut left: Vec<u32> = (1..=messages as u32).collect();
        let (mut q_ms, mut q_bytes, mut f_ms, mut f_bytes) = (vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            // The client's last sync.
            let mut c = Session::login(addr).await;
            c.run("e", "ENABLE QRESYNC").await;
            let r = c.run("s", "SELECT INBOX").await;
            let r = String::from_utf8_lossy(&r).into_owned();
            let (uv, modseq) = (number(&r, "UIDVALIDITY "), number(&r, "HIGHESTMODSEQ "));
            c.run("z", "LOGOUT").await;
            changes(addr, round, &mut left).await;

            let mut c = Session::login(addr).await;
            c.run("e", "ENABLE QRESYNC").await;
            c.take_bytes();
            let t = Instant::now();
            let r = c
                .run("q", &format!("SELECT INBOX (QRESYNC ({uv} {modseq} 1:{messages}))"))
                .await;
            q_ms.push(t.elapsed().as_secs_f64() * 1e3);
            q_bytes.push(c.take_bytes() as f64);
            let r = String::from_utf8_lossy(&r);
            assert!(r.contains("* VANISHED (EARLIER) "), "{r}");
            // 50 flagged, less any picked twice or expunged after.
            let changed = r.matches(" FETCH (").count();
            assert!((1..=50).contains(&changed), "{changed} changed");
            c.run("z", "LOGOUT").await;

            let mut c = Session::login(addr).await;
            c.take_bytes();
            let t = Instant::now();
            c.run("s", "SELECT INBOX").await;
            let r = c.run("f", "FETCH 1:* (UID FLAGS)").await;
            f_ms.push(t.elapsed().as_secs_f64() * 1e3);
            f_bytes.push(c.take_bytes() as f64);
            assert_eq!(
                String::from_utf8_lossy(&r).matches(" FETCH (").count(),
                left.len()
            );
            c.run("z", "LOGOUT").await;
        }
        let (qm, qb, fm, fb) = (
            median(&mut q_ms),
            median(&mut q_bytes),
            median(&mut f_ms),
            median(&mut f_bytes),
        );
        println!(
            "\n{messages}-message INBOX, 100 changes (50 flagged, 50 expunged), median of {rounds} rounds:\n"
        );
        println!("| resync | bytes received | ms |");
        println!("|---|---|---|");
        println!("| `SELECT … (QRESYNC (uv modseq 1:N))` | {qb:.0} | {qm:.1} |");
        println!("| `SELECT` + `FETCH 1:* (UID FLAGS)` | {fb:.0} | {fm:.1} |");
        println!(
            "| QRESYNC / full | {:.4}x | {:.3}x |",
            qb / fb.max(1.0),
            qm / fm.max(1e-9)
        );
        server.shutdown().await;
    });
}
