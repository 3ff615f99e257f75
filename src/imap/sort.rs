//! SORT's keys and order (RFC 5256, with SORT=DISPLAY of RFC 5957), apart
//! from any I/O: what each message sorts by is taken from its parsed
//! header once ([`Keys::of`]), then the messages are ordered by the
//! criteria, ties by sequence number.
//!
//! Strings compare under `i;ascii-casemap` (ASCII letters folded, every
//! other byte as it is). The base subject strips what mail clients add to
//! a subject when they reply or forward (RFC 5256 2.1), by loops bounded
//! by the subject's length.

use std::cmp::Ordering;

use imap_types::extensions::sort::{SortCriterion, SortKey};
use mail_parser::{HeaderValue, Message};

/// What one message sorts by.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub seq: u32,
    pub uid: u32,
    pub arrival: i64,
    /// The Date header in UTC, or the arrival when it has none (RFC 5256).
    pub date: i64,
    pub size: u32,
    pub subject: Vec<u8>,
    pub from: Vec<u8>,
    pub to: Vec<u8>,
    pub cc: Vec<u8>,
    pub display_from: Vec<u8>,
    pub display_to: Vec<u8>,
}

/// The first address of a header: (local part, display name or address).
fn first_address(v: Option<&HeaderValue<'_>>) -> (Vec<u8>, Vec<u8>) {
    let addr = match v {
        Some(HeaderValue::Address(a)) => a.first(),
        _ => None,
    };
    let Some(addr) = addr else {
        return (Vec::new(), Vec::new());
    };
    let spec = addr.address.as_deref().unwrap_or("");
    let local = spec.rsplit_once('@').map_or(spec, |(l, _)| l);
    let display = match addr.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n,
        _ => spec,
    };
    (fold(local), fold(display))
}

/// `i;ascii-casemap`: ASCII letters in upper case.
fn fold(s: &str) -> Vec<u8> {
    s.bytes().map(|b| b.to_ascii_uppercase()).collect()
}

impl Keys {
    pub fn of(seq: u32, uid: u32, arrival: i64, size: u32, m: Option<&Message<'_>>) -> Keys {
        let mut k = Keys {
            seq,
            uid,
            arrival,
            date: arrival,
            size,
            ..Keys::default()
        };
        let Some(m) = m else {
            return k;
        };
        if let Some(d) = m.date() {
            k.date = d.to_timestamp();
        }
        k.subject = fold(&base_subject(m.subject().unwrap_or("")));
        let from = first_address(m.header(mail_parser::HeaderName::From));
        let to = first_address(m.header(mail_parser::HeaderName::To));
        let cc = first_address(m.header(mail_parser::HeaderName::Cc));
        (k.from, k.display_from) = from;
        (k.to, k.display_to) = to;
        k.cc = cc.0;
        k
    }
}

/// Orders messages by `criteria` (REVERSE on each key as asked), then by
/// sequence number.
pub fn order(keys: &mut [Keys], criteria: &[SortCriterion]) {
    keys.sort_by(|a, b| {
        for c in criteria {
            let o = match c.key {
                SortKey::Arrival => a.arrival.cmp(&b.arrival),
                SortKey::Date => a.date.cmp(&b.date),
                SortKey::Size => a.size.cmp(&b.size),
                SortKey::Subject => a.subject.cmp(&b.subject),
                SortKey::From => a.from.cmp(&b.from),
                SortKey::To => a.to.cmp(&b.to),
                SortKey::Cc => a.cc.cmp(&b.cc),
                SortKey::DisplayFrom => a.display_from.cmp(&b.display_from),
                SortKey::DisplayTo => a.display_to.cmp(&b.display_to),
            };
            let o = if c.reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.seq.cmp(&b.seq)
    });
}

/// Only ARRIVAL and SIZE: no message needs to be read.
pub fn needs_header(criteria: &[SortCriterion]) -> bool {
    criteria
        .iter()
        .any(|c| !matches!(c.key, SortKey::Arrival | SortKey::Size))
}

/// Whether `s` starts with `prefix`, ASCII case folded.
fn starts_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_ci(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn skip_ws(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// A subject leader `re`, `fw` or `fwd`, an optional `[blob]`, then `:`
/// at the start of `s`: its length.
fn refwd(s: &str) -> Option<usize> {
    let word = ["fwd", "fw", "re"].into_iter().find(|w| starts_ci(s, w))?;
    let mut i = word.len();
    i += skip_ws(&s[i..]);
    if s[i..].starts_with('[') {
        i += blob(&s[i..])?;
    }
    s[i..].starts_with(':').then_some(i + 1)
}

/// A `[…]` (no brackets inside) at the start of `s`, with the whitespace
/// after it: its length.
fn blob(s: &str) -> Option<usize> {
    if !s.starts_with('[') {
        return None;
    }
    let end = s[1..].find([']', '['])? + 1;
    if s.as_bytes()[end] != b']' {
        return None;
    }
    Some(end + 1 + skip_ws(&s[end + 1..]))
}

/// The base subject of RFC 5256 2.1 (mail-parser has decoded the encoded
/// words already). Works on slices of one string: every step removes
/// something or ends its loop, so the cost is linear in the subject.
pub fn base_subject(subject: &str) -> String {
    // (1) Runs of whitespace become one space.
    let whole: String = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: &str = &whole;
    loop {
        // (2) Trailers: "(fwd)" and whitespace.
        loop {
            let t = s.trim_end();
            if ends_ci(t, "(fwd)") {
                s = &t[..t.len() - 5];
            } else if t.len() != s.len() {
                s = t;
            } else {
                break;
            }
        }
        // (3)-(5) Leaders: blobs before a "re:", the "re:" itself, and a
        // blob in front of a non-empty rest.
        loop {
            let before = s.len();
            s = s.trim_start();
            let mut i = 0;
            while let Some(n) = blob(&s[i..]) {
                i += n;
            }
            if let Some(n) = refwd(&s[i..]) {
                s = &s[i + n..];
            } else if let Some(n) = blob(s)
                && !s[n..].trim().is_empty()
            {
                s = &s[n..];
            }
            if s.len() == before {
                break;
            }
        }
        // (6) "[fwd: …]" around the rest.
        if starts_ci(s, "[fwd:") && s.ends_with(']') && s.len() >= 6 {
            s = &s[5..s.len() - 1];
            continue;
        }
        return s.trim().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subjects_follow_rfc_5256() {
        for (subject, base) in [
            ("Hello", "Hello"),
            ("Re: Hello", "Hello"),
            ("RE:   Hello  (fwd)", "Hello"),
            ("Fwd: Re: Hello", "Hello"),
            ("re [list]: Hello", "Hello"),
            ("[list] Re: Hello", "Hello"),
            ("[Fwd: Re: Hello]", "Hello"),
            ("[list]", "[list]"),
            ("Re:", ""),
            ("Reply to all", "Reply to all"),
            ("Fw:Fwd:  Hello (fwd) (FWD)", "Hello"),
            ("", ""),
        ] {
            assert_eq!(base_subject(subject), base, "{subject:?}");
        }
    }

    #[test]
    fn long_hostile_subjects_end() {
        let s = "Re: [a] ".repeat(10_000) + "(fwd) ".repeat(10_000).as_str();
        // A blob is kept when nothing follows it.
        assert_eq!(base_subject(&s), "[a]");
        let s = "[".repeat(50_000);
        assert_eq!(base_subject(&s), s);
    }

    #[test]
    fn order_is_by_the_criteria_then_the_sequence_number() {
        let k = |seq, size, subject: &str| Keys {
            seq,
            size,
            subject: fold(subject),
            ..Keys::default()
        };
        let mut v = vec![k(1, 30, "b"), k(2, 10, "a"), k(3, 10, "B"), k(4, 20, "a")];
        let crit = |key, reverse| SortCriterion { reverse, key };
        order(&mut v, &[crit(SortKey::Subject, false)]);
        assert_eq!(v.iter().map(|k| k.seq).collect::<Vec<_>>(), [2, 4, 1, 3]);
        order(
            &mut v,
            &[crit(SortKey::Size, true), crit(SortKey::Subject, false)],
        );
        assert_eq!(v.iter().map(|k| k.seq).collect::<Vec<_>>(), [1, 4, 2, 3]);
    }
}
