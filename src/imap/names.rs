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

/// LIST wildcard match: `*` matches anything, `%` anything but the separator.
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some(b'%') => {
                let mut i = 0;
                loop {
                    if go(&p[1..], &n[i..]) {
                        return true;
                    }
                    if i == n.len() || n[i] == SEPARATOR as u8 {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    // INBOX matches case-insensitively.
    if name == "INBOX" {
        let upper = pattern.to_ascii_uppercase();
        return go(upper.as_bytes(), name.as_bytes());
    }
    go(pattern.as_bytes(), name.as_bytes())
}

pub fn flag_to_string(f: &Flag<'_>) -> String {
    f.to_string()
}

pub fn flag_from_string(s: &str) -> Option<Flag<'static>> {
    use imap_types::IntoStatic;
    Flag::try_from(s).ok().map(IntoStatic::into_static)
}

pub fn fetch_flags(flags: &[String]) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| flag_from_string(f))
        .map(FlagFetch::Flag)
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

    #[test]
    fn flags_round_trip() {
        for f in ["\\Seen", "\\Deleted", "$Forwarded", "Junk"] {
            let flag = flag_from_string(f).unwrap();
            assert_eq!(flag_to_string(&flag), f);
        }
    }
}
