//! SEARCH criteria evaluated against one message at a time.
//!
//! Keys that only need flags, UIDs, sizes and dates never load the message;
//! header and text keys parse it once and match case-insensitively against
//! both the decoded and the raw form, so a search for a word in an encoded
//! header or a base64 body part finds it.
//!
//! A search string is compiled once per command ([`Program`]) into a
//! linear-time matcher (memchr's two-way `memmem` over ASCII-lower-cased
//! windows of the message): a quadratic window scan let one long needle
//! over a large body hold a core for seconds. The key tree comes from imap-codec, which
//! bounds its nesting; [`Program::new`] refuses anything deeper than
//! [`MAX_DEPTH`] anyway, so evaluation never recurses further.

use chrono::{NaiveDate, TimeZone};
use imap_types::search::SearchKey;

use super::mime::Parsed;
use super::view::contains;
use crate::store::MessageMeta;
use crate::store::live::FlagSet;

/// Deepest key nesting evaluated (imap-codec parses at most 9 levels).
pub const MAX_DEPTH: usize = 32;

/// Why a SEARCH cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("search keys nest too deeply")]
    TooDeep,
    #[error("search strings are limited to {0} bytes")]
    NeedleTooLong(usize),
}

/// A search string, ready to match.
pub struct Needle {
    /// The ASCII-lower-cased bytes, for raw message bytes.
    ascii: memchr::memmem::Finder<'static>,
    /// Lower-cased, for decoded (Unicode) text.
    lower: String,
}

/// Raw bytes are lower-cased this many at a time (plus the needle's length
/// of overlap), so that no copy of a whole message is made.
const WINDOW: usize = 64 * 1024;

impl Needle {
    fn new(s: &str) -> Needle {
        let ascii = s.as_bytes().to_ascii_lowercase();
        Needle {
            ascii: memchr::memmem::Finder::new(&ascii).into_owned(),
            lower: s.to_lowercase(),
        }
    }

    /// ASCII case-insensitive substring search, O(haystack + needle).
    fn in_bytes(&self, hay: &[u8]) -> bool {
        let m = self.ascii.needle().len();
        if m == 0 {
            return true;
        }
        if hay.len() < m {
            return false;
        }
        // Each window starts m-1 bytes early, so a match across a window
        // edge is seen whole; windows of at least 2m keep the overlap small.
        let w = WINDOW.max(2 * m);
        let mut buf = Vec::with_capacity(w + m);
        let mut start = 0;
        while start < hay.len() {
            let end = start.saturating_add(w).min(hay.len());
            let from = start.saturating_sub(m - 1);
            buf.clear();
            buf.extend(hay[from..end].iter().map(u8::to_ascii_lowercase));
            if self.ascii.find(&buf).is_some() {
                return true;
            }
            start = end;
        }
        false
    }

    fn in_text(&self, hay: &str) -> bool {
        self.lower.is_empty() || hay.to_lowercase().contains(&self.lower)
    }
}

/// A compiled SEARCH program: the key tree with its strings as matchers.
pub enum Program {
    All,
    And(Vec<Program>),
    Or(Box<Program>, Box<Program>),
    Not(Box<Program>),
    /// A key answered from flags, UIDs, sizes and dates.
    Simple(SearchKey<'static>),
    /// A header field (lower-case name) containing the needle.
    Header(String, Needle),
    /// SUBJECT: answered from the stored summary unless the message is loaded.
    Subject(Needle),
    Body(Needle),
    Text(Needle),
}

impl Program {
    /// Compiles `key`; strings longer than `max_needle` bytes are refused.
    pub fn new(key: &SearchKey<'_>, max_needle: usize) -> Result<Program, Refused> {
        Self::compile(key, max_needle, 0)
    }

    fn compile(key: &SearchKey<'_>, max: usize, depth: usize) -> Result<Program, Refused> {
        use SearchKey::*;
        use imap_types::IntoStatic;
        if depth > MAX_DEPTH {
            return Err(Refused::TooDeep);
        }
        let needle = |a: &imap_types::core::AString<'_>| -> Result<Needle, Refused> {
            let b = a.as_ref();
            if b.len() > max {
                return Err(Refused::NeedleTooLong(max));
            }
            Ok(Needle::new(&String::from_utf8_lossy(b)))
        };
        let header = |name: &str, v| -> Result<Program, Refused> {
            Ok(Program::Header(name.to_string(), needle(v)?))
        };
        Ok(match key {
            All => Program::All,
            And(keys) => Program::And(
                keys.as_ref()
                    .iter()
                    .map(|k| Self::compile(k, max, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Or(a, b) => Program::Or(
                Box::new(Self::compile(a, max, depth + 1)?),
                Box::new(Self::compile(b, max, depth + 1)?),
            ),
            Not(k) => Program::Not(Box::new(Self::compile(k, max, depth + 1)?)),
            Bcc(v) => header("bcc", v)?,
            Cc(v) => header("cc", v)?,
            From(v) => header("from", v)?,
            To(v) => header("to", v)?,
            Subject(v) => Program::Subject(needle(v)?),
            Header(name, v) => {
                let n = String::from_utf8_lossy(name.as_ref()).to_ascii_lowercase();
                if n.len() > max {
                    return Err(Refused::NeedleTooLong(max));
                }
                Program::Header(n, needle(v)?)
            }
            Body(v) => Program::Body(needle(v)?),
            Text(v) => Program::Text(needle(v)?),
            other => Program::Simple(other.clone().into_static()),
        })
    }

    /// What the program needs loaded.
    pub fn needs(&self) -> Needs {
        match self {
            Program::And(p) => p.iter().map(Program::needs).max().unwrap_or(Needs::View),
            Program::Or(a, b) => a.needs().max(b.needs()),
            Program::Not(p) => p.needs(),
            Program::Header(..) | Program::Body(_) | Program::Text(_) => Needs::Body,
            // SUBJECT and the sent date are answered from the summary stored
            // at delivery.
            Program::Subject(_)
            | Program::Simple(SearchKey::SentBefore(_))
            | Program::Simple(SearchKey::SentOn(_))
            | Program::Simple(SearchKey::SentSince(_)) => Needs::Meta,
            Program::All | Program::Simple(_) => Needs::View,
        }
    }

    pub fn needs_body(&self) -> bool {
        self.needs() == Needs::Body
    }

    /// Whether a key mentions MODSEQ (a CONDSTORE SEARCH reports it).
    pub fn mentions_modseq(&self) -> bool {
        match self {
            Program::And(p) => p.iter().any(Program::mentions_modseq),
            Program::Or(a, b) => a.mentions_modseq() || b.mentions_modseq(),
            Program::Not(p) => p.mentions_modseq(),
            Program::Simple(SearchKey::ModSequence { .. }) => true,
            _ => false,
        }
    }

    pub fn matches(&self, c: &Candidate<'_>, parsed: Option<&Parsed<'_>>) -> bool {
        match self {
            Program::All => true,
            Program::And(p) => p.iter().all(|k| k.matches(c, parsed)),
            Program::Or(a, b) => a.matches(c, parsed) || b.matches(c, parsed),
            Program::Not(p) => !p.matches(c, parsed),
            Program::Simple(key) => simple(key, c),
            Program::Header(name, n) => parsed.is_some_and(|m| header_matches(m, Some(name), n)),
            Program::Subject(n) => match parsed {
                Some(m) => header_matches(m, Some("subject"), n),
                None => c.meta.is_some_and(|m| n.in_text(&m.summary.subject)),
            },
            Program::Body(n) => parsed.is_some_and(|m| body_matches(m, n)),
            Program::Text(n) => parsed.is_some_and(|m| {
                n.in_bytes(m.raw()) || body_matches(m, n) || header_matches(m, None, n)
            }),
        }
    }
}

/// What a program needs to decide on a message, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Flags, numbers, size and dates: what the session and the live
    /// state hold, no read at all.
    View,
    /// The stored metadata (the Date: header, the subject).
    Meta,
    /// The message itself.
    Body,
}

pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: &'a FlagSet,
    /// \Recent in this session.
    pub recent: bool,
    pub modseq: u64,
    pub size: u32,
    pub internal_date: i64,
    /// Loaded when the program needs [`Needs::Meta`] or more.
    pub meta: Option<&'a MessageMeta>,
    pub largest_seq: u32,
    pub largest_uid: u32,
}

fn day_of(ts: i64) -> NaiveDate {
    chrono::Utc
        .timestamp_opt(ts, 0)
        .single()
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

/// Whether a header (`name`, or any header for `None`) contains the needle,
/// decoded or raw. `HEADER name ""` matches every message with the field.
fn header_matches(m: &Parsed<'_>, name: Option<&str>, needle: &Needle) -> bool {
    let mut found = false;
    for h in m.headers() {
        if name.is_some_and(|n| !h.name().eq_ignore_ascii_case(n)) {
            continue;
        }
        found = true;
        let raw = m
            .raw()
            .get(h.offset_start() as usize..h.offset_end() as usize)
            .unwrap_or(b"");
        if needle.in_bytes(raw) {
            return true;
        }
        let decoded = match h.value() {
            mail_parser::HeaderValue::Text(t) => t.to_string(),
            mail_parser::HeaderValue::TextList(l) => l.join(" "),
            mail_parser::HeaderValue::Address(a) => a
                .iter()
                .map(|x| {
                    format!(
                        "{} <{}>",
                        x.name.as_deref().unwrap_or(""),
                        x.address.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        };
        if needle.in_text(&decoded) {
            return true;
        }
    }
    found && needle.lower.is_empty()
}

fn body_matches(m: &Parsed<'_>, needle: &Needle) -> bool {
    let raw = m.raw();
    let body_start = m.part(0).map_or(0, |p| p.offset_body as usize);
    if needle.in_bytes(raw.get(body_start..).unwrap_or(b"")) {
        return true;
    }
    (0..m.text_body_count()).any(|i| m.body_text(i).is_some_and(|t| needle.in_text(&t)))
}

/// Keys answered without the message's bytes.
fn simple(key: &SearchKey<'_>, c: &Candidate<'_>) -> bool {
    use SearchKey::*;
    let internal = day_of(c.internal_date);
    // The date as the sender wrote it (RFC 3501 6.4.4: without time and
    // zone); no parsable Date: means the internal date.
    let sent = || -> NaiveDate {
        c.meta
            .and_then(|m| {
                let s = &m.summary;
                s.date
                    .map(|d| day_of(d.saturating_add(i64::from(s.date_offset))))
            })
            .unwrap_or(internal)
    };
    let f = c.flags;
    match key {
        All => true,
        SequenceSet(set) => contains(set, c.seq, c.largest_seq),
        Uid(set) => contains(set, c.uid, c.largest_uid),
        Answered => f.has("\\Answered"),
        Unanswered => !f.has("\\Answered"),
        Deleted => f.deleted(),
        Undeleted => !f.deleted(),
        Draft => f.has("\\Draft"),
        Undraft => !f.has("\\Draft"),
        Flagged => f.has("\\Flagged"),
        Unflagged => !f.has("\\Flagged"),
        Seen => f.seen(),
        Unseen => !f.seen(),
        Recent => c.recent,
        New => c.recent && !f.seen(),
        Old => !c.recent,
        Keyword(k) => f.has(k.as_ref()),
        Unkeyword(k) => !f.has(k.as_ref()),
        Larger(n) => c.size > *n,
        Smaller(n) => c.size < *n,
        Before(d) => internal < *d.as_ref(),
        On(d) => internal == *d.as_ref(),
        Since(d) => internal >= *d.as_ref(),
        SentBefore(d) => sent() < *d.as_ref(),
        SentOn(d) => sent() == *d.as_ref(),
        SentSince(d) => sent() >= *d.as_ref(),
        ModSequence { modseq, .. } => c.modseq >= *modseq,
        // Compiled into their own program nodes.
        And(_) | Or(..) | Not(_) | Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Subject(_)
        | Text(_) | To(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MessageMeta {
        MessageMeta {
            internal_date: 0,
            size: 10,
            modseq: 1,
            flags: Vec::new(),
            summary: Default::default(),
        }
    }

    /// Whether `p` matches `raw` as message 1 of 1.
    fn matches_message(p: &Program, raw: &[u8]) -> bool {
        let m = crate::imap::mime::parse(raw);
        let meta = meta();
        let flags = FlagSet::default();
        let c = Candidate {
            seq: 1,
            uid: 1,
            flags: &flags,
            recent: false,
            modseq: 1,
            size: raw.len() as u32,
            internal_date: 0,
            meta: Some(&meta),
            largest_seq: 1,
            largest_uid: 1,
        };
        p.matches(&c, Some(&m))
    }

    fn run(key: &str, raw: &[u8]) -> bool {
        let line = format!("a SEARCH {key}\r\n");
        let (_, cmd) = imap_codec::CommandCodec::default()
            .decode(line.as_bytes())
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        let imap_types::command::CommandBody::Search { criteria, .. } = cmd.body else {
            panic!("not a search");
        };
        let key = SearchKey::And(criteria);
        matches_message(&Program::new(&key, 4096).unwrap(), raw)
    }

    use imap_codec::decode::Decoder;

    #[test]
    fn text_body_and_headers() {
        let raw = b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: Ann <ann@x.test>\r\n\r\nHello World\r\n";
        assert!(run("BODY world", raw));
        assert!(!run("BODY subject", raw));
        assert!(run("TEXT ANN@X", raw));
        // Only the decoded subject has these bytes.
        assert!(run("CHARSET UTF-8 SUBJECT {7}\r\ngr\u{fc}\u{df}e", raw));
        assert!(!run("CHARSET UTF-8 SUBJECT {7}\r\ngr\u{fc}\u{df}x", raw));
        assert!(run("FROM ann", raw));
        assert!(run("HEADER subject \"\"", raw));
        assert!(!run("HEADER cc \"\"", raw));
        assert!(run("OR BODY nothing TEXT hello", raw));
        assert!(run("NOT BODY nothing", raw));
    }

    #[test]
    fn long_needle_over_large_body_is_linear() {
        // 128 KB needle over 512 KB of near-misses: a window scan compares
        // every position with the needle.
        let mut body = "a".repeat(512 * 1024);
        body.push('b');
        let raw = format!("Subject: x\r\n\r\n{body}\r\n");
        let needle = "a".repeat(128 * 1024) + "c";
        let key = SearchKey::Body(imap_types::core::AString::try_from(needle.as_str()).unwrap());
        let p = Program::new(&key, 256 * 1024).unwrap();
        // A window scan would take minutes here (in a debug build).
        assert!(!matches_message(&p, raw.as_bytes()));
        assert!(matches!(
            Program::new(&key, 1024),
            Err(Refused::NeedleTooLong(1024))
        ));
    }

    #[test]
    fn matches_across_window_edges() {
        let n = Needle::new("NeedLE");
        for at in [0, WINDOW - 3, WINDOW - 6, WINDOW, 3 * WINDOW + 1] {
            let mut hay = vec![b'x'; 4 * WINDOW];
            hay[at..at + 6].copy_from_slice(b"needle");
            assert!(n.in_bytes(&hay), "at {at}");
            hay[at + 5] = b'x';
            assert!(!n.in_bytes(&hay), "at {at}");
        }
        assert!(Needle::new("").in_bytes(b""));
        assert!(!Needle::new("ab").in_bytes(b"a"));
    }

    #[test]
    fn depth_is_bounded() {
        let mut key = SearchKey::All;
        for _ in 0..(MAX_DEPTH + 5) {
            key = SearchKey::Not(Box::new(key));
        }
        assert!(matches!(Program::new(&key, 10), Err(Refused::TooDeep)));
    }
}
