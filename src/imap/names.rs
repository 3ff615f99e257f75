//! Mailbox names and flags between their IMAP types and the store's strings.
//!
//! Names are stored as the client sent them (modified UTF-7 is plain ASCII),
//! with `/` as the hierarchy separator; `INBOX` is case-insensitive.

use imap_types::flag::{Flag, FlagFetch};
use imap_types::mailbox::{ListMailbox, Mailbox};

use crate::store::SEPARATOR;

/// Why a name cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadName(pub String);

/// The store name of an IMAP mailbox.
pub fn from_imap(m: &Mailbox<'_>) -> Result<String, BadName> {
    match m {
        Mailbox::Inbox => Ok("INBOX".into()),
        Mailbox::Other(o) => {
            let raw = o.as_ref();
            let s = std::str::from_utf8(raw)
                .map_err(|_| BadName("mailbox names must be ASCII (modified UTF-7)".into()))?;
            if !s.is_ascii() || s.chars().any(|c| c.is_control()) {
                return Err(BadName(
                    "mailbox names must be printable ASCII (modified UTF-7)".into(),
                ));
            }
            check_mutf7(s)?;
            // "INBOX/Sub" keeps a canonical INBOX prefix.
            if let Some(rest) = s.get(..6)
                && rest.eq_ignore_ascii_case("INBOX/")
            {
                return Ok(format!("INBOX/{}", &s[6..]));
            }
            Ok(s.to_string())
        }
    }
}

/// Checks RFC 3501 §5.1.3 modified UTF-7: `&-` is `&`; `&...-` is
/// modified base64 of UTF-16 that encodes no printable ASCII, with whole
/// code units, valid surrogate pairs and zero padding bits.
pub fn check_mutf7(s: &str) -> Result<(), BadName> {
    let bad = |why: &str| BadName(format!("invalid modified UTF-7 mailbox name: {why}"));
    let b = s.as_bytes();
    let mut i = 0;
    let mut last_shift_end = None;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let Some(len) = b[start..].iter().position(|&c| c == b'-') else {
            return Err(bad("`&` without a closing `-`"));
        };
        let enc = &b[start..start + len];
        i = start + len + 1;
        if enc.is_empty() {
            continue; // "&-" is "&"
        }
        if last_shift_end == Some(start - 1) {
            return Err(bad("two encoded runs next to each other"));
        }
        last_shift_end = Some(i);
        let mut bits = 0u32;
        let mut nbits = 0u32;
        let mut units = Vec::new();
        for &c in enc {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b',' => 63,
                _ => return Err(bad("a character outside modified base64")),
            };
            bits = (bits << 6) | u32::from(v);
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push(((bits >> nbits) & 0xffff) as u16);
            }
        }
        if nbits >= 6 || bits & ((1 << nbits) - 1) != 0 || units.is_empty() {
            return Err(bad("base64 that is not whole UTF-16"));
        }
        let text = String::from_utf16(&units).map_err(|_| bad("an unpaired UTF-16 surrogate"))?;
        if text.chars().any(|c| (' '..='~').contains(&c)) {
            return Err(bad("printable ASCII must not be encoded"));
        }
    }
    Ok(())
}

/// Within the configured length (bytes) and depth (levels) limits.
pub fn within_limits(name: &str, max_len: usize, max_depth: usize) -> Result<(), BadName> {
    if name.len() > max_len {
        return Err(BadName(format!(
            "mailbox names are limited to {max_len} bytes"
        )));
    }
    if name.split(SEPARATOR).count() > max_depth {
        return Err(BadName(format!(
            "mailbox names are limited to {max_depth} hierarchy levels"
        )));
    }
    Ok(())
}

/// A name for a new mailbox: no empty levels, no wildcards.
pub fn check_new(name: &str) -> Result<(), BadName> {
    if name.is_empty() || name.split(SEPARATOR).any(str::is_empty) {
        return Err(BadName(format!("`{name}` has an empty hierarchy level")));
    }
    if name.contains(['%', '*']) {
        return Err(BadName("mailbox names cannot contain % or *".into()));
    }
    Ok(())
}

pub fn to_imap(name: &str) -> Mailbox<'static> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Mailbox::Inbox;
    }
    Mailbox::try_from(name.to_string()).unwrap_or(Mailbox::Inbox)
}

pub fn pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

/// A compiled LIST pattern: `*` matches anything, `%` anything but the
/// hierarchy separator.
///
/// Matching simulates the pattern as an automaton over a bit set of
/// pattern positions, one pass over the name: time is O(name × pattern / 64)
/// whatever the wildcards, where a backtracking matcher is exponential in
/// the number of `*` (a 21-byte pattern over a 40-byte name took seconds).
/// As wildcard runs are collapsed and a pattern with more literal bytes
/// than the name is refused at once, the pattern that is simulated is at
/// most about twice the name: a 60 KB pattern (sent as a literal) costs no
/// more than one as long as the longest mailbox name.
pub struct Pattern {
    /// The pattern with runs of wildcards collapsed (`**`, `*%`, `%*` are
    /// `*`; `%%` is `%`), which changes nothing they match.
    len: usize,
    words: usize,
    /// Bytes that are not wildcards: each matches one byte of the name, so
    /// a name shorter than this cannot match (checked first, which bounds
    /// the work by the name's length, not the pattern's).
    literals: usize,
    star: Vec<u64>,
    percent: Vec<u64>,
    /// Positions holding each literal byte (only bytes the pattern has),
    /// found through `slot` (the index + 1 for a byte, 0 for none).
    literal: Vec<Vec<u64>>,
    slot: Box<[u16; 256]>,
}

impl Pattern {
    pub fn new(pattern: &str) -> Pattern {
        let mut p: Vec<u8> = Vec::with_capacity(pattern.len());
        for &c in pattern.as_bytes() {
            match (p.last().copied(), c) {
                (Some(b'*'), b'*' | b'%') => {}
                (Some(b'%'), b'*') => {
                    if let Some(last) = p.last_mut() {
                        *last = b'*';
                    }
                }
                (Some(b'%'), b'%') => {}
                _ => p.push(c),
            }
        }
        let len = p.len();
        // Bits 0..=len: position i means "p[..i] matched".
        let words = len / 64 + 1;
        let mut star = vec![0u64; words];
        let mut percent = vec![0u64; words];
        let mut literal: Vec<Vec<u64>> = Vec::new();
        let mut slot = Box::new([0u16; 256]);
        let mut literals = 0;
        for (i, &c) in p.iter().enumerate() {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            match c {
                b'*' => star[w] |= b,
                b'%' => percent[w] |= b,
                _ => {
                    literals += 1;
                    if slot[c as usize] == 0 {
                        literal.push(vec![0u64; words]);
                        // At most 256 distinct bytes: the index fits.
                        slot[c as usize] = literal.len() as u16;
                    }
                    let m = &mut literal[slot[c as usize] as usize - 1];
                    m[w] |= b;
                }
            }
        }
        Pattern {
            len,
            words,
            literals,
            star,
            percent,
            literal,
            slot,
        }
    }

    /// Wildcards also match nothing: a set position in front of one sets
    /// the position after it (runs are collapsed, so one step suffices).
    fn close(&self, set: &mut [u64]) {
        let mut carry = 0u64;
        for ((word, star), percent) in set.iter_mut().zip(&self.star).zip(&self.percent) {
            let wild = *word & (star | percent);
            let shifted = (wild << 1) | carry;
            carry = wild >> 63;
            *word |= shifted;
        }
    }

    fn matches_bytes(&self, name: &[u8]) -> bool {
        if self.literals > name.len() {
            return false;
        }
        let mut cur = vec![0u64; self.words];
        let mut next = vec![0u64; self.words];
        cur[0] = 1;
        self.close(&mut cur);
        for &c in name {
            let lit = match self.slot[c as usize] {
                0 => None,
                i => self.literal.get(i as usize - 1),
            };
            let mut carry = 0u64;
            let mut any = 0u64;
            for w in 0..self.words {
                let mut n = cur[w] & self.star[w];
                if c != SEPARATOR as u8 {
                    n |= cur[w] & self.percent[w];
                }
                if let Some(m) = lit {
                    let adv = cur[w] & m[w];
                    n |= (adv << 1) | carry;
                    carry = adv >> 63;
                } else {
                    n |= carry;
                    carry = 0;
                }
                next[w] = n;
                any |= n;
            }
            if any == 0 {
                return false;
            }
            self.close(&mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        cur[self.len / 64] & (1u64 << (self.len % 64)) != 0
    }

    /// Whether the mailbox `name` matches, byte for byte.
    pub fn matches(&self, name: &str) -> bool {
        self.matches_bytes(name.as_bytes())
    }
}

/// A LIST pattern for one reference + pattern pair, with `INBOX` (which
/// matches case-insensitively) handled by a second, upper-cased pattern.
pub struct ListPattern {
    exact: Pattern,
    upper: Pattern,
}

impl ListPattern {
    pub fn new(pattern: &str) -> ListPattern {
        ListPattern {
            exact: Pattern::new(pattern),
            upper: Pattern::new(&pattern.to_ascii_uppercase()),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        if name == "INBOX" {
            return self.upper.matches(name);
        }
        self.exact.matches(name)
    }
}

/// LIST wildcard match of one pattern against one name (see [`ListPattern`]).
pub fn matches(pattern: &str, name: &str) -> bool {
    ListPattern::new(pattern).matches(name)
}

pub fn flag_to_string(f: &Flag<'_>) -> String {
    f.to_string()
}

pub fn flag_from_string(s: &str) -> Option<Flag<'static>> {
    use imap_types::IntoStatic;
    Flag::try_from(s).ok().map(IntoStatic::into_static)
}

/// Flags for a FETCH response (`\Recent` is a flag only there).
pub fn fetch_flags(flags: &[String]) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| {
            if f.eq_ignore_ascii_case("\\Recent") {
                return Some(FlagFetch::Recent);
            }
            flag_from_string(f).map(FlagFetch::Flag)
        })
        .collect()
}

pub fn has_flag(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("*", "a/b/c"));
        assert!(matches("%", "INBOX"));
        assert!(!matches("%", "a/b"));
        assert!(matches("a/%", "a/b"));
        assert!(!matches("a/%", "a/b/c"));
        assert!(matches("a/*", "a/b/c"));
        assert!(matches("inbox", "INBOX"));
        assert!(matches("S*t", "Sent"));
        assert!(!matches("S*x", "Sent"));
    }

    /// The obvious backtracking matcher, as a model on small inputs.
    fn naive(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|i| naive(&p[1..], &n[i..])),
            Some(b'%') => {
                let mut i = 0;
                loop {
                    if naive(&p[1..], &n[i..]) {
                        return true;
                    }
                    if i == n.len() || n[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(c) => n.first() == Some(c) && naive(&p[1..], &n[1..]),
        }
    }

    #[test]
    fn agrees_with_backtracking_on_every_small_case() {
        /// Every string over `alphabet` of at most `max` bytes.
        fn all(alphabet: &[u8], max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut layer = vec![Vec::new()];
            for _ in 0..max {
                let mut next = Vec::new();
                for s in &layer {
                    for &c in alphabet {
                        let mut t: Vec<u8> = s.clone();
                        t.push(c);
                        next.push(t);
                    }
                }
                out.extend(next.iter().cloned());
                layer = next;
            }
            out
        }
        let patterns = all(b"a/*%", 5);
        let all_names = all(b"a/b", 5);
        for p in &patterns {
            let compiled = Pattern::new(std::str::from_utf8(p).unwrap());
            for n in &all_names {
                assert_eq!(
                    compiled.matches_bytes(n),
                    naive(p, n),
                    "pattern {:?} name {:?}",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(n)
                );
            }
        }
    }

    #[test]
    fn long_patterns_cross_word_boundaries() {
        let name = "x".repeat(200) + "/y";
        assert!(matches(&format!("{}%/y", "x".repeat(130)), &name));
        assert!(!matches(&format!("{}%y", "x".repeat(130)), &name));
        assert!(matches(&format!("{}*y", "x".repeat(130)), &name));
        // Wildcard runs collapse: 200,000 of them are one `*`.
        assert!(matches(&"*".repeat(200_000), &name));
    }

    #[test]
    fn adversarial_pattern_is_linear() {
        // Exponential for a backtracking matcher: must be instant here.
        let name = "a".repeat(40);
        let pattern = "*a".repeat(40) + "b";
        assert!(!matches(&pattern, &name));
        let big = "a".repeat(4000);
        assert!(!matches(&("*a".repeat(2000) + "b"), &big));
    }

    #[test]
    fn more_literal_bytes_than_the_name_never_match() {
        // Refused before any simulation; wildcards do not count.
        assert!(!matches(&"ab".repeat(30_000), "abab"));
        assert!(matches("a*b*%", "ab"));
        assert!(!matches("a*b*c", "ab"));
        assert!(matches(&("*%".repeat(30_000) + "ab"), "ab"));
        // Every byte value may be a literal (the slot table holds 256).
        let all: String = (1u8..128)
            .map(char::from)
            .filter(|c| *c != '*' && *c != '%')
            .collect();
        assert!(matches(&all, &all));
        assert!(!matches(&all, &all[1..]));
    }

    #[test]
    fn modified_utf7() {
        for ok in [
            "INBOX",
            "Entw&APw-rfe",
            "&-",
            "a&-b",
            "&ZeVnLIqe-",
            "&2D3eAA-",
            "x&AOk-y&AOk-",
        ] {
            assert!(check_mutf7(ok).is_ok(), "{ok}");
        }
        for bad in [
            "&",          // unterminated
            "&AGE-",      // "a" encoded
            "&AOk",       // no closing dash
            "&AO-",       // not whole UTF-16
            "&AOl-",      // padding bits set
            "&2D0-",      // lone high surrogate
            "&AOk-&AOk-", // two runs side by side
            "&A!k-",      // not base64
        ] {
            assert!(check_mutf7(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_limits() {
        assert!(within_limits("a/b/c", 10, 3).is_ok());
        assert!(within_limits("a/b/c/d", 10, 3).is_err());
        assert!(within_limits(&"x".repeat(11), 10, 3).is_err());
    }

    #[test]
    fn flags_round_trip() {
        for f in ["\\Seen", "\\Deleted", "$Forwarded", "Junk"] {
            let flag = flag_from_string(f).unwrap();
            assert_eq!(flag_to_string(&flag), f);
        }
    }
}
