//! The IMAP stress checker: N clients on one user's mailboxes, each
//! pipelining a random mix of commands (LIST, STATUS, SELECT, FETCH, STORE
//! of keywords and system flags, STORE \Deleted + EXPUNGE, APPEND with
//! LITERAL+, COPY, MOVE, IDLE, NOOP, UID forms, CONDSTORE), while keeping
//! its own model of the selected mailbox from what the server says. Every
//! response that contradicts the model is a protocol violation:
//!
//! - a keyword in FETCH FLAGS that the last `* FLAGS` / `PERMANENTFLAGS`
//!   did not list (RFC 3501 7.2.6, RFC 9051 7.3.5);
//! - EXPUNGE of a sequence number the client does not have;
//! - FETCH of a sequence number the client does not have, or with a UID
//!   other than the one it has for that number, or UIDs out of order;
//! - EXISTS going backwards without EXPUNGEs;
//! - a message's MODSEQ going down;
//! - the same item twice in one FETCH response;
//!
//! - (QRESYNC clients, `--qresync`) `* VANISHED` of a UID the client
//!   does not have; after a reconnect with `SELECT … (QRESYNC …)` from
//!   the model kept at logout: a model that no longer lines up with the
//!   server's messages (more left than EXISTS after `VANISHED (EARLIER)`,
//!   or a UID where the client has another), a change up to the SELECT's
//!   HIGHESTMODSEQ that the resync did not report, or other flags at the
//!   same MODSEQ;
//!
//! and a command without its tagged reply within 5 seconds is a stall.
//! Responses are framed and decoded by imap-codec, so any server can be
//! checked (Dovecot in benches/peers/run.sh proves the checker quiet on a
//! correct server).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imap_codec::ResponseCodec;
use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};
use imap_types::fetch::MessageDataItem;
use imap_types::flag::{FlagFetch, FlagPerm};
use imap_types::response::{Code, Data, Response, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a command may wait for its tagged reply.
const STALL: Duration = Duration::from_secs(5);

/// The stress checker's options (the `imap-stress` subcommand).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// 1: everyone on INBOX; more: stress0..stressN-1.
    #[arg(long, default_value_t = 1)]
    pub mailboxes: usize,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub password: String,
    /// Most commands pipelined at once.
    #[arg(long, default_value_t = 4)]
    pub pipeline: usize,
    /// Log out and in again after this many rounds (0: stay logged in).
    #[arg(long, default_value_t = 0)]
    pub relogin: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hold the selected mailbox near this many messages (0: let it grow):
    /// above it, the delete-and-expunge step removes up to 32 messages
    /// instead of up to 4. Without it the mailbox grows with every command
    /// run, so a faster server is measured on a bigger mailbox.
    #[arg(long, default_value_t = 0)]
    pub steady: usize,
    /// Every Nth client (0: none) enables QRESYNC, logs out every
    /// `--relogin` rounds (20 if 0) and comes back with
    /// `SELECT … (QRESYNC …)` from the model it kept.
    #[arg(long, default_value_t = 0)]
    pub qresync: usize,
}

/// What a run found.
#[derive(Default)]
pub struct Report {
    pub commands: AtomicU64,
    pub violations: AtomicU64,
    pub stalls: AtomicU64,
    /// The most messages a client's selected mailbox held.
    pub largest: AtomicU64,
    /// QRESYNC reconnects checked.
    pub resyncs: AtomicU64,
    pub examples: std::sync::Mutex<Vec<String>>,
}

impl Report {
    fn violation(&self, client: usize, what: String) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        // Up to three examples of each kind (the text without its numbers).
        let kind = |t: &str| -> String { t.chars().filter(|c| !c.is_ascii_digit()).collect() };
        let mut e = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        let same = e
            .iter()
            .filter(|x| kind(x.split_once(": ").map_or("", |p| p.1)) == kind(&what))
            .count();
        if same < 3 && e.len() < 30 {
            e.push(format!("client {client}: {what}"));
        }
    }

    fn stall(&self, client: usize, what: String) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
        self.violation(client, format!("stall: {what}"));
    }
}

/// The mailbox names a run uses.
pub fn mailbox_names(n: usize) -> Vec<String> {
    if n <= 1 {
        vec!["INBOX".to_string()]
    } else {
        (0..n).map(|i| format!("stress{i}")).collect()
    }
}

/// One message as the client knows it.
#[derive(Clone, Default)]
struct Known {
    uid: Option<u32>,
    flags: Vec<String>,
    modseq: u64,
    /// The batch whose responses gave `modseq`, and whether that response
    /// carried the UID (for the report when MODSEQ goes down).
    modseq_from: (u64, bool),
}

/// The client's model of its selected mailbox.
#[derive(Default)]
struct Model {
    selected: bool,
    messages: Vec<Known>,
    /// Flags the server said are in use (`* FLAGS`, PERMANENTFLAGS).
    announced: HashSet<String>,
    /// The batch being answered, and the command lines of the last ones.
    batch: u64,
    recent: std::collections::VecDeque<(u64, String)>,
    /// From the SELECT's response codes.
    uidvalidity: u32,
    highestmodseq: u64,
    /// A QRESYNC reconnect being checked.
    resync: Option<ResyncCheck>,
}

/// What a QRESYNC reconnect is checked against.
struct ResyncCheck {
    /// The SELECT's tag: until its tagged reply, the resync responses.
    select_tag: String,
    selecting: bool,
    /// EXISTS comes before VANISHED (EARLIER): applied once that is in.
    pending_exists: Option<usize>,
    /// The modseq the client asked from, and the SELECT's HIGHESTMODSEQ.
    since: u64,
    select_hms: u64,
    /// UIDs the resync's FETCH responses reported.
    reported: HashSet<u32>,
}

/// A model kept over a logout, to come back with.
struct Saved {
    mailbox: usize,
    uidvalidity: u32,
    highestmodseq: u64,
    messages: Vec<Known>,
}

/// UIDs as an IMAP set (ascending input).
fn uid_set(uids: &[u32]) -> String {
    tiermail::imap::view::ranges(uids)
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Model {
    /// The EXISTS of a QRESYNC SELECT, once `VANISHED (EARLIER)` is in:
    /// what is left of the old model must fit.
    fn settle(&mut self, problems: &mut Vec<String>) {
        let Some(n) = self.resync.as_mut().and_then(|r| r.pending_exists.take()) else {
            return;
        };
        if n < self.messages.len() {
            problems.push(format!(
                "after VANISHED (EARLIER) the client has {} messages, EXISTS said {n}",
                self.messages.len()
            ));
            self.messages.truncate(n);
        } else {
            self.messages.resize(n, Known::default());
        }
    }

    /// `* VANISHED` (not EARLIER): messages the client has, by UID.
    fn vanished(&mut self, uids: Vec<u32>, problems: &mut Vec<String>) {
        for u in uids {
            if let Some(i) = self.messages.iter().position(|k| k.uid == Some(u)) {
                self.messages.remove(i);
                continue;
            }
            // One the client knows only from EXISTS: between the known
            // UIDs below and above it.
            let mut candidates = Vec::new();
            for (i, k) in self.messages.iter().enumerate() {
                match k.uid {
                    Some(x) if x > u => break,
                    // Those before a lower known UID are lower too.
                    Some(_) => candidates.clear(),
                    None => candidates.push(i),
                }
            }
            match candidates.first() {
                None => problems.push(format!("VANISHED {u}, which the client does not have")),
                Some(&i) => {
                    self.messages.remove(i);
                    // Which one it was is not known: forget what was
                    // known of the others there.
                    for &j in &candidates[1..] {
                        self.messages[j - 1] = Known::default();
                    }
                }
            }
        }
    }

    /// UIDs must rise with sequence numbers. Checked once per command (one
    /// pass) rather than per FETCH response, which made `FETCH 1:*` after
    /// SELECT quadratic in the checker itself.
    /// A UID found out of order is forgotten, so it is reported once.
    fn uid_order(&mut self, problems: &mut Vec<String>) {
        let mut last: Option<u32> = None;
        for (i, k) in self.messages.iter_mut().enumerate() {
            if let Some(u) = k.uid {
                if last.is_some_and(|l| l >= u) {
                    problems.push(format!("UID {u} at {} is out of order", i + 1));
                    k.uid = None;
                } else {
                    last = Some(u);
                }
            }
        }
    }
}

fn is_system(f: &str) -> bool {
    f.starts_with('\\')
}

struct Client {
    id: usize,
    /// The last lines sent and received (commands abridged), printed to
    /// stderr with a client's first violations: the last 2,000 lines, or
    /// 20,000 with `TMLOAD_TRACE` set.
    trace: std::collections::VecDeque<String>,
    trace_lines: usize,
    /// Violations printed with their trace so far.
    traced: usize,
    s: TcpStream,
    frag: Fragmentizer,
    model: Model,
    next_tag: u64,
    rng: tiermail::corpus::Rng,
    report: Arc<Report>,
    /// This client enabled QRESYNC.
    qresync: bool,
}

impl Client {
    async fn connect(
        id: usize,
        addr: SocketAddr,
        seed: u64,
        report: Arc<Report>,
    ) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        let _ = s.set_nodelay(true);
        let mut c = Client {
            id,
            trace: Default::default(),
            trace_lines: if std::env::var_os("TMLOAD_TRACE").is_some() {
                20_000
            } else {
                2_000
            },
            traced: 0,
            s,
            frag: Fragmentizer::without_max_message_size(),
            model: Model::default(),
            next_tag: 0,
            rng: tiermail::corpus::Rng::new(seed),
            report,
            qresync: false,
        };
        // The greeting.
        c.read_response(Instant::now() + STALL).await?;
        Ok(c)
    }

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("s{}", self.next_tag)
    }

    /// Reads one whole response (literals included) and applies it to the
    /// model; returns the tag of a tagged response.
    async fn read_response(&mut self, deadline: Instant) -> std::io::Result<Option<String>> {
        loop {
            while let Some(info) = self.frag.progress() {
                if let FragmentInfo::Line { .. } = info
                    && self.frag.is_message_complete()
                {
                    return Ok(self.apply());
                }
            }
            let mut buf = [0u8; 16 * 1024];
            let n = match tokio::time::timeout_at(deadline.into(), self.s.read(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no response in time",
                    ));
                }
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.frag.enqueue_bytes(&buf[..n]);
        }
    }

    /// Applies the response in the framer to the model.
    fn apply(&mut self) -> Option<String> {
        let b = self.frag.message_bytes();
        let text = String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned();
        self.trace.push_back(format!("S: {}", text.trim_end()));
        while self.trace.len() > self.trace_lines {
            self.trace.pop_front();
        }
        let mut problems = Vec::new();
        let model = &mut self.model;
        let response = match self.frag.decode_message(&ResponseCodec::default()) {
            Ok(r) => r,
            // Something imap-codec does not know: not ours to judge.
            Err(_) => return None,
        };
        let tag = match response {
            Response::Status(Status::Tagged(t)) => {
                let tag = t.tag.inner().to_string();
                if model
                    .resync
                    .as_ref()
                    .is_some_and(|r| r.selecting && r.select_tag == tag)
                {
                    model.settle(&mut problems);
                    if let Some(r) = &mut model.resync {
                        r.selecting = false;
                        r.select_hms = model.highestmodseq;
                    }
                }
                model.uid_order(&mut problems);
                Some(tag)
            }
            Response::Status(Status::Untagged(b)) => {
                match &b.code {
                    Some(Code::PermanentFlags(p)) => {
                        for f in p {
                            if let FlagPerm::Flag(f) = f {
                                model.announced.insert(f.to_string().to_ascii_lowercase());
                            }
                        }
                    }
                    Some(Code::UidValidity(v)) => {
                        if model.resync.is_some() && model.uidvalidity != v.get() {
                            // Another mailbox now: the server starts over.
                            model.messages.clear();
                        }
                        model.uidvalidity = v.get();
                    }
                    Some(Code::HighestModSeq(m)) => model.highestmodseq = m.get(),
                    _ => {}
                }
                None
            }
            Response::Data(d) => {
                Self::data(model, d, &mut problems);
                None
            }
            _ => None,
        };
        for p in problems {
            if self.traced < 3 {
                self.traced += 1;
                let lines: Vec<&str> = self.trace.iter().map(String::as_str).collect();
                eprintln!("== client {}: {p}\n{}", self.id, lines.join("\n"));
            }
            self.report.violation(self.id, p);
        }
        tag
    }

    fn data(m: &mut Model, d: Data<'_>, problems: &mut Vec<String>) {
        match d {
            Data::Flags(flags) => {
                m.announced = flags
                    .iter()
                    .map(|f| f.to_string().to_ascii_lowercase())
                    .collect();
            }
            Data::Exists(n) if m.resync.as_ref().is_some_and(|r| r.selecting) => {
                if let Some(r) = &mut m.resync {
                    r.pending_exists = Some(n as usize);
                }
            }
            Data::Vanished {
                earlier: true,
                known_uids,
            } if m.selected => {
                // No `*` in what servers send: the largest UID stands in.
                m.messages.retain(|k| {
                    !k.uid
                        .is_some_and(|u| tiermail::imap::view::contains(&known_uids, u, u32::MAX))
                });
            }
            Data::Vanished {
                earlier: false,
                known_uids,
            } if m.selected => {
                match tiermail::imap::uidset::values(&known_uids, u32::MAX, m.messages.len() + 1) {
                    Some(uids) => m.vanished(uids, problems),
                    None => problems.push(format!(
                        "VANISHED {known_uids:?} names more UIDs than the client has"
                    )),
                }
            }
            Data::Exists(n) if m.selected => {
                let n = n as usize;
                if n < m.messages.len() {
                    problems.push(format!(
                        "EXISTS went back from {} to {n} without EXPUNGE",
                        m.messages.len()
                    ));
                    m.messages.truncate(n);
                } else {
                    m.messages.resize(n, Known::default());
                }
            }
            Data::Expunge(seq) if m.selected => {
                let i = seq.get() as usize;
                if i > m.messages.len() {
                    problems.push(format!("EXPUNGE {i} of {} messages", m.messages.len()));
                } else {
                    m.messages.remove(i - 1);
                }
            }
            Data::Fetch { seq, items } if m.selected => {
                m.settle(problems);
                let i = seq.get() as usize;
                if i > m.messages.len() {
                    problems.push(format!("FETCH {i} of {} messages", m.messages.len()));
                    return;
                }
                let old = m.messages[i - 1].clone();
                let mut kinds: Vec<&'static str> = Vec::new();
                let mut uid = None;
                let mut modseq = None;
                for item in items.as_ref() {
                    let kind = match item {
                        MessageDataItem::Uid(u) => {
                            uid = Some(u.get());
                            "UID"
                        }
                        MessageDataItem::Flags(f) => {
                            let flags: Vec<String> = f
                                .iter()
                                .filter_map(|x| match x {
                                    FlagFetch::Flag(f) => Some(f.to_string()),
                                    FlagFetch::Recent => None,
                                })
                                .collect();
                            for k in flags.iter().filter(|f| !is_system(f)) {
                                if !m.announced.contains(&k.to_ascii_lowercase()) {
                                    problems.push(format!(
                                        "FETCH {i} FLAGS uses {k}, which no FLAGS response announced"
                                    ));
                                }
                            }
                            m.messages[i - 1].flags = flags;
                            "FLAGS"
                        }
                        MessageDataItem::ModSeq(ms) => {
                            modseq = Some(ms.get());
                            "MODSEQ"
                        }
                        MessageDataItem::Rfc822Size(_) => "RFC822.SIZE",
                        MessageDataItem::InternalDate(_) => "INTERNALDATE",
                        MessageDataItem::Envelope(_) => "ENVELOPE",
                        MessageDataItem::BodyStructure(_) => "BODYSTRUCTURE",
                        _ => "",
                    };
                    if !kind.is_empty() {
                        if kinds.contains(&kind) {
                            problems.push(format!("FETCH {i} carries {kind} twice"));
                        }
                        kinds.push(kind);
                    }
                }
                if let (Some(u), Some(r)) = (uid, &mut m.resync) {
                    if r.selecting {
                        r.reported.insert(u);
                    } else if let Some(ms) = modseq {
                        // The FETCH after the resync: what changed up to
                        // the SELECT's HIGHESTMODSEQ, it reported.
                        if ms > r.since
                            && ms <= r.select_hms
                            && ms != old.modseq
                            && !r.reported.contains(&u)
                        {
                            problems.push(format!(
                                "QRESYNC from modseq {} did not report UID {u} (MODSEQ {ms})",
                                r.since
                            ));
                        }
                        let now: HashSet<String> = m.messages[i - 1]
                            .flags
                            .iter()
                            .map(|f| f.to_ascii_lowercase())
                            .collect();
                        let before: HashSet<String> =
                            old.flags.iter().map(|f| f.to_ascii_lowercase()).collect();
                        if ms == old.modseq && old.uid == Some(u) && now != before {
                            problems.push(format!(
                                "UID {u} has other flags at the same MODSEQ {ms} after QRESYNC"
                            ));
                        }
                    }
                }
                if let Some(u) = uid {
                    let e = &mut m.messages[i - 1];
                    if e.uid.is_some_and(|known| known != u) {
                        problems.push(format!(
                            "FETCH {i} says UID {u}, the client has UID {:?} there",
                            e.uid
                        ));
                    }
                    e.uid = Some(u);
                }
                // After the UID check: a lower MODSEQ for the same UID is the
                // server's fault, for another UID the model's.
                if let Some(ms) = modseq {
                    let e = &mut m.messages[i - 1];
                    if ms < e.modseq {
                        let (from, had_uid) = e.modseq_from;
                        let batches: Vec<String> = m
                            .recent
                            .iter()
                            .filter(|(b, _)| *b >= from)
                            .map(|(b, c)| format!("[{b}] {c}"))
                            .collect();
                        problems.push(format!(
                            "MODSEQ of message {i} (UID {}) went down from {} to {ms} \
                             (set in batch {from}, {} UID; now batch {}: {})",
                            e.uid.map_or("unknown".to_string(), |u| u.to_string()),
                            e.modseq,
                            if had_uid { "with" } else { "without" },
                            m.batch,
                            batches.join(" | ")
                        ));
                    }
                    e.modseq = ms;
                    e.modseq_from = (m.batch, uid.is_some());
                }
            }
            _ => {}
        }
    }

    /// Sends `commands` at once (each a line, or a line with a literal) and
    /// waits for all their tagged replies. `on_reply` sees each tagged
    /// reply's tag.
    async fn batch(&mut self, commands: Vec<(String, Vec<u8>)>) -> std::io::Result<Vec<String>> {
        let mut wire = Vec::new();
        let mut tags = Vec::new();
        let mut lines = Vec::new();
        for (tag, bytes) in &commands {
            wire.extend_from_slice(bytes);
            tags.push(tag.clone());
            // The command line (an APPEND's literal left out).
            let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line).trim_end().to_string();
            self.trace.push_back(format!("C: {line}"));
            lines.push(line);
        }
        self.model.batch += 1;
        self.model
            .recent
            .push_back((self.model.batch, lines.join("; ")));
        if self.model.recent.len() > 64 {
            self.model.recent.pop_front();
        }
        self.s.write_all(&wire).await?;
        let deadline = Instant::now() + STALL;
        let mut done = Vec::new();
        while done.len() < tags.len() {
            match self.read_response(deadline).await {
                Ok(Some(t)) if tags.contains(&t) => done.push(t),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let missing: Vec<&String> = tags.iter().filter(|t| !done.contains(t)).collect();
                    self.report
                        .stall(self.id, format!("no tagged reply in 5 s for {missing:?}"));
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        self.report
            .commands
            .fetch_add(tags.len() as u64, Ordering::Relaxed);
        self.report
            .largest
            .fetch_max(self.model.messages.len() as u64, Ordering::Relaxed);
        Ok(done)
    }

    fn line(&mut self, text: &str) -> (String, Vec<u8>) {
        let tag = self.tag();
        let bytes = format!("{tag} {text}\r\n").into_bytes();
        (tag, bytes)
    }

    fn append(&mut self, mailbox: &str, n: u64) -> (String, Vec<u8>) {
        let tag = self.tag();
        let msg = tiermail::corpus::message(23, n, "stress@example.test");
        let mut bytes =
            format!("{tag} APPEND {mailbox} (\\Seen) {{{}+}}\r\n", msg.len()).into_bytes();
        bytes.extend_from_slice(&msg);
        bytes.extend_from_slice(b"\r\n");
        (tag, bytes)
    }

    async fn select(&mut self, mailbox: &str, condstore: bool) -> std::io::Result<()> {
        self.model = Model {
            selected: true,
            batch: self.model.batch,
            recent: std::mem::take(&mut self.model.recent),
            ..Model::default()
        };
        let cmd = if condstore {
            format!("SELECT {mailbox} (CONDSTORE)")
        } else {
            format!("SELECT {mailbox}")
        };
        let select = self.line(&cmd);
        // What a real client does next: learn UIDs and flags.
        let fetch = self.line("FETCH 1:* (UID FLAGS)");
        self.batch(vec![select, fetch]).await?;
        Ok(())
    }

    /// Comes back to a mailbox with `SELECT … (QRESYNC …)` from the model
    /// kept at logout, then fetches everything to compare.
    async fn resync_select(&mut self, name: &str, saved: Saved) -> std::io::Result<()> {
        let mut known: Vec<u32> = saved.messages.iter().filter_map(|k| k.uid).collect();
        known.sort_unstable();
        known.dedup();
        let known = if known.is_empty() {
            String::new()
        } else {
            format!(" {}", uid_set(&known))
        };
        let cmd = format!(
            "SELECT {name} (QRESYNC ({} {}{known}))",
            saved.uidvalidity, saved.highestmodseq
        );
        let select = self.line(&cmd);
        self.model = Model {
            selected: true,
            batch: self.model.batch,
            recent: std::mem::take(&mut self.model.recent),
            messages: saved.messages,
            uidvalidity: saved.uidvalidity,
            resync: Some(ResyncCheck {
                select_tag: select.0.clone(),
                selecting: true,
                pending_exists: None,
                since: saved.highestmodseq,
                select_hms: 0,
                reported: HashSet::new(),
            }),
            ..Model::default()
        };
        let fetch = self.line("FETCH 1:* (UID FLAGS MODSEQ)");
        let r = self.batch(vec![select, fetch]).await;
        self.model.resync = None;
        self.report.resyncs.fetch_add(1, Ordering::Relaxed);
        r.map(|_| ())
    }

    /// The model to come back with, when it is whole.
    fn saved(&self, mailbox: usize) -> Option<Saved> {
        let m = &self.model;
        (self.qresync
            && m.selected
            && m.uidvalidity != 0
            && m.highestmodseq != 0
            && m.messages.iter().all(|k| k.uid.is_some()))
        .then(|| Saved {
            mailbox,
            uidvalidity: m.uidvalidity,
            highestmodseq: m.highestmodseq,
            messages: m.messages.clone(),
        })
    }

    /// A random sequence set within the messages the client has.
    fn seqs(&mut self) -> Option<String> {
        self.seqs_up_to(4)
    }

    /// A random range of at most `most` messages.
    fn seqs_up_to(&mut self, most: u64) -> Option<String> {
        let n = self.model.messages.len() as u64;
        if n == 0 {
            return None;
        }
        let a = 1 + self.rng.below(n);
        let b = (a + self.rng.below(most)).min(n);
        Some(if a == b {
            a.to_string()
        } else {
            format!("{a}:{b}")
        })
    }

    /// A random UID the client knows.
    fn some_uid(&mut self) -> Option<u32> {
        let known: Vec<u32> = self.model.messages.iter().filter_map(|k| k.uid).collect();
        if known.is_empty() {
            return None;
        }
        Some(known[self.rng.below(known.len() as u64) as usize])
    }

    /// One batch of random commands; `boxes` are the mailbox names.
    async fn round(
        &mut self,
        boxes: &[String],
        current: &mut usize,
        a: &Args,
    ) -> std::io::Result<()> {
        let n = 1 + self.rng.below(a.pipeline.max(1) as u64) as usize;
        let mut cmds = Vec::new();
        let mut reselect = None;
        let mut idle = false;
        for i in 0..n {
            let last = i + 1 == n;
            let other = boxes[self.rng.below(boxes.len() as u64) as usize].clone();
            let here = boxes[*current].clone();
            let label = format!("$Label{}", 1 + self.rng.below(5));
            let system =
                ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"][self.rng.below(4) as usize];
            let c = match self.rng.below(20) {
                0 => Some(self.line("LIST \"\" *")),
                1 => Some(self.line(&format!(
                    "STATUS {other} (MESSAGES UIDNEXT UNSEEN HIGHESTMODSEQ)"
                ))),
                2 => {
                    if last {
                        reselect = Some(self.rng.below(boxes.len() as u64) as usize);
                    }
                    None
                }
                3 | 4 => self
                    .seqs()
                    .map(|s| self.line(&format!("FETCH {s} (FLAGS UID)"))),
                5 => Some(self.line("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")),
                6 => self.seqs().map(|s| {
                    self.line(&format!(
                        "FETCH {s} (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"
                    ))
                }),
                7 | 8 => self
                    .seqs()
                    .map(|s| self.line(&format!("STORE {s} +FLAGS ({label})"))),
                9 => self
                    .seqs()
                    .map(|s| self.line(&format!("STORE {s} -FLAGS ({label} {system})"))),
                10 => self
                    .some_uid()
                    .map(|u| self.line(&format!("UID STORE {u} +FLAGS.SILENT ({system})"))),
                11 => self.seqs().map(|s| {
                    self.line(&format!(
                        "STORE {s} (UNCHANGEDSINCE 1000000000) +FLAGS ({label})"
                    ))
                }),
                12 if last => {
                    // Delete one message and expunge, as a batch ends.
                    let over = a.steady > 0 && self.model.messages.len() > a.steady;
                    if let Some(s) = self.seqs_up_to(if over { 32 } else { 4 }) {
                        cmds.push(self.line(&format!("STORE {s} +FLAGS.SILENT (\\Deleted)")));
                    }
                    Some(self.line("EXPUNGE"))
                }
                13 | 14 => {
                    let k = self.rng.next_u64();
                    Some(self.append(&other, k))
                }
                15 => self.seqs().map(|s| self.line(&format!("COPY {s} {other}"))),
                16 if last && boxes.len() > 1 && other != here => self
                    .some_uid()
                    .map(|u| self.line(&format!("UID MOVE {u} {other}"))),
                17 => Some(self.line("UID SEARCH UNSEEN")),
                18 if last => {
                    idle = true;
                    None
                }
                _ => Some(self.line("NOOP")),
            };
            if let Some(c) = c {
                cmds.push(c);
            }
        }
        if !cmds.is_empty() {
            self.batch(cmds).await?;
        }
        if idle {
            let tag = self.tag();
            self.s
                .write_all(format!("{tag} IDLE\r\n").as_bytes())
                .await?;
            self.trace.push_back(format!("C: {tag} IDLE"));
            let deadline = Instant::now() + STALL;
            // Until the continuation request, then updates for a moment.
            loop {
                if self.frag.progress().is_none() {
                    let mut buf = [0u8; 4096];
                    let Ok(n) =
                        tokio::time::timeout_at(deadline.into(), self.s.read(&mut buf)).await
                    else {
                        self.report
                            .stall(self.id, "no continuation for IDLE in 5 s".into());
                        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "IDLE"));
                    };
                    let n = n?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.frag.enqueue_bytes(&buf[..n]);
                    continue;
                }
                if self.frag.is_message_complete() {
                    if self.frag.message_bytes().starts_with(b"+") {
                        break;
                    }
                    self.apply();
                }
            }
            let stop = Instant::now() + Duration::from_millis(20 + self.rng.below(80));
            while let Ok(r) =
                tokio::time::timeout_at(stop.into(), self.read_response(deadline)).await
            {
                r?;
            }
            self.s.write_all(b"DONE\r\n").await?;
            self.trace.push_back("C: DONE".into());
            loop {
                match self.read_response(Instant::now() + STALL).await {
                    Ok(Some(t)) if t == tag => break,
                    Ok(_) => {}
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::TimedOut {
                            self.report
                                .stall(self.id, "no tagged reply to DONE in 5 s".into());
                        }
                        return Err(e);
                    }
                }
            }
            self.report.commands.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = reselect {
            *current = b;
            let name = boxes[b].clone();
            let condstore = self.rng.below(2) == 0;
            self.select(&name, condstore).await?;
        }
        Ok(())
    }
}

/// Creates the mailboxes of a run (some may exist already).
pub async fn prepare(a: &Args) -> std::io::Result<()> {
    let report = Arc::new(Report::default());
    let mut c = Client::connect(usize::MAX, a.addr, a.seed, report).await?;
    let login = c.line(&format!("LOGIN {} \"{}\"", a.user, a.password));
    c.batch(vec![login]).await?;
    for name in mailbox_names(a.mailboxes) {
        if name != "INBOX" {
            let create = c.line(&format!("CREATE {name}"));
            c.batch(vec![create]).await?;
        }
        // A few messages to start with.
        for k in 0..10u64 {
            let m = c.append(&name, k);
            c.batch(vec![m]).await?;
        }
        // Used once with CONDSTORE, as a client that synchronised it
        // before would have. Dovecot starts keeping per-message modseqs
        // on a mailbox the first time CONDSTORE is used there; until its
        // index has them it answers the highest modseq for a message, and
        // then a lower one for the same unchanged message, which this
        // checker would rightly report as a MODSEQ going down.
        let select = c.line(&format!("SELECT {name} (CONDSTORE)"));
        let fetch = c.line("FETCH 1:* (UID MODSEQ)");
        let close = c.line("UNSELECT");
        c.batch(vec![select, fetch, close]).await?;
    }
    let logout = c.line("LOGOUT");
    let _ = c.batch(vec![logout]).await;
    Ok(())
}

async fn run_client(id: usize, a: Arc<Args>, report: Arc<Report>, until: Instant) {
    let boxes = mailbox_names(a.mailboxes);
    let mut seed = a.seed.wrapping_mul(1000).wrapping_add(id as u64);
    let qresync = a.qresync > 0 && id.is_multiple_of(a.qresync);
    let relogin = match a.relogin {
        0 if qresync => 20,
        n => n,
    };
    let mut saved: Option<Saved> = None;
    while Instant::now() < until {
        seed = seed.wrapping_add(7919);
        let Ok(mut c) = Client::connect(id, a.addr, seed, report.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let login = c.line(&format!("LOGIN {} \"{}\"", a.user, a.password));
        if c.batch(vec![login]).await.is_err() {
            continue;
        }
        if qresync {
            c.qresync = true;
            let enable = c.line("ENABLE QRESYNC");
            if c.batch(vec![enable]).await.is_err() {
                continue;
            }
        }
        let mut current = id % boxes.len();
        let selected = match saved.take() {
            Some(s) => {
                current = s.mailbox;
                c.resync_select(&boxes[current].clone(), s).await
            }
            None => c.select(&boxes[current].clone(), false).await,
        };
        if selected.is_err() {
            continue;
        }
        let mut rounds = 0usize;
        let mut failed = false;
        while Instant::now() < until && (relogin == 0 || rounds < relogin) {
            rounds += 1;
            if c.round(&boxes, &mut current, &a).await.is_err() {
                failed = true;
                break;
            }
        }
        if !failed && qresync {
            // Learn the UIDs it has only from EXISTS, as a client does
            // before it goes offline.
            if c.model.messages.iter().any(|k| k.uid.is_none()) {
                let fetch = c.line("FETCH 1:* (UID FLAGS)");
                failed = c.batch(vec![fetch]).await.is_err();
            }
            if !failed {
                saved = c.saved(current);
            }
        }
        let logout = c.line("LOGOUT");
        let _ = c.batch(vec![logout]).await;
    }
}

/// Runs the checker; prints one JSON object.
pub async fn run(a: Args) -> std::io::Result<String> {
    prepare(&a).await?;
    let report = Arc::new(Report::default());
    let a = Arc::new(a);
    let until = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.clients)
        .map(|i| tokio::spawn(run_client(i, a.clone(), report.clone(), until)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // Let violation reports spawned by the last responses land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let secs = started.elapsed().as_secs_f64();
    let commands = report.commands.load(Ordering::Relaxed);
    let examples = report
        .examples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let examples: Vec<String> = examples
        .iter()
        .map(|e| format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    Ok(format!(
        "{{\"clients\": {}, \"mailboxes\": {}, \"secs\": {secs:.1}, \"commands\": {commands}, \"commands_per_s\": {:.1}, \"largest_mailbox\": {}, \"resyncs\": {}, \"violations\": {}, \"stalls\": {}, \"examples\": [{}]}}",
        a.clients,
        a.mailboxes,
        commands as f64 / secs,
        report.largest.load(Ordering::Relaxed),
        report.resyncs.load(Ordering::Relaxed),
        report.violations.load(Ordering::Relaxed),
        report.stalls.load(Ordering::Relaxed),
        examples.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_compared_without_case() {
        let f =
            imap_types::flag::Flag::Keyword(imap_types::core::Atom::try_from("$Label1").unwrap());
        assert_eq!(f.to_string().to_ascii_lowercase(), "$label1");
        assert!(is_system("\\Seen"));
    }
}
