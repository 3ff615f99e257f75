//! The bytes of an archive file (see docs/formats.md, "Archive files").
//!
//! An archive file is a 32-byte header followed by records, each
//! `len u32 | type u8 | payload | crc32c u32`. Files are only ever appended
//! to, and once sealed (a newer file exists) never written again, which is
//! what lets them live on a NAS, RAID-5 or object storage. Every record
//! carries its own checksum so damage is found and reported per record.

use std::sync::Arc;

use crate::store::codec::{Dec, DecodeError, Enc};

pub const MAGIC: &[u8; 8] = b"TMARCH\r\n";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 32;
/// len + type before the payload, crc after it.
pub const RECORD_OVERHEAD: u64 = 4 + 1 + 4;
/// A larger length is damage, not a record.
pub const MAX_PAYLOAD: u32 = 1 << 30;

pub const T_MESSAGE: u8 = 1;
pub const T_FLAGS: u8 = 2;
pub const T_DELETE: u8 = 3;
pub const T_RESERVE: u8 = 4;
pub const T_FOLDER: u8 = 5;

/// Where an archived message came from: enough to tell, after a crash,
/// whether a message still in the current store was already archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub mailbox_id: u64,
    pub uidvalidity: u32,
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Message {
        /// Archive UID: unique within the user's archive, never reused.
        auid: u32,
        /// The folder the message was archived from (e.g. `INBOX`).
        folder: String,
        flags: Vec<String>,
        internal_date: i64,
        archived_at: i64,
        origin: Origin,
        raw: Arc<Vec<u8>>,
    },
    /// New flags of an archived message.
    Flags { auid: u32, flags: Vec<String> },
    /// An archived message deleted (user expunge or retention).
    Delete { auid: u32 },
    /// Archive UIDs below this are used: written by compaction so that
    /// deleted messages' UIDs are never given out again.
    Reserve { next_auid: u32 },
    /// An archive folder a client created (`present`) or deleted: folders
    /// with mail exist anyway, this keeps an empty one.
    Folder { name: String, present: bool },
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::Message { .. } => T_MESSAGE,
            Record::Flags { .. } => T_FLAGS,
            Record::Delete { .. } => T_DELETE,
            Record::Reserve { .. } => T_RESERVE,
            Record::Folder { .. } => T_FOLDER,
        }
    }

    pub fn auid(&self) -> u32 {
        match self {
            Record::Message { auid, .. } | Record::Flags { auid, .. } | Record::Delete { auid } => {
                *auid
            }
            Record::Reserve { next_auid } => *next_auid,
            Record::Folder { .. } => 0,
        }
    }

    /// Appends the framed record (length, type, payload, CRC) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc::new();
        match self {
            Record::Message {
                auid,
                folder,
                flags,
                internal_date,
                archived_at,
                origin,
                raw,
            } => {
                e.u32(*auid)
                    .str(folder)
                    .strs(flags)
                    .i64(*internal_date)
                    .i64(*archived_at)
                    .u64(origin.mailbox_id)
                    .u32(origin.uidvalidity)
                    .u32(origin.uid)
                    .bytes(raw);
            }
            Record::Flags { auid, flags } => {
                e.u32(*auid).strs(flags);
            }
            Record::Delete { auid } => {
                e.u32(*auid);
            }
            Record::Reserve { next_auid } => {
                e.u32(*next_auid);
            }
            Record::Folder { name, present } => {
                e.str(name).u32(u32::from(*present));
            }
        }
        frame(out, self.kind(), &e.finish());
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, DecodeError> {
        let mut d = Dec::new(payload);
        let r = match kind {
            T_MESSAGE => Record::Message {
                auid: d.u32()?,
                folder: d.str()?,
                flags: d.strs()?,
                internal_date: d.i64()?,
                archived_at: d.i64()?,
                origin: Origin {
                    mailbox_id: d.u64()?,
                    uidvalidity: d.u32()?,
                    uid: d.u32()?,
                },
                raw: Arc::new(d.bytes()?.to_vec()),
            },
            T_FLAGS => Record::Flags {
                auid: d.u32()?,
                flags: d.strs()?,
            },
            T_DELETE => Record::Delete { auid: d.u32()? },
            T_RESERVE => Record::Reserve {
                next_auid: d.u32()?,
            },
            T_FOLDER => Record::Folder {
                name: d.str()?,
                present: match d.u32()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError("bad archive folder record")),
                },
            },
            _ => return Err(DecodeError("unknown archive record type")),
        };
        d.end()?;
        Ok(r)
    }
}

/// The file header: magic, version, file number, creation time, CRC.
pub fn header(number: u32, created: i64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&number.to_le_bytes());
    h[16..24].copy_from_slice(&created.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header; returns (file number, creation time).
pub fn parse_header(h: &[u8]) -> Result<(u32, i64), String> {
    if h.len() < HEADER_LEN as usize {
        return Err("file shorter than its header".into());
    }
    if &h[..8] != MAGIC {
        return Err("not a tiermail archive file (bad magic)".into());
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[..28]) {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("unsupported archive format version {version}"));
    }
    Ok((
        u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")),
        i64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
    ))
}

/// Appends `len u32 | kind u8 | payload | crc32c u32` to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// One checksummed frame read back: its type, payload and whole length.
pub type Frame<'a> = (u8, &'a [u8], u64);

/// Reads one frame from the start of `buf`: `Ok(Some(frame))`, `Ok(None)`
/// at a clean end, `Err` with the reason when the bytes there are not a
/// whole frame with a matching checksum.
pub fn unframe(buf: &[u8]) -> Result<Option<Frame<'_>>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() < 5 {
        return Err("torn record header".into());
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(format!("impossible record length {len}"));
    }
    let total = RECORD_OVERHEAD + u64::from(len);
    if (buf.len() as u64) < total {
        return Err("torn record".into());
    }
    let body_end = 5 + len as usize;
    let crc = u32::from_le_bytes(buf[body_end..body_end + 4].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&buf[..body_end]) {
        return Err("record checksum mismatch".into());
    }
    Ok(Some((buf[4], &buf[5..body_end], total)))
}

/// One archive record read back from the start of `buf` (see [`unframe`]).
pub fn read_record(buf: &[u8]) -> Result<Option<(Record, u64)>, String> {
    match unframe(buf)? {
        None => Ok(None),
        Some((kind, payload, total)) => {
            let rec = Record::decode(kind, payload).map_err(|e| e.to_string())?;
            Ok(Some((rec, total)))
        }
    }
}

/// The directory name of a user under the archive root: every byte outside
/// `[a-z0-9_-]` becomes `%XX`, so no address can name `..`, a path
/// separator or another user's directory, and the mapping is reversible.
pub fn user_dir_name(user: &str) -> String {
    let mut out = String::with_capacity(user.len() * 2);
    for b in user.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user a directory name stands for (`None` if it is not one of ours).
pub fn user_from_dir_name(name: &str) -> Option<String> {
    // Our encoding never writes '.', so `x.compact` / `x.old` (compaction
    // in progress) are not users.
    if name.contains('.') {
        return None;
    }
    let mut bytes = Vec::new();
    let mut it = name.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(auid: u32) -> Record {
        Record::Message {
            auid,
            folder: "INBOX".into(),
            flags: vec!["\\Seen".into()],
            internal_date: 1_700_000_000,
            archived_at: 1_800_000_000,
            origin: Origin {
                mailbox_id: 3,
                uidvalidity: 99,
                uid: auid + 10,
            },
            raw: Arc::new(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        }
    }

    #[test]
    fn records_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        for r in [
            message(1),
            Record::Flags {
                auid: 1,
                flags: vec![],
            },
            Record::Delete { auid: 1 },
            Record::Folder {
                name: "2024".into(),
                present: true,
            },
            Record::Folder {
                name: "Old/2019".into(),
                present: false,
            },
        ] {
            let start = buf.len();
            r.encode(&mut buf);
            let (back, n) = read_record(&buf[start..]).unwrap().unwrap();
            assert_eq!(back, r);
            assert_eq!(n as usize, buf.len() - start);
        }
        let mut bad = Vec::new();
        message(2).encode(&mut bad);
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert_eq!(read_record(&bad).unwrap_err(), "record checksum mismatch");
        assert_eq!(read_record(&bad[..10]).unwrap_err(), "torn record");
    }

    #[test]
    fn headers() {
        let h = header(7, 123);
        assert_eq!(parse_header(&h).unwrap(), (7, 123));
        let mut bad = h;
        bad[13] ^= 1;
        assert!(parse_header(&bad).is_err());
    }

    #[test]
    fn user_names_cannot_escape_the_root() {
        for u in [
            "alice@example.test",
            "../../etc",
            "a/b",
            ".",
            "..",
            "Ünïcode@x",
            "%41",
        ] {
            let d = user_dir_name(u);
            assert!(!d.contains('/') && !d.contains('.') && !d.is_empty(), "{d}");
            assert_eq!(user_from_dir_name(&d).as_deref(), Some(u));
        }
        assert_ne!(user_dir_name("A@x"), user_dir_name("a@x"));
    }
}
