//! Framing of client input into IMAP commands, with hard limits.
//!
//! imap-codec's `Fragmentizer` finds lines and literals; this wrapper feeds
//! it one line or one literal at a time, so that what it buffers is
//! always within the limits of the session's state: a line longer than
//! `line`, a non-APPEND command larger than `command` or an APPEND larger
//! than `append` is never held in memory. Such input is read on and thrown
//! away by a second `Fragmentizer` that keeps no bytes, so framing stays in
//! step with the client, and then reported once. Bytes the client
//! pipelined behind a command stay queued here until the session asks for
//! the next event: nothing received is ever dropped by a reset.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::net::CommandClock;

use imap_codec::decode::Decoder;
use imap_codec::fragmentizer::{DecodeMessageError, FragmentInfo, Fragmentizer};
use imap_types::IntoStatic;
use imap_types::core::{LiteralMode, Tag};

/// Byte limits for one state of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest line (command text between literals), CRLF included.
    pub line: usize,
    /// The largest whole command other than APPEND, literals included.
    pub command: usize,
    /// The largest whole APPEND, its message included.
    pub append: usize,
}

/// Why a command was thrown away unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A line passed `Limits::line`.
    LineTooLong,
    /// The command passed `Limits::command` or `Limits::append`.
    CommandTooLong,
    /// The session refused a literal (see [`Framer::refuse_literal`]).
    Literal,
}

#[derive(Debug)]
pub enum Event {
    /// A literal is announced; the session must call
    /// [`Framer::accept_literal`] or [`Framer::refuse_literal`] before asking
    /// for the next event.
    Literal {
        tag: Option<Tag<'static>>,
        length: u32,
        mode: LiteralMode,
        /// The command is an APPEND.
        append: bool,
        /// Announced as `~{n}` (literal8, RFC 3516).
        binary: bool,
    },
    /// A whole command is ready: see [`Framer::message_bytes`] and
    /// [`Framer::decode`].
    Message,
    /// A command was thrown away; answer it (with its tag, when known).
    Refused {
        tag: Option<Tag<'static>>,
        why: Refusal,
    },
}

/// What the inner `Fragmentizer` is parsing now.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// A line, `len` bytes of it so far.
    Line { len: usize },
    /// A literal with this many bytes to come.
    Literal { left: u32 },
}

/// Input being thrown away up to the end of its command.
enum Discard {
    /// The rest of a literal the client sends anyway (LITERAL+).
    Literal(u64),
    /// Lines, framed by a `Fragmentizer` that keeps no bytes.
    Lines(Box<Fragmentizer>),
}

struct Discarding {
    state: Discard,
    tag: Option<Tag<'static>>,
    why: Refusal,
}

pub struct Framer {
    limits: Limits,
    frag: Fragmentizer,
    mode: Mode,
    /// Received, not yet given to `frag` (at most one read's worth).
    pending: VecDeque<u8>,
    discard: Option<Discarding>,
    /// The command being received is an APPEND (known after its first line).
    append: Option<bool>,
    /// A literal announcement waits for the session's decision.
    deciding: Option<(Option<Tag<'static>>, LiteralMode)>,
    /// Times the command being received.
    clock: CommandClock,
    /// The previous command was large: its buffer is released before the
    /// next one starts.
    shrink: bool,
    /// An event to hand out before reading on.
    ready: Option<Event>,
}

/// Bytes of a large command after which its buffer is not kept.
const KEEP_BUFFER: usize = 64 * 1024;

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer {
            frag: Self::fragmentizer(&limits),
            limits,
            mode: Mode::Line { len: 0 },
            pending: VecDeque::new(),
            discard: None,
            append: None,
            deciding: None,
            clock: CommandClock::default(),
            shrink: false,
            ready: None,
        }
    }

    fn fragmentizer(l: &Limits) -> Fragmentizer {
        let max = l.line.max(l.command).max(l.append);
        Fragmentizer::new(u32::try_from(max).unwrap_or(u32::MAX))
    }

    /// New limits (after login); they apply from the next command on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
        if self.discard.is_none()
            && (self.frag.is_message_complete() || self.frag.message_bytes().is_empty())
        {
            self.frag = Self::fragmentizer(&limits);
            self.shrink = false;
            self.start_message();
        }
    }

    /// Forgets everything received and not yet framed (after STARTTLS:
    /// bytes sent in the clear must not run inside TLS).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.frag = Self::fragmentizer(&self.limits);
        self.mode = Mode::Line { len: 0 };
        self.discard = None;
        self.append = None;
        self.deciding = None;
        self.clock = CommandClock::default();
        self.ready = None;
    }

    /// Queues bytes received from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        self.clock.received(bytes.len());
        self.pending.extend(bytes);
    }

    /// No command is partly received.
    pub fn idle(&self) -> bool {
        self.pending.is_empty()
            && self.discard.is_none()
            && (self.frag.is_message_complete() || self.frag.message_bytes().is_empty())
    }

    /// When the command being received must be complete: `timeout` after
    /// its first byte, plus a second for every `per_second` bytes received
    /// (a big APPEND on a slow link is not cut off; a client trickling
    /// bytes is). `None` between commands.
    pub fn deadline(&self, timeout: Duration, per_second: u64) -> Option<Instant> {
        self.clock.deadline(timeout, per_second)
    }

    /// The bytes of the command last reported as [`Event::Message`].
    pub fn message_bytes(&self) -> &[u8] {
        self.frag.message_bytes()
    }

    pub fn decode<'a, C: Decoder>(
        &'a self,
        codec: &C,
    ) -> Result<C::Message<'a>, DecodeMessageError<'a, C>> {
        self.frag.decode_message(codec)
    }

    /// The tag of the command being received, as far as it can be read.
    pub fn tag(&self) -> Option<Tag<'static>> {
        self.frag.decode_tag().map(IntoStatic::into_static)
    }

    /// Lets the announced literal come (the session sends `+` for a
    /// synchronizing one).
    pub fn accept_literal(&mut self) {
        self.deciding = None;
    }

    /// Refuses the announced literal. A synchronizing literal is never
    /// sent, so the command ends here; a non-synchronizing one is read and
    /// thrown away. Either way [`Event::Refused`] follows.
    pub fn refuse_literal(&mut self) {
        let Some((tag, mode)) = self.deciding.take() else {
            return;
        };
        let Mode::Literal { left } = self.mode else {
            return;
        };
        let state = match mode {
            LiteralMode::Sync => Discard::Lines(Box::new(Fragmentizer::new(0))),
            LiteralMode::NonSync => Discard::Literal(u64::from(left)),
        };
        self.discard = Some(Discarding {
            state,
            tag,
            why: Refusal::Literal,
        });
        if mode == LiteralMode::Sync {
            // Nothing more of this command will come.
            self.ready = self.finish_discard();
        }
    }

    /// The next event, or `None` when every byte received so far is used
    /// and more are needed.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.deciding.is_some() {
            // The session did not decide: treat it as accepted.
            self.deciding = None;
        }
        if let Some(e) = self.ready.take() {
            return Some(e);
        }
        loop {
            if self.discard.is_some() {
                match self.step_discard() {
                    Some(e) => return Some(e),
                    None if self.discard.is_some() => return None,
                    None => continue,
                }
            }
            if self.frag.is_message_complete() {
                // The last message was handed out: start the next one.
                self.start_message();
            }
            if self.pending.is_empty() {
                return None;
            }
            let (n, line) = match self.mode {
                Mode::Line { len } => {
                    let n = match self.pending.iter().position(|&b| b == b'\n') {
                        Some(p) => p + 1,
                        None => self.pending.len(),
                    };
                    if len + n > self.limits.line {
                        // Keep what fits (the tag is in there), drop the rest.
                        let fit = self.limits.line.saturating_sub(len);
                        let piece: Vec<u8> = self.pending.drain(..fit.min(n)).collect();
                        self.frag.enqueue_bytes(&piece);
                        let _ = self.frag.progress();
                        self.begin_discard_line(Refusal::LineTooLong, len + piece.len());
                        continue;
                    }
                    (n, true)
                }
                Mode::Literal { left } => (self.pending.len().min(left as usize), false),
            };
            let total = self.frag.message_bytes().len() + n;
            let limit = match self.append {
                Some(true) => self.limits.append,
                _ => self.limits.command,
            };
            if self.append.is_some() && total > limit {
                match self.mode {
                    Mode::Line { len } => self.begin_discard_line(Refusal::CommandTooLong, len),
                    Mode::Literal { left } => {
                        self.discard = Some(Discarding {
                            state: Discard::Literal(u64::from(left)),
                            tag: self.tag(),
                            why: Refusal::CommandTooLong,
                        });
                    }
                }
                continue;
            }
            let piece: Vec<u8> = self.pending.drain(..n).collect();
            self.frag.enqueue_bytes(&piece);
            if let Mode::Line { len } = &mut self.mode
                && line
            {
                *len += n;
            }
            if let Mode::Literal { left } = &mut self.mode {
                *left -= n as u32;
            }
            if let Some(e) = self.progress() {
                return Some(e);
            }
        }
    }

    fn start_message(&mut self) {
        if self.shrink {
            self.frag = Self::fragmentizer(&self.limits);
            self.shrink = false;
        }
        self.mode = Mode::Line { len: 0 };
        self.append = None;
        // The next command's bytes may already be here.
        self.clock.done(self.pending.len());
    }

    /// Lets `frag` parse what it was given; at most one fragment completes.
    fn progress(&mut self) -> Option<Event> {
        let info = self.frag.progress()?;
        match info {
            FragmentInfo::Line {
                announcement,
                start,
                end,
                ..
            } => {
                if self.append.is_none() {
                    self.append = Some(is_append(self.frag.message_bytes()));
                }
                match announcement {
                    None => {
                        self.mode = Mode::Line { len: 0 };
                        self.end_command();
                        Some(Event::Message)
                    }
                    Some(ann) => {
                        self.mode = Mode::Literal { left: ann.length };
                        let line = &self.frag.message_bytes()[start.min(end)..end];
                        let binary = line
                            .iter()
                            .rposition(|&b| b == b'{')
                            .is_some_and(|p| p > 0 && line[p - 1] == b'~');
                        let tag = self.tag();
                        self.deciding = Some((tag.clone(), ann.mode));
                        Some(Event::Literal {
                            tag,
                            length: ann.length,
                            mode: ann.mode,
                            append: self.append == Some(true),
                            binary,
                        })
                    }
                }
            }
            FragmentInfo::Literal { .. } => {
                self.mode = Mode::Line { len: 0 };
                None
            }
        }
    }

    fn end_command(&mut self) {
        self.shrink = self.frag.message_bytes().len() > KEEP_BUFFER;
        self.clock.done(self.pending.len());
    }

    /// Starts throwing away the rest of the current line, whose first
    /// `seen` bytes `frag` already holds, and of its command.
    fn begin_discard_line(&mut self, why: Refusal, seen: usize) {
        let tag = self.tag();
        let mut lines = Fragmentizer::new(0);
        // The discarding parser starts where `frag` stands in this line, so
        // that it sees the same line end and literal announcement.
        let held = self.frag.message_bytes();
        lines.enqueue_bytes(&held[held.len().saturating_sub(seen)..]);
        self.discard = Some(Discarding {
            state: Discard::Lines(Box::new(lines)),
            tag,
            why,
        });
    }

    /// Throws away pending input up to the end of the discarded command.
    fn step_discard(&mut self) -> Option<Event> {
        loop {
            let d = self.discard.as_mut()?;
            match &mut d.state {
                Discard::Literal(left) => {
                    let n = self
                        .pending
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    self.pending.drain(..n);
                    *left -= n as u64;
                    if *left > 0 {
                        return None;
                    }
                    d.state = Discard::Lines(Box::new(Fragmentizer::new(0)));
                }
                Discard::Lines(f) => {
                    if let Some(info) = f.progress() {
                        match info {
                            FragmentInfo::Line {
                                announcement: None, ..
                            } => return self.finish_discard(),
                            FragmentInfo::Line {
                                announcement: Some(ann),
                                ..
                            } => {
                                if ann.mode == LiteralMode::Sync {
                                    // Not answered with `+`: it never comes.
                                    return self.finish_discard();
                                }
                                d.state = Discard::Literal(u64::from(ann.length));
                            }
                            FragmentInfo::Literal { .. } => {}
                        }
                        continue;
                    }
                    if self.pending.is_empty() {
                        return None;
                    }
                    // One line's worth at a time, as for `frag`.
                    let n = match self.pending.iter().position(|&b| b == b'\n') {
                        Some(p) => p + 1,
                        None => self.pending.len(),
                    };
                    let piece: Vec<u8> = self.pending.drain(..n).collect();
                    f.enqueue_bytes(&piece);
                }
            }
        }
    }

    fn finish_discard(&mut self) -> Option<Event> {
        let d = self.discard.take()?;
        self.frag = Self::fragmentizer(&self.limits);
        self.shrink = false;
        self.mode = Mode::Line { len: 0 };
        self.append = None;
        self.deciding = None;
        self.clock.done(self.pending.len());
        Some(Event::Refused {
            tag: d.tag,
            why: d.why,
        })
    }
}

/// Whether a command's first line is an APPEND (`tag APPEND ...`).
fn is_append(message: &[u8]) -> bool {
    let mut words = message.split(|&b| b == b' ');
    let _tag = words.next();
    words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        line: 64,
        command: 200,
        append: 1000,
    };

    /// What a session would see: every event as text, literals accepted
    /// when they fit (APPEND up to 500 bytes, others up to 20).
    fn run(input: &[u8], chunks: usize) -> Vec<String> {
        let mut f = Framer::new(LIMITS);
        let mut out = Vec::new();
        let step = input.len().div_ceil(chunks.max(1)).max(1);
        for piece in input.chunks(step) {
            f.push(piece);
            while let Some(e) = f.next_event() {
                out.push(match e {
                    Event::Message => {
                        format!("msg {}", String::from_utf8_lossy(f.message_bytes()))
                    }
                    Event::Literal {
                        length,
                        append,
                        binary,
                        mode,
                        ..
                    } => {
                        let max = if append { 500 } else { 20 };
                        if length > max {
                            f.refuse_literal();
                        } else {
                            f.accept_literal();
                        }
                        format!("lit {length} {append} {binary} {mode:?}")
                    }
                    Event::Refused { tag, why } => {
                        format!("refused {:?} {why:?}", tag.map(|t| t.inner().to_string()))
                    }
                });
            }
        }
        out
    }

    /// The same events however the input is split into reads.
    fn check(input: &[u8], expect: &[&str]) {
        for chunks in [1, 2, 3, 7, input.len()] {
            let got = run(input, chunks);
            assert_eq!(got, expect, "split into {chunks} reads");
        }
    }

    #[test]
    fn commands_and_pipelining() {
        check(
            b"a NOOP\r\nb LOGIN x y\r\n",
            &["msg a NOOP\r\n", "msg b LOGIN x y\r\n"],
        );
    }

    #[test]
    fn a_command_behind_a_literal_is_never_lost() {
        let mut input = b"t1 APPEND INBOX {400+}\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 400));
        input.extend_from_slice(b"\r\nt2 NOOP\r\n");
        let got = run(&input, 1);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], "lit 400 true false NonSync");
        assert!(got[1].starts_with("msg t1 APPEND"));
        assert_eq!(got[2], "msg t2 NOOP\r\n");
        assert_eq!(run(&input, 5), got);
    }

    #[test]
    fn long_lines_are_refused_and_the_stream_goes_on() {
        let mut input = b"a NOOP ".to_vec();
        input.extend(std::iter::repeat_n(b'y', 10_000));
        input.extend_from_slice(b"\r\nb NOOP\r\n");
        check(
            &input,
            &["refused Some(\"a\") LineTooLong", "msg b NOOP\r\n"],
        );
    }

    #[test]
    fn long_line_ending_in_a_literal_plus_skips_the_literal() {
        let mut input = b"a LOGIN ".to_vec();
        input.extend(std::iter::repeat_n(b'y', 100));
        input.extend_from_slice(b" {6+}\r\nNOOP\r\n\r\nb NOOP\r\n");
        // The literal `NOOP\r\n` and the line after it belong to command a.
        check(
            &input,
            &["refused Some(\"a\") LineTooLong", "msg b NOOP\r\n"],
        );
    }

    #[test]
    fn refused_literals() {
        // Synchronizing: refused before it is sent; the client sends the
        // next command instead.
        check(
            b"a LOGIN {99}\r\nb NOOP\r\n",
            &[
                "lit 99 false false Sync",
                "refused Some(\"a\") Literal",
                "msg b NOOP\r\n",
            ],
        );
        // Non-synchronizing: read and thrown away, command and all.
        let mut input = b"a LOGIN {30+}\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'z', 30));
        input.extend_from_slice(b" {3+}\r\nabc\r\nb NOOP\r\n");
        check(
            &input,
            &[
                "lit 30 false false NonSync",
                "refused Some(\"a\") Literal",
                "msg b NOOP\r\n",
            ],
        );
    }

    #[test]
    fn literal8_is_told_apart() {
        check(
            b"a APPEND INBOX ~{3+}\r\nabc\r\n",
            &[
                "lit 3 true true NonSync",
                "msg a APPEND INBOX ~{3+}\r\nabc\r\n",
            ],
        );
    }

    #[test]
    fn commands_larger_than_their_limit_are_thrown_away() {
        // Each literal fits, the command as a whole does not.
        let mut input = b"a LOGIN".to_vec();
        for _ in 0..12 {
            input.extend_from_slice(b" {20+}\r\n");
            input.extend(std::iter::repeat_n(b'q', 20));
        }
        input.extend_from_slice(b"\r\nb NOOP\r\n");
        let got = run(&input, 1);
        assert_eq!(got.last().unwrap(), "msg b NOOP\r\n", "{got:?}");
        assert!(
            got.contains(&"refused Some(\"a\") CommandTooLong".to_string()),
            "{got:?}"
        );
        for chunks in [2, 3, 7, input.len()] {
            assert_eq!(run(&input, chunks), got);
        }
    }

    #[test]
    fn memory_stays_within_the_limits() {
        // A line without end: the framer holds at most the line limit.
        let mut f = Framer::new(LIMITS);
        for _ in 0..1000 {
            f.push(&[b'x'; 1000]);
            assert!(f.next_event().is_none());
            assert!(f.frag.message_bytes().len() <= LIMITS.line);
            assert!(f.pending.is_empty());
        }
    }

    #[test]
    fn deadline_counts_from_the_first_byte() {
        let mut f = Framer::new(LIMITS);
        assert!(f.deadline(Duration::from_secs(10), 1024).is_none());
        f.push(b"a NO");
        assert!(f.next_event().is_none());
        let d = f.deadline(Duration::from_secs(10), 1024).unwrap();
        f.push(b"O");
        assert!(f.next_event().is_none());
        // More bytes do not move it (4 bytes earn no extra second)...
        assert_eq!(f.deadline(Duration::from_secs(10), 1024).unwrap(), d);
        f.push(b"P\r\n");
        assert!(matches!(f.next_event(), Some(Event::Message)));
        assert!(f.next_event().is_none());
        // ...and between commands there is none.
        assert!(f.deadline(Duration::from_secs(10), 1024).is_none());
        assert!(f.idle());
    }
}
