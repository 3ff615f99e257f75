//! The container format of backup files (see docs/formats.md, "Backup
//! files"): a header, then blocks, then a trailer. Every block carries its
//! own CRC32C and the trailer the block count and a CRC32C of every byte
//! before it, so a backup can be written and checked front to back with
//! bounded memory, and any damage is found and named by block and offset.
//! What the blocks of each kind hold is the backup agent's business.

use std::io::{Read, Write};

pub const MAGIC: &[u8; 8] = b"TMBACKUP";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
/// kind + length before the payload, CRC after it.
pub const BLOCK_OVERHEAD: u64 = 1 + 4 + 4;
/// Largest payload of one block; bigger data is split over blocks.
pub const MAX_BLOCK: u32 = 8 << 20;

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Format details, creation time, storage groups.
    Header = 1,
    /// A storage group begins: its id and the LSN its image is taken at.
    GroupStart = 2,
    /// Rows of one table of the group's consistent image.
    Image = 3,
    /// The group's log and patch files that follow.
    Files = 4,
    /// Bytes of a log file.
    Log = 5,
    /// Bytes of the patch file (log written while the image was taken).
    Patch = 6,
    /// A storage group ends: the LSN the backup reaches.
    GroupEnd = 7,
    /// Block count and checksum of everything before it.
    Trailer = 8,
    /// Bytes of one body segment of the group: `u32 segment id | u64
    /// offset | bytes`.
    Segment = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Header,
            2 => Kind::GroupStart,
            3 => Kind::Image,
            4 => Kind::Files,
            5 => Kind::Log,
            6 => Kind::Patch,
            7 => Kind::GroupEnd,
            8 => Kind::Trailer,
            9 => Kind::Segment,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("block {block} at byte {offset}: {problem}")]
    Damaged {
        block: u64,
        offset: u64,
        problem: String,
    },
}

/// Writes a backup file front to back.
pub struct Writer<W: Write> {
    out: W,
    crc: u32,
    blocks: u64,
    offset: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> Result<Writer<W>, FormatError> {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&h)?;
        Ok(Writer {
            out,
            crc: crc32c::crc32c(&h),
            blocks: 0,
            offset: HEADER_LEN,
        })
    }

    /// Appends one block (payloads above `MAX_BLOCK` are the caller's to
    /// split).
    pub fn block(&mut self, kind: Kind, payload: &[u8]) -> Result<(), FormatError> {
        assert!(kind != Kind::Trailer, "the trailer is written by finish");
        assert!(payload.len() <= MAX_BLOCK as usize, "block too large");
        self.frame(kind, payload)
    }

    fn frame(&mut self, kind: Kind, payload: &[u8]) -> Result<(), FormatError> {
        let mut head = [0u8; 5];
        head[0] = kind as u8;
        head[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), payload);
        // The whole-file CRC continues over the same bytes: combined from
        // the block's CRC instead of a second pass over the payload.
        let whole = crc32c::crc32c_combine(self.crc, crc, head.len() + payload.len());
        let crc_bytes = crc.to_le_bytes();
        self.crc = crc32c::crc32c_append(whole, &crc_bytes);
        for part in [&head[..], payload, &crc_bytes[..]] {
            self.out.write_all(part)?;
            self.offset += part.len() as u64;
        }
        self.blocks += 1;
        Ok(())
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Writes the trailer (block count, CRC32C of every byte before it) and
    /// returns the output for the caller to fsync.
    pub fn finish(mut self) -> Result<W, FormatError> {
        let mut t = Vec::with_capacity(12);
        t.extend_from_slice(&self.blocks.to_le_bytes());
        t.extend_from_slice(&self.crc.to_le_bytes());
        self.frame(Kind::Trailer, &t)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One block read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// Where the block starts in the file.
    pub offset: u64,
}

/// Reads a backup file front to back, checking every checksum; the
/// trailer is checked when it is reached, after which `next` gives `None`.
pub struct Reader<R: Read> {
    input: R,
    crc: u32,
    blocks: u64,
    offset: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Reader<R>, FormatError> {
        let mut h = [0u8; HEADER_LEN as usize];
        let damaged = |problem: &str| FormatError::Damaged {
            block: 0,
            offset: 0,
            problem: problem.into(),
        };
        input
            .read_exact(&mut h)
            .map_err(|_| damaged("file shorter than its header"))?;
        if &h[..8] != MAGIC {
            return Err(damaged("not a tiermail backup (bad magic)"));
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(damaged(&format!(
                "unsupported backup format version {version}"
            )));
        }
        Ok(Reader {
            input,
            crc: crc32c::crc32c(&h),
            blocks: 0,
            offset: HEADER_LEN,
            done: false,
        })
    }

    fn damaged(&self, problem: impl Into<String>) -> FormatError {
        FormatError::Damaged {
            block: self.blocks + 1,
            offset: self.offset,
            problem: problem.into(),
        }
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next block, `Ok(None)` after a valid trailer.
    pub fn next_block(&mut self) -> Result<Option<Block>, FormatError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 5];
        if self.input.read_exact(&mut head).is_err() {
            return Err(self.damaged("file ends before its trailer (truncated)"));
        }
        let Some(kind) = Kind::from_u8(head[0]) else {
            return Err(self.damaged(format!("unknown block kind {}", head[0])));
        };
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        if len > MAX_BLOCK {
            return Err(self.damaged(format!("impossible block length {len}")));
        }
        let mut payload = vec![0u8; len as usize];
        let mut crc = [0u8; 4];
        if self.input.read_exact(&mut payload).is_err() || self.input.read_exact(&mut crc).is_err()
        {
            return Err(self.damaged("file ends inside a block (truncated)"));
        }
        let want = crc32c::crc32c_append(crc32c::crc32c(&head), &payload);
        if u32::from_le_bytes(crc) != want {
            return Err(self.damaged(format!("{kind:?} block checksum mismatch")));
        }
        let before = self.crc;
        let start = self.offset;
        self.crc = crc32c::crc32c_append(self.crc, &head);
        self.crc = crc32c::crc32c_append(self.crc, &payload);
        self.crc = crc32c::crc32c_append(self.crc, &crc);
        self.offset += BLOCK_OVERHEAD + u64::from(len);
        if kind == Kind::Trailer {
            if payload.len() != 12 {
                return Err(FormatError::Damaged {
                    block: self.blocks + 1,
                    offset: start,
                    problem: "malformed trailer".into(),
                });
            }
            let count = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
            let whole = u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes"));
            if count != self.blocks {
                return Err(FormatError::Damaged {
                    block: self.blocks + 1,
                    offset: start,
                    problem: format!(
                        "trailer counts {count} blocks, the file has {}",
                        self.blocks
                    ),
                });
            }
            if whole != before {
                return Err(FormatError::Damaged {
                    block: self.blocks + 1,
                    offset: start,
                    problem: "whole-file checksum mismatch".into(),
                });
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(FormatError::Damaged {
                    block: self.blocks + 2,
                    offset: self.offset,
                    problem: "bytes after the trailer".into(),
                });
            }
            self.done = true;
            return Ok(None);
        }
        self.blocks += 1;
        Ok(Some(Block {
            kind,
            payload,
            offset: start,
        }))
    }
}

/// Reads a whole backup, checking everything; returns the number of
/// blocks, or the first damage with its block number and byte offset.
pub fn verify(input: impl Read) -> Result<u64, FormatError> {
    let mut r = Reader::new(std::io::BufReader::with_capacity(1 << 20, input))?;
    let mut n = 0;
    while r.next_block()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Reads only some blocks of a backup (marks, logs), seeking past the
/// others: for listing and for taking the logs out of later backups. Every
/// block it returns has its CRC checked; the whole-file checksum is not
/// (that is `verify`'s job), and `None` means the trailer was reached.
pub struct Skimmer<R: Read + std::io::Seek> {
    input: R,
    offset: u64,
    block: u64,
}

impl<R: Read + std::io::Seek> Skimmer<R> {
    pub fn new(mut input: R) -> Result<Skimmer<R>, FormatError> {
        // The header is checked the same way as by the full reader.
        let mut h = [0u8; HEADER_LEN as usize];
        input.read_exact(&mut h).map_err(|_| FormatError::Damaged {
            block: 0,
            offset: 0,
            problem: "file shorter than its header".into(),
        })?;
        Reader::new(&h[..])?;
        Ok(Skimmer {
            input,
            offset: HEADER_LEN,
            block: 0,
        })
    }

    /// The next block whose kind `want` accepts (others skipped unread).
    pub fn next_block(
        &mut self,
        want: impl Fn(Kind) -> bool,
    ) -> Result<Option<Block>, FormatError> {
        loop {
            self.block += 1;
            let damaged = |s: &Self, problem: String| FormatError::Damaged {
                block: s.block,
                offset: s.offset,
                problem,
            };
            let mut head = [0u8; 5];
            if self.input.read_exact(&mut head).is_err() {
                return Err(damaged(
                    self,
                    "file ends before its trailer (truncated)".into(),
                ));
            }
            let Some(kind) = Kind::from_u8(head[0]) else {
                return Err(damaged(self, format!("unknown block kind {}", head[0])));
            };
            let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
            if len > MAX_BLOCK {
                return Err(damaged(self, format!("impossible block length {len}")));
            }
            let start = self.offset;
            if kind == Kind::Trailer {
                return Ok(None);
            }
            if !want(kind) {
                self.input
                    .seek(std::io::SeekFrom::Current(i64::from(len) + 4))?;
                self.offset += BLOCK_OVERHEAD + u64::from(len);
                continue;
            }
            let mut payload = vec![0u8; len as usize];
            let mut crc = [0u8; 4];
            if self.input.read_exact(&mut payload).is_err()
                || self.input.read_exact(&mut crc).is_err()
            {
                return Err(damaged(self, "file ends inside a block (truncated)".into()));
            }
            if u32::from_le_bytes(crc) != crc32c::crc32c_append(crc32c::crc32c(&head), &payload) {
                return Err(damaged(self, format!("{kind:?} block checksum mismatch")));
            }
            self.offset += BLOCK_OVERHEAD + u64::from(len);
            return Ok(Some(Block {
                kind,
                payload,
                offset: start,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.block(Kind::Header, b"groups=2").unwrap();
        w.block(Kind::GroupStart, &7u32.to_le_bytes()).unwrap();
        w.block(Kind::Image, &vec![0xab; 100_000]).unwrap();
        w.block(Kind::Files, b"00000000000000000001.wal").unwrap();
        w.block(Kind::Log, b"log bytes").unwrap();
        w.block(Kind::Patch, b"").unwrap();
        w.block(Kind::GroupEnd, &42u64.to_le_bytes()).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let mut r = Reader::new(&bytes[..]).unwrap();
        let mut kinds = Vec::new();
        while let Some(b) = r.next_block().unwrap() {
            kinds.push(b.kind);
        }
        assert_eq!(kinds.len(), 7);
        assert_eq!(kinds[2], Kind::Image);
        assert_eq!(verify(&bytes[..]).unwrap(), 7);
    }

    #[test]
    fn damage_is_named_by_block_and_offset() {
        let good = sample();
        // A flipped byte in the image block (block 3, after header + 2 blocks).
        let image_at = (HEADER_LEN + BLOCK_OVERHEAD + 8 + BLOCK_OVERHEAD + 4) as usize;
        let mut bad = good.clone();
        bad[image_at + 5 + 500] ^= 1;
        let e = verify(&bad[..]).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("block 3 at byte {image_at}: Image block checksum mismatch")
        );
        // Truncated: the trailer is missing.
        let e = verify(&good[..good.len() - 10]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // The trailer's own bytes damaged.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let e = verify(&bad[..]).unwrap_err().to_string();
        assert!(e.starts_with("block 8 at byte"), "{e}");
        // A block dropped whole (CRCs fine, count and file checksum not).
        let mut w = Writer::new(Vec::new()).unwrap();
        w.block(Kind::Header, b"x").unwrap();
        let mut shorter = w.finish().unwrap();
        let mut lying = sample();
        let trailer_at = lying.len() - (BLOCK_OVERHEAD as usize + 12);
        lying.truncate(trailer_at);
        lying.extend_from_slice(&shorter.split_off(shorter.len() - (BLOCK_OVERHEAD as usize + 12)));
        let e = verify(&lying[..]).unwrap_err().to_string();
        assert!(e.contains("trailer counts 1 blocks"), "{e}");
        // Not a backup at all.
        assert!(verify(&b"hello world, not a backup"[..]).is_err());
    }
}
