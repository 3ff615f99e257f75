//! One IMAP connection: framing, the RFC 3501 state machine
//! (not authenticated -> authenticated -> selected -> logout), login, IDLE
//! and the points where changes made elsewhere are reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::fragmentizer::DecodeMessageError;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use imap_types::IntoStatic;
use imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_types::command::{Command, CommandBody};
use imap_types::core::{LiteralMode, Tag, Vec1};
use imap_types::extensions::enable::CapabilityEnable;
use imap_types::response::{Capability, Code, CommandContinuationRequest, Data, Response, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::framing::{Event, Framer, Limits, Refusal};
use super::view::View;
use super::{code, encode, text};
use crate::net::Conn;
use crate::server::App;

const READ_CHUNK: usize = 16 * 1024;
/// Output is flushed once this much is queued (large FETCHes stream).
pub const FLUSH_AT: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 143 style: plain, STARTTLS offered.
    Plain,
    /// Port 993 style: TLS from the first byte.
    Tls,
}

enum Waiting {
    /// A normal command.
    Command,
    /// AUTHENTICATE PLAIN data for this tag.
    AuthData(Tag<'static>),
    /// DONE ending the IDLE of this tag.
    IdleDone(Tag<'static>),
}

pub(super) enum Flow {
    Continue,
    Close,
    StartTls,
}

pub struct Session {
    pub(super) app: Arc<App>,
    pub(super) peer: SocketAddr,
    conn: Conn,
    /// Counts against the client's address until login.
    slot: crate::net::PeerSlot,
    kind: Kind,
    token: CancellationToken,
    framer: Framer,
    pub(super) out: Vec<u8>,
    waiting: Waiting,
    /// Why the literal being thrown away was refused: the reply once the
    /// framer has skipped it (NO or BAD, response code, text).
    refused: Option<(bool, &'static str, String)>,
    /// The bytes of the APPEND being received, from the in-flight budget.
    append_held: Option<crate::inflight::Held>,
    /// Logging in must be done by then.
    login_deadline: tokio::time::Instant,
    pub(super) user: Option<String>,
    pub(super) selected: Option<View>,
    pub(super) condstore: bool,
    changes: Option<watch::Receiver<u64>>,
    force_refresh: bool,
    errors: u32,
}

impl Session {
    pub fn new(
        app: Arc<App>,
        kind: Kind,
        peer: SocketAddr,
        conn: Conn,
        slot: crate::net::PeerSlot,
        token: CancellationToken,
    ) -> Session {
        let framer = Framer::new(Self::limits(&app, false));
        let login_deadline = tokio::time::Instant::now()
            + Duration::from_secs(app.config.imap.unauthenticated_timeout_secs);
        Session {
            app,
            peer,
            conn,
            slot,
            kind,
            token,
            framer,
            out: Vec::new(),
            waiting: Waiting::Command,
            refused: None,
            append_held: None,
            login_deadline,
            user: None,
            selected: None,
            condstore: false,
            changes: None,
            force_refresh: false,
            errors: 0,
        }
    }

    /// What a command may be: before login a line of at most
    /// `max_line_length` in all; after it, lines of that length, commands
    /// of `max_command_size` and APPENDs of a message plus that.
    fn limits(app: &App, authenticated: bool) -> Limits {
        let l = &app.config.limits;
        if authenticated {
            Limits {
                line: l.max_line_length,
                command: l.max_command_size,
                append: l.max_message_size.saturating_add(l.max_command_size),
            }
        } else {
            Limits {
                line: l.max_line_length,
                command: l.max_line_length,
                append: l.max_line_length,
            }
        }
    }

    pub async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::debug!(peer = %self.peer, error = %e, "imap session ended");
        }
        let _ = self.conn.shutdown().await;
    }

    pub(super) fn send(&mut self, r: Response<'_>) {
        encode(&mut self.out, &r);
    }

    pub(super) fn data(&mut self, d: Data<'_>) {
        self.send(Response::Data(d));
    }

    pub(super) fn ok(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, msg: &str) {
        if let Ok(s) = Status::ok(Some(tag.clone()), code, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    pub(super) fn no(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, msg: &str) {
        if let Ok(s) = Status::no(Some(tag.clone()), code, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    pub(super) fn bad(&mut self, tag: Option<&Tag<'_>>, code: Option<Code<'_>>, msg: &str) {
        self.errors += 1;
        if let Ok(s) = Status::bad(tag.cloned(), code, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    fn untagged_ok(&mut self, code: Option<Code<'_>>, msg: &str) {
        if let Ok(s) = Status::ok(None, code, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    fn bye(&mut self, msg: &str) {
        if let Ok(s) = Status::bye(None, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.conn.write_all(&self.out).await?;
            self.conn.flush().await?;
            self.out.clear();
            if self.out.capacity() > FLUSH_AT * 2 {
                self.out = Vec::new();
            }
        }
        Ok(())
    }

    fn plaintext_auth_ok(&self) -> bool {
        self.conn.is_tls() || self.app.config.imap.allow_plaintext_auth
    }

    pub(super) fn capabilities(&self) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1];
        if self.user.is_none() {
            if !self.conn.is_tls() && self.kind == Kind::Plain && self.app.tls.is_some() {
                caps.push(Capability::StartTls);
            }
            if self.plaintext_auth_ok() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        caps.extend([
            Capability::SaslIr,
            Capability::LiteralPlus,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Id,
            Capability::Unselect,
            Capability::UidPlus,
            Capability::Move,
            Capability::CondStore,
        ]);
        caps.push(Capability::ListExtended);
        for other in ["LIST-STATUS", "SPECIAL-USE", "CHILDREN"] {
            if let Ok(c) = Capability::try_from(other) {
                caps.push(c);
            }
        }
        Vec1::try_from(caps).expect("IMAP4rev1 is always there")
    }

    /// When the session gives up waiting for the client, and what it
    /// says then: logging in has one deadline from the connection on; a
    /// command must arrive whole in time (see `Framer::deadline`);
    /// between commands a logged-in client may idle for long.
    fn deadline(&self) -> (tokio::time::Instant, &'static str) {
        let c = &self.app.config;
        let mut at = if self.user.is_some() {
            (
                tokio::time::Instant::now() + Duration::from_secs(c.imap.idle_timeout_secs),
                "Autologout: idle for too long",
            )
        } else {
            (self.login_deadline, "Login timeout: log in sooner")
        };
        if let Some(d) = self.framer.deadline(
            Duration::from_secs(c.limits.command_timeout_secs),
            crate::net::BYTES_PER_EXTRA_SECOND,
        ) {
            let d = tokio::time::Instant::from_std(d);
            if d < at.0 {
                at = (d, "Command not completed in time");
            }
        }
        at
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        let greeting = self.capabilities();
        self.untagged_ok(
            Some(Code::Capability(greeting)),
            &format!("{} tiermail IMAP ready", self.app.config.server.hostname),
        );
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            // Work through every complete command already received.
            loop {
                match self.step().await {
                    Some(Flow::Continue) => {
                        if self.out.len() >= FLUSH_AT {
                            self.flush().await?;
                        }
                        if self.errors >= self.app.config.limits.max_errors {
                            self.bye("Too many invalid commands");
                            return self.flush().await;
                        }
                    }
                    Some(Flow::Close) => return self.flush().await,
                    Some(Flow::StartTls) => {
                        self.flush().await?;
                        // Anything pipelined in the clear after STARTTLS is dropped.
                        self.framer.clear();
                        let Some(acceptor) = self.app.tls.clone() else {
                            return Ok(());
                        };
                        self.conn.start_tls(&acceptor).await?;
                    }
                    None => break,
                }
            }
            self.flush().await?;
            let idle = matches!(self.waiting, Waiting::IdleDone(_));
            let (deadline, why) = self.deadline();
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.conn.read(&mut chunk)) => match r {
                    Ok(r) => r?,
                    Err(_) => {
                        self.bye(why);
                        return self.flush().await;
                    }
                },
                _ = changed(&mut self.changes), if idle => {
                    // `changed()` has already marked the news as seen.
                    self.force_refresh = true;
                    self.report_changes(true).await;
                    continue;
                }
                _ = self.token.cancelled() => {
                    self.bye("Server shutting down");
                    return self.flush().await;
                }
            };
            if n == 0 {
                return Ok(());
            }
            self.framer.push(&chunk[..n]);
        }
    }

    /// Takes the next framing event and acts on it; `None` when more input
    /// is needed (every byte received so far has been used).
    async fn step(&mut self) -> Option<Flow> {
        match self.framer.next_event()? {
            Event::Literal {
                tag: _,
                length,
                mode,
                append,
                binary,
            } => {
                self.literal(length, mode, append, binary);
                Some(Flow::Continue)
            }
            Event::Refused { tag, why } => {
                // An AUTHENTICATE exchange or an IDLE ends with the refusal,
                // answered under its own tag.
                let tag = match std::mem::replace(&mut self.waiting, Waiting::Command) {
                    Waiting::AuthData(t) | Waiting::IdleDone(t) => Some(t),
                    Waiting::Command => tag,
                };
                let (no, c, msg) = match why {
                    Refusal::Literal => self.refused.take().unwrap_or((
                        false,
                        "TOOBIG",
                        "Literal refused".to_string(),
                    )),
                    Refusal::LineTooLong => (
                        false,
                        "TOOBIG",
                        format!(
                            "Line exceeds the limit of {} bytes",
                            self.app.config.limits.max_line_length
                        ),
                    ),
                    Refusal::CommandTooLong => (false, "TOOBIG", "Command too long".to_string()),
                };
                match (&tag, no) {
                    (Some(t), true) => self.no(t, Some(code(c)), &msg),
                    _ => self.bad(tag.as_ref(), Some(code(c)), &msg),
                }
                if no && c != "LIMIT" {
                    // A refusal before the data was sent still counts (a
                    // busy server is not the client's error).
                    self.errors += 1;
                }
                Some(Flow::Continue)
            }
            Event::Message => {
                let flow = self.message().await;
                // The APPEND is stored (or refused): its budget goes back.
                self.append_held = None;
                Some(flow)
            }
        }
    }

    /// Decides on an announced literal: sends `+` for one that may come,
    /// or has the framer refuse it (a synchronizing one is answered before
    /// a byte of it is sent, RFC 7888).
    fn literal(&mut self, length: u32, mode: LiteralMode, append: bool, binary: bool) {
        let l = &self.app.config.limits;
        let max = if append && self.user.is_some() {
            l.max_message_size
        } else if self.user.is_some() {
            l.max_command_size
        } else {
            l.max_line_length
        };
        let sync = mode == LiteralMode::Sync;
        // A refusal is NO when the command was fine but cannot be served,
        // BAD when the command itself is wrong.
        let refusal = if !matches!(self.waiting, Waiting::Command) {
            // AUTHENTICATE data and DONE are single lines.
            Some((false, "CANNOT", "No literal is expected here".to_string()))
        } else if binary {
            // BINARY is not offered, and literal8 is how NUL bytes would
            // get in: one rule for NUL everywhere.
            Some((
                false,
                "CANNOT",
                "BINARY is not supported: send the message as a literal".to_string(),
            ))
        } else if length as usize > max {
            // Refused before it is sent (NO), or read and dropped (BAD).
            Some((
                sync,
                "TOOBIG",
                format!("Literal of {length} bytes exceeds the limit of {max} bytes"),
            ))
        } else if append && self.user.is_some() {
            let mut held = self.app.inflight.hold();
            if held.grow_to(length as usize) {
                self.append_held = Some(held);
                None
            } else {
                Some((
                    true,
                    "LIMIT",
                    "Server busy receiving other messages, try again later".to_string(),
                ))
            }
        } else {
            None
        };
        match refusal {
            None => {
                self.framer.accept_literal();
                if sync
                    && let Ok(c) = CommandContinuationRequest::basic(None, "Ready for literal data")
                {
                    self.send(Response::CommandContinuationRequest(c));
                }
            }
            Some(r) => {
                self.refused = Some(r);
                self.framer.refuse_literal();
            }
        }
    }

    async fn message(&mut self) -> Flow {
        match std::mem::replace(&mut self.waiting, Waiting::Command) {
            Waiting::AuthData(tag) => {
                let data = match self.framer.decode(&AuthenticateDataCodec::default()) {
                    Ok(AuthenticateData::Continue(d)) => d.declassify().to_vec(),
                    Ok(AuthenticateData::Cancel) => {
                        self.bad(Some(&tag), None, "Authentication cancelled");
                        return Flow::Continue;
                    }
                    Err(_) => {
                        self.bad(Some(&tag), None, "Invalid base64 in AUTHENTICATE");
                        return Flow::Continue;
                    }
                };
                self.auth_plain(&tag, &data).await;
                Flow::Continue
            }
            Waiting::IdleDone(tag) => {
                match self.framer.decode(&IdleDoneCodec::default()) {
                    Ok(_) => {
                        self.report_changes(true).await;
                        self.ok(&tag, None, "IDLE terminated");
                    }
                    Err(_) => {
                        self.bad(Some(&tag), None, "Expected DONE to end IDLE");
                    }
                }
                Flow::Continue
            }
            Waiting::Command => {
                let decoded = self.framer.decode(&CommandCodec::default());
                let command = match decoded {
                    Ok(c) => c.into_static(),
                    Err(DecodeMessageError::DecodingFailure(_)) if self.user.is_some() => {
                        // imap-codec does not know the extended LIST forms yet.
                        match super::list_extended::parse(self.framer.message_bytes()) {
                            Ok(Some(l)) => {
                                self.list_extended(l).await;
                                return Flow::Continue;
                            }
                            Ok(None) => {
                                let tag = self.framer.tag();
                                self.bad(tag.as_ref(), None, "Invalid command syntax");
                                return Flow::Continue;
                            }
                            Err(e) => {
                                let tag = self.framer.tag();
                                self.bad(tag.as_ref(), None, &e.0);
                                return Flow::Continue;
                            }
                        }
                    }
                    Err(e) => {
                        let tag = self.framer.tag();
                        let (code_, msg) = match e {
                            DecodeMessageError::MessageTooLong { .. } => {
                                (Some(code("TOOBIG")), "Command too long".to_string())
                            }
                            _ => (None, "Invalid command syntax".to_string()),
                        };
                        self.bad(tag.as_ref(), code_, &msg);
                        return Flow::Continue;
                    }
                };
                self.command(command).await
            }
        }
    }

    async fn command(&mut self, cmd: Command<'static>) -> Flow {
        let Command { tag, body } = cmd;
        let name = body.name();
        tracing::trace!(peer = %self.peer, command = name, "imap command");
        // Commands valid in every state.
        match body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.data(Data::Capability(caps));
                self.ok(&tag, None, "CAPABILITY completed");
                return Flow::Continue;
            }
            CommandBody::Noop => {
                self.report_changes(true).await;
                self.ok(&tag, None, "NOOP completed");
                return Flow::Continue;
            }
            CommandBody::Logout => {
                self.bye("tiermail logging out");
                self.ok(&tag, None, "LOGOUT completed");
                return Flow::Close;
            }
            CommandBody::Id { .. } => {
                let params = vec![
                    (super::istr("name"), super::nstr(Some("tiermail"))),
                    (
                        super::istr("version"),
                        super::nstr(Some(env!("CARGO_PKG_VERSION"))),
                    ),
                ];
                self.data(Data::Id {
                    parameters: Some(params),
                });
                self.ok(&tag, None, "ID completed");
                return Flow::Continue;
            }
            _ => {}
        }
        if self.user.is_none() {
            return self.not_authenticated(tag, body).await;
        }
        let before_selected = self.selected.is_some();
        let expunge_ok = !matches!(
            body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
        );
        let flow = self.authenticated(tag, body).await;
        if before_selected && self.selected.is_some() {
            // Changes are reported before the tagged reply: move it after them.
            let tagged_at = last_line_start(&self.out);
            let tagged = self.out.split_off(tagged_at);
            self.report_changes(expunge_ok).await;
            self.out.extend_from_slice(&tagged);
        }
        flow
    }

    async fn not_authenticated(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Flow {
        match body {
            CommandBody::StartTLS => {
                if self.conn.is_tls() || self.kind == Kind::Tls || self.app.tls.is_none() {
                    self.bad(Some(&tag), None, "TLS is already active or not available");
                    return Flow::Continue;
                }
                self.ok(&tag, None, "Begin TLS negotiation now");
                Flow::StartTls
            }
            CommandBody::Login { username, password } => {
                if !self.plaintext_auth_ok() {
                    self.no(
                        &tag,
                        Some(code("PRIVACYREQUIRED")),
                        "LOGIN needs TLS: use STARTTLS or port 993",
                    );
                    return Flow::Continue;
                }
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&tag, &user, &pass).await;
                Flow::Continue
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if !self.plaintext_auth_ok() {
                    self.no(
                        &tag,
                        Some(code("PRIVACYREQUIRED")),
                        "Authentication needs TLS: use STARTTLS or port 993",
                    );
                    return Flow::Continue;
                }
                if mechanism != AuthMechanism::Plain {
                    self.no(&tag, None, "Unsupported mechanism; use PLAIN");
                    return Flow::Continue;
                }
                match initial_response {
                    Some(ir) => {
                        let data = ir.declassify().to_vec();
                        self.auth_plain(&tag, &data).await;
                    }
                    None => {
                        if let Ok(c) = CommandContinuationRequest::basic(None, " ") {
                            self.send(Response::CommandContinuationRequest(c));
                        }
                        self.waiting = Waiting::AuthData(tag);
                    }
                }
                Flow::Continue
            }
            CommandBody::Enable { .. }
            | CommandBody::Select { .. }
            | CommandBody::Examine { .. }
            | CommandBody::List { .. }
            | CommandBody::Lsub { .. }
            | CommandBody::Status { .. }
            | CommandBody::Create { .. }
            | CommandBody::Delete { .. }
            | CommandBody::Rename { .. }
            | CommandBody::Subscribe { .. }
            | CommandBody::Unsubscribe { .. }
            | CommandBody::Append { .. }
            | CommandBody::Namespace
            | CommandBody::Idle => {
                self.bad(Some(&tag), None, "Log in first");
                Flow::Continue
            }
            other => {
                let msg = format!("{} is not valid before login", other.name());
                self.bad(Some(&tag), None, &msg);
                Flow::Continue
            }
        }
    }

    async fn auth_plain(&mut self, tag: &Tag<'static>, data: &[u8]) {
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            self.bad(
                Some(tag),
                None,
                "PLAIN needs authzid NUL authcid NUL password",
            );
            return;
        };
        let (Ok(authz), Ok(authc), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(authc),
            std::str::from_utf8(pass),
        ) else {
            self.bad(Some(tag), None, "Credentials are not UTF-8");
            return;
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
            self.no(
                tag,
                Some(code("AUTHORIZATIONFAILED")),
                "Authorization identity must match the login",
            );
            return;
        }
        let (authc, pass) = (authc.to_string(), pass.to_string());
        self.login(tag, &authc, &pass).await;
    }

    async fn login(&mut self, tag: &Tag<'static>, user: &str, pass: &str) {
        let ip = self.peer.ip();
        let address = match self
            .app
            .users
            .login(&self.app.throttle, "imap", ip, user, pass)
            .await
        {
            crate::auth::Login::Ok(a) => a,
            crate::auth::Login::Throttled => {
                return self.no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "Too many failed logins, try again later",
                );
            }
            crate::auth::Login::Invalid => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                return self.no(
                    tag,
                    Some(code("AUTHENTICATIONFAILED")),
                    "Invalid credentials",
                );
            }
        };
        if let Err(e) = self.app.store.ensure_user(&address).await {
            tracing::error!(user = %address, error = %e, "cannot open the user's mail");
            self.no(
                tag,
                Some(code("UNAVAILABLE")),
                "Mail store unavailable, try later",
            );
            return;
        }
        tracing::info!(peer = %self.peer, user = %address, "imap login");
        self.changes = Some(self.app.store.watch(&address));
        self.slot.authenticated();
        self.user = Some(address);
        self.framer.set_limits(Self::limits(&self.app, true));
        let caps = self.capabilities();
        self.ok(tag, Some(Code::Capability(caps)), "Logged in");
    }

    async fn authenticated(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Flow {
        match body {
            CommandBody::StartTLS
            | CommandBody::Login { .. }
            | CommandBody::Authenticate { .. } => {
                self.bad(Some(&tag), None, "Already authenticated");
            }
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.into_inner() {
                    if c == CapabilityEnable::CondStore {
                        self.condstore = true;
                        enabled.push(c);
                    }
                }
                self.data(Data::Enabled {
                    capabilities: enabled,
                });
                self.ok(&tag, None, "ENABLE completed");
            }
            CommandBody::Idle => {
                if let Ok(c) = CommandContinuationRequest::basic(None, "idling") {
                    self.send(Response::CommandContinuationRequest(c));
                }
                // Anything that changed before IDLE began is reported now.
                self.report_changes(true).await;
                self.waiting = Waiting::IdleDone(tag);
            }
            CommandBody::Namespace => self.namespace(&tag),
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                self.select(&tag, &mailbox, false, !parameters.is_empty())
                    .await
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                self.select(&tag, &mailbox, true, !parameters.is_empty())
                    .await
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, &reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&tag, &reference, &mailbox_wildcard, true).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&tag, &mailbox, &item_names).await,
            CommandBody::Create { mailbox } => self.create(&tag, &mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&tag, &mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&tag, &from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&tag, &mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&tag, &mailbox, false).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => self.append(&tag, &mailbox, flags, date, message).await,
            other if self.selected.is_none() => {
                let msg = format!("{} needs a selected mailbox", other.name());
                self.bad(Some(&tag), None, &msg);
            }
            CommandBody::Check => self.ok(&tag, None, "CHECK completed"),
            CommandBody::Close => self.close(&tag, true).await,
            CommandBody::Unselect => self.close(&tag, false).await,
            CommandBody::Expunge => self.expunge(&tag, None).await,
            CommandBody::ExpungeUid { sequence_set } => {
                self.expunge(&tag, Some(sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(&tag, charset, criteria, uid).await,
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                if let Err(e) = self
                    .fetch(&tag, &sequence_set, macro_or_item_names, uid, modifiers)
                    .await
                {
                    tracing::debug!(error = %e, "fetch output failed");
                    return Flow::Close;
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store(&tag, &sequence_set, kind, response, flags, uid, modifiers)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&tag, &sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&tag, &sequence_set, &mailbox, uid, true).await,
            other => {
                let msg = format!("{} is not supported", other.name());
                self.bad(Some(&tag), None, &msg);
            }
        }
        Flow::Continue
    }

    /// Reconciles the selected mailbox with the store and queues EXISTS,
    /// EXPUNGE and FETCH FLAGS for what changed.
    pub(super) async fn report_changes(&mut self, expunge_ok: bool) {
        // Every write to the user's mail bumps the counter: when it has not
        // moved since the last look, there is nothing to reconcile.
        let changed = match self.changes.as_mut() {
            Some(rx) => {
                let c = rx.has_changed().unwrap_or(false);
                rx.borrow_and_update();
                c
            }
            None => false,
        } || std::mem::take(&mut self.force_refresh);
        let held_back = self
            .selected
            .as_ref()
            .is_some_and(|v| expunge_ok && v.entries.iter().any(|e| e.gone));
        if !changed && !held_back {
            return;
        }
        let Some(view) = self.selected.as_ref() else {
            return;
        };
        let user = self.user.clone().unwrap_or_default();
        let snap = if let Some(folder) = view.archive.clone() {
            match self.archive_snapshot(folder.as_deref()).await {
                Ok(s) => Some(s),
                Err(super::archive_folder::ArchiveProblem::NoSuchFolder) => None,
                Err(super::archive_folder::ArchiveProblem::Unavailable(why)) => {
                    tracing::warn!(error = %why, "cannot refresh the archive folder");
                    return;
                }
            }
        } else {
            match self.app.store.snapshot(&user, view.id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the selected mailbox");
                    return;
                }
            }
        };
        let Some((info, msgs)) = snap else {
            // Deleted or renamed away by another session.
            self.selected = None;
            self.bye("The selected mailbox was deleted");
            return;
        };
        let condstore = self.condstore;
        let view = self.selected.as_mut().expect("checked above");
        let up = view.refresh(&info, &msgs, expunge_ok);
        for seq in up.expunged {
            if let Ok(d) = Data::expunge(seq) {
                self.data(d);
            }
        }
        if let Some(n) = up.exists {
            self.data(Data::Exists(n));
        }
        for (seq, uid, flags, modseq) in up.flags {
            self.fetch_flags_response(seq, uid, &flags, modseq, true, condstore);
        }
    }

    pub(super) fn fetch_flags_response(
        &mut self,
        seq: u32,
        uid: u32,
        flags: &[String],
        modseq: u64,
        with_uid: bool,
        with_modseq: bool,
    ) {
        use imap_types::fetch::MessageDataItem;
        let mut items = vec![MessageDataItem::Flags(super::names::fetch_flags(flags))];
        if with_uid && let Some(u) = std::num::NonZeroU32::new(uid) {
            items.push(MessageDataItem::Uid(u));
        }
        if with_modseq && let Some(m) = std::num::NonZeroU64::new(modseq) {
            items.push(MessageDataItem::ModSeq(m));
        }
        if let (Some(seq), Ok(items)) = (std::num::NonZeroU32::new(seq), Vec1::try_from(items)) {
            self.data(Data::Fetch { seq, items });
        }
    }

    /// Marks every change so far as seen (before taking a fresh snapshot).
    pub(super) fn mark_changes_seen(&mut self) {
        if let Some(rx) = self.changes.as_mut() {
            rx.borrow_and_update();
        }
    }

    pub(super) fn user(&self) -> String {
        self.user.clone().unwrap_or_default()
    }

    pub(super) fn untagged(&mut self, code: Code<'_>, msg: &str) {
        self.untagged_ok(Some(code), msg);
    }
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Start of the last CRLF-terminated line in `out` (the tagged reply).
fn last_line_start(out: &[u8]) -> usize {
    if out.len() < 2 {
        return 0;
    }
    out[..out.len() - 2]
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0)
}
