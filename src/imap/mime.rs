//! The parts of a message FETCH returns: ENVELOPE, BODYSTRUCTURE and body
//! sections, computed from the exact stored bytes with mail-parser.
//!
//! Sizes, line counts and section bytes always come from the raw byte
//! offsets of each MIME part, never from decoded text, so that what a
//! client is told matches what it downloads.

use std::borrow::Cow;

use base64::Engine;
use imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_types::core::{IString, NString, Vec1};
use imap_types::envelope::{Address, Envelope};
use imap_types::fetch::{MessageDataItem, MessageDataItemName, Part, Section};
use mail_parser::{Addr, HeaderValue, Message, MessagePart, MimeHeaders, PartType};

use super::{istr, nbytes, nstr};

/// A parsed message with the exact bytes it was parsed from.
///
/// mail-parser keeps each embedded message/rfc822 as a `Message` inside its
/// parent, so dropping a deeply nested one the ordinary way recurses once
/// per level (a 25 MB message can nest hundreds of thousands deep): this
/// takes the tree apart iteratively instead. The bytes are kept apart
/// because `Message::raw_message` and `root_part` index a part list that is
/// empty for input mail-parser cannot parse (an empty message).
pub struct Parsed<'x> {
    message: Message<'x>,
    raw: &'x [u8],
}

impl<'x> Parsed<'x> {
    /// Every byte of the message, as stored.
    pub fn raw(&self) -> &'x [u8] {
        self.raw
    }
}

impl<'x> std::ops::Deref for Parsed<'x> {
    type Target = Message<'x>;
    fn deref(&self) -> &Message<'x> {
        &self.message
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        let mut stack = vec![std::mem::take(&mut self.message)];
        while let Some(mut m) = stack.pop() {
            for part in &mut m.parts {
                if matches!(part.body, PartType::Message(_))
                    && let PartType::Message(inner) = std::mem::take(&mut part.body)
                {
                    stack.push(inner);
                }
            }
        }
    }
}

/// Parses a stored message. Bytes mail-parser finds no message in (an
/// empty one, say) become one text part without headers, so that every
/// accessor has the root part it indexes.
pub fn parse(raw: &[u8]) -> Parsed<'_> {
    let message = match mail_parser::MessageParser::default().parse(raw) {
        Some(m) if !m.parts.is_empty() => m,
        _ => Message {
            parts: vec![MessagePart {
                headers: Vec::new(),
                is_encoding_problem: false,
                body: PartType::Text(String::from_utf8_lossy(raw)),
                encoding: mail_parser::Encoding::None,
                offset_header: 0,
                offset_body: 0,
                offset_end: u32::try_from(raw.len()).unwrap_or(u32::MAX),
            }],
            text_body: vec![0],
            raw_message: Cow::Borrowed(raw),
            ..Default::default()
        },
    };
    Parsed { message, raw }
}

fn raw_header<'a>(m: &'a Message<'_>, name: &str) -> Option<&'a str> {
    m.header_raw(name.to_string()).map(str::trim)
}

/// A display name as the client must see it: ASCII as is, anything else as
/// an RFC 2047 encoded word (ENVELOPE strings are 7-bit).
fn header_text(s: &str) -> String {
    if s.is_ascii() {
        s.to_string()
    } else {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
        )
    }
}

/// One address. A NIL host marks a group's start and a NIL mailbox its
/// end (RFC 3501 7.4.2), so a malformed address never gets either: like
/// Dovecot, the missing part is spelt out instead.
fn address(a: &Addr<'_>) -> Address<'static> {
    let (mailbox, host) = match a.address.as_deref() {
        Some(addr) => match addr.rsplit_once('@') {
            Some((l, h)) if !h.is_empty() => (l.to_string(), h.to_string()),
            Some((l, _)) => (l.to_string(), "MISSING_DOMAIN".to_string()),
            None => (addr.to_string(), "MISSING_DOMAIN".to_string()),
        },
        None => ("MISSING_MAILBOX".to_string(), "MISSING_DOMAIN".to_string()),
    };
    let (mailbox, host) = (Some(mailbox), Some(host));
    Address {
        name: nstr(a.name.as_deref().map(header_text).as_deref()),
        adl: NString(None),
        mailbox: nstr(mailbox.as_deref()),
        host: nstr(host.as_deref()),
    }
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<Address<'static>> {
    match a {
        None => Vec::new(),
        Some(mail_parser::Address::List(list)) => list.iter().map(address).collect(),
        Some(mail_parser::Address::Group(groups)) => {
            let mut out = Vec::new();
            for g in groups {
                match &g.name {
                    // RFC 3501: group start is (NIL NIL "name" NIL), end (NIL NIL NIL NIL).
                    Some(name) => {
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: nstr(Some(&header_text(name))),
                            host: NString(None),
                        });
                        out.extend(g.addresses.iter().map(address));
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(None),
                            host: NString(None),
                        });
                    }
                    None => out.extend(g.addresses.iter().map(address)),
                }
            }
            out
        }
    }
}

pub fn envelope(m: &Message<'_>) -> Envelope<'static> {
    let from = addresses(m.from());
    let sender = match m.sender() {
        Some(s) => addresses(Some(s)),
        None => from.clone(),
    };
    let reply_to = match m.reply_to() {
        Some(s) => addresses(Some(s)),
        None => from.clone(),
    };
    Envelope {
        date: nstr(raw_header(m, "Date")),
        subject: nstr(raw_header(m, "Subject").map(header_text).as_deref()),
        from,
        sender,
        reply_to,
        to: addresses(m.to()),
        cc: addresses(m.cc()),
        bcc: addresses(m.bcc()),
        in_reply_to: nstr(raw_header(m, "In-Reply-To")),
        message_id: nstr(raw_header(m, "Message-ID")),
    }
}

/// A MIME header's parameters as a BODYSTRUCTURE parameter list.
fn param_list(
    attrs: Option<&Vec<mail_parser::Attribute<'_>>>,
) -> Vec<(IString<'static>, IString<'static>)> {
    attrs
        .map(|attrs| {
            attrs
                .iter()
                .map(|a| {
                    (
                        istr(a.name.to_ascii_uppercase()),
                        istr(header_text(&a.value)),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn params(part: &MessagePart<'_>) -> Vec<(IString<'static>, IString<'static>)> {
    param_list(part.content_type().and_then(|ct| ct.attributes.as_ref()))
}

fn disposition(part: &MessagePart<'_>) -> Option<Disposition<'static>> {
    let language = match part.content_language() {
        HeaderValue::Text(t) => vec![istr(t.to_string())],
        HeaderValue::TextList(l) => l.iter().map(|t| istr(t.to_string())).collect(),
        _ => Vec::new(),
    };
    Some(Disposition {
        disposition: part.content_disposition().map(|d| {
            let p = param_list(d.attributes.as_ref());
            (istr(d.c_type.to_ascii_uppercase()), p)
        }),
        tail: Some(Language {
            language,
            tail: Some(Location {
                location: nstr(part.content_location()),
                extensions: Vec::new(),
            }),
        }),
    })
}

/// Lines as IMAP counts them: a last line without CRLF counts too.
fn lines(b: &[u8]) -> u32 {
    let n = b.iter().filter(|&&c| c == b'\n').count() as u32;
    n + u32::from(!b.is_empty() && !b.ends_with(b"\n"))
}

// mail-parser gives the parts of an embedded message offsets into the
// outermost message, so every slice is taken from the root bytes `raw`.
fn body_bytes<'a>(raw: &'a [u8], p: &MessagePart<'_>) -> &'a [u8] {
    let s = (p.offset_body as usize).min(raw.len());
    let e = (p.offset_end as usize).clamp(s, raw.len());
    &raw[s..e]
}

fn header_bytes<'a>(raw: &'a [u8], p: &MessagePart<'_>) -> &'a [u8] {
    let s = (p.offset_header as usize).min(raw.len());
    let e = (p.offset_body as usize).clamp(s, raw.len());
    &raw[s..e]
}

/// BODYSTRUCTURE (with extension data) or BODY (without) of part `id`,
/// at most `depth` levels deep: a multipart or embedded message at the
/// limit is described as one text/plain leaf of its raw body (as Dovecot
/// does past its MIME limits), so nesting never costs more than `depth`
/// stack frames here and in the encoder. Each part is described once: a
/// part list that names a part again (mail-parser can build such lists
/// from broken boundaries) would otherwise make the description grow
/// exponentially with the depth; a repeat is shown as an empty text part.
pub fn structure(
    raw: &[u8],
    m: &Message<'_>,
    id: u32,
    ext: bool,
    depth: usize,
) -> BodyStructure<'static> {
    let mut seen = std::collections::HashSet::new();
    structure_of(raw, m, id, ext, depth, &mut seen)
}

fn structure_of(
    raw: &[u8],
    m: &Message<'_>,
    id: u32,
    ext: bool,
    depth: usize,
    seen: &mut std::collections::HashSet<(usize, u32)>,
) -> BodyStructure<'static> {
    let Some(part) = m.part(id) else {
        return empty_text();
    };
    // Parts are told apart by their message (its address) and number.
    if !seen.insert((m as *const Message<'_> as usize, id)) {
        return empty_text();
    }
    let nested = matches!(part.body, PartType::Multipart(_) | PartType::Message(_));
    if nested && depth <= 1 {
        return leaf_text(body_bytes(raw, part), ext);
    }
    let (ctype, csub) = match part.content_type() {
        Some(ct) => (
            ct.c_type.to_ascii_uppercase(),
            ct.c_subtype
                .as_deref()
                .map(str::to_ascii_uppercase)
                .unwrap_or_default(),
        ),
        None => match &part.body {
            PartType::Multipart(_) => ("MULTIPART".into(), "MIXED".into()),
            PartType::Message(_) => ("MESSAGE".into(), "RFC822".into()),
            _ => ("TEXT".into(), "PLAIN".into()),
        },
    };
    if let PartType::Multipart(children) = &part.body {
        let bodies: Vec<BodyStructure<'static>> = children
            .iter()
            .map(|c| structure_of(raw, m, *c, ext, depth - 1, seen))
            .collect();
        let bodies = Vec1::try_from(bodies).unwrap_or_else(|_| Vec1::from(empty_text()));
        return BodyStructure::Multi {
            bodies,
            subtype: istr(if csub.is_empty() {
                "MIXED".into()
            } else {
                csub
            }),
            extension_data: ext.then(|| MultiPartExtensionData {
                parameter_list: params(part),
                tail: disposition(part),
            }),
        };
    }
    let body = body_bytes(raw, part);
    let mut parameter_list = params(part);
    if parameter_list.is_empty() && ctype == "TEXT" {
        parameter_list.push((istr("CHARSET"), istr("US-ASCII")));
    }
    let basic = BasicFields {
        parameter_list,
        id: nstr(part.content_id().map(|i| format!("<{i}>")).as_deref()),
        description: nstr(part.content_description().map(header_text).as_deref()),
        content_transfer_encoding: istr(
            part.content_transfer_encoding()
                .map(str::to_ascii_uppercase)
                .unwrap_or_else(|| "7BIT".into()),
        ),
        size: body.len() as u32,
    };
    let specific = match &part.body {
        PartType::Message(inner) if ctype == "MESSAGE" => SpecificFields::Message {
            envelope: Box::new(envelope(inner)),
            body_structure: Box::new(structure_of(raw, inner, 0, ext, depth - 1, seen)),
            number_of_lines: lines(body),
        },
        _ if ctype == "TEXT" => SpecificFields::Text {
            subtype: istr(if csub.is_empty() {
                "PLAIN".into()
            } else {
                csub
            }),
            number_of_lines: lines(body),
        },
        _ => SpecificFields::Basic {
            r#type: istr(ctype),
            subtype: istr(if csub.is_empty() {
                "OCTET-STREAM".into()
            } else {
                csub
            }),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: disposition(part),
        }),
    }
}

fn empty_text() -> BodyStructure<'static> {
    leaf_text(b"", false)
}

/// A text/plain part of exactly these bytes.
fn leaf_text(body: &[u8], ext: bool) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![(istr("CHARSET"), istr("US-ASCII"))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istr("7BIT"),
                size: body.len() as u32,
            },
            specific: SpecificFields::Text {
                subtype: istr("PLAIN"),
                number_of_lines: lines(body),
            },
        },
        extension_data: ext.then_some(SinglePartExtensionData {
            md5: NString(None),
            tail: None,
        }),
    }
}

/// Where a part number path leads: the message holding the part and its id.
fn locate<'a, 'x>(m: &'a Message<'x>, path: &[u32]) -> Option<(&'a Message<'x>, u32)> {
    let mut msg = m;
    let mut id = 0u32;
    for (i, n) in path.iter().enumerate() {
        let part = msg.part(id)?;
        match &part.body {
            PartType::Multipart(children) => {
                id = *children.get((*n as usize).checked_sub(1)?)?;
            }
            PartType::Message(inner) if i > 0 || id != 0 => {
                // Parts of an embedded message are numbered inside it.
                msg = inner;
                id = 0;
                match &msg.part(0)?.body {
                    PartType::Multipart(children) => {
                        id = *children.get((*n as usize).checked_sub(1)?)?;
                    }
                    _ if *n == 1 => {}
                    _ => return None,
                }
            }
            _ if *n == 1 => {}
            _ => return None,
        }
    }
    Some((msg, id))
}

/// The part a part path names (`BODY[1.2]`, `BINARY[1.2]`); a
/// single-part message's part 1 is its body.
fn part_at<'a, 'x>(m: &'a Message<'x>, path: &[u32]) -> Option<&'a MessagePart<'x>> {
    let root = m.part(0)?;
    if path == [1] && !matches!(root.body, PartType::Multipart(_)) {
        return Some(root);
    }
    let (msg, id) = locate(m, path)?;
    msg.part(id)
}

/// The message a part path's HEADER/TEXT refer to: the root, or the
/// embedded message of a message/rfc822 part.
fn message_at<'a, 'x>(m: &'a Message<'x>, part: Option<&Part>) -> Option<&'a Message<'x>> {
    Some(message_in(m, part)?.0)
}

/// Like [`message_at`], with where the message ends in the raw bytes: an
/// embedded message ends where its part does (mail-parser's own end for
/// it leaves out an epilogue of its last multipart).
fn message_in<'a, 'x>(m: &'a Message<'x>, part: Option<&Part>) -> Option<(&'a Message<'x>, usize)> {
    let Some(p) = part else {
        return Some((m, usize::MAX));
    };
    let path: Vec<u32> = p.0.as_ref().iter().map(|n| n.get()).collect();
    let (msg, id) = locate(m, &path)?;
    let outer = msg.part(id)?;
    match &outer.body {
        PartType::Message(inner) => Some((inner, outer.offset_end as usize)),
        _ => None,
    }
}

/// Header block filtered by field names (`not` inverts), keeping the blank line.
fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        if header[i] == b'\n' {
            let next = header.get(i + 1).copied();
            if next != Some(b' ') && next != Some(b'\t') {
                fields.push(&header[start..=i]);
                start = i + 1;
            }
        }
        i += 1;
    }
    if start < header.len() {
        fields.push(&header[start..]);
    }
    for f in fields {
        if f == b"\r\n" || f == b"\n" {
            continue;
        }
        let name = f.split(|&c| c == b':').next().unwrap_or(b"");
        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
        let listed = names.iter().any(|n| n.eq_ignore_ascii_case(&name));
        if listed != not {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The bytes of `BODY[section]` (before any partial range).
pub fn section(p: &Parsed<'_>, section: Option<&Section<'_>>) -> Option<Vec<u8>> {
    let raw = p.raw();
    if section.is_none() {
        return Some(raw.to_vec());
    }
    let m: &Message<'_> = p;
    // Nothing to cut from a message mail-parser found no part in.
    m.part(0)?;
    let names = |v: &Vec1<imap_types::core::AString<'_>>| -> Vec<String> {
        v.as_ref()
            .iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .collect()
    };
    Some(match section {
        None => raw.to_vec(),
        Some(Section::Header(p)) => {
            let msg = message_at(m, p.as_ref())?;
            header_bytes(raw, msg.part(0)?).to_vec()
        }
        Some(Section::Text(p)) => {
            // Every byte of the body, up to the end of the part that holds
            // the message.
            let (msg, end) = message_in(m, p.as_ref())?;
            let s = (msg.part(0)?.offset_body as usize).min(raw.len());
            let e = end.clamp(s, raw.len());
            raw[s..e].to_vec()
        }
        Some(Section::HeaderFields(p, f)) => {
            let msg = message_at(m, p.as_ref())?;
            header_fields(header_bytes(raw, msg.part(0)?), &names(f), false)
        }
        Some(Section::HeaderFieldsNot(p, f)) => {
            let msg = message_at(m, p.as_ref())?;
            header_fields(header_bytes(raw, msg.part(0)?), &names(f), true)
        }
        Some(Section::Part(p)) => {
            let path: Vec<u32> = p.0.as_ref().iter().map(|n| n.get()).collect();
            body_bytes(raw, part_at(m, &path)?).to_vec()
        }
        Some(Section::Mime(p)) => {
            let path: Vec<u32> = p.0.as_ref().iter().map(|n| n.get()).collect();
            let (msg, id) = locate(m, &path)?;
            header_bytes(raw, msg.part(id)?).to_vec()
        }
    })
}

/// A part whose Content-Transfer-Encoding BINARY cannot undo (RFC 3516:
/// `NO [UNKNOWN-CTE]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCte(pub String);

/// The bytes of `BINARY[section]`: the part's body with its
/// Content-Transfer-Encoding undone (base64 and quoted-printable by
/// mail-parser's decoders; 7bit, 8bit and binary as they are). `BINARY[]`
/// is the whole message as stored; a multipart or message part is its
/// body as stored (no encoding applies to those); a part that does not
/// exist is empty.
pub fn binary(p: &Parsed<'_>, path: &[std::num::NonZeroU32]) -> Result<Vec<u8>, UnknownCte> {
    let raw = p.raw();
    if path.is_empty() {
        return Ok(raw.to_vec());
    }
    let path: Vec<u32> = path.iter().map(|n| n.get()).collect();
    let Some(part) = part_at(p, &path) else {
        return Ok(Vec::new());
    };
    let body = body_bytes(raw, part);
    if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
        return Ok(body.to_vec());
    }
    let cte = part
        .content_transfer_encoding()
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    match cte.as_str() {
        "7bit" | "8bit" | "binary" | "" => Ok(body.to_vec()),
        "base64" => mail_parser::decoders::base64::base64_decode(body)
            .ok_or_else(|| UnknownCte("the base64 part cannot be decoded".into())),
        "quoted-printable" => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                .ok_or_else(|| UnknownCte("the quoted-printable part cannot be decoded".into()))
        }
        other => Err(UnknownCte(format!(
            "unknown Content-Transfer-Encoding {}",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// A BINARY value: a literal8 when it holds NUL bytes (which no other
/// string form can carry), else a string.
fn nstring8(data: Vec<u8>) -> imap_types::core::NString8<'static> {
    use imap_types::core::{LiteralMode, NString8};
    use imap_types::extensions::binary::Literal8;
    if data.contains(&0) {
        NString8::Literal8(Literal8 {
            data: Cow::Owned(data),
            mode: LiteralMode::Sync,
        })
    } else {
        NString8::NString(nbytes(&data))
    }
}

/// `<origin>` partial range of a section.
pub fn partial(data: Vec<u8>, range: Option<(u32, std::num::NonZeroU32)>) -> Vec<u8> {
    match range {
        None => data,
        Some((start, len)) => {
            let s = (start as usize).min(data.len());
            let e = s.saturating_add(len.get() as usize).min(data.len());
            data[s..e].to_vec()
        }
    }
}

pub fn nstring(data: Vec<u8>) -> NString<'static> {
    nbytes(&data)
}

/// What a FETCH asks of every message.
pub struct Want {
    pub items: Vec<MessageDataItemName<'static>>,
    pub mime_depth: usize,
    /// CONDSTORE with CHANGEDSINCE: MODSEQ is added when not asked for.
    pub modseq: bool,
}

/// One message as the session knows it, with what the store loaded.
pub struct Loaded {
    pub seq: u32,
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    pub meta: crate::store::MessageMeta,
    pub body: Option<Vec<u8>>,
    /// This FETCH set \Seen: FLAGS is reported even if not asked for
    /// (RFC 3501 6.4.5).
    pub show_flags: bool,
}

fn date_time(ts: i64) -> Option<imap_types::datetime::DateTime> {
    let d = chrono::DateTime::from_timestamp(ts, 0)?.fixed_offset();
    imap_types::datetime::DateTime::try_from(d).ok()
}

/// The `* n FETCH (...)` response for one message (no I/O: it may run on
/// any thread). `Err` when a BINARY item cannot be decoded: the FETCH then
/// ends with `NO [UNKNOWN-CTE]`.
pub fn response(
    want: &Want,
    m: &Loaded,
) -> Result<Option<imap_types::response::Data<'static>>, UnknownCte> {
    use std::num::{NonZeroU32, NonZeroU64};
    let parsed = m.body.as_deref().map(parse);
    let mut out = Vec::with_capacity(want.items.len() + 1);
    for item in &want.items {
        let v = match item {
            MessageDataItemName::Uid => NonZeroU32::new(m.uid).map(MessageDataItem::Uid),
            MessageDataItemName::Flags => {
                Some(MessageDataItem::Flags(super::names::fetch_flags(&m.flags)))
            }
            MessageDataItemName::InternalDate => {
                date_time(m.meta.internal_date).map(MessageDataItem::InternalDate)
            }
            MessageDataItemName::Rfc822Size => Some(MessageDataItem::Rfc822Size(m.meta.size)),
            MessageDataItemName::ModSeq => NonZeroU64::new(m.modseq).map(MessageDataItem::ModSeq),
            MessageDataItemName::Envelope => parsed
                .as_ref()
                .map(|p| MessageDataItem::Envelope(envelope(p))),
            MessageDataItemName::BodyStructure => parsed.as_ref().map(|p| {
                MessageDataItem::BodyStructure(structure(p.raw(), p, 0, true, want.mime_depth))
            }),
            MessageDataItemName::Body => parsed
                .as_ref()
                .map(|p| MessageDataItem::Body(structure(p.raw(), p, 0, false, want.mime_depth))),
            MessageDataItemName::Rfc822 => {
                m.body.as_ref().map(|b| MessageDataItem::Rfc822(nbytes(b)))
            }
            MessageDataItemName::Rfc822Header => parsed.as_ref().map(|p| {
                let h = section(p, Some(&Section::Header(None))).unwrap_or_default();
                MessageDataItem::Rfc822Header(nstring(h))
            }),
            MessageDataItemName::Rfc822Text => parsed.as_ref().map(|p| {
                let t = section(p, Some(&Section::Text(None))).unwrap_or_default();
                MessageDataItem::Rfc822Text(nstring(t))
            }),
            MessageDataItemName::BodyExt {
                section: sec,
                partial: part,
                ..
            } => parsed.as_ref().map(|p| {
                let data = section(p, sec.as_ref()).unwrap_or_default();
                MessageDataItem::BodyExt {
                    section: sec.clone(),
                    origin: part.map(|(o, _)| o),
                    data: nstring(partial(data, *part)),
                }
            }),
            MessageDataItemName::Binary {
                section: sec,
                partial: part,
                ..
            } => match parsed.as_ref() {
                Some(p) => Some(MessageDataItem::Binary {
                    section: sec.clone(),
                    value: nstring8(partial(binary(p, sec)?, *part)),
                }),
                None => None,
            },
            MessageDataItemName::BinarySize { section: sec } => match parsed.as_ref() {
                Some(p) => Some(MessageDataItem::BinarySize {
                    section: sec.clone(),
                    size: u32::try_from(binary(p, sec)?.len()).unwrap_or(u32::MAX),
                }),
                None => None,
            },
        };
        if let Some(v) = v {
            out.push(v);
        }
    }
    if m.show_flags
        && !want
            .items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::Flags))
    {
        out.push(MessageDataItem::Flags(super::names::fetch_flags(&m.flags)));
    }
    if want.modseq
        && !want
            .items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq))
        && let Some(ms) = NonZeroU64::new(m.modseq)
    {
        out.push(MessageDataItem::ModSeq(ms));
    }
    let (Some(seq), Ok(items)) = (NonZeroU32::new(m.seq), Vec1::try_from(out)) else {
        return Ok(None);
    };
    Ok(Some(imap_types::response::Data::Fetch { seq, items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.test>\r\n\
To: undisclosed:;\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
preamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\nworld\r\n\
--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nJVBERi0=\r\n--b1--\r\n";

    #[test]
    fn sections_come_from_raw_offsets() {
        let m = parse(MIXED);
        let one = Section::Part(Part(Vec1::from(std::num::NonZeroU32::new(1).unwrap())));
        assert_eq!(section(&m, Some(&one)).unwrap(), b"hello\r\nworld");
        let hdr = section(&m, Some(&Section::Header(None))).unwrap();
        assert!(hdr.starts_with(b"From: "));
        assert!(hdr.ends_with(b"\r\n\r\n"));
        let fields = Section::HeaderFields(
            None,
            Vec1::from(imap_types::core::AString::try_from("subject").unwrap()),
        );
        assert_eq!(
            section(&m, Some(&fields)).unwrap(),
            b"Subject: parts\r\n\r\n"
        );
    }

    /// Parses, describes, encodes and drops `raw` on a thread with the
    /// stack of a tokio worker (2 MiB): deep nesting must fit.
    fn describe_on_small_stack(raw: Vec<u8>, depth: usize) -> Vec<u8> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let m = parse(&raw);
                let b = structure(m.raw(), &m, 0, true, depth);
                let mut out = Vec::new();
                crate::imap::encode(
                    &mut out,
                    &imap_types::response::Response::Data(imap_types::response::Data::Fetch {
                        seq: std::num::NonZeroU32::new(1).unwrap(),
                        items: Vec1::from(imap_types::fetch::MessageDataItem::BodyStructure(b)),
                    }),
                );
                let part = Section::Part(Part(
                    Vec1::try_from(vec![std::num::NonZeroU32::new(1).unwrap(); 5000]).unwrap(),
                ));
                let _ = section(&m, Some(&part));
                out
            })
            .unwrap()
            .join()
            .expect("no overflow, no panic")
    }

    /// Depth of a BODYSTRUCTURE response: the deepest run of parentheses.
    fn paren_depth(b: &[u8]) -> usize {
        let (mut d, mut max) = (0usize, 0usize);
        for &c in b {
            match c {
                b'(' => {
                    d += 1;
                    max = max.max(d);
                }
                b')' => d = d.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn deep_multipart_nesting_is_cut_at_the_limit() {
        let raw = crate::corpus::nested_multipart(3000);
        assert!(raw.len() > 200_000, "{}", raw.len());
        let out = describe_on_small_stack(raw, 64);
        assert!(out.starts_with(b"* 1 FETCH (BODYSTRUCTURE ("));
        // One level of parentheses per multipart, plus the leaf's own.
        let d = paren_depth(&out);
        assert!((60..=80).contains(&d), "depth {d}");
        let shallow = describe_on_small_stack(crate::corpus::nested_multipart(3), 64);
        let text = String::from_utf8_lossy(&shallow);
        assert_eq!(text.matches("\"MIXED\"").count(), 3, "{text}");
        assert!(text.contains("(\"TEXT\" \"PLAIN\""), "{text}");
    }

    /// Found by the fuzzer: broken boundaries made mail-parser list parts
    /// that repeat, and describing them blew up exponentially (4 GB from
    /// 1.7 KB). Each part is described once now.
    #[test]
    fn repeated_parts_are_described_once() {
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/mime/regress-bodystructure-repeated-parts"
        ))
        .unwrap();
        let parts = parse(&raw).parts.len();
        let out = describe_on_small_stack(raw, 64);
        assert!(out.starts_with(b"* 1 FETCH (BODYSTRUCTURE ("));
        assert!(
            out.len() < 64 * 1024,
            "{} bytes for {parts} parts",
            out.len()
        );
    }

    #[test]
    fn deep_rfc822_nesting_parses_describes_and_drops() {
        let raw = crate::corpus::nested_rfc822(50_000);
        let out = describe_on_small_stack(raw, 64);
        assert!(out.starts_with(b"* 1 FETCH (BODYSTRUCTURE ("));
        assert!(paren_depth(&out) < 64 * 4, "{}", paren_depth(&out));
    }

    #[test]
    fn envelope_encodes_names_and_groups() {
        let m = parse(MIXED);
        let e = envelope(&m);
        assert_eq!(e.from.len(), 1);
        assert_eq!(
            e.from[0].name.clone().into_option().unwrap().as_ref(),
            b"=?utf-8?b?SsO2cmc=?="
        );
        // An empty group: start and end markers.
        assert_eq!(e.to.len(), 2);
    }
}
