//! SEARCH criteria evaluated against one message at a time.
//!
//! Keys that only need flags, UIDs, sizes and dates never load the message;
//! header and text keys parse it once and match case-insensitively against
//! both the decoded and the raw form, so a search for a word in an encoded
//! header or a base64 body part finds it.

use chrono::{NaiveDate, TimeZone};
use imap_types::search::SearchKey;

use super::names::has_flag;
use super::view::contains;
use crate::store::MessageMeta;

/// What a key needs loaded.
pub fn needs_body(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        And(keys) => keys.as_ref().iter().any(needs_body),
        Not(k) => needs_body(k),
        Or(a, b) => needs_body(a) || needs_body(b),
        // SUBJECT and the sent date are answered from the summary stored
        // at delivery; the rest reads the message.
        Bcc(_) | Body(_) | Cc(_) | From(_) | Header(..) | Text(_) | To(_) => true,
        _ => false,
    }
}

pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: &'a [String],
    pub meta: &'a MessageMeta,
    pub raw: Option<&'a [u8]>,
    pub largest_seq: u32,
    pub largest_uid: u32,
    pub now: i64,
}

fn day_of(ts: i64) -> NaiveDate {
    chrono::Utc
        .timestamp_opt(ts, 0)
        .single()
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

fn bytes_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let n = needle.to_ascii_lowercase();
    hay.windows(n.len()).any(|w| w.eq_ignore_ascii_case(&n))
}

fn header_matches(m: &mail_parser::Message<'_>, name: &str, needle: &str) -> bool {
    let mut found = false;
    for h in m.headers() {
        if h.name().eq_ignore_ascii_case(name) {
            found = true;
            let raw = m
                .raw_message()
                .get(h.offset_start() as usize..h.offset_end() as usize)
                .unwrap_or(b"");
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
            if contains_ci(&decoded, needle) || bytes_ci(raw, needle.as_bytes()) {
                return true;
            }
        }
    }
    // HEADER name "" matches every message that has the field.
    found && needle.is_empty()
}

fn body_matches(m: &mail_parser::Message<'_>, needle: &str) -> bool {
    let raw = m.raw_message();
    let body_start = m.root_part().offset_body as usize;
    if bytes_ci(raw.get(body_start..).unwrap_or(b""), needle.as_bytes()) {
        return true;
    }
    (0..m.text_body_count()).any(|i| {
        m.body_text(i)
            .map(|t| contains_ci(&t, needle))
            .unwrap_or(false)
    })
}

pub fn matches(
    key: &SearchKey<'_>,
    c: &Candidate<'_>,
    parsed: Option<&mail_parser::Message<'_>>,
) -> bool {
    use SearchKey::*;
    let s = |a: &imap_types::core::AString<'_>| String::from_utf8_lossy(a.as_ref()).into_owned();
    let sent = || -> Option<NaiveDate> { c.meta.summary.date.map(day_of) };
    let internal = day_of(c.meta.internal_date);
    match key {
        All => true,
        And(keys) => keys.as_ref().iter().all(|k| matches(k, c, parsed)),
        Not(k) => !matches(k, c, parsed),
        Or(a, b) => matches(a, c, parsed) || matches(b, c, parsed),
        SequenceSet(set) => contains(set, c.seq, c.largest_seq),
        Uid(set) => contains(set, c.uid, c.largest_uid),
        Answered => has_flag(c.flags, "\\Answered"),
        Unanswered => !has_flag(c.flags, "\\Answered"),
        Deleted => has_flag(c.flags, "\\Deleted"),
        Undeleted => !has_flag(c.flags, "\\Deleted"),
        Draft => has_flag(c.flags, "\\Draft"),
        Undraft => !has_flag(c.flags, "\\Draft"),
        Flagged => has_flag(c.flags, "\\Flagged"),
        Unflagged => !has_flag(c.flags, "\\Flagged"),
        Seen => has_flag(c.flags, "\\Seen"),
        Unseen => !has_flag(c.flags, "\\Seen"),
        // tiermail does not track \Recent (RFC 9051 removed it).
        Recent => false,
        New => false,
        Old => true,
        Keyword(k) => has_flag(c.flags, k.as_ref()),
        Unkeyword(k) => !has_flag(c.flags, k.as_ref()),
        Larger(n) => c.meta.size > *n,
        Smaller(n) => c.meta.size < *n,
        Before(d) => internal < *d.as_ref(),
        On(d) => internal == *d.as_ref(),
        Since(d) => internal >= *d.as_ref(),
        SentBefore(d) => sent().is_some_and(|x| x < *d.as_ref()),
        SentOn(d) => sent().is_some_and(|x| x == *d.as_ref()),
        SentSince(d) => sent().is_some_and(|x| x >= *d.as_ref()),
        Bcc(v) => parsed.is_some_and(|m| header_matches(m, "bcc", &s(v))),
        Cc(v) => parsed.is_some_and(|m| header_matches(m, "cc", &s(v))),
        From(v) => parsed.is_some_and(|m| header_matches(m, "from", &s(v))),
        To(v) => parsed.is_some_and(|m| header_matches(m, "to", &s(v))),
        Subject(v) => match parsed {
            Some(m) => header_matches(m, "subject", &s(v)),
            None => contains_ci(&c.meta.summary.subject, &s(v)),
        },
        Header(name, v) => parsed.is_some_and(|m| header_matches(m, &s(name), &s(v))),
        Body(v) => parsed.is_some_and(|m| body_matches(m, &s(v))),
        Text(v) => parsed.is_some_and(|m| {
            let needle = s(v);
            bytes_ci(m.raw_message(), needle.as_bytes())
                || body_matches(m, &needle)
                || m.headers()
                    .iter()
                    .any(|h| header_matches(m, h.name(), &needle))
        }),
        ModSequence { modseq, .. } => c.meta.modseq >= *modseq,
    }
}

/// The highest modseq a key mentions (a CONDSTORE SEARCH reports MODSEQ).
pub fn mentions_modseq(key: &SearchKey<'_>) -> bool {
    use SearchKey::*;
    match key {
        ModSequence { .. } => true,
        And(keys) => keys.as_ref().iter().any(mentions_modseq),
        Not(k) => mentions_modseq(k),
        Or(a, b) => mentions_modseq(a) || mentions_modseq(b),
        _ => false,
    }
}
