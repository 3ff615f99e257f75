//! What the in-process benchmarks share: an IMAP client timing FETCHes,
//! an SMTP client timing deliveries, and the percentile they report.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test configuration in a fresh directory under `target/`, logging
/// warnings only, with one user (password `bench`); the directory goes
/// when the guard drops.
pub fn bench_config(user: &str) -> (tempfile::TempDir, tiermail::config::Config) {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut cfg = tiermail::config::Config::for_testing(dir.path());
    cfg.server.log = "warn".into();
    let h = tiermail::auth::hash_password_with("bench", tiermail::auth::test_params()).unwrap();
    std::fs::write(
        &cfg.users.file,
        format!("[[user]]\naddress = \"{user}\"\npassword = \"{h}\"\n"),
    )
    .unwrap();
    (dir, cfg)
}

/// Reads until a line starting with `tag` has arrived; drops it and what
/// came before.
pub async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, tag: &[u8]) {
    let mut chunk = vec![0u8; 65536];
    loop {
        if let Some(p) = buf.windows(tag.len()).position(|w| w == tag)
            && let Some(e) = buf[p..].windows(2).position(|w| w == b"\r\n")
        {
            buf.drain(..p + e + 2);
            return;
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `reader@example.test` (password `bench`) fetching one of the first 50
/// bodies of its INBOX after another, `think` apart, until `stop`;
/// latencies in ms.
pub async fn fetcher(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    think: Duration,
) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"* OK").await;
    s.write_all(b"a LOGIN reader@example.test bench\r\nb SELECT INBOX\r\n")
        .await
        .unwrap();
    read_until(&mut s, &mut buf, b"b OK").await;
    let mut lat = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let t = Instant::now();
        s.write_all(format!("f{i} FETCH {} BODY.PEEK[]\r\n", 1 + i % 50).as_bytes())
            .await
            .unwrap();
        read_until(&mut s, &mut buf, format!("f{i} OK").as_bytes()).await;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    lat
}

/// One SMTP session delivering 4 KB messages; latency of each (DATA to 250).
pub async fn sender(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"220 ").await;
    s.write_all(b"EHLO bench.test\r\n").await.unwrap();
    read_until(&mut s, &mut buf, b"250 ").await;
    let mut body = b"Subject: latency\r\n\r\n".to_vec();
    while body.len() < 4096 {
        body.extend_from_slice(b"latency probe text latency probe text latency\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        s.write_all(b"MAIL FROM:<p@remote.test>\r\nRCPT TO:<reader@example.test>\r\nDATA\r\n")
            .await
            .unwrap();
        read_until(&mut s, &mut buf, b"354 ").await;
        s.write_all(&body).await.unwrap();
        read_until(&mut s, &mut buf, b"250 ").await;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lat
}

pub fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * 0.99).round() as usize]
}
