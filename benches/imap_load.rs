//! IMAP load and memory.
//!
//! 1. C clients (default 16), each logged in on its own mailbox of M
//!    messages (default 1,000, a seeded MIME corpus), run a mix of SELECT,
//!    FETCH (FLAGS / ENVELOPE / BODY[]), SEARCH, STORE, APPEND, EXPUNGE and
//!    IDLE; operations/s and p50/p99 latency per command are printed.
//! 2. `FETCH 1:* ENVELOPE` over the whole 1,000-message mailbox, timed.
//! 3. N (default 10,000) idle authenticated connections: the server's RSS
//!    before and after, per connection.
//!
//! The server is the release `tiermail` binary in its own process, so its
//! RSS is its own.
//!
//!     cargo bench --bench imap_load
//!     cargo bench --bench imap_load -- --quick
//!     cargo bench --bench imap_load -- --clients 16 --messages 1000 --idle 10000 --seconds 10

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "bench";

struct Args {
    clients: usize,
    messages: usize,
    idle: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        clients: 16,
        messages: 1000,
        idle: 10_000,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the option")
        };
        match arg.as_str() {
            "--quick" => {
                a.messages = 300;
                a.idle = 2000;
                a.seconds = 3;
            }
            "--clients" => a.clients = num(),
            "--messages" => a.messages = num(),
            "--idle" => a.idle = num(),
            "--seconds" => a.seconds = num() as u64,
            _ => {}
        }
    }
    a
}

/// A raw IMAP client: tagged commands, responses read up to the tag.
struct Imap {
    s: TcpStream,
    buf: Vec<u8>,
    n: u64,
}

impl Imap {
    async fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        let mut c = Imap {
            s,
            buf: Vec::new(),
            n: 0,
        };
        c.read_until(b"* OK").await;
        c
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads lines (and their literals) until one starts with `prefix`.
    async fn read_until(&mut self, prefix: &[u8]) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let pos = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill().await;
            };
            let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
            let done = line.starts_with(prefix);
            if let Some(len) = literal_len(&line) {
                while self.buf.len() < len {
                    self.fill().await;
                }
                all.extend(self.buf.drain(..len));
                // The line continues after the literal.
                all.extend_from_slice(&line);
                continue;
            }
            all.extend_from_slice(&line);
            if done {
                return all;
            }
        }
    }

    async fn cmd(&mut self, text: &str) -> Vec<u8> {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.s
            .write_all(format!("{tag} {text}\r\n").as_bytes())
            .await
            .unwrap();
        let out = self.read_until(format!("{tag} ").as_bytes()).await;
        let last = out.rsplit(|&c| c == b'\n').nth(1).unwrap_or(b"");
        assert!(
            last.starts_with(format!("{tag} OK").as_bytes()),
            "{text}: {}",
            String::from_utf8_lossy(last)
        );
        out
    }

    async fn append(&mut self, mailbox: &str, msg: &[u8]) {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.s
            .write_all(format!("{tag} APPEND {mailbox} {{{}+}}\r\n", msg.len()).as_bytes())
            .await
            .unwrap();
        self.s.write_all(msg).await.unwrap();
        self.s.write_all(b"\r\n").await.unwrap();
        self.read_until(format!("{tag} OK").as_bytes()).await;
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&c| c == b'{')?;
    std::str::from_utf8(&l[open + 1..]).ok()?.parse().ok()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    child: Child,
    imap: SocketAddr,
    smtp: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path, users: usize) -> Server {
    let h = tiermail::auth::hash_password_with(PASSWORD, tiermail::auth::test_params()).unwrap();
    let mut t = String::new();
    for i in 0..users {
        t.push_str(&format!(
            "[[user]]\naddress = \"user{i}@example.test\"\npassword = \"{h}\"\n\n"
        ));
    }
    std::fs::write(dir.join("users.toml"), t).unwrap();
    let d = dir.display();
    let cfg = format!(
        "[server]\ndata_dir = \"{d}/data\"\nlog = \"warn\"\n[users]\nfile = \"{d}/users.toml\"\n\
         [smtp]\nlisten = \"127.0.0.1:0\"\nsubmission_listen = \"\"\nsubmissions_listen = \"\"\nlmtp_listen = \"\"\n\
         [imap]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"\"\nallow_plaintext_auth = true\n\
         [tls]\ncert = \"{d}/c.crt\"\nkey = \"{d}/c.key\"\n\
         [limits]\nmax_connections = 20000\nmax_auth_failures = 1000000\n\
         max_unauthenticated_per_ip = 20000\nmax_auth_checks_per_ip = 64\n"
    );
    std::fs::write(dir.join("t.toml"), cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tiermail"))
        .arg("--config")
        .arg(dir.join("t.toml"))
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("tiermail binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = |k: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    Server {
        imap: addr("imap"),
        smtp: addr("smtp"),
        child,
    }
}

/// Fills user{u}'s INBOX with `n` corpus messages over SMTP (pipelined).
async fn fill(smtp: SocketAddr, u: usize, n: usize) {
    let mut s = TcpStream::connect(smtp).await.unwrap();
    let mut r = Vec::new();
    let mut buf = [0u8; 4096];
    s.write_all(b"EHLO bench.test\r\n").await.unwrap();
    let mut want = 2; // greeting + EHLO
    for i in 0..n {
        let msg = tiermail::corpus::message(99, (u * 100_000 + i) as u64, "x@example.test");
        let mut m =
            format!("MAIL FROM:<load@remote.test>\r\nRCPT TO:<user{u}@example.test>\r\nDATA\r\n")
                .into_bytes();
        s.write_all(&m).await.unwrap();
        want += 3;
        // Wait for the 354 before the body.
        while count_lines(&r) < want {
            let k = s.read(&mut buf).await.unwrap();
            r.extend_from_slice(&buf[..k]);
        }
        m.clear();
        m.extend_from_slice(&msg);
        m.extend_from_slice(b".\r\n");
        s.write_all(&m).await.unwrap();
        want += 1;
    }
    while count_lines(&r) < want {
        let k = s.read(&mut buf).await.unwrap();
        r.extend_from_slice(&buf[..k]);
    }
}

fn count_lines(r: &[u8]) -> usize {
    r.split(|&c| c == b'\n')
        .filter(|l| l.len() > 3 && l[3] == b' ')
        .count()
}

#[derive(Default)]
struct Stats(BTreeMap<&'static str, Vec<Duration>>);

impl Stats {
    fn add(&mut self, k: &'static str, d: Duration) {
        self.0.entry(k).or_default().push(d);
    }
}

async fn worker(addr: SocketAddr, u: usize, messages: usize, until: Instant) -> Stats {
    let mut st = Stats::default();
    let mut c = Imap::connect(addr).await;
    c.cmd(&format!("LOGIN user{u}@example.test {PASSWORD}"))
        .await;
    let mut rng = tiermail::corpus::Rng::new(u as u64);
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let t = Instant::now();
        c.cmd("SELECT INBOX").await;
        st.add("SELECT", t.elapsed());
        let n = 1 + rng.below(messages as u64);
        let t = Instant::now();
        c.cmd("FETCH 1:* (FLAGS)").await;
        st.add("FETCH 1:* FLAGS", t.elapsed());
        let t = Instant::now();
        let lo = n.saturating_sub(50).max(1);
        c.cmd(&format!("FETCH {lo}:{n} (ENVELOPE)")).await;
        st.add("FETCH 50 ENVELOPE", t.elapsed());
        let t = Instant::now();
        c.cmd(&format!("FETCH {n} BODY.PEEK[]")).await;
        st.add("FETCH BODY[]", t.elapsed());
        let t = Instant::now();
        c.cmd("SEARCH UNSEEN SUBJECT report").await;
        st.add("SEARCH", t.elapsed());
        let t = Instant::now();
        c.cmd(&format!("STORE {n} +FLAGS (\\Seen)")).await;
        st.add("STORE", t.elapsed());
        let msg = tiermail::corpus::message(5, i, "x@example.test");
        let t = Instant::now();
        c.append("INBOX", &msg).await;
        st.add("APPEND", t.elapsed());
        let t = Instant::now();
        c.cmd("STORE * +FLAGS.SILENT (\\Deleted)").await;
        c.cmd("EXPUNGE").await;
        st.add("STORE+EXPUNGE", t.elapsed());
        let t = Instant::now();
        c.n += 1;
        let tag = format!("t{}", c.n);
        c.s.write_all(format!("{tag} IDLE\r\n").as_bytes())
            .await
            .unwrap();
        c.read_until(b"+ ").await;
        c.s.write_all(b"DONE\r\n").await.unwrap();
        c.read_until(format!("{tag} OK").as_bytes()).await;
        st.add("IDLE+DONE", t.elapsed());
    }
    st
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::tempdir_in(&base).unwrap();
    let server = start_server(dir.path(), a.clients.max(1));
    rt.block_on(async {
        let t = Instant::now();
        let fills: Vec<_> = (0..a.clients)
            .map(|u| tokio::spawn(fill(server.smtp, u, a.messages)))
            .collect();
        for f in fills {
            f.await.unwrap();
        }
        println!(
            "tiermail imap_load: {} clients x {} messages loaded in {:.1}s",
            a.clients,
            a.messages,
            t.elapsed().as_secs_f64()
        );

        // FETCH ENVELOPE of a whole 1,000-message mailbox.
        let mut c = Imap::connect(server.imap).await;
        c.cmd(&format!("LOGIN user0@example.test {PASSWORD}")).await;
        c.cmd("SELECT INBOX").await;
        let mut times = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            c.cmd("FETCH 1:* (ENVELOPE)").await;
            times.push(t.elapsed());
        }
        println!(
            "FETCH 1:{} (ENVELOPE): p50 {:.1} ms, best {:.1} ms",
            a.messages,
            pct(&mut times, 0.5),
            pct(&mut times, 0.0)
        );
        drop(c);

        // The command mix.
        let until = Instant::now() + Duration::from_secs(a.seconds);
        let started = Instant::now();
        let ws: Vec<_> = (0..a.clients)
            .map(|u| tokio::spawn(worker(server.imap, u, a.messages, until)))
            .collect();
        let mut all = Stats::default();
        for w in ws {
            for (k, v) in w.await.unwrap().0 {
                all.0.entry(k).or_default().extend(v);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("| command | ops | ops/s | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|");
        for (k, v) in all.0.iter_mut() {
            let n = v.len();
            println!(
                "| {k} | {n} | {:.0} | {:.2} | {:.2} |",
                n as f64 / secs,
                pct(v, 0.5),
                pct(v, 0.99)
            );
        }

        // Idle authenticated connections.
        let pid = server.child.id();
        let before = rss_kib(pid);
        let mut conns = Vec::with_capacity(a.idle);
        let batch = 200;
        for start in (0..a.idle).step_by(batch) {
            let tasks: Vec<_> = (start..(start + batch).min(a.idle))
                .map(|i| {
                    let addr = server.imap;
                    let u = i % a.clients.max(1);
                    tokio::spawn(async move {
                        let mut c = Imap::connect(addr).await;
                        c.cmd(&format!("LOGIN user{u}@example.test {PASSWORD}")).await;
                        c
                    })
                })
                .collect();
            for t in tasks {
                conns.push(t.await.unwrap());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        println!(
            "{} idle authenticated connections: server RSS {} MiB -> {} MiB, {:.1} KiB per connection",
            conns.len(),
            before / 1024,
            after / 1024,
            (after.saturating_sub(before)) as f64 / conns.len() as f64
        );
        drop(conns);
    });
}
