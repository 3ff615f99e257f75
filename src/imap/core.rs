//! The IMAP protocol core of one connection, without the socket.
//!
//! Bytes go in ([`Core::feed`]), responses come out ([`Core::take_output`]);
//! the tokio driver (`imap::driver`) only moves them and waits. The state is
//! typed — [`State`]: not authenticated, authenticated, selected (with the
//! mailbox view), logout — so a handler for the selected state gets the
//! view as an argument and cannot run without one. Handlers put their
//! responses in the [`Outbox`]; after each command the dispatcher adds the
//! updates other sessions caused (where RFC 3501 allows them) and only then
//! the tagged completion, so it is always last. A long FETCH is a job that
//! runs a batch per step, so its output is written as it is produced and
//! never held whole. The core reads its input to exhaustion before it asks
//! for more (`Framer`), so a command pipelined behind another is never
//! left waiting for the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::fragmentizer::DecodeMessageError;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use imap_types::IntoStatic;
use imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_types::command::{Command, CommandBody};
use imap_types::core::{LiteralMode, Tag, Vec1};
use imap_types::response::{Capability, Code, CommandContinuationRequest, Data, Response, Status};
use tokio::sync::watch;

use super::framing::{Event, Framer, Limits, Refusal};
use super::outbox::Outbox;
use super::view::View;
use super::{code, text};
use crate::server::App;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 143 style: plain, STARTTLS offered.
    Plain,
    /// Port 993 style: TLS from the first byte.
    Tls,
}

/// What the driver does after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Write the output, then close.
    Close,
    /// Write the output, then run the TLS handshake.
    StartTls,
}

/// A logged-in user.
pub struct Authed {
    pub user: String,
    /// Moves whenever the user's mail changes (IDLE waits on it).
    pub changes: watch::Receiver<u64>,
    /// Reconcile at the next chance even if `changes` did not move.
    pub force_refresh: bool,
}

/// RFC 3501's states, each with what it needs.
pub enum State {
    NotAuthenticated,
    Authenticated(Authed),
    Selected(Authed, View),
    Logout,
}

/// What a command handler asks of the state afterwards.
pub enum Next {
    Stay,
    /// A mailbox was selected (SELECT/EXAMINE).
    Select(View),
    /// Back to the authenticated state (CLOSE, UNSELECT, a failed SELECT,
    /// the selected mailbox gone).
    Unselect,
    Logout,
}

/// What the next message from the client is.
enum Waiting {
    Command,
    /// AUTHENTICATE PLAIN data for this tag.
    AuthData(Tag<'static>),
    /// DONE ending the IDLE of this tag.
    IdleDone(Tag<'static>),
}

/// A command that runs over several steps.
pub enum Job {
    Fetch(super::cmd::fetch::FetchJob),
}

/// Everything of a connection but its state: what handlers work with.
pub struct Ctx {
    pub app: Arc<App>,
    pub peer: SocketAddr,
    pub kind: Kind,
    /// The connection is TLS now.
    pub tls: bool,
    pub out: Outbox,
    pub errors: u32,
    /// CONDSTORE is on (ENABLE, or a CONDSTORE-only argument was used).
    pub condstore: bool,
    /// QRESYNC is on (ENABLE QRESYNC): VANISHED instead of EXPUNGE.
    pub qresync: bool,
    /// Counts against the client's address until login.
    pub slot: crate::net::PeerSlot,
    /// Why the literal being thrown away was refused: the reply once the
    /// framer has skipped it (NO or BAD, response code, text).
    refused: Option<(bool, &'static str, String)>,
    /// The bytes of the APPEND being received, from the in-flight budget.
    append_held: Option<crate::inflight::Held>,
    /// Logging in must be done by then.
    login_deadline: tokio::time::Instant,
}

pub struct Core {
    pub ctx: Ctx,
    framer: Framer,
    pub state: State,
    waiting: Waiting,
    job: Option<Job>,
}

impl Ctx {
    pub fn send(&mut self, r: Response<'_>) {
        self.out.push(r);
    }

    pub fn data(&mut self, d: Data<'_>) {
        self.send(Response::Data(d));
    }

    /// Untagged data with extended data items after it (see
    /// [`Outbox::push_extended`]).
    pub fn data_extended(&mut self, d: Data<'_>, extra: &[u8]) {
        self.out.push_extended(Response::Data(d), extra);
    }

    pub fn ok(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, msg: &str) {
        if let Ok(s) = Status::ok(Some(tag.clone()), code, text(msg)) {
            self.out.complete(s);
        }
    }

    pub fn no(&mut self, tag: &Tag<'_>, code: Option<Code<'_>>, msg: &str) {
        if let Ok(s) = Status::no(Some(tag.clone()), code, text(msg)) {
            self.out.complete(s);
        }
    }

    /// BAD: tagged (the command's completion) or untagged (at once).
    pub fn bad(&mut self, tag: Option<&Tag<'_>>, code: Option<Code<'_>>, msg: &str) {
        self.errors += 1;
        if let Ok(s) = Status::bad(tag.cloned(), code, text(msg)) {
            match tag {
                Some(_) => self.out.complete(s),
                None => self.send(Response::Status(s)),
            }
        }
    }

    pub fn untagged(&mut self, code: Code<'_>, msg: &str) {
        if let Ok(s) = Status::ok(None, Some(code), text(msg)) {
            self.send(Response::Status(s));
        }
    }

    pub fn bye(&mut self, msg: &str) {
        if let Ok(s) = Status::bye(None, text(msg)) {
            self.send(Response::Status(s));
        }
    }

    pub fn plaintext_auth_ok(&self) -> bool {
        self.tls || self.app.config.imap.allow_plaintext_auth
    }

    pub fn capabilities(&self, authenticated: bool) -> Vec1<Capability<'static>> {
        let mut caps = vec![Capability::Imap4Rev1];
        if !authenticated {
            if !self.tls && self.kind == Kind::Plain && self.app.tls.is_some() {
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
            Capability::QResync,
            Capability::Binary,
            Capability::StatusSize,
            Capability::Sort(None),
            Capability::Sort(Some(imap_types::extensions::sort::SortAlgorithm::Display)),
            Capability::Thread(imap_types::extensions::thread::ThreadingAlgorithm::OrderedSubject),
        ]);
        caps.push(Capability::ListExtended);
        for other in ["LIST-STATUS", "SPECIAL-USE", "CHILDREN"] {
            if let Ok(c) = Capability::try_from(other) {
                caps.push(c);
            }
        }
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }
}

impl Core {
    pub fn new(
        app: Arc<App>,
        kind: Kind,
        peer: SocketAddr,
        tls: bool,
        slot: crate::net::PeerSlot,
    ) -> Core {
        let framer = Framer::new(Self::limits(&app, false));
        let login_deadline = tokio::time::Instant::now()
            + Duration::from_secs(app.config.imap.unauthenticated_timeout_secs);
        Core {
            ctx: Ctx {
                app,
                peer,
                kind,
                tls,
                out: Outbox::default(),
                errors: 0,
                condstore: false,
                qresync: false,
                slot,
                refused: None,
                append_held: None,
                login_deadline,
            },
            framer,
            state: State::NotAuthenticated,
            waiting: Waiting::Command,
            job: None,
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

    fn authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated(_) | State::Selected(..))
    }

    pub fn greeting(&mut self) {
        let caps = self.ctx.capabilities(false);
        let host = self.ctx.app.config.server.hostname.clone();
        self.ctx.untagged(
            Code::Capability(caps),
            &format!("{host} tiermail IMAP ready"),
        );
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.framer.push(bytes);
    }

    /// What is ready to be written.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.ctx.out.take()
    }

    pub fn output_len(&self) -> usize {
        self.ctx.out.ready_len()
    }

    /// The session must end: too many errors.
    pub fn too_many_errors(&self) -> bool {
        self.ctx.errors >= self.ctx.app.config.limits.max_errors
    }

    pub fn bye(&mut self, why: &str) {
        self.ctx.bye(why);
    }

    /// The connection is now TLS; what was pipelined in the clear is gone.
    pub fn tls_started(&mut self) {
        self.ctx.tls = true;
    }

    /// Anything received but not yet run is dropped (before STARTTLS).
    pub fn discard_input(&mut self) {
        self.framer.clear();
    }

    /// In IDLE: the driver waits for the user's mail to change too.
    pub fn idling(&self) -> bool {
        matches!(self.waiting, Waiting::IdleDone(_))
    }

    /// The receiver that moves when the user's mail changes.
    pub fn changes(&mut self) -> Option<&mut watch::Receiver<u64>> {
        match &mut self.state {
            State::Authenticated(a) | State::Selected(a, _) => Some(&mut a.changes),
            _ => None,
        }
    }

    /// Flag changes are still waiting to be reported (more than one round
    /// holds, see `imap.max_flag_updates`).
    pub fn has_unreported(&self) -> bool {
        matches!(&self.state, State::Selected(_, v) if !v.unreported.is_empty())
    }

    /// During IDLE, the user's mail changed: report it now.
    pub async fn idle_update(&mut self) {
        if let State::Selected(a, v) = &mut self.state {
            a.force_refresh = true;
            let next = self.ctx.report_changes(a, v, true).await;
            self.apply(next);
        }
    }

    /// When the session gives up waiting for the client, and what it
    /// says then: logging in has one deadline from the connection on; a
    /// command must arrive whole in time (see `Framer::deadline`);
    /// between commands a logged-in client may idle for long.
    pub fn deadline(&self) -> (tokio::time::Instant, &'static str) {
        let c = &self.ctx.app.config;
        let mut at = if self.authenticated() {
            (
                tokio::time::Instant::now() + Duration::from_secs(c.imap.idle_timeout_secs),
                "Autologout: idle for too long",
            )
        } else {
            (self.ctx.login_deadline, "Login timeout: log in sooner")
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

    /// Runs the next piece of work: a batch of a long command, or the next
    /// framing event. `None` when every byte received so far is used.
    pub async fn step(&mut self) -> Option<Flow> {
        if let Some(job) = self.job.take() {
            return Some(self.continue_job(job).await);
        }
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
                self.refused(tag, why);
                Some(Flow::Continue)
            }
            Event::Message => {
                let flow = self.message().await;
                if self.job.is_none() {
                    // The APPEND is stored (or refused): its budget goes back.
                    self.ctx.append_held = None;
                }
                Some(flow)
            }
        }
    }

    fn refused(&mut self, tag: Option<Tag<'static>>, why: Refusal) {
        // An AUTHENTICATE exchange or an IDLE ends with the refusal,
        // answered under its own tag.
        let tag = match std::mem::replace(&mut self.waiting, Waiting::Command) {
            Waiting::AuthData(t) | Waiting::IdleDone(t) => Some(t),
            Waiting::Command => tag,
        };
        let (no, c, msg) = match why {
            Refusal::Literal => {
                self.ctx
                    .refused
                    .take()
                    .unwrap_or((false, "TOOBIG", "Literal refused".to_string()))
            }
            Refusal::LineTooLong => (
                false,
                "TOOBIG",
                format!(
                    "Line exceeds the limit of {} bytes",
                    self.ctx.app.config.limits.max_line_length
                ),
            ),
            Refusal::CommandTooLong => (false, "TOOBIG", "Command too long".to_string()),
        };
        match (&tag, no) {
            (Some(t), true) => self.ctx.no(t, Some(code(c)), &msg),
            _ => self.ctx.bad(tag.as_ref(), Some(code(c)), &msg),
        }
        if no && c != "LIMIT" {
            // A refusal before the data was sent still counts (a busy
            // server is not the client's error).
            self.ctx.errors += 1;
        }
        self.ctx.out.end_command();
    }

    /// Decides on an announced literal: sends `+` for one that may come,
    /// or has the framer refuse it (a synchronizing one is answered before
    /// a byte of it is sent, RFC 7888).
    fn literal(&mut self, length: u32, mode: LiteralMode, append: bool, binary: bool) {
        let authed = self.authenticated();
        let l = &self.ctx.app.config.limits;
        let max = if append && authed {
            l.max_message_size
        } else if authed {
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
        } else if binary && !(append && authed) {
            // literal8 (RFC 3516) is for APPEND's message only.
            Some((
                false,
                "CANNOT",
                "A binary literal is only allowed for an APPEND message".to_string(),
            ))
        } else if length as usize > max {
            // Refused before it is sent (NO), or read and dropped (BAD).
            Some((
                sync,
                "TOOBIG",
                format!("Literal of {length} bytes exceeds the limit of {max} bytes"),
            ))
        } else if append && authed {
            let mut held = self.ctx.app.inflight.hold();
            if held.grow_to(length as usize) {
                self.ctx.append_held = Some(held);
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
                    self.ctx.send(Response::CommandContinuationRequest(c));
                }
            }
            Some(r) => {
                self.ctx.refused = Some(r);
                self.framer.refuse_literal();
            }
        }
    }

    async fn message(&mut self) -> Flow {
        match std::mem::replace(&mut self.waiting, Waiting::Command) {
            Waiting::AuthData(tag) => {
                match self.framer.decode(&AuthenticateDataCodec::default()) {
                    Ok(AuthenticateData::Continue(d)) => {
                        let data = d.declassify().to_vec();
                        self.auth_plain(&tag, &data).await;
                    }
                    Ok(AuthenticateData::Cancel) => {
                        self.ctx.bad(Some(&tag), None, "Authentication cancelled")
                    }
                    Err(_) => self
                        .ctx
                        .bad(Some(&tag), None, "Invalid base64 in AUTHENTICATE"),
                }
                self.ctx.out.end_command();
                Flow::Continue
            }
            Waiting::IdleDone(tag) => {
                match self.framer.decode(&IdleDoneCodec::default()) {
                    Ok(_) => {
                        if let State::Selected(a, v) = &mut self.state {
                            let next = self.ctx.report_changes(a, v, true).await;
                            self.apply(next);
                        }
                        self.ctx.ok(&tag, None, "IDLE terminated");
                    }
                    Err(_) => self.ctx.bad(Some(&tag), None, "Expected DONE to end IDLE"),
                }
                self.ctx.out.end_command();
                Flow::Continue
            }
            Waiting::Command => {
                let decoded = self.framer.decode(&CommandCodec::default());
                let command = match decoded {
                    Ok(c) => c.into_static(),
                    Err(DecodeMessageError::DecodingFailure(_)) if self.authenticated() => {
                        // imap-codec does not know the extended LIST forms yet.
                        let parsed = super::list_extended::parse(self.framer.message_bytes());
                        let tag = self.framer.tag();
                        match (parsed, &mut self.state) {
                            (Ok(Some(l)), State::Authenticated(a) | State::Selected(a, _)) => {
                                self.ctx.list_extended(a, l).await
                            }
                            (Ok(None), _) | (Ok(Some(_)), _) => {
                                self.ctx.bad(tag.as_ref(), None, "Invalid command syntax")
                            }
                            (Err(e), _) => self.ctx.bad(tag.as_ref(), None, &e.0),
                        }
                        self.after_command(true).await;
                        return Flow::Continue;
                    }
                    Err(e) => {
                        let tag = self.framer.tag();
                        let (code_, msg) = match e {
                            DecodeMessageError::MessageTooLong { .. } => {
                                (Some(code("TOOBIG")), "Command too long")
                            }
                            _ => (None, "Invalid command syntax"),
                        };
                        self.ctx.bad(tag.as_ref(), code_, msg);
                        self.ctx.out.end_command();
                        return Flow::Continue;
                    }
                };
                self.command(command).await
            }
        }
    }

    async fn command(&mut self, cmd: Command<'static>) -> Flow {
        let Command { tag, body } = cmd;
        tracing::trace!(peer = %self.ctx.peer, command = body.name(), "imap command");
        // Commands valid in every state.
        match body {
            CommandBody::Capability => {
                let caps = self.ctx.capabilities(self.authenticated());
                self.ctx.data(Data::Capability(caps));
                self.ctx.ok(&tag, None, "CAPABILITY completed");
                self.after_command(true).await;
                return Flow::Continue;
            }
            CommandBody::Noop => {
                self.ctx.ok(&tag, None, "NOOP completed");
                self.after_command(true).await;
                return Flow::Continue;
            }
            CommandBody::Logout => {
                self.ctx.bye("tiermail logging out");
                self.ctx.ok(&tag, None, "LOGOUT completed");
                self.ctx.out.end_command();
                self.state = State::Logout;
                return Flow::Close;
            }
            CommandBody::Id { .. } => {
                self.ctx.id(&tag);
                self.after_command(true).await;
                return Flow::Continue;
            }
            CommandBody::Idle if self.authenticated() => {
                if let Ok(c) = CommandContinuationRequest::basic(None, "idling") {
                    self.ctx.send(Response::CommandContinuationRequest(c));
                }
                // Anything that changed before IDLE began is reported now;
                // IDLE completes when DONE arrives.
                if let State::Selected(a, v) = &mut self.state {
                    let next = self.ctx.report_changes(a, v, true).await;
                    self.apply(next);
                }
                self.waiting = Waiting::IdleDone(tag);
                return Flow::Continue;
            }
            _ => {}
        }
        // EXPUNGE responses are not allowed during FETCH, STORE and SEARCH
        // (RFC 3501 7.4.1); their UID forms are fine.
        let expunge_ok = !matches!(
            body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Sort { uid: false, .. }
                | CommandBody::Thread { uid: false, .. }
        );
        let flow = match &mut self.state {
            State::NotAuthenticated => self.not_authenticated(tag, body).await,
            State::Logout => Flow::Close,
            State::Authenticated(a) => {
                let (next, flow) = self.ctx.authenticated(a, tag, body).await;
                self.apply(next);
                flow
            }
            State::Selected(a, v) => {
                let (next, flow, job) = self.ctx.selected(a, v, tag, body).await;
                self.apply(next);
                if let Some(job) = job {
                    self.job = Some(job);
                    return Flow::Continue;
                }
                flow
            }
        };
        self.after_command(expunge_ok).await;
        flow
    }

    /// The end of a command: updates from elsewhere, then the completion.
    async fn after_command(&mut self, expunge_ok: bool) {
        if let State::Selected(a, v) = &mut self.state {
            let next = self.ctx.report_changes(a, v, expunge_ok).await;
            self.apply(next);
        }
        self.ctx.out.end_command();
    }

    async fn continue_job(&mut self, job: Job) -> Flow {
        let State::Selected(a, v) = &mut self.state else {
            // The mailbox went away between batches.
            self.ctx.out.end_command();
            return Flow::Continue;
        };
        match job {
            Job::Fetch(mut f) => {
                let done = self.ctx.fetch_batch(a, v, &mut f).await;
                if !done {
                    self.job = Some(Job::Fetch(f));
                    return Flow::Continue;
                }
                self.after_command(f.expunge_ok()).await;
                Flow::Continue
            }
        }
    }

    fn apply(&mut self, next: Next) {
        match next {
            Next::Stay => {}
            Next::Select(view) => {
                let prev = std::mem::replace(&mut self.state, State::Logout);
                self.state = match prev {
                    State::Authenticated(a) | State::Selected(a, _) => State::Selected(a, view),
                    other => other,
                };
            }
            Next::Unselect => {
                let prev = std::mem::replace(&mut self.state, State::Logout);
                self.state = match prev {
                    State::Selected(a, _) => State::Authenticated(a),
                    other => other,
                };
            }
            Next::Logout => self.state = State::Logout,
        }
    }

    async fn not_authenticated(&mut self, tag: Tag<'static>, body: CommandBody<'static>) -> Flow {
        let ctx = &mut self.ctx;
        match body {
            CommandBody::StartTLS => {
                if ctx.tls || ctx.kind == Kind::Tls || ctx.app.tls.is_none() {
                    ctx.bad(Some(&tag), None, "TLS is already active or not available");
                    return Flow::Continue;
                }
                ctx.ok(&tag, None, "Begin TLS negotiation now");
                ctx.out.end_command();
                Flow::StartTls
            }
            CommandBody::Login { username, password } => {
                if !ctx.plaintext_auth_ok() {
                    ctx.no(
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
                if !ctx.plaintext_auth_ok() {
                    ctx.no(
                        &tag,
                        Some(code("PRIVACYREQUIRED")),
                        "Authentication needs TLS: use STARTTLS or port 993",
                    );
                    return Flow::Continue;
                }
                if mechanism != AuthMechanism::Plain {
                    ctx.no(&tag, None, "Unsupported mechanism; use PLAIN");
                    return Flow::Continue;
                }
                match initial_response {
                    Some(ir) => {
                        let data = ir.declassify().to_vec();
                        self.auth_plain(&tag, &data).await;
                    }
                    None => {
                        if let Ok(c) = CommandContinuationRequest::basic(None, " ") {
                            ctx.send(Response::CommandContinuationRequest(c));
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
                ctx.bad(Some(&tag), None, "Log in first");
                Flow::Continue
            }
            other => {
                let msg = format!("{} is not valid before login", other.name());
                ctx.bad(Some(&tag), None, &msg);
                Flow::Continue
            }
        }
    }

    async fn auth_plain(&mut self, tag: &Tag<'static>, data: &[u8]) {
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            self.ctx.bad(
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
            self.ctx.bad(Some(tag), None, "Credentials are not UTF-8");
            return;
        };
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
            self.ctx.no(
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
        let ctx = &mut self.ctx;
        let ip = ctx.peer.ip();
        let address = match ctx
            .app
            .users
            .login(&ctx.app.throttle, "imap", ip, user, pass)
            .await
        {
            crate::auth::Login::Ok(a) => a,
            crate::auth::Login::Throttled => {
                return ctx.no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "Too many failed logins, try again later",
                );
            }
            crate::auth::Login::Invalid => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                return ctx.no(
                    tag,
                    Some(code("AUTHENTICATIONFAILED")),
                    "Invalid credentials",
                );
            }
        };
        if let Err(e) = ctx.app.store.ensure_user(&address).await {
            tracing::error!(user = %address, error = %e, "cannot open the user's mail");
            return ctx.no(
                tag,
                Some(code("UNAVAILABLE")),
                "Mail store unavailable, try later",
            );
        }
        tracing::info!(peer = %ctx.peer, user = %address, "imap login");
        let changes = ctx.app.store.watch(&address);
        ctx.slot.authenticated();
        self.state = State::Authenticated(Authed {
            user: address,
            changes,
            force_refresh: false,
        });
        self.framer.set_limits(Self::limits(&self.ctx.app, true));
        let caps = self.ctx.capabilities(true);
        self.ctx.ok(tag, Some(Code::Capability(caps)), "Logged in");
    }
}
