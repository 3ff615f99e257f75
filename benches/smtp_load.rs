//! SMTP delivery throughput with full durability.
//!
//! C concurrent sessions deliver N messages to 100 users over loopback into a
//! server in this process; every message counts only once its `250` arrived,
//! i.e. after its WAL record was fsynced. Beside the figures it measures the
//! disk's own fsync rate in the same run: that is the ceiling a server
//! doing one fsync per message could reach, and the ratio shows what group
//! commit buys.
//!
//!     cargo bench --bench smtp_load                 # full matrix
//!     cargo bench --bench smtp_load -- --quick      # a smaller run
//!     cargo bench --bench smtp_load -- --sessions 16 --size 4096 --messages 20000

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tiermail::config::Config;
use tiermail::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USERS: usize = 100;

struct Args {
    sessions: Vec<usize>,
    sizes: Vec<usize>,
    messages: Option<usize>,
    groups: Option<u32>,
}

fn args() -> Args {
    let mut a = Args {
        sessions: vec![1, 16],
        sizes: vec![4096, 65536],
        messages: None,
        groups: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let num = |it: &mut dyn Iterator<Item = String>| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the option")
        };
        match arg.as_str() {
            "--quick" => a.messages = Some(2000),
            "--sessions" => a.sessions = vec![num(&mut it)],
            "--size" => a.sizes = vec![num(&mut it)],
            "--messages" => a.messages = Some(num(&mut it)),
            "--groups" => a.groups = Some(num(&mut it) as u32),
            _ => {} // `--bench` from cargo, filters
        }
    }
    a
}

/// A message of exactly `size` bytes with realistic headers.
fn message(size: usize, n: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Load Generator <load@remote.test>\r\nTo: someone@example.test\r\n\
         Subject: benchmark message {n}\r\nMessage-Id: <{n}@bench.test>\r\n\
         Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.resize(size - 2, b'x');
    m.extend_from_slice(b"\r\n");
    m
}

async fn reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..p + 2).collect();
            if line.len() > 3 && line[3] == b'-' {
                continue;
            }
            return String::from_utf8_lossy(&line).trim_end().to_string();
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn expect(s: &mut TcpStream, buf: &mut Vec<u8>, code: &str) {
    let r = reply(s, buf).await;
    assert!(r.starts_with(code), "expected {code}, got {r}");
}

/// One session: delivers `count` messages, returns each one's latency
/// (from the end of DATA to the 250).
async fn session(
    addr: SocketAddr,
    size: usize,
    count: usize,
    next: Arc<AtomicUsize>,
) -> Vec<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    expect(&mut s, &mut buf, "220").await;
    s.write_all(b"EHLO bench.test\r\n").await.unwrap();
    expect(&mut s, &mut buf, "250").await;
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let user = (n * 7919) % USERS;
        let env = format!(
            "MAIL FROM:<load@remote.test>\r\nRCPT TO:<user{user}@example.test>\r\nDATA\r\n"
        );
        s.write_all(env.as_bytes()).await.unwrap();
        for code in ["250", "250", "354"] {
            expect(&mut s, &mut buf, code).await;
        }
        let mut m = message(size, n);
        m.extend_from_slice(b".\r\n");
        let t = Instant::now();
        s.write_all(&m).await.unwrap();
        expect(&mut s, &mut buf, "250").await;
        lat.push(t.elapsed());
    }
    s.write_all(b"QUIT\r\n").await.unwrap();
    lat
}

/// The disk's own rate of small write + fdatasync, for `dur`.
fn fsync_rate(dir: &Path, dur: Duration) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = [0x5au8; 4096];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < dur {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(path);
    rate
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn write_users(path: &Path) {
    let h = tiermail::auth::hash_password_with("bench", tiermail::auth::test_params()).unwrap();
    let mut t = String::new();
    for i in 0..USERS {
        t.push_str(&format!(
            "[[user]]\naddress = \"user{i}@example.test\"\npassword = \"{h}\"\n\n"
        ));
    }
    std::fs::write(path, t).unwrap();
}

async fn run(groups: Option<u32>, sessions: usize, size: usize, total: usize, fsync_baseline: f64) {
    let base = std::env::var_os("TIERMAIL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut cfg = Config::for_testing(dir.path());
    cfg.server.log = "warn".into();
    cfg.limits.max_message_size = 1 << 20;
    // The load generator plays every client from one address.
    cfg.limits.max_unauthenticated_per_ip = 10_000;
    if let Some(g) = groups {
        cfg.store.groups = g;
    }
    let groups = cfg.store.groups;
    write_users(&cfg.users.file);
    let server = Server::start(cfg).await.expect("server starts");
    let addr = server.bound.smtp.unwrap();
    let store = server.app.store.clone();
    let fsyncs_before: u64 = store.status().unwrap().iter().map(|g| g.fsyncs).sum();

    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let count = total / sessions + usize::from(i < total % sessions);
            tokio::spawn(session(addr, size, count, next.clone()))
        })
        .collect();
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    let status = store.status().unwrap();
    let fsyncs: u64 = status.iter().map(|g| g.fsyncs).sum::<u64>() - fsyncs_before;
    let stored: u64 = status.iter().map(|g| g.messages).sum();
    assert_eq!(
        stored as usize, total,
        "every acknowledged message is stored"
    );
    server.shutdown().await;

    lat.sort();
    let rate = total as f64 / secs;
    println!(
        "| {groups} | {sessions:>2} | {:>5} KB | {total:>6} | {rate:>8.0} | {:>7.1} | {:>7.2} | {:>7.2} | {:>6.3} | {:>6.0} | {:>5.1}x |",
        size / 1024,
        rate * size as f64 / 1e6,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        fsyncs as f64 / total as f64,
        fsync_baseline,
        rate / fsync_baseline,
    );
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    let baseline = fsync_rate(&base, Duration::from_secs(2));
    println!(
        "tiermail smtp_load: {} cores, {USERS} users, disk baseline {baseline:.0} fsync/s (4 KB write + fdatasync)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "| groups | sessions | size | messages | msg/s | MB/s | p50 ms | p99 ms | fsync/msg | disk fsync/s | msg/s ÷ fsync/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &size in &a.sizes {
        for &sessions in &a.sessions {
            let total = a
                .messages
                .unwrap_or(if size > 16384 { 5000 } else { 20000 });
            let total = if sessions == 1 { total / 4 } else { total };
            rt.block_on(run(a.groups, sessions, size, total, baseline));
        }
    }
}
