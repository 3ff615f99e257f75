//! `tiermail-load`: the load generator of the side-by-side benchmarks
//! (benches/peers/run.sh). It speaks plain SMTP, LMTP and IMAP to any
//! server on loopback, so tiermail and its peers get exactly the same load,
//! and prints one JSON object per run.
//!
//!   tiermail-load users --count 5000 --password pw --tiermail users.toml --dovecot passwd
//!   tiermail-load deliver --addr 127.0.0.1:2424 --lmtp --sessions 16 --messages 5000 --size 4096
//!   tiermail-load imap --addr 127.0.0.1:1143 --clients 16 --seconds 10 --password pw
//!   tiermail-load idle --addr 127.0.0.1:1143 --count 5000 --users 16 --password pw
//!   tiermail-load maildir --dir mail/example.test/bench0 --messages 100000
//!   tiermail-load probe --addr 127.0.0.1:1143 --user 0 --password pw --rounds 200
//!   tiermail-load imap-stress --addr 127.0.0.1:1143 --clients 10 --seconds 30 --user u@x --password pw

// Input from the network or disk must never panic: no unwrap outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod stress;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The load generator shares the machine with the server it measures: with
/// glibc's malloc a third of the stress checker's CPU went to allocation
/// (many small, short-lived response values); mimalloc's thread-local free
/// lists leave more of the two cores to the server. (The server keeps the
/// system allocator: mimalloc's retained pages broke its RSS bounds.)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tiermail-load",
    about = "Load generator for the peer benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The IMAP stress checker: clients of one user pipelining a random
    /// command mix; reports protocol violations, stalls and commands/s.
    ImapStress(stress::Args),
    /// Writes user files for tiermail (users.toml) and Dovecot (passwd-file).
    Users {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        password: String,
        #[arg(long)]
        tiermail: PathBuf,
        #[arg(long)]
        dovecot: PathBuf,
    },
    /// Delivers messages over SMTP or LMTP, one recipient each.
    Deliver {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        lmtp: bool,
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Message size in bytes; 0 = the mixed MIME corpus.
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        users: usize,
        /// First user number (users are bench<offset>..bench<offset+users-1>).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Deliver to this one user number only.
        #[arg(long)]
        only_user: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The IMAP command mix, one client per user.
    Imap {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Messages in each mailbox (FETCH picks among them).
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long)]
        password: String,
    },
    /// APPENDs aged messages (internal date `days` ago) to users' INBOXes
    /// over IMAP, one session per user.
    Append {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 16)]
        users: usize,
        /// Messages per user.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        #[arg(long, default_value_t = 400)]
        days: i64,
        #[arg(long)]
        password: String,
    },
    /// Latencies on one user's big mailbox, with a second session making
    /// changes: SELECT, STATUS (MESSAGES UNSEEN), NOOP after the other
    /// session's flag change, SEARCH UNSEEN (median and p99 in ms).
    Probe {
        #[arg(long)]
        addr: SocketAddr,
        /// User number (bench<N>).
        #[arg(long)]
        user: usize,
        #[arg(long)]
        password: String,
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// Which measurements: any of select,status,noop,search.
        #[arg(long, default_value = "select,status,noop,search")]
        only: String,
    },
    /// Writes corpus messages (as `deliver --size 0` sends them) straight
    /// into a Maildir's `new/`, for filling a Dovecot mailbox far faster
    /// than its LMTP can (the benchmark's fill is not what is measured).
    Maildir {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        messages: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Opens N logged-in idle connections, prints `ready N`, holds them
    /// until standard input closes.
    Idle {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        users: usize,
        #[arg(long)]
        password: String,
    },
}

fn user(i: usize) -> String {
    format!("bench{i}@example.test")
}

/// A fixed-size message with realistic headers, or a corpus message.
fn message(size: usize, seed: u64, n: usize) -> Vec<u8> {
    if size == 0 {
        return tiermail::corpus::message(seed, n as u64, "bench@example.test");
    }
    let mut m = format!(
        "From: Load <load@remote.test>\r\nTo: bench@example.test\r\nSubject: load {n}\r\n\
         Message-ID: <{n}.{seed}@remote.test>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\n"
    )
    .into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.resize(size.saturating_sub(2).max(m.len()), b'x');
    m.extend_from_slice(b"\r\n");
    m
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn { s, buf: Vec::new() })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 65536];
        let n = self.s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..p + 2).collect());
            }
            self.fill().await?;
        }
    }

    /// One SMTP reply (multi-line aware); errors unless it starts with `code`.
    async fn reply(&mut self, code: &str) -> std::io::Result<()> {
        loop {
            let l = self.line().await?;
            if l.len() >= 4 && l[3] == b'-' {
                continue;
            }
            if l.starts_with(code.as_bytes()) {
                return Ok(());
            }
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&l).into_owned(),
            ));
        }
    }

    /// IMAP: lines (with literals) until one starts with `prefix`.
    async fn until(&mut self, prefix: &[u8]) -> std::io::Result<Vec<u8>> {
        loop {
            let l = self.line().await?;
            if let Some(n) = literal_len(&l) {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.drain(..n);
                continue;
            }
            if l.starts_with(prefix) {
                return Ok(l);
            }
        }
    }
}

fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&c| c == b'{')?;
    std::str::from_utf8(&l[open + 1..])
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

#[allow(clippy::too_many_arguments)]
async fn deliver_session(
    addr: SocketAddr,
    lmtp: bool,
    count: usize,
    size: usize,
    users: usize,
    only: Option<usize>,
    offset: usize,
    seed: u64,
    next: Arc<AtomicUsize>,
) -> std::io::Result<Vec<Duration>> {
    let mut c = Conn::connect(addr).await?;
    c.reply("220").await?;
    let hello = if lmtp { "LHLO" } else { "EHLO" };
    c.s.write_all(format!("{hello} load.test\r\n").as_bytes())
        .await?;
    c.reply("250").await?;
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let to = user(only.unwrap_or(offset + n % users.max(1)));
        let env = format!("MAIL FROM:<load@remote.test>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
        c.s.write_all(env.as_bytes()).await?;
        c.reply("250").await?;
        c.reply("250").await?;
        c.reply("354").await?;
        let mut m = message(size, seed, n);
        m.extend_from_slice(b".\r\n");
        let t = Instant::now();
        c.s.write_all(&m).await?;
        c.reply("250").await?;
        lat.push(t.elapsed());
    }
    c.s.write_all(b"QUIT\r\n").await?;
    Ok(lat)
}

struct Imap {
    c: Conn,
    n: u64,
}

impl Imap {
    async fn login(addr: SocketAddr, u: usize, password: &str) -> std::io::Result<Imap> {
        let mut c = Conn::connect(addr).await?;
        c.until(b"* OK").await?;
        let mut i = Imap { c, n: 0 };
        i.cmd(&format!("LOGIN {} \"{password}\"", user(u))).await?;
        Ok(i)
    }

    async fn cmd(&mut self, text: &str) -> std::io::Result<()> {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.c
            .s
            .write_all(format!("{tag} {text}\r\n").as_bytes())
            .await?;
        let last = self.c.until(format!("{tag} ").as_bytes()).await?;
        if !last.starts_with(format!("{tag} OK").as_bytes()) {
            return Err(std::io::Error::other(format!(
                "{text}: {}",
                String::from_utf8_lossy(&last)
            )));
        }
        Ok(())
    }
}

async fn imap_client(
    addr: SocketAddr,
    u: usize,
    messages: usize,
    password: String,
    until: Instant,
) -> std::io::Result<BTreeMap<&'static str, Vec<Duration>>> {
    let mut st: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let mut c = Imap::login(addr, u, &password).await?;
    let mut rng = tiermail::corpus::Rng::new(u as u64);
    let mut i = 0usize;
    macro_rules! timed {
        ($name:expr, $e:expr) => {{
            let t = Instant::now();
            $e;
            st.entry($name).or_default().push(t.elapsed());
        }};
    }
    while Instant::now() < until {
        i += 1;
        let n = 1 + rng.below(messages as u64);
        timed!("SELECT", c.cmd("SELECT INBOX").await?);
        timed!("FETCH 1:* (FLAGS)", c.cmd("FETCH 1:* (FLAGS)").await?);
        let lo = n.saturating_sub(49).max(1);
        timed!(
            "FETCH 50 ENVELOPE",
            c.cmd(&format!("FETCH {lo}:{n} (ENVELOPE)")).await?
        );
        timed!(
            "FETCH BODY.PEEK[]",
            c.cmd(&format!("FETCH {n} BODY.PEEK[]")).await?
        );
        timed!(
            "SEARCH UNSEEN SUBJECT",
            c.cmd("SEARCH UNSEEN SUBJECT report").await?
        );
        timed!(
            "STORE +FLAGS",
            c.cmd(&format!("STORE {n} +FLAGS (\\Seen)")).await?
        );
        let msg = tiermail::corpus::message(5, (u * 1_000_000 + i) as u64, "bench@example.test");
        timed!("APPEND", {
            c.n += 1;
            let tag = format!("t{}", c.n);
            c.c.s
                .write_all(format!("{tag} APPEND INBOX {{{}+}}\r\n", msg.len()).as_bytes())
                .await?;
            c.c.s.write_all(&msg).await?;
            c.c.s.write_all(b"\r\n").await?;
            c.c.until(format!("{tag} OK").as_bytes()).await?;
        });
        timed!("STORE \\Deleted + EXPUNGE", {
            c.cmd("STORE * +FLAGS.SILENT (\\Deleted)").await?;
            c.cmd("EXPUNGE").await?;
        });
        timed!("IDLE + DONE", {
            c.n += 1;
            let tag = format!("t{}", c.n);
            c.c.s
                .write_all(format!("{tag} IDLE\r\n").as_bytes())
                .await?;
            c.c.until(b"+ ").await?;
            c.c.s.write_all(b"DONE\r\n").await?;
            c.c.until(format!("{tag} OK").as_bytes()).await?;
        });
    }
    Ok(st)
}

/// See `Cmd::Probe`.
async fn probe(
    addr: SocketAddr,
    u: usize,
    password: &str,
    rounds: usize,
    only: &str,
) -> std::io::Result<String> {
    let mut a = Imap::login(addr, u, password).await?;
    let mut b = Imap::login(addr, u, password).await?;
    let mut st: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
    let want = |k: &str| only.split(',').any(|x| x == k);
    if want("select") {
        for _ in 0..rounds {
            let t = Instant::now();
            a.cmd("SELECT INBOX").await?;
            st.entry("select").or_default().push(t.elapsed());
            a.cmd("UNSELECT").await?;
        }
    }
    a.cmd("SELECT INBOX").await?;
    // STATUS from a session that has no mailbox selected, as clients poll
    // their other folders.
    if want("status") {
        for _ in 0..rounds {
            let t = Instant::now();
            b.cmd("STATUS INBOX (MESSAGES UNSEEN)").await?;
            st.entry("status").or_default().push(t.elapsed());
        }
    }
    b.cmd("SELECT INBOX").await?;
    if want("noop") {
        // Each round: the other session flips a flag, then this one's NOOP
        // (which reports it) is timed.
        for i in 0..rounds {
            let sign = if i % 2 == 0 { '+' } else { '-' };
            b.cmd(&format!(
                "STORE {} {sign}FLAGS.SILENT (\\Flagged)",
                1 + i / 2
            ))
            .await?;
            let t = Instant::now();
            a.cmd("NOOP").await?;
            st.entry("noop_after_change").or_default().push(t.elapsed());
        }
    }
    if want("search") {
        for _ in 0..rounds.min(50) {
            let t = Instant::now();
            a.cmd("SEARCH UNSEEN").await?;
            st.entry("search_unseen").or_default().push(t.elapsed());
        }
    }
    let parts: Vec<String> = st
        .iter_mut()
        .map(|(k, v)| {
            let n = v.len();
            let med = pct(v, 0.5);
            let p99 = pct(v, 0.99);
            format!("\"{k}\": {{\"n\": {n}, \"median_ms\": {med:.3}, \"p99_ms\": {p99:.3}}}")
        })
        .collect();
    Ok(format!("{{{}}}", parts.join(", ")))
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::ImapStress(args) => {
            let out = stress::run(args).await?;
            println!("{out}");
        }
        Cmd::Maildir {
            dir,
            messages,
            seed,
        } => {
            for sub in ["new", "cur", "tmp"] {
                std::fs::create_dir_all(dir.join(sub))?;
            }
            let now = chrono::Utc::now().timestamp();
            for n in 0..messages {
                let m = message(0, seed, n);
                std::fs::write(dir.join("new").join(format!("{now}.M{n}S{seed}.bench")), m)?;
            }
            println!("{{\"written\": {messages}}}");
        }
        Cmd::Probe {
            addr,
            user,
            password,
            rounds,
            only,
        } => {
            println!("{}", probe(addr, user, &password, rounds, &only).await?);
        }
        Cmd::Users {
            count,
            password,
            tiermail,
            dovecot,
        } => {
            // Cheap hashes on both sides: the benchmark measures mail
            // handling, not password hashing.
            let h = tiermail::auth::hash_password_with(&password, tiermail::auth::test_params())?;
            let mut t = String::new();
            let mut d = String::new();
            for i in 0..count {
                t.push_str(&format!(
                    "[[user]]\naddress = \"{}\"\npassword = \"{h}\"\n\n",
                    user(i)
                ));
                d.push_str(&format!("{}:{{PLAIN}}{password}::::::\n", user(i)));
            }
            std::fs::write(tiermail, t)?;
            std::fs::write(dovecot, d)?;
        }
        Cmd::Deliver {
            addr,
            lmtp,
            sessions,
            messages,
            size,
            users,
            offset,
            only_user,
            seed,
        } => {
            let next = Arc::new(AtomicUsize::new(0));
            let t = Instant::now();
            let tasks: Vec<_> = (0..sessions)
                .map(|i| {
                    let count = messages / sessions + usize::from(i < messages % sessions);
                    tokio::spawn(deliver_session(
                        addr,
                        lmtp,
                        count,
                        size,
                        users,
                        only_user,
                        offset,
                        seed,
                        next.clone(),
                    ))
                })
                .collect();
            let mut lat = Vec::new();
            for task in tasks {
                lat.extend(task.await??);
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{{\"messages\": {}, \"secs\": {secs:.3}, \"msg_per_s\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
                lat.len(),
                lat.len() as f64 / secs,
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99)
            );
        }
        Cmd::Imap {
            addr,
            clients,
            seconds,
            messages,
            password,
        } => {
            let until = Instant::now() + Duration::from_secs(seconds);
            let t = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|u| tokio::spawn(imap_client(addr, u, messages, password.clone(), until)))
                .collect();
            let mut all: BTreeMap<&'static str, Vec<Duration>> = BTreeMap::new();
            for task in tasks {
                for (k, v) in task.await?? {
                    all.entry(k).or_default().extend(v);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            let parts: Vec<String> = all
                .iter_mut()
                .map(|(k, v)| {
                    format!(
                        "{}: {{\"ops_per_s\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
                        json_str(k),
                        v.len() as f64 / secs,
                        pct(v, 0.5),
                        pct(v, 0.99)
                    )
                })
                .collect();
            println!("{{{}}}", parts.join(", "));
        }
        Cmd::Append {
            addr,
            users,
            messages,
            days,
            password,
        } => {
            let date =
                chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() - days * 86_400, 0)
                    .unwrap_or_default()
                    .format("%d-%b-%Y %H:%M:%S +0000")
                    .to_string();
            let t = Instant::now();
            let tasks: Vec<_> = (0..users)
                .map(|u| {
                    let (password, date) = (password.clone(), date.clone());
                    tokio::spawn(async move {
                        let mut c = Imap::login(addr, u, &password).await?;
                        for n in 0..messages {
                            let msg = tiermail::corpus::message(
                                11,
                                (u * 1_000_000 + n) as u64,
                                "bench@example.test",
                            );
                            c.n += 1;
                            let tag = format!("t{}", c.n);
                            c.c.s
                                .write_all(
                                    format!("{tag} APPEND INBOX \"{date}\" {{{}+}}\r\n", msg.len())
                                        .as_bytes(),
                                )
                                .await?;
                            c.c.s.write_all(&msg).await?;
                            c.c.s.write_all(b"\r\n").await?;
                            let last = c.c.until(format!("{tag} ").as_bytes()).await?;
                            if !last.starts_with(format!("{tag} OK").as_bytes()) {
                                return Err(std::io::Error::other(
                                    String::from_utf8_lossy(&last).into_owned(),
                                ));
                            }
                        }
                        Ok::<_, std::io::Error>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            println!(
                "{{\"messages\": {}, \"secs\": {:.3}}}",
                users * messages,
                t.elapsed().as_secs_f64()
            );
        }
        Cmd::Idle {
            addr,
            count,
            users,
            password,
        } => {
            let mut conns = Vec::with_capacity(count);
            for start in (0..count).step_by(100) {
                let tasks: Vec<_> = (start..(start + 100).min(count))
                    .map(|i| {
                        let password = password.clone();
                        tokio::spawn(async move {
                            let mut c = Imap::login(addr, i % users.max(1), &password).await?;
                            c.cmd("SELECT INBOX").await?;
                            Ok::<_, std::io::Error>(c)
                        })
                    })
                    .collect();
                for task in tasks {
                    conns.push(task.await??);
                }
            }
            println!("ready {}", conns.len());
            let mut rest = Vec::new();
            tokio::io::stdin().read_to_end(&mut rest).await?;
            drop(conns);
        }
    }
    Ok(())
}
