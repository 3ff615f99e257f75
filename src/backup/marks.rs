//! What the mark blocks of a backup say (header, group start, files, group
//! end), encoded with the store's versioned codec. The bulk blocks (image
//! rows, log and patch records) are streams described in `image` and
//! `store::wal`.

use crate::store::codec::{Dec, DecodeError, Enc};

use crate::store::image::ImageKind;
use crate::store::manifest::{self, Manifest};

const MARK_VERSION: u8 = 1;
/// The header mark's own version: 2 added the image kind and the parent.
const HEADER_VERSION: u8 = 2;

/// The backup as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub created_ms: i64,
    pub host: String,
    /// (group id, kind) of every storage group in the backup.
    pub groups: Vec<(u32, String)>,
    /// How the images hold the bodies (headers of version 1: inline).
    pub image: ImageKind,
    /// An incremental backup names the backup it continues (in the same
    /// directory); its groups then have no image, only the log since.
    pub parent: Option<String>,
    /// ... and the full backup its chain starts from.
    pub base: Option<String>,
}

/// A storage group begins; its image is the state at `image_lsn`, and its
/// log files start at `log_from` (the record after the previous backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStart {
    pub id: u32,
    pub image_lsn: u64,
    pub log_from: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Records from the previous backup up to the image (point in time).
    Log,
    /// Records written while the image was streamed.
    Patch,
}

/// One log or patch file: the records of LSNs `first..=last` taken from the
/// WAL segment `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub role: Role,
    pub name: String,
    pub first: u64,
    pub last: u64,
}

/// A storage group ends: the backup restores it to `end_lsn`, written at
/// `end_ms`; `manifest` digests that state per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEnd {
    pub end_lsn: u64,
    pub end_ms: i64,
    pub manifest: Manifest,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(HEADER_VERSION)
            .i64(self.created_ms)
            .str(&self.host)
            .u32(self.groups.len() as u32);
        for (id, kind) in &self.groups {
            e.u32(*id).str(kind);
        }
        e.u8(self.image as u8);
        match (&self.parent, &self.base) {
            (Some(p), Some(b)) => e.u8(1).str(p).str(b),
            _ => e.u8(0),
        };
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Header, DecodeError> {
        let mut d = Dec::new(b);
        let v = d.u8()?;
        if v != 1 && v != HEADER_VERSION {
            return Err(DecodeError("unknown backup header version"));
        }
        let created_ms = d.i64()?;
        let host = d.str()?;
        let n = d.count(8)?;
        let mut groups = Vec::with_capacity(n);
        for _ in 0..n {
            groups.push((d.u32()?, d.str()?));
        }
        let (image, parent, base) = if v == 1 {
            (ImageKind::Inline, None, None)
        } else {
            let image =
                ImageKind::from_u8(d.u8()?).ok_or(DecodeError("unknown backup image kind"))?;
            match d.u8()? {
                0 => (image, None, None),
                1 => (image, Some(d.str()?), Some(d.str()?)),
                _ => return Err(DecodeError("bad parent flag in a backup header")),
            }
        };
        d.end()?;
        Ok(Header {
            created_ms,
            host,
            groups,
            image,
            parent,
            base,
        })
    }

    pub fn incremental(&self) -> bool {
        self.parent.is_some()
    }
}

fn version(b: &[u8]) -> Result<Dec<'_>, DecodeError> {
    let mut d = Dec::new(b);
    if d.u8()? != MARK_VERSION {
        return Err(DecodeError("unknown backup mark version"));
    }
    Ok(d)
}

impl GroupStart {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(MARK_VERSION)
            .u32(self.id)
            .u64(self.image_lsn)
            .u64(self.log_from);
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Result<GroupStart, DecodeError> {
        let mut d = version(b)?;
        let g = GroupStart {
            id: d.u32()?,
            image_lsn: d.u64()?,
            log_from: d.u64()?,
        };
        d.end()?;
        Ok(g)
    }
}

pub fn encode_files(files: &[FileEntry]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u8(MARK_VERSION).u32(files.len() as u32);
    for f in files {
        e.u8(match f.role {
            Role::Log => 0,
            Role::Patch => 1,
        })
        .str(&f.name)
        .u64(f.first)
        .u64(f.last);
    }
    e.finish()
}

pub fn decode_files(b: &[u8]) -> Result<Vec<FileEntry>, DecodeError> {
    let mut d = version(b)?;
    let n = d.count(21)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let role = match d.u8()? {
            0 => Role::Log,
            1 => Role::Patch,
            _ => return Err(DecodeError("unknown backup file role")),
        };
        v.push(FileEntry {
            role,
            name: d.str()?,
            first: d.u64()?,
            last: d.u64()?,
        });
    }
    d.end()?;
    Ok(v)
}

impl GroupEnd {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(MARK_VERSION).u64(self.end_lsn).i64(self.end_ms);
        manifest::encode(&self.manifest, &mut e);
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Result<GroupEnd, DecodeError> {
        let mut d = version(b)?;
        let end_lsn = d.u64()?;
        let end_ms = d.i64()?;
        let manifest = manifest::decode(&mut d)?;
        d.end()?;
        Ok(GroupEnd {
            end_lsn,
            end_ms,
            manifest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::manifest::UserDigest;

    #[test]
    fn marks_round_trip() {
        let h = Header {
            created_ms: 1_790_000_000_000,
            host: "mx.example".into(),
            groups: vec![(0, "mail".into()), (3, "mail".into())],
            image: ImageKind::Segments,
            parent: None,
            base: None,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let inc = Header {
            parent: Some("tiermail-20261202T150100.066Z.tmbak".into()),
            base: Some("tiermail-20261202T140100.066Z.tmbak".into()),
            ..h.clone()
        };
        assert_eq!(Header::decode(&inc.encode()).unwrap(), inc);
        // A version 1 header (written before segments were copied whole).
        let mut v1 = Enc::new();
        v1.u8(1).i64(5).str("h").u32(1).u32(0).str("mail");
        let old = Header::decode(&v1.finish()).unwrap();
        assert_eq!((old.image, old.parent), (ImageKind::Inline, None));
        let g = GroupStart {
            id: 3,
            image_lsn: 99,
            log_from: 10,
        };
        assert_eq!(GroupStart::decode(&g.encode()).unwrap(), g);
        let f = vec![FileEntry {
            role: Role::Patch,
            name: "00000000000000000001.wal".into(),
            first: 100,
            last: 120,
        }];
        assert_eq!(decode_files(&encode_files(&f)).unwrap(), f);
        let mut manifest = Manifest::new();
        manifest.insert(
            "a@example.com".into(),
            UserDigest {
                messages: 3,
                checksum: 7,
            },
        );
        let e = GroupEnd {
            end_lsn: 120,
            end_ms: 5,
            manifest,
        };
        assert_eq!(GroupEnd::decode(&e.encode()).unwrap(), e);
        assert!(GroupEnd::decode(&[9, 1, 2]).is_err());
    }
}
