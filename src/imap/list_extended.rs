//! Extended LIST (RFC 5258), LIST-STATUS (RFC 5819) and the SPECIAL-USE
//! selection (RFC 6154), which imap-codec does not decode yet.
//!
//! Only the outer shape is split here — `LIST [(sel-opts)] ref pattern(s)
//! [RETURN (ret-opts)]` — into option words and mailbox tokens; every
//! reference and pattern is then decoded by imap-codec itself by re-reading
//! it as a plain `LIST ref pattern` command, so string, quoting and literal
//! rules stay imap-codec's. Anything that does not fit this shape is left
//! to the normal BAD path.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_types::IntoStatic;
use imap_types::command::CommandBody;
use imap_types::core::Tag;
use imap_types::mailbox::{ListMailbox, Mailbox};
use imap_types::status::StatusDataItemName;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub subscribed: bool,
    pub special_use: bool,
    pub remote: bool,
    pub recursive: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Returns {
    pub subscribed: bool,
    pub children: bool,
    pub special_use: bool,
    pub status: Vec<StatusDataItemName>,
}

#[derive(Debug)]
pub struct ListExtended {
    pub tag: Tag<'static>,
    pub selection: Selection,
    pub reference: Mailbox<'static>,
    pub patterns: Vec<ListMailbox<'static>>,
    pub returns: Returns,
}

/// Why an extended LIST was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// One token of the outer shape: a word (atom or quoted string, kept as
/// written) or a parenthesized group of words.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Group(Vec<Tok>),
}

/// Deepest nesting of parentheses an extended LIST can have:
/// `RETURN (STATUS (MESSAGES))` needs two.
const MAX_DEPTH: usize = 4;

/// Splits the arguments into words and groups, without recursion: the
/// nesting depth comes from the client, so it is bounded here and deeper
/// input is simply not this shape.
fn tokens(s: &str) -> Option<Vec<Tok>> {
    let mut stack: Vec<Vec<Tok>> = vec![Vec::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.peek().copied() {
        match c {
            ' ' => {
                chars.next();
            }
            '(' => {
                chars.next();
                if stack.len() > MAX_DEPTH {
                    return None;
                }
                stack.push(Vec::new());
            }
            ')' => {
                chars.next();
                if stack.len() < 2 {
                    return None;
                }
                let group = stack.pop()?;
                stack.last_mut()?.push(Tok::Group(group));
            }
            '"' => {
                let mut w = String::from('"');
                chars.next();
                loop {
                    let c = chars.next()?;
                    w.push(c);
                    match c {
                        '\\' => w.push(chars.next()?),
                        '"' => break,
                        _ => {}
                    }
                }
                stack.last_mut()?.push(Tok::Word(w));
            }
            '{' => return None, // literals: not in this shape
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ' ' || c == '(' || c == ')' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                stack.last_mut()?.push(Tok::Word(w));
            }
        }
    }
    if stack.len() != 1 {
        return None;
    }
    stack.pop()
}

fn words(g: &[Tok]) -> Option<Vec<String>> {
    g.iter()
        .map(|t| match t {
            Tok::Word(w) => Some(w.to_ascii_uppercase()),
            Tok::Group(_) => None,
        })
        .collect()
}

/// Decodes `ref pattern` with imap-codec.
fn decode_pair(reference: &str, pattern: &str) -> Option<(Mailbox<'static>, ListMailbox<'static>)> {
    let line = format!("x LIST {reference} {pattern}\r\n");
    let (_, cmd) = CommandCodec::default().decode(line.as_bytes()).ok()?;
    match cmd.body {
        CommandBody::List {
            reference,
            mailbox_wildcard,
        } => Some((reference.into_static(), mailbox_wildcard.into_static())),
        _ => None,
    }
}

fn status_item(w: &str) -> Option<StatusDataItemName> {
    Some(match w {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        "SIZE" => StatusDataItemName::Size,
        _ => return None,
    })
}

/// `Ok(None)`: not an extended LIST at all. `Err`: an extended LIST with a
/// bad option (answered BAD with the reason).
pub fn parse(message: &[u8]) -> Result<Option<ListExtended>, Invalid> {
    let Ok(text) = std::str::from_utf8(message) else {
        return Ok(None);
    };
    let Some(text) = text.strip_suffix("\r\n") else {
        return Ok(None);
    };
    let Some((tag, rest)) = text.split_once(' ') else {
        return Ok(None);
    };
    let Some((verb, rest)) = rest.split_once(' ') else {
        return Ok(None);
    };
    if !verb.eq_ignore_ascii_case("LIST") {
        return Ok(None);
    }
    let Ok(tag) = Tag::try_from(tag.to_string()) else {
        return Ok(None);
    };
    let Some(toks) = tokens(rest) else {
        return Ok(None);
    };
    let mut it = toks.into_iter().peekable();
    let mut selection = Selection::default();
    let mut extended = false;
    if let Some(Tok::Group(g)) = it.peek().cloned() {
        it.next();
        extended = true;
        for w in words(&g).ok_or_else(|| Invalid("bad selection option".into()))? {
            match w.as_str() {
                "SUBSCRIBED" => selection.subscribed = true,
                "SPECIAL-USE" => selection.special_use = true,
                "REMOTE" => selection.remote = true,
                "RECURSIVEMATCH" => selection.recursive = true,
                other => return Err(Invalid(format!("unknown selection option {other}"))),
            }
        }
        if selection.recursive && !selection.subscribed {
            return Err(Invalid(
                "RECURSIVEMATCH needs another selection option".into(),
            ));
        }
    }
    let Some(Tok::Word(reference)) = it.next() else {
        return Ok(None);
    };
    let pattern_toks: Vec<String> = match it.next() {
        Some(Tok::Word(p)) => vec![p],
        Some(Tok::Group(g)) => {
            extended = true;
            g.into_iter()
                .map(|t| match t {
                    Tok::Word(w) => Some(w),
                    Tok::Group(_) => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| Invalid("bad mailbox pattern list".into()))?
        }
        None => return Ok(None),
    };
    let mut returns = Returns::default();
    if let Some(t) = it.next() {
        let is_return = matches!(&t, Tok::Word(w) if w.eq_ignore_ascii_case("RETURN"));
        let Some(Tok::Group(opts)) = it.next().filter(|_| is_return) else {
            return Ok(None);
        };
        extended = true;
        let mut o = opts.into_iter();
        while let Some(t) = o.next() {
            let Tok::Word(w) = t else {
                return Err(Invalid("bad RETURN option".into()));
            };
            match w.to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => returns.subscribed = true,
                "CHILDREN" => returns.children = true,
                "SPECIAL-USE" => returns.special_use = true,
                "STATUS" => {
                    let Some(Tok::Group(items)) = o.next() else {
                        return Err(Invalid("STATUS needs a list of items".into()));
                    };
                    for i in words(&items).ok_or_else(|| Invalid("bad STATUS item".into()))? {
                        returns.status.push(
                            status_item(&i)
                                .ok_or_else(|| Invalid(format!("unknown STATUS item {i}")))?,
                        );
                    }
                }
                other => return Err(Invalid(format!("unknown RETURN option {other}"))),
            }
        }
    }
    if it.next().is_some() || !extended {
        return Ok(None);
    }
    let mut patterns = Vec::new();
    let mut reference_box = None;
    for p in &pattern_toks {
        let (r, m) = decode_pair(&reference, p)
            .ok_or_else(|| Invalid(format!("bad mailbox pattern {p}")))?;
        reference_box = Some(r);
        patterns.push(m);
    }
    let Some(reference) = reference_box else {
        return Err(Invalid("no mailbox pattern".into()));
    };
    Ok(Some(ListExtended {
        tag,
        selection,
        reference,
        patterns,
        returns,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ListExtended {
        parse(format!("{s}\r\n").as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn shapes() {
        let l = p("a LIST (SUBSCRIBED) \"\" \"*\"");
        assert!(l.selection.subscribed);
        assert_eq!(l.patterns.len(), 1);
        let l = p("a list \"\" (INBOX \"Sent\" %) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))");
        assert_eq!(l.patterns.len(), 3);
        assert!(l.returns.children);
        assert_eq!(l.returns.status.len(), 2);
        let l = p("a LIST (SPECIAL-USE) \"\" *");
        assert!(l.selection.special_use);
        assert!(parse(b"a LIST \"\" *\r\n").unwrap().is_none(), "plain LIST");
        assert!(parse(b"a LIST (BOGUS) \"\" *\r\n").is_err());
        assert!(parse(b"a LIST \"\" * RETURN (FOO)\r\n").is_err());
    }

    #[test]
    fn deep_or_unbalanced_nesting_is_not_this_shape() {
        let deep = format!("a LIST {}\r\n", "(".repeat(100_000));
        assert!(parse(deep.as_bytes()).unwrap().is_none());
        let deep = format!("a LIST {}\"\" *{}\r\n", "(".repeat(6), ")".repeat(6));
        assert!(parse(deep.as_bytes()).unwrap().is_none());
        assert!(parse(b"a LIST (SUBSCRIBED)) \"\" *\r\n").unwrap().is_none());
        assert!(parse(b"a LIST ((SUBSCRIBED) \"\" *\r\n").unwrap().is_none());
    }
}
