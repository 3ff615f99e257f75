//! One SMTP or LMTP connection as a state machine.
//!
//! Bytes are framed here (command lines with a hard length limit, DATA via
//! smtp-proto's dot-unstuffing receiver, BDAT chunks by count) and complete
//! commands are parsed by smtp-proto. Replies are queued and flushed only
//! when the session needs more input, which is what PIPELINING asks for.
//! Every protocol mistake is a reply, never an `Err`: `Err` means the socket
//! is gone. Oversize input is read and thrown away, never buffered; sizes
//! from the wire are parsed here with checked arithmetic before smtp-proto
//! sees them, and a message's bytes are taken from the server-wide
//! in-flight budget as they arrive. Each command must arrive whole within
//! the command timeout (a trickling client is cut off).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smtp_proto::Request;
use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Mode;
use super::delivery::{self, Envelope, Recipient};
use crate::inflight::Held;
use crate::net::{CommandClock, Conn, PeerSlot};
use crate::server::App;

/// How a step over the buffered input ended.
enum Step {
    /// Consumed input; try again.
    Continue,
    /// Needs more bytes from the client.
    NeedMore,
    /// The client asked for TLS and was told to go ahead.
    StartTls,
    /// Close after flushing.
    Close,
}

/// Why the bytes of a message are being dropped instead of kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropping {
    /// Past `limits.max_message_size`.
    TooBig,
    /// The in-flight budget is spent.
    NoMemory,
}

enum Stage {
    Command,
    /// Inside DATA: once `dropping`, bytes are parsed for the end only.
    Data {
        rx: DataReceiver,
        dropping: Option<Dropping>,
    },
    /// Inside a BDAT chunk.
    Bdat {
        left: u64,
        last: bool,
        dropping: Option<Dropping>,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
}

#[derive(Default)]
struct Transaction {
    from: String,
    utf8: bool,
    rcpts: Vec<Recipient>,
    body: Vec<u8>,
    /// A BDAT chunk was accepted: DATA may no longer be used.
    bdat: bool,
    /// A chunk was dropped: the rest is discarded, LAST fails.
    bdat_dropping: Option<Dropping>,
    /// The bytes of `body`, taken from the in-flight budget.
    held: Option<Held>,
}

pub struct Session {
    app: Arc<App>,
    mode: Mode,
    peer: SocketAddr,
    conn: Conn,
    /// Counts against the client's address until AUTH succeeds.
    slot: PeerSlot,
    token: CancellationToken,
    /// Times the command (or DATA, or chunk) being received.
    clock: CommandClock,
    buf: Vec<u8>,
    /// Where the bytes of a dropped DATA pass through.
    scratch: Vec<u8>,
    out: Vec<u8>,
    stage: Stage,
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    txn: Option<Transaction>,
    errors: u32,
    discard_line: bool,
}

const READ_CHUNK: usize = 64 * 1024;

impl Session {
    pub fn new(
        app: Arc<App>,
        mode: Mode,
        peer: SocketAddr,
        conn: Conn,
        slot: PeerSlot,
        token: CancellationToken,
    ) -> Session {
        Session {
            app,
            mode,
            peer,
            conn,
            slot,
            token,
            clock: CommandClock::default(),
            buf: Vec::new(),
            scratch: Vec::new(),
            out: Vec::new(),
            stage: Stage::Command,
            helo: None,
            esmtp: false,
            user: None,
            txn: None,
            errors: 0,
            discard_line: false,
        }
    }

    fn reply(&mut self, code: u16, esc: &str, text: &str) {
        self.out
            .extend_from_slice(format!("{code} {esc} {text}\r\n").as_bytes());
    }

    /// A refused command: reply, and count it towards the error limit.
    fn refuse(&mut self, code: u16, esc: &str, text: &str) {
        self.errors += 1;
        self.reply(code, esc, text);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.conn.write_all(&out).await?;
            self.conn.flush().await?;
        }
        Ok(())
    }

    pub async fn run(mut self) {
        let name = self.mode.name();
        if let Err(e) = self.serve().await {
            tracing::debug!(peer = %self.peer, listener = name, error = %e, "session ended");
        }
        let _ = self.conn.shutdown().await;
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let host = self.app.config.server.hostname.clone();
        let proto = if self.mode == Mode::Lmtp {
            "LMTP"
        } else {
            "ESMTP"
        };
        self.out
            .extend_from_slice(format!("220 {host} {proto} tiermail ready\r\n").as_bytes());
        let timeout = Duration::from_secs(self.app.config.limits.command_timeout_secs);
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            loop {
                match self.step().await {
                    Step::Continue => {
                        if self.errors >= self.app.config.limits.max_errors {
                            self.reply(421, "4.7.0", "Too many errors, closing connection");
                            return self.flush().await;
                        }
                    }
                    Step::NeedMore => break,
                    Step::Close => return self.flush().await,
                    Step::StartTls => {
                        self.flush().await?;
                        // Anything pipelined after STARTTLS was sent in the
                        // clear and must not be executed after the handshake.
                        self.buf.clear();
                        self.clock.done(0);
                        let Some(acceptor) = self.app.tls.clone() else {
                            return Ok(());
                        };
                        self.conn.start_tls(&acceptor).await?;
                        self.helo = None;
                        self.esmtp = false;
                        self.txn = None;
                    }
                }
            }
            self.flush().await?;
            // Between commands the client may be silent for the timeout; a
            // command, DATA or chunk under way must be whole by its deadline.
            let (deadline, why) = match self
                .clock
                .deadline(timeout, crate::net::BYTES_PER_EXTRA_SECOND)
            {
                Some(d) => (
                    tokio::time::Instant::from_std(d),
                    "Command not completed in time, closing connection",
                ),
                None => (
                    tokio::time::Instant::now() + timeout,
                    "Idle timeout, closing connection",
                ),
            };
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.conn.read(&mut chunk)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        self.reply(421, "4.4.2", why);
                        return self.flush().await;
                    }
                },
                _ = self.token.cancelled() => {
                    self.reply(421, "4.3.0", "Server shutting down, try again later");
                    return self.flush().await;
                }
            };
            if n == 0 {
                // Peer closed: an unfinished DATA is simply dropped.
                return Ok(());
            }
            self.clock.received(n);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn step(&mut self) -> Step {
        match &mut self.stage {
            Stage::Command => self.step_command().await,
            Stage::Data { .. } => self.step_data().await,
            Stage::Bdat { .. } => self.step_bdat().await,
            Stage::AuthPlain | Stage::AuthLoginUser | Stage::AuthLoginPass { .. } => {
                match self.take_line() {
                    Some(line) => {
                        self.auth_response(line).await;
                        Step::Continue
                    }
                    None => Step::NeedMore,
                }
            }
        }
    }

    /// Takes one complete line (without CRLF) off the buffer, enforcing the
    /// line limit; an overlong line is answered and skipped to its end.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        loop {
            let pos = self.buf.iter().position(|&b| b == b'\n');
            if self.discard_line {
                match pos {
                    Some(p) => {
                        self.buf.drain(..=p);
                        self.discard_line = false;
                        self.clock.done(self.buf.len());
                        continue;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                }
            }
            let max = self.app.config.limits.max_line_length;
            match pos {
                Some(p) if p < max => {
                    let mut line: Vec<u8> = self.buf.drain(..=p).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    self.clock.done(self.buf.len());
                    return Some(line);
                }
                Some(p) => {
                    self.buf.drain(..=p);
                    self.clock.done(self.buf.len());
                    self.refuse(500, "5.5.2", "Line too long");
                    self.stage = Stage::Command;
                }
                None if self.buf.len() >= max => {
                    self.buf.clear();
                    self.discard_line = true;
                    self.refuse(500, "5.5.2", "Line too long");
                    self.stage = Stage::Command;
                    return None;
                }
                None => return None,
            }
        }
    }

    async fn step_command(&mut self) -> Step {
        let Some(line) = self.take_line() else {
            return Step::NeedMore;
        };
        if line.contains(&0) {
            self.refuse(500, "5.5.2", "NUL byte in command");
            return Step::Continue;
        }
        // Sizes are read here, with checked arithmetic: smtp-proto
        // saturates or truncates numbers too large for it.
        match sizes(&line) {
            Sizes::None => {}
            Sizes::Bdat { size, last } => return self.bdat(size, last),
            Sizes::BadBdat => {
                self.refuse(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]");
                return Step::Continue;
            }
            Sizes::MailSize(declared) => {
                let max = self.app.config.limits.max_message_size as u64;
                if declared.is_none_or(|d| d > max) {
                    self.refuse(
                        552,
                        "5.3.4",
                        &format!("Message size exceeds the limit of {max} bytes"),
                    );
                    return Step::Continue;
                }
                if declared.is_some_and(|d| d as usize > self.app.inflight.available()) {
                    self.refuse(452, "4.3.1", "Insufficient system storage, try again later");
                    return Step::Continue;
                }
            }
        }
        let mut framed = line.clone();
        framed.extend_from_slice(b"\r\n");
        let parsed = Request::parse(&mut framed.iter()).map(|r| r.into_owned());
        match parsed {
            Ok(req) => self.command(req).await,
            Err(smtp_proto::Error::UnknownCommand) => {
                self.refuse(500, "5.5.1", "Unknown command");
                Step::Continue
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                self.refuse(500, "5.5.2", "Incomplete command");
                Step::Continue
            }
            Err(e @ smtp_proto::Error::InvalidSenderAddress)
            | Err(e @ smtp_proto::Error::InvalidRecipientAddress) => {
                self.refuse(501, "5.1.3", &e.to_string());
                Step::Continue
            }
            Err(e @ smtp_proto::Error::UnsupportedParameter { .. }) => {
                self.refuse(555, "5.5.4", &e.to_string());
                Step::Continue
            }
            Err(e) => {
                self.refuse(501, "5.5.4", &e.to_string());
                Step::Continue
            }
        }
    }

    async fn command(&mut self, req: Request<String>) -> Step {
        let lmtp = self.mode == Mode::Lmtp;
        match req {
            Request::Ehlo { host } | Request::Helo { host } if lmtp => {
                let _ = host;
                self.refuse(500, "5.5.1", "This is an LMTP server: use LHLO");
            }
            Request::Lhlo { .. } if !lmtp => {
                self.refuse(500, "5.5.1", "LHLO is for LMTP: use EHLO");
            }
            Request::Ehlo { host } | Request::Lhlo { host } => self.ehlo(host),
            Request::Helo { host } => {
                self.helo = Some(host);
                self.esmtp = false;
                self.txn = None;
                let h = self.app.config.server.hostname.clone();
                self.reply(250, "2.0.0", &h);
            }
            Request::StartTls => return self.starttls(),
            Request::Auth { mechanism, initial_response } => self.auth_start(mechanism, initial_response).await,
            Request::Mail { from } => self.mail(from),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => return self.data(),
            Request::Bdat { chunk_size, is_last } => return self.bdat(chunk_size as u64, is_last),
            Request::Rset => {
                self.txn = None;
                self.reply(250, "2.0.0", "Reset");
            }
            Request::Noop { .. } => self.reply(250, "2.0.0", "OK"),
            Request::Quit => {
                self.reply(221, "2.0.0", "Bye");
                return Step::Close;
            }
            Request::Vrfy { .. } => self.reply(252, "2.5.0", "Cannot verify the user; send mail and it will be delivered if the address exists"),
            Request::Help { .. } => self.reply(214, "2.0.0", "See RFC 5321; tiermail supports EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH"),
            Request::Expn { .. } => self.refuse(502, "5.5.1", "EXPN is not available"),
            other => {
                let msg = format!("{} is not implemented", other.name());
                self.refuse(502, "5.5.1", &msg)
            }
        }
        Step::Continue
    }

    fn auth_offered(&self) -> bool {
        self.mode.is_submission()
            && (self.conn.is_tls() || self.app.config.smtp.allow_plaintext_auth)
    }

    fn starttls_offered(&self) -> bool {
        !self.conn.is_tls() && self.app.tls.is_some() && self.mode != Mode::Submissions
    }

    fn ehlo(&mut self, host: String) {
        self.helo = Some(host);
        self.esmtp = true;
        self.txn = None;
        let mut lines = vec![format!(
            "{} greets {}",
            self.app.config.server.hostname,
            self.peer.ip()
        )];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.app.config.limits.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("CHUNKING".into());
        if self.starttls_offered() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn starttls(&mut self) -> Step {
        if self.conn.is_tls() {
            self.refuse(503, "5.5.1", "TLS is already active");
        } else if !self.starttls_offered() {
            self.refuse(502, "5.5.1", "STARTTLS is not available here");
        } else if self.txn.is_some() {
            self.refuse(
                503,
                "5.5.1",
                "STARTTLS not allowed during a mail transaction",
            );
        } else {
            self.reply(220, "2.0.0", "Ready to start TLS");
            return Step::StartTls;
        }
        Step::Continue
    }

    async fn auth_start(&mut self, mechanism: u64, initial: String) {
        if !self.mode.is_submission() {
            return self.refuse(
                502,
                "5.5.1",
                "AUTH is only available on the submission ports",
            );
        }
        if !self.conn.is_tls() && !self.app.config.smtp.allow_plaintext_auth {
            return self.refuse(538, "5.7.11", "Encryption required: use STARTTLS first");
        }
        if self.helo.is_none() {
            return self.refuse(503, "5.5.1", "Send EHLO first");
        }
        if self.user.is_some() {
            return self.refuse(503, "5.5.1", "Already authenticated");
        }
        if self.txn.is_some() {
            return self.refuse(503, "5.5.1", "AUTH not allowed during a mail transaction");
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.stage = Stage::AuthPlain;
                self.out.extend_from_slice(b"334 \r\n");
            }
            smtp_proto::AUTH_PLAIN => self.auth_plain(initial.into_bytes()).await,
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.stage = Stage::AuthLoginUser;
                self.out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
            }
            smtp_proto::AUTH_LOGIN => match decode_b64(initial.as_bytes()) {
                Some(user) => {
                    self.stage = Stage::AuthLoginPass { user };
                    self.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                }
                None => self.refuse(501, "5.5.2", "Invalid base64 in AUTH"),
            },
            _ => self.refuse(
                504,
                "5.5.4",
                "Unsupported AUTH mechanism (use PLAIN or LOGIN)",
            ),
        }
    }

    async fn auth_response(&mut self, line: Vec<u8>) {
        let stage = std::mem::replace(&mut self.stage, Stage::Command);
        if line == b"*" {
            return self.refuse(501, "5.7.0", "Authentication cancelled");
        }
        match stage {
            Stage::AuthPlain => self.auth_plain(line).await,
            Stage::AuthLoginUser => match decode_b64(&line) {
                Some(user) => {
                    self.stage = Stage::AuthLoginPass { user };
                    self.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                }
                None => self.refuse(501, "5.5.2", "Invalid base64 in AUTH"),
            },
            Stage::AuthLoginPass { user } => match decode_b64(&line) {
                Some(pass) => self.login(&user, &pass).await,
                None => self.refuse(501, "5.5.2", "Invalid base64 in AUTH"),
            },
            _ => {}
        }
    }

    async fn auth_plain(&mut self, b64: Vec<u8>) {
        let Some(decoded) = B64.decode(&b64).ok() else {
            return self.refuse(501, "5.5.2", "Invalid base64 in AUTH");
        };
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            return self.refuse(
                501,
                "5.5.2",
                "AUTH PLAIN needs authzid NUL authcid NUL password",
            );
        };
        let (Ok(authz), Ok(authc), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(authc),
            std::str::from_utf8(pass),
        ) else {
            return self.refuse(501, "5.5.2", "AUTH PLAIN credentials are not UTF-8");
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
            return self.refuse(535, "5.7.8", "Authorization identity must match the login");
        }
        let (authc, pass) = (authc.to_string(), pass.to_string());
        self.login(&authc, &pass).await
    }

    async fn login(&mut self, user: &str, pass: &str) {
        let ip = self.peer.ip();
        let service = self.mode.name();
        match self
            .app
            .users
            .login(&self.app.throttle, service, ip, user, pass)
            .await
        {
            crate::auth::Login::Ok(address) => {
                tracing::info!(peer = %self.peer, user = %address, "smtp login");
                self.slot.authenticated();
                self.user = Some(address);
                self.reply(235, "2.7.0", "Authentication successful");
            }
            crate::auth::Login::Throttled => {
                self.refuse(454, "4.7.0", "Too many failed logins, try again later")
            }
            crate::auth::Login::Invalid => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                self.refuse(535, "5.7.8", "Authentication credentials invalid");
            }
        }
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) {
        if self.helo.is_none() {
            let hello = if self.mode == Mode::Lmtp {
                "LHLO"
            } else {
                "EHLO/HELO"
            };
            return self.refuse(503, "5.5.1", &format!("Send {hello} first"));
        }
        if self.txn.is_some() {
            return self.refuse(503, "5.5.1", "Nested MAIL command");
        }
        if self.mode.is_submission() && self.user.is_none() {
            return self.refuse(530, "5.7.0", "Authentication required");
        }
        let utf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !utf8 && !from.address.is_ascii() {
            return self.refuse(
                553,
                "5.6.7",
                "Non-ASCII address needs the SMTPUTF8 parameter",
            );
        }
        if !self.esmtp && from.flags != 0 {
            return self.refuse(555, "5.5.4", "MAIL parameters need EHLO");
        }
        if let Some(user) = &self.user
            && !self.may_send_as(user, &from.address)
        {
            return self.refuse(
                553,
                "5.7.1",
                &format!("You may not send as <{}>", printable(&from.address)),
            );
        }
        self.txn = Some(Transaction {
            from: from.address,
            utf8,
            ..Transaction::default()
        });
        self.reply(250, "2.1.0", "Sender OK");
    }

    fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) {
        let max = self.app.config.limits.max_recipients;
        let Some(txn) = &self.txn else {
            return self.refuse(503, "5.5.1", "Send MAIL first");
        };
        if txn.bdat {
            return self.refuse(503, "5.5.1", "RCPT not allowed after BDAT");
        }
        if txn.rcpts.len() >= max {
            return self.refuse(
                452,
                "4.5.3",
                &format!("Too many recipients (at most {max})"),
            );
        }
        if !txn.utf8 && !to.address.is_ascii() {
            return self.refuse(
                553,
                "5.6.7",
                "Non-ASCII address needs the SMTPUTF8 parameter",
            );
        }
        // smtp-proto hands `<postmaster>` back as an empty address.
        let address = if to.address.is_empty() {
            format!("postmaster@{}", self.app.config.domains.local[0])
        } else {
            to.address.to_lowercase()
        };
        let Some((_, domain)) = address.rsplit_once('@') else {
            return self.refuse(501, "5.1.3", "Recipient address must be local@domain");
        };
        if !self.app.config.is_local_domain(domain) {
            if self.user.is_some() {
                return self.refuse(
                    550,
                    "5.7.1",
                    "Outbound relay is not configured: only local recipients are accepted",
                );
            }
            return self.refuse(554, "5.7.1", "Relay access denied");
        }
        let users = self.app.users.snapshot();
        let Some(owner) = users.resolve(&address) else {
            return self.refuse(550, "5.1.1", &format!("No such user here: {address}"));
        };
        let user = owner.address.clone();
        if let Some(txn) = &mut self.txn {
            txn.rcpts.push(Recipient { address, user });
        }
        self.reply(250, "2.1.5", "Recipient OK");
    }

    fn data(&mut self) -> Step {
        match &self.txn {
            None => self.refuse(503, "5.5.1", "Send MAIL first"),
            Some(t) if t.bdat => self.refuse(503, "5.5.1", "DATA not allowed after BDAT"),
            Some(t) if t.rcpts.is_empty() => self.refuse(554, "5.5.1", "No valid recipients"),
            Some(_) => {
                let mut rx = DataReceiver::new();
                // Prime the receiver as if a line had just ended, so that an
                // empty message and a dot-stuffed first line are read right.
                let mut scratch = Vec::new();
                rx.ingest(&mut b"\r\n".iter(), &mut scratch);
                if let Some(t) = self.txn.as_mut() {
                    t.held = Some(self.app.inflight.hold());
                }
                self.stage = Stage::Data { rx, dropping: None };
                self.reply(354, "2.0.0", "Start mail input; end with <CRLF>.<CRLF>");
            }
        }
        Step::Continue
    }

    /// Whether the authenticated `user` may use `from` as the sender: their
    /// own address, one of their aliases, the null sender, or anything for
    /// the users `smtp.send_as_anyone` names.
    fn may_send_as(&self, user: &str, from: &str) -> bool {
        if from.is_empty()
            || self
                .app
                .config
                .smtp
                .send_as_anyone
                .iter()
                .any(|u| u.eq_ignore_ascii_case(user))
        {
            return true;
        }
        let users = self.app.users.snapshot();
        users
            .resolve(from)
            .is_some_and(|owner| owner.address.eq_ignore_ascii_case(user))
    }

    /// Whether the body as it stands fits the size limit and the budget.
    fn admit(txn: &mut Transaction, max: usize) -> Option<Dropping> {
        if txn.body.len() > max {
            return Some(Dropping::TooBig);
        }
        let Some(held) = txn.held.as_mut() else {
            return Some(Dropping::NoMemory);
        };
        (!held.grow_to(txn.body.len())).then_some(Dropping::NoMemory)
    }

    /// Keeps `bytes` more of the message, or says why not.
    fn keep(txn: &mut Transaction, max: usize, bytes: &[u8]) -> Option<Dropping> {
        let Some(total) = txn
            .body
            .len()
            .checked_add(bytes.len())
            .filter(|t| *t <= max)
        else {
            return Some(Dropping::TooBig);
        };
        // DATA and BDAT give every transaction its holding first.
        let Some(held) = txn.held.as_mut() else {
            return Some(Dropping::NoMemory);
        };
        if !held.grow_to(total) {
            return Some(Dropping::NoMemory);
        }
        txn.body.extend_from_slice(bytes);
        None
    }

    async fn step_data(&mut self) -> Step {
        let max = self.app.config.limits.max_message_size;
        let Stage::Data { rx, dropping } = &mut self.stage else {
            return Step::NeedMore;
        };
        let Some(txn) = self.txn.as_mut() else {
            return Step::NeedMore;
        };
        let mut it = self.buf.iter();
        let done = if dropping.is_none() {
            // Straight into the body; what one read brought is then
            // checked against the size limit and the in-flight budget.
            let done = rx.ingest(&mut it, &mut txn.body);
            *dropping = Self::admit(txn, max);
            if dropping.is_some() {
                txn.body = Vec::new();
                if let Some(h) = txn.held.as_mut() {
                    h.release();
                }
            }
            done
        } else {
            // Dropped bytes only pass through a small reused buffer.
            self.scratch.clear();
            let done = rx.ingest(&mut it, &mut self.scratch);
            if self.scratch.capacity() > READ_CHUNK * 2 {
                self.scratch = Vec::new();
            }
            done
        };
        let consumed = self.buf.len() - it.as_slice().len();
        self.buf.drain(..consumed);
        if !done {
            return Step::NeedMore;
        }
        let dropping = *dropping;
        self.stage = Stage::Command;
        self.clock.done(self.buf.len());
        let Some(txn) = self.txn.take() else {
            return Step::Continue;
        };
        match dropping {
            Some(why) => self.finish_dropped(&txn, why),
            None => self.finish(txn).await,
        }
        Step::Continue
    }

    fn bdat(&mut self, size: u64, last: bool) -> Step {
        let max = self.app.config.limits.max_message_size as u64;
        if size > max.saturating_mul(2) {
            // Reading it only to drop it would tie the session up for no use.
            self.refuse(
                552,
                "5.3.4",
                &format!("Chunk exceeds the message size limit of {max} bytes, closing connection"),
            );
            return Step::Close;
        }
        let budget = &self.app.inflight;
        let dropping = match &mut self.txn {
            Some(t) if !t.rcpts.is_empty() => {
                t.bdat = true;
                if t.held.is_none() {
                    t.held = Some(budget.hold());
                }
                match t.bdat_dropping {
                    Some(d) => Some(d),
                    None if (t.body.len() as u64).saturating_add(size) > max => {
                        Some(Dropping::TooBig)
                    }
                    None => None,
                }
            }
            // The chunk must still be read off the wire; it is then refused.
            _ => Some(Dropping::TooBig),
        };
        self.stage = Stage::Bdat {
            left: size,
            last,
            dropping,
        };
        Step::Continue
    }

    async fn step_bdat(&mut self) -> Step {
        let max = self.app.config.limits.max_message_size;
        let Stage::Bdat {
            left,
            last,
            dropping,
        } = &mut self.stage
        else {
            return Step::NeedMore;
        };
        let take = usize::try_from(*left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        if dropping.is_none()
            && let Some(t) = self.txn.as_mut()
        {
            *dropping = Self::keep(t, max, &self.buf[..take]);
        }
        self.buf.drain(..take);
        *left -= take as u64;
        if *left > 0 {
            return Step::NeedMore;
        }
        let (last, dropping) = (*last, *dropping);
        self.stage = Stage::Command;
        self.clock.done(self.buf.len());
        let usable = self
            .txn
            .as_ref()
            .map(|t| !t.rcpts.is_empty())
            .unwrap_or(false);
        if !usable {
            let text = if self.txn.is_none() {
                "Send MAIL first"
            } else {
                "No valid recipients"
            };
            self.refuse(503, "5.5.1", text);
            return Step::Continue;
        }
        if let Some(why) = dropping
            && let Some(t) = self.txn.as_mut()
        {
            t.bdat_dropping = Some(why);
            t.body = Vec::new();
            if let Some(h) = t.held.as_mut() {
                h.release();
            }
        }
        if !last {
            match dropping {
                Some(why) => {
                    let (code, esc, text) = self.dropped_reply(why);
                    self.refuse(code, esc, &text);
                }
                None => {
                    let n = self.txn.as_ref().map(|t| t.body.len()).unwrap_or(0);
                    self.reply(250, "2.0.0", &format!("{n} bytes received"));
                }
            }
            return Step::Continue;
        }
        let Some(txn) = self.txn.take() else {
            return Step::Continue;
        };
        match txn.bdat_dropping {
            Some(why) => self.finish_dropped(&txn, why),
            None => self.finish(txn).await,
        }
        Step::Continue
    }

    /// The reply for a message whose bytes were dropped.
    fn dropped_reply(&self, why: Dropping) -> (u16, &'static str, String) {
        match why {
            Dropping::TooBig => (
                552,
                "5.3.4",
                format!(
                    "Message exceeds the size limit of {} bytes",
                    self.app.config.limits.max_message_size
                ),
            ),
            Dropping::NoMemory => (
                452,
                "4.3.1",
                "Insufficient system storage, try again later".to_string(),
            ),
        }
    }

    fn finish_dropped(&mut self, txn: &Transaction, why: Dropping) {
        let (code, esc, text) = self.dropped_reply(why);
        self.finish_refused(txn, code, esc, &text);
    }

    /// The end of a message that will not be stored: one reply, or one per
    /// recipient in LMTP.
    fn finish_refused(&mut self, txn: &Transaction, code: u16, esc: &str, text: &str) {
        self.errors += 1;
        let n = if self.mode == Mode::Lmtp {
            txn.rcpts.len()
        } else {
            1
        };
        for _ in 0..n {
            self.reply(code, esc, text);
        }
    }

    async fn finish(&mut self, txn: Transaction) {
        if txn.body.contains(&0) {
            return self.finish_refused(&txn, 554, "5.6.0", "Message contains NUL bytes");
        }
        let env = Envelope {
            from: txn.from,
            rcpts: txn.rcpts,
            helo: self.helo.clone().unwrap_or_default(),
            peer: self.peer,
            protocol: self.protocol_name(txn.utf8),
        };
        let results = delivery::deliver(&self.app, &env, &txn.body).await;
        crate::failpoint::hit("smtp-before-reply");
        // The store's reasons are logged by `deliver`; the client is told
        // only that it may try again.
        if self.mode == Mode::Lmtp {
            for (rcpt, r) in env.rcpts.iter().zip(&results) {
                match r {
                    Ok(()) => self.reply(250, "2.1.5", &format!("<{}> delivered", rcpt.address)),
                    Err(_) => self.reply(
                        451,
                        "4.3.0",
                        &format!(
                            "<{}> not delivered: local storage error, try again later",
                            rcpt.address
                        ),
                    ),
                }
            }
        } else if results.iter().any(|r| r.is_err()) {
            self.reply(451, "4.3.0", "Local storage error, try again later");
        } else {
            self.reply(250, "2.0.0", "Message accepted for delivery");
        }
    }

    fn protocol_name(&self, utf8: bool) -> String {
        if self.mode == Mode::Lmtp {
            return "LMTP".into();
        }
        if !self.esmtp {
            return "SMTP".into();
        }
        let mut p = String::from(if utf8 { "UTF8SMTP" } else { "ESMTP" });
        if self.conn.is_tls() {
            p.push('S');
        }
        if self.user.is_some() {
            p.push('A');
        }
        p
    }
}

fn decode_b64(b: &[u8]) -> Option<String> {
    B64.decode(b).ok().and_then(|v| String::from_utf8(v).ok())
}

/// An address as it may appear in a reply: printable, short.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// The sizes a command line carries, read before smtp-proto parses it.
#[derive(Debug, PartialEq, Eq)]
enum Sizes {
    /// Not BDAT, not MAIL with SIZE=.
    None,
    Bdat {
        size: u64,
        last: bool,
    },
    /// BDAT whose chunk size is not a number that fits 64 bits.
    BadBdat,
    /// MAIL ... SIZE=n; `None` when n does not fit 64 bits (it is above
    /// any limit).
    MailSize(Option<u64>),
}

/// Digits as a number, or `None` (empty, a non-digit, or past u64).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

fn sizes(line: &[u8]) -> Sizes {
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let Some(verb) = words.next() else {
        return Sizes::None;
    };
    if verb.eq_ignore_ascii_case(b"BDAT") {
        let size = words.next().and_then(number);
        let last = words.next();
        let rest = words.next();
        return match (size, last, rest) {
            (Some(size), None, None) => Sizes::Bdat { size, last: false },
            (Some(size), Some(l), None) if l.eq_ignore_ascii_case(b"LAST") => {
                Sizes::Bdat { size, last: true }
            }
            _ => Sizes::BadBdat,
        };
    }
    if verb.len() >= 4 && verb[..4].eq_ignore_ascii_case(b"MAIL") {
        for w in words {
            if w.len() > 5 && w[..5].eq_ignore_ascii_case(b"SIZE=") {
                let digits = &w[5..];
                if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                    return Sizes::MailSize(number(digits));
                }
            }
        }
    }
    Sizes::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_read_with_checked_arithmetic() {
        assert_eq!(
            sizes(b"BDAT 18446744073709551614 LAST"),
            Sizes::Bdat {
                size: 18446744073709551614,
                last: true
            }
        );
        assert_eq!(
            sizes(b"BDAT 99999999999999999999999999 LAST"),
            Sizes::BadBdat
        );
        assert_eq!(
            sizes(b"bdat 5"),
            Sizes::Bdat {
                size: 5,
                last: false
            }
        );
        assert_eq!(sizes(b"BDAT lots"), Sizes::BadBdat);
        assert_eq!(sizes(b"BDAT"), Sizes::BadBdat);
        assert_eq!(sizes(b"BDAT 5 LAST extra"), Sizes::BadBdat);
        assert_eq!(sizes(b"BDAT -5"), Sizes::BadBdat);
        assert_eq!(
            sizes(b"MAIL FROM:<a@b> SIZE=99999999999999999999999"),
            Sizes::MailSize(None)
        );
        assert_eq!(
            sizes(b"MAIL FROM:<a@b> size=1000"),
            Sizes::MailSize(Some(1000))
        );
        assert_eq!(sizes(b"MAIL FROM:<a@b>"), Sizes::None);
        assert_eq!(sizes(b"NOOP"), Sizes::None);
    }
}
