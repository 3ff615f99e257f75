//! A raw IMAP client for transcript tests: sends bytes, reads responses
//! with their literals.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::PASSWORD;

/// A TCP connection from `ip` (any 127.0.0.0/8 address works on Linux).
pub async fn tcp_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    s.connect(addr).await.unwrap()
}

/// A raw IMAP connection that reads responses (literals included).
pub struct Imap {
    s: Box<dyn super::Stream>,
    buf: Vec<u8>,
}

impl Imap {
    pub async fn connect(addr: SocketAddr) -> Imap {
        let s = TcpStream::connect(addr).await.unwrap();
        Imap::greeted(Box::new(s)).await
    }

    /// Connects from a chosen loopback source address (per-IP limits count
    /// addresses, so a test can play several clients).
    pub async fn connect_from(ip: &str, addr: SocketAddr) -> Imap {
        Imap::greeted(Box::new(tcp_from(ip, addr).await)).await
    }

    /// Implicit TLS (the test certificate is not checked).
    pub async fn connect_tls(addr: SocketAddr) -> Imap {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Imap::greeted(Box::new(super::tls_connect(tcp).await)).await
    }

    /// Wraps a stream that has already been greeted (after STARTTLS).
    pub fn from_stream(s: Box<dyn super::Stream>) -> Imap {
        Imap { s, buf: Vec::new() }
    }

    async fn greeted(s: Box<dyn super::Stream>) -> Imap {
        let mut c = Imap { s, buf: Vec::new() };
        let g = c.line().await;
        assert!(g.starts_with("* OK"), "{g}");
        c
    }

    pub async fn login(addr: SocketAddr, user: &str) -> Imap {
        let mut c = Imap::connect(addr).await;
        c.log_in(user).await;
        c
    }

    pub async fn log_in(&mut self, user: &str) {
        let c = self;
        let r = c.run(&format!("L LOGIN {user} \"{PASSWORD}\"")).await;
        assert!(r.ends_with("L OK [CAPABILITY IMAP4REV1 SASL-IR LITERAL+ ENABLE IDLE NAMESPACE ID UNSELECT UIDPLUS MOVE CONDSTORE QRESYNC BINARY STATUS=SIZE SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT LIST-EXTENDED LIST-STATUS SPECIAL-USE CHILDREN] Logged in\r\n"), "{r}");
    }

    pub async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// Like `send`, but a connection the server closed is not a failure.
    pub async fn try_send(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).await.is_ok()
    }

    /// Whether the server closed the connection (within 20 s), reading and
    /// dropping whatever it still sent.
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// One response line; a line ending in `{n}` takes its literal and the
    /// rest of the line with it.
    pub async fn line(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let pos = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill().await;
            };
            let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
            out.extend_from_slice(&line);
            let body = &line[..pos];
            let lit = body
                .strip_suffix(b"}")
                .and_then(|b| b.iter().rposition(|&c| c == b'{').map(|i| &b[i + 1..]))
                .and_then(|n| {
                    std::str::from_utf8(n)
                        .ok()?
                        .trim_end_matches('+')
                        .parse::<usize>()
                        .ok()
                });
            match lit {
                Some(n) => {
                    while self.buf.len() < n {
                        self.fill().await;
                    }
                    out.extend(self.buf.drain(..n));
                }
                None => return String::from_utf8_lossy(&out).into_owned(),
            }
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
            .await
            .expect("response within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got so far: {}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Sends a command line; returns every response up to its tagged one.
    pub async fn run(&mut self, cmd: &str) -> String {
        self.send(format!("{cmd}\r\n").as_bytes()).await;
        let tag = cmd.split(' ').next().unwrap().to_string();
        self.until(&tag).await
    }

    pub async fn until(&mut self, tag: &str) -> String {
        let mut all = String::new();
        loop {
            let l = self.line().await;
            all.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                return all;
            }
        }
    }
}
