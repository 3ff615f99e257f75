//! Shared test harness: a tiermail server on 127.0.0.1 port 0 with its own
//! temporary directory, a few users with cheap password hashes, and a raw
//! SMTP client that reads like a transcript.
#![allow(dead_code)]

pub mod daemon;
pub mod imap;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tiermail::config::Config;
use tiermail::server::Server;
use tiermail::store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PASSWORD: &str = "correct horse";

/// Writes a users file: alice (alias al@), bob, carol, postmaster alias on carol.
pub fn write_users(path: &Path) {
    let h = tiermail::auth::hash_password_with(PASSWORD, tiermail::auth::test_params()).unwrap();
    let text = format!(
        "[[user]]\naddress = \"alice@example.test\"\npassword = \"{h}\"\naliases = [\"al@example.test\"]\n\n\
         [[user]]\naddress = \"bob@example.test\"\npassword = \"{h}\"\n\n\
         [[user]]\naddress = \"carol@example.test\"\npassword = \"{h}\"\naliases = [\"postmaster@example.test\"]\n"
    );
    std::fs::write(path, text).unwrap();
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub config: Config,
    server: Option<Server>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_testing(dir.path());
        write_users(&config.users.file);
        f(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            dir,
            config,
            server: Some(server),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }
    pub fn smtp(&self) -> SocketAddr {
        self.server().bound.smtp.unwrap()
    }
    pub fn submission(&self) -> SocketAddr {
        self.server().bound.submission.unwrap()
    }
    pub fn submissions(&self) -> SocketAddr {
        self.server().bound.submissions.unwrap()
    }
    pub fn lmtp(&self) -> SocketAddr {
        self.server().bound.lmtp.unwrap()
    }
    pub fn imap(&self) -> SocketAddr {
        self.server().bound.imap.unwrap()
    }
    pub fn imaps(&self) -> SocketAddr {
        self.server().bound.imaps.unwrap()
    }
    pub fn app(&self) -> Arc<tiermail::server::App> {
        self.server().app.clone()
    }
    pub fn store(&self) -> Arc<Store> {
        self.server().app.store.clone()
    }

    /// Every message in a user's INBOX, by UID.
    pub async fn inbox(&self, user: &str) -> Vec<Vec<u8>> {
        inbox_of(&self.store(), user).await
    }

    /// Stops the server and starts it again on the same data (everything
    /// acknowledged must be there again).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let server = Server::start(self.config.clone())
            .await
            .expect("server restarts");
        self.server = Some(server);
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.token().cancel();
        }
    }
}

pub async fn inbox_of(store: &Arc<Store>, user: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let msgs = match store.messages(user, "INBOX").await {
        Ok(m) => m,
        Err(tiermail::store::StoreError::NoSuchMailbox(_)) => return out,
        Err(e) => panic!("{e}"),
    };
    for (uid, _) in msgs {
        out.push(store.raw(user, "INBOX", uid).await.unwrap().unwrap());
    }
    out
}

/// Splits a stored message into (trace headers, the bytes the client sent),
/// asserting the trace part is exactly our Return-Path + Received headers.
pub fn strip_trace(stored: &[u8]) -> (&[u8], &[u8]) {
    assert!(
        stored.starts_with(b"Return-Path: <"),
        "{}",
        String::from_utf8_lossy(stored)
    );
    let text = stored;
    let mut pos = text.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    assert!(text[pos..].starts_with(b"Received: from "));
    // Received: is folded over continuation lines starting with a tab.
    loop {
        let next = text[pos..].windows(2).position(|w| w == b"\r\n").unwrap() + pos + 2;
        pos = next;
        if text.get(pos) != Some(&b'\t') {
            break;
        }
    }
    (&stored[..pos], &stored[pos..])
}

/// The client's bytes of a stored message, trace headers removed if present.
pub fn strip_trace_opt(stored: &[u8]) -> Vec<u8> {
    if stored.starts_with(b"Return-Path: <") {
        strip_trace(stored).1.to_vec()
    } else {
        stored.to_vec()
    }
}

/// A plain or TLS stream for the transcript client.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Client {
    pub stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl Client {
    /// Wraps a connected stream without reading the greeting.
    pub fn unread(stream: impl Stream + 'static) -> Client {
        Client {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut c = Client {
            stream: Box::new(tcp),
            buf: Vec::new(),
        };
        let greet = c.reply().await;
        assert!(greet.starts_with("220 "), "greeting: {greet}");
        c
    }

    /// Connects with implicit TLS (no certificate check: the test cert is self-signed).
    pub async fn connect_tls(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls_connect(tcp).await;
        let mut c = Client {
            stream: Box::new(tls),
            buf: Vec::new(),
        };
        let greet = c.reply().await;
        assert!(greet.starts_with("220 "), "greeting: {greet}");
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; returns all its lines joined by \n.
    pub async fn reply(&mut self) -> String {
        self.try_reply()
            .await
            .expect("connection closed before a reply")
    }

    pub async fn try_reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Some(String::from_utf8_lossy(&l[..p]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
                .await
                .expect("reply within 20s")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command line and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a command and asserts the reply starts with `prefix`.
    pub async fn expect(&mut self, line: &str, prefix: &str) -> String {
        let r = self.cmd(line).await;
        assert!(
            r.starts_with(prefix),
            "C: {line}\nS: {r}\n(expected {prefix})"
        );
        r
    }

    /// Full transaction helper: MAIL, RCPTs, DATA, body (already dot-stuffed, ending CRLF).
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250").await;
        for r in rcpts {
            self.expect(&format!("RCPT TO:<{r}>"), "250").await;
        }
        self.expect("DATA", "354").await;
        self.send(body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Connects, says EHLO, upgrades with STARTTLS and returns a TLS transcript client.
pub async fn starttls_client(addr: SocketAddr) -> Client {
    use tokio::io::AsyncBufReadExt;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut r = tokio::io::BufReader::new(tcp);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "));
    r.get_mut()
        .write_all(b"EHLO client.test\r\n")
        .await
        .unwrap();
    let mut saw_starttls = false;
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        saw_starttls |= line.contains("STARTTLS");
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    assert!(saw_starttls, "STARTTLS advertised");
    r.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    line.clear();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "), "{line}");
    let tcp = r.into_inner();
    let tls = tls_connect(tcp).await;
    Client {
        stream: Box::new(tls),
        buf: Vec::new(),
    }
}

pub async fn tls_connect(tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Base64 of `\0user\0password` for AUTH PLAIN.
pub fn plain(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

/// Fails (never skips) when a real peer is missing; `.ci/run` installs it.
pub fn require(tool: &str, package: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} || test -x /usr/sbin/{tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: apt-get install -y {package} (bash .ci/run does this)"
    );
}

/// Copies the checked-in format 1 store (tests/data/store-v1: two storage
/// groups and their users file) into `dir` as `dir/data` and
/// `dir/users.toml`.
pub fn install_store_v1(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1");
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    copy_dir(&src.join("groups"), &dir.join("data/groups"));
    std::fs::copy(src.join("users.toml"), dir.join("users.toml")).unwrap();
}

/// UID, flags and bytes of one message.
type ExpectedMessage = (u32, Vec<String>, Vec<u8>);

/// Asserts that `store` holds exactly what the format 1 store held (every
/// message's UID, flags and bytes, from tests/data/store-v1/expected.toml).
pub async fn assert_store_v1_contents(store: &Arc<Store>) {
    use base64::Engine;
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1/expected.toml"),
    )
    .unwrap();
    let want: toml::Table = text.parse().unwrap();
    let mut expected: std::collections::BTreeMap<(String, String), Vec<ExpectedMessage>> =
        Default::default();
    for m in want["message"].as_array().unwrap() {
        let get = |k: &str| m[k].as_str().unwrap().to_string();
        let flags = m["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        let body = base64::engine::general_purpose::STANDARD
            .decode(get("body"))
            .unwrap();
        expected
            .entry((get("user"), get("mailbox")))
            .or_default()
            .push((m["uid"].as_integer().unwrap() as u32, flags, body));
    }
    assert!(expected.len() >= 4);
    for user in [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ] {
        for (name, _) in store.mailboxes(user).await.unwrap() {
            let mut got = Vec::new();
            for (uid, meta) in store.messages(user, &name).await.unwrap() {
                let raw = store.raw(user, &name, uid).await.unwrap().unwrap();
                assert_eq!(raw.len() as u32, meta.size, "{user} {name} {uid}: size");
                got.push((uid, meta.flags, raw));
            }
            let want = expected
                .remove(&(user.to_string(), name.clone()))
                .unwrap_or_default();
            assert_eq!(got.len(), want.len(), "{user} {name}: message count");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "{user} {name}: UID");
                assert_eq!(g.1, w.1, "{user} {name} {}: flags", g.0);
                assert!(g.2 == w.2, "{user} {name} {}: bytes differ", g.0);
            }
        }
    }
    assert!(
        expected.is_empty(),
        "mailboxes missing: {:?}",
        expected.keys()
    );
}

/// Expunges every message of `user`'s INBOX (UIDs 1..=n) but every tenth.
pub async fn keep_every_tenth(store: &Arc<Store>, user: &str, n: u32) {
    let inbox = store.mailbox(user, "INBOX").await.unwrap().unwrap().id;
    let gone: Vec<u32> = (1..=n).filter(|u| u % 10 != 0).collect();
    store
        .submit(
            user,
            tiermail::store::Op::Expunge {
                mailbox_id: inbox,
                uids: gone,
            },
        )
        .await
        .unwrap();
}
