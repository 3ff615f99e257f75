//! One user's archive: a directory of numbered archive files
//! (`000001.tma`, ...) and, beside each, an index (`000001.tmi`) holding
//! every record except the message bytes, so that opening an archive reads
//! the small indexes, not the mail.
//!
//! Appends go to the newest file only; once it passes the size limit a new
//! file is started and the old one is sealed: never written again. An
//! append is durable when `append` returns (data fsynced, then index
//! fsynced). A torn tail of the newest file (a crash mid-append, never
//! acknowledged) is cut off at open; the index is rebuilt from the data
//! whenever it is missing, damaged or behind.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, HEADER_LEN, Origin, Record, frame, parse_header, read_record, unframe};
use crate::store::codec::{Dec, Enc};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive file {path} at byte {offset}: {problem}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
    #[error("archived message {0} does not exist")]
    NoSuchMessage(u32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the index knows of an archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub auid: u32,
    pub folder: String,
    pub flags: Vec<String>,
    pub internal_date: i64,
    pub archived_at: i64,
    pub origin: Origin,
    pub size: u32,
    file: u32,
    offset: u64,
    len: u32,
}

/// A message read back from its archive file.
#[derive(Debug, Clone)]
pub struct Archived {
    pub entry: Entry,
    pub raw: Arc<Vec<u8>>,
}

const I_MESSAGE: u8 = 1;
const I_FLAGS: u8 = 2;
const I_DELETE: u8 = 3;
const I_RESERVE: u8 = 4;
const I_FOLDER: u8 = 5;

/// One index entry: where the record's data ends (so the index knows how
/// much of the data file it covers), then what the record says.
fn index_frame(out: &mut Vec<u8>, rec: &Record, file: u32, offset: u64, len: u32) {
    let mut e = Enc::new();
    e.u64(offset + u64::from(len));
    match rec {
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
                .u32(file)
                .u64(offset)
                .u32(len)
                .str(folder)
                .strs(flags)
                .i64(*internal_date)
                .i64(*archived_at)
                .u64(origin.mailbox_id)
                .u32(origin.uidvalidity)
                .u32(origin.uid)
                .u32(raw.len() as u32);
            frame(out, I_MESSAGE, &e.finish());
        }
        Record::Flags { auid, flags } => {
            e.u32(*auid).strs(flags);
            frame(out, I_FLAGS, &e.finish());
        }
        Record::Delete { auid } => {
            e.u32(*auid);
            frame(out, I_DELETE, &e.finish());
        }
        Record::Reserve { next_auid } => {
            e.u32(*next_auid);
            frame(out, I_RESERVE, &e.finish());
        }
        Record::Folder { name, present } => {
            e.str(name).u32(u32::from(*present));
            frame(out, I_FOLDER, &e.finish());
        }
    }
}

pub fn data_name(n: u32) -> String {
    format!("{n:06}.tma")
}

pub fn index_name(n: u32) -> String {
    format!("{n:06}.tmi")
}

/// The archive of one user, open for reading and appending.
pub struct UserArchive {
    dir: PathBuf,
    limit: u64,
    /// File numbers, ascending; the last one is the one appended to.
    files: Vec<u32>,
    /// Length of the newest data file.
    tail_len: u64,
    entries: BTreeMap<u32, Entry>,
    /// Origins of the archived messages, to tell what was already moved.
    origins: std::collections::HashSet<(u64, u32, u32)>,
    next_auid: u32,
    /// Folders clients created (they exist even while empty).
    created: std::collections::BTreeSet<String>,
    /// Repairs made while opening (torn tails cut), for the log and status.
    pub repaired: Vec<String>,
    /// Opened for reading beside a running server: never repairs or writes.
    read_only: bool,
}

impl UserArchive {
    /// Opens (creating if `create`) the archive in `dir`. New files are
    /// started once the newest passes `limit` bytes.
    pub fn open(dir: &Path, limit: u64, create: bool) -> Result<UserArchive, ArchiveError> {
        Self::open_with(dir, limit, create, false)
    }

    /// Opens for reading only (export, search beside a running server): a
    /// torn tail is skipped, not cut, and no index is rewritten.
    pub fn open_read_only(dir: &Path) -> Result<UserArchive, ArchiveError> {
        Self::open_with(dir, u64::MAX, false, true)
    }

    fn open_with(
        dir: &Path,
        limit: u64,
        create: bool,
        read_only: bool,
    ) -> Result<UserArchive, ArchiveError> {
        if !read_only {
            finish_compaction(dir)?;
        }
        if create {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".tma")
                .and_then(|n| n.parse::<u32>().ok())
            {
                files.push(n);
            }
        }
        files.sort();
        let mut a = UserArchive {
            dir: dir.to_path_buf(),
            limit,
            files,
            tail_len: 0,
            entries: BTreeMap::new(),
            origins: Default::default(),
            next_auid: 1,
            created: Default::default(),
            repaired: Vec::new(),
            read_only,
        };
        let n = a.files.len();
        for i in 0..n {
            let last = i + 1 == n;
            let len = a.load_file(a.files[i], last)?;
            if last {
                a.tail_len = len;
            }
        }
        Ok(a)
    }

    fn data_path(&self, n: u32) -> PathBuf {
        self.dir.join(data_name(n))
    }

    fn index_path(&self, n: u32) -> PathBuf {
        self.dir.join(index_name(n))
    }

    /// Applies one index entry; returns where its record's data ends.
    fn apply(&mut self, entry_kind: u8, payload: &[u8]) -> Result<u64, String> {
        let mut d = Dec::new(payload);
        let err = |e: crate::store::codec::DecodeError| e.to_string();
        let data_end = d.u64().map_err(err)?;
        match entry_kind {
            I_MESSAGE => {
                let auid = d.u32().map_err(err)?;
                let file = d.u32().map_err(err)?;
                let offset = d.u64().map_err(err)?;
                let len = d.u32().map_err(err)?;
                let e = Entry {
                    auid,
                    file,
                    offset,
                    len,
                    folder: d.str().map_err(err)?,
                    flags: d.strs().map_err(err)?,
                    internal_date: d.i64().map_err(err)?,
                    archived_at: d.i64().map_err(err)?,
                    origin: Origin {
                        mailbox_id: d.u64().map_err(err)?,
                        uidvalidity: d.u32().map_err(err)?,
                        uid: d.u32().map_err(err)?,
                    },
                    size: d.u32().map_err(err)?,
                };
                self.next_auid = self.next_auid.max(auid + 1);
                let o = &e.origin;
                self.origins.insert((o.mailbox_id, o.uidvalidity, o.uid));
                self.entries.insert(auid, e);
            }
            I_FLAGS => {
                let auid = d.u32().map_err(err)?;
                let flags = d.strs().map_err(err)?;
                if let Some(e) = self.entries.get_mut(&auid) {
                    e.flags = flags;
                }
            }
            I_RESERVE => {
                let next = d.u32().map_err(err)?;
                self.next_auid = self.next_auid.max(next);
            }
            I_DELETE => {
                let auid = d.u32().map_err(err)?;
                self.entries.remove(&auid);
            }
            I_FOLDER => {
                let name = d.str().map_err(err)?;
                match d.u32().map_err(err)? {
                    0 => self.created.remove(&name),
                    1 => self.created.insert(name),
                    _ => return Err("bad folder entry".into()),
                };
            }
            _ => return Err("unknown index entry".into()),
        }
        Ok(data_end)
    }

    /// Loads one file through its index, rebuilding the index from the data
    /// where it is missing, damaged or behind. Returns the data length.
    fn load_file(&mut self, n: u32, newest: bool) -> Result<u64, ArchiveError> {
        let data_path = self.data_path(n);
        let data_len = std::fs::metadata(&data_path).map_err(io(&data_path))?.len();
        // Replay the index; it says how far into the data it reaches.
        let idx_path = self.index_path(n);
        let idx = std::fs::read(&idx_path).unwrap_or_default();
        let mut pos = 0usize;
        let mut indexed_to = HEADER_LEN;
        while let Ok(Some((kind, payload, total))) = unframe(&idx[pos..]) {
            match self.apply(kind, payload) {
                Ok(end) => indexed_to = end,
                Err(_) => break,
            }
            pos += total as usize;
        }
        if indexed_to != data_len || pos < idx.len() {
            // Index behind (a crash between the data and the index fsync)
            // or damaged: rebuild it from the data.
            self.reindex(n, newest)?;
            return Ok(std::fs::metadata(&data_path).map_err(io(&data_path))?.len());
        }
        Ok(data_len)
    }

    /// Scans file `n`'s data and rewrites its index completely. A damaged
    /// tail of the newest file is cut off; damage elsewhere is an error.
    fn reindex(&mut self, n: u32, newest: bool) -> Result<(), ArchiveError> {
        let data_path = self.data_path(n);
        let data = std::fs::read(&data_path).map_err(io(&data_path))?;
        parse_header(&data).map_err(|problem| ArchiveError::Damaged {
            path: data_path.clone(),
            offset: 0,
            problem,
        })?;
        // Forget what the (possibly partial) index said about this file's
        // messages; flags and deletions it recorded are re-read below.
        self.entries.retain(|_, e| e.file != n);
        let mut idx = Vec::new();
        let mut off = HEADER_LEN;
        loop {
            match read_record(&data[off as usize..]) {
                Ok(None) => break,
                Ok(Some((rec, total))) => {
                    let mut entry = Vec::new();
                    index_frame(&mut entry, &rec, n, off, total as u32);
                    let damaged = |problem: String| ArchiveError::Damaged {
                        path: data_path.clone(),
                        offset: off,
                        problem,
                    };
                    let (kind, payload, _) = unframe(&entry)
                        .map_err(|e| damaged(format!("rebuilt index entry: {e}")))?
                        .ok_or_else(|| damaged("rebuilt index entry is empty".into()))?;
                    self.apply(kind, payload).map_err(damaged)?;
                    idx.extend_from_slice(&entry);
                    off += total;
                }
                Err(_) if newest && self.read_only => break,
                Err(problem) if newest => {
                    tracing::warn!(file = %data_path.display(), offset = off, %problem,
                        "cutting off the torn tail of an archive file (an unfinished append)");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&data_path)
                        .map_err(io(&data_path))?;
                    f.set_len(off)
                        .and_then(|()| f.sync_all())
                        .map_err(io(&data_path))?;
                    self.repaired.push(format!(
                        "{}: cut a torn tail at byte {off}",
                        data_path.display()
                    ));
                    break;
                }
                Err(problem) => {
                    return Err(ArchiveError::Damaged {
                        path: data_path,
                        offset: off,
                        problem,
                    });
                }
            }
        }
        if !self.read_only {
            write_synced(&self.index_path(n), &idx)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn next_auid(&self) -> u32 {
        self.next_auid
    }

    /// Every archived message, by archive UID.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Folders clients created, with or without mail.
    pub fn created_folders(&self) -> impl Iterator<Item = &str> {
        self.created.iter().map(String::as_str)
    }

    pub fn entry(&self, auid: u32) -> Option<&Entry> {
        self.entries.get(&auid)
    }

    /// Whether a message of the current store was already archived.
    pub fn has_origin(&self, origin: &Origin) -> bool {
        self.origins
            .contains(&(origin.mailbox_id, origin.uidvalidity, origin.uid))
    }

    /// Reads one message, checking its checksum.
    pub fn read(&self, auid: u32) -> Result<Archived, ArchiveError> {
        let e = self
            .entries
            .get(&auid)
            .ok_or(ArchiveError::NoSuchMessage(auid))?;
        let path = self.data_path(e.file);
        let mut f = File::open(&path).map_err(io(&path))?;
        f.seek(SeekFrom::Start(e.offset)).map_err(io(&path))?;
        let mut buf = vec![0u8; e.len as usize];
        f.read_exact(&mut buf).map_err(io(&path))?;
        match read_record(&buf) {
            Ok(Some((Record::Message { raw, .. }, _))) => Ok(Archived {
                entry: e.clone(),
                raw,
            }),
            Ok(_) => Err(ArchiveError::Damaged {
                path,
                offset: e.offset,
                problem: "index points at a record that is not a message".into(),
            }),
            Err(problem) => Err(ArchiveError::Damaged {
                path,
                offset: e.offset,
                problem,
            }),
        }
    }

    /// Appends records (messages get their `auid` from the caller, see
    /// [`UserArchive::next_auid`]) and makes them durable.
    pub fn append(&mut self, records: &[Record]) -> Result<(), ArchiveError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(ArchiveError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("archive opened read-only"),
            });
        }
        let now = chrono::Utc::now().timestamp();
        let need_new = match self.files.last() {
            None => true,
            Some(_) => self.tail_len >= self.limit,
        };
        if need_new {
            let n = self.files.last().map(|n| n + 1).unwrap_or(1);
            let path = self.data_path(n);
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.write_all(&format::header(n, now)).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            write_synced(&self.index_path(n), b"")?;
            sync_dir(&self.dir)?;
            self.files.push(n);
            self.tail_len = HEADER_LEN;
        }
        let n = *self.files.last().expect("a file exists now");
        let mut data = Vec::new();
        let mut idx = Vec::new();
        for r in records {
            let off = self.tail_len + data.len() as u64;
            let start = data.len();
            r.encode(&mut data);
            index_frame(&mut idx, r, n, off, (data.len() - start) as u32);
        }
        let path = self.data_path(n);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if std::env::var("TMTEST_FAILPOINT").is_ok_and(|v| v == "archive-torn-append") {
            // Test hook: half the bytes reach the disk, then the process dies.
            let _ = f
                .write_all(&data[..data.len() / 2])
                .and_then(|()| f.sync_data());
            std::process::abort();
        }
        f.write_all(&data)
            .and_then(|()| f.sync_data())
            .map_err(io(&path))?;
        let ipath = self.index_path(n);
        let mut fi = OpenOptions::new()
            .append(true)
            .open(&ipath)
            .map_err(io(&ipath))?;
        fi.write_all(&idx)
            .and_then(|()| fi.sync_data())
            .map_err(io(&ipath))?;
        self.tail_len += data.len() as u64;
        let mut pos = 0;
        while let Ok(Some((kind, payload, total))) = unframe(&idx[pos..]) {
            let _ = self.apply(kind, payload);
            pos += total as usize;
        }
        Ok(())
    }

    /// Rewrites the archive without deleted messages, so their bytes are
    /// really gone (retention, deletions). The new files are written beside
    /// the old ones, fsynced, marked complete, then swapped in by renaming
    /// directories; a crash at any point leaves either the old or the new
    /// archive whole (see `finish_compaction`). Returns the bytes freed.
    pub fn compact(&mut self) -> Result<u64, ArchiveError> {
        let before = dir_size(&self.dir);
        let new_dir = sibling(&self.dir, "compact");
        if new_dir.exists() {
            std::fs::remove_dir_all(&new_dir).map_err(io(&new_dir))?;
        }
        let mut fresh = UserArchive::open(&new_dir, self.limit, true)?;
        let mut batch = Vec::new();
        let mut bytes = 0u64;
        for e in self.entries.values() {
            let m = self.read(e.auid)?;
            bytes += m.raw.len() as u64;
            batch.push(Record::Message {
                auid: e.auid,
                folder: e.folder.clone(),
                flags: e.flags.clone(),
                internal_date: e.internal_date,
                archived_at: e.archived_at,
                origin: e.origin.clone(),
                raw: m.raw,
            });
            if bytes > 32 << 20 {
                fresh.append(&batch)?;
                batch.clear();
                bytes = 0;
            }
        }
        batch.push(Record::Reserve {
            next_auid: self.next_auid,
        });
        batch.extend(self.created.iter().map(|name| Record::Folder {
            name: name.clone(),
            present: true,
        }));
        fresh.append(&batch)?;
        write_synced(&new_dir.join(COMPLETE), b"")?;
        sync_dir(&new_dir)?;
        let old_dir = sibling(&self.dir, "old");
        std::fs::rename(&self.dir, &old_dir).map_err(io(&self.dir))?;
        std::fs::rename(&new_dir, &self.dir).map_err(io(&new_dir))?;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent)?;
        }
        std::fs::remove_dir_all(&old_dir).map_err(io(&old_dir))?;
        std::fs::remove_file(self.dir.join(COMPLETE)).map_err(io(&self.dir))?;
        *self = UserArchive::open(&self.dir, self.limit, false)?;
        Ok(before.saturating_sub(dir_size(&self.dir)))
    }

    /// Checks every record of every file against its checksum and the
    /// index; returns one line per problem (empty when all is well).
    pub fn verify(dir: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return vec![format!("{}: cannot read the directory", dir.display())];
        };
        let mut files: Vec<u32> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".tma")?.parse().ok()
            })
            .collect();
        files.sort();
        for n in files {
            let path = dir.join(data_name(n));
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            if let Err(p) = parse_header(&data) {
                problems.push(format!("{} at byte 0: {p}", path.display()));
                continue;
            }
            let mut off = HEADER_LEN as usize;
            loop {
                match read_record(&data[off..]) {
                    Ok(None) => break,
                    Ok(Some((_, total))) => off += total as usize,
                    Err(p) => {
                        problems.push(format!("{} at byte {off}: {p}", path.display()));
                        break;
                    }
                }
            }
        }
        problems
    }
}

/// Marks a compacted copy as complete (all files written and fsynced).
const COMPLETE: &str = "compaction-complete";

fn sibling(dir: &Path, what: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!("{name}.{what}"))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Completes or undoes a compaction a crash interrupted: a complete new copy
/// replaces the old one; an incomplete one is thrown away.
fn finish_compaction(dir: &Path) -> Result<(), ArchiveError> {
    let new_dir = sibling(dir, "compact");
    let old_dir = sibling(dir, "old");
    let new_complete = new_dir.join(COMPLETE).exists();
    if !dir.exists() {
        if new_complete {
            std::fs::rename(&new_dir, dir).map_err(io(&new_dir))?;
        } else if old_dir.exists() {
            std::fs::rename(&old_dir, dir).map_err(io(&old_dir))?;
        }
    }
    if new_dir.exists() {
        std::fs::remove_dir_all(&new_dir).map_err(io(&new_dir))?;
    }
    if old_dir.exists() && dir.exists() {
        std::fs::remove_dir_all(&old_dir).map_err(io(&old_dir))?;
    }
    let marker = dir.join(COMPLETE);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(auid: u32, body: &str) -> Record {
        Record::Message {
            auid,
            folder: "INBOX".into(),
            flags: vec!["\\Seen".into()],
            internal_date: 1_600_000_000 + i64::from(auid),
            archived_at: 1_700_000_000,
            origin: Origin {
                mailbox_id: 1,
                uidvalidity: 5,
                uid: auid,
            },
            raw: Arc::new(format!("Subject: {auid}\r\n\r\n{body}\r\n").into_bytes()),
        }
    }

    #[test]
    fn append_reopen_read_and_seal() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("u");
        let mut a = UserArchive::open(&d, 300, true).unwrap();
        for i in 1..=6 {
            a.append(&[msg(i, &"x".repeat(100))]).unwrap();
        }
        a.append(&[
            Record::Flags {
                auid: 2,
                flags: vec![],
            },
            Record::Delete { auid: 3 },
        ])
        .unwrap();
        assert!(a.files.len() > 1, "files sealed at the size limit");
        let b = UserArchive::open(&d, 300, false).unwrap();
        assert_eq!(b.len(), 5);
        assert_eq!(b.next_auid(), 7);
        assert!(b.entry(2).unwrap().flags.is_empty());
        assert!(b.entry(3).is_none());
        let m = b.read(6).unwrap();
        assert!(m.raw.starts_with(b"Subject: 6\r\n"));
        assert!(UserArchive::verify(&d).is_empty());
    }

    #[test]
    fn torn_tail_is_cut_and_lost_index_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("u");
        let mut a = UserArchive::open(&d, 1 << 20, true).unwrap();
        a.append(&[msg(1, "one"), msg(2, "two")]).unwrap();
        drop(a);
        // A crash mid-append: half a record after the last good one, and
        // an index that never got the entry.
        let data = d.join(data_name(1));
        let mut bytes = Vec::new();
        msg(3, "three").encode(&mut bytes);
        let mut f = OpenOptions::new().append(true).open(&data).unwrap();
        f.write_all(&bytes[..bytes.len() / 2]).unwrap();
        drop(f);
        std::fs::remove_file(d.join(index_name(1))).unwrap();
        let b = UserArchive::open(&d, 1 << 20, false).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b.read(2).unwrap().raw.as_slice(),
            b"Subject: 2\r\n\r\ntwo\r\n"
        );
        assert!(UserArchive::verify(&d).is_empty(), "tail cut");
    }

    #[test]
    fn compaction_removes_deleted_bytes_and_keeps_uids_unique() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("u");
        let mut a = UserArchive::open(&d, 400, true).unwrap();
        for i in 1..=6 {
            a.append(&[msg(i, &"z".repeat(200))]).unwrap();
        }
        a.append(&[
            Record::Delete { auid: 6 },
            Record::Delete { auid: 2 },
            Record::Flags {
                auid: 3,
                flags: vec!["$Kept".into()],
            },
        ])
        .unwrap();
        let freed = a.compact().unwrap();
        assert!(freed > 400, "freed {freed}");
        assert_eq!(a.len(), 4);
        assert_eq!(a.next_auid(), 7, "deleted UID 6 is not given out again");
        assert_eq!(a.entry(3).unwrap().flags, vec!["$Kept".to_string()]);
        assert!(a.read(5).unwrap().raw.starts_with(b"Subject: 5"));
        let b = UserArchive::open(&d, 400, false).unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b.next_auid(), 7);
        assert!(UserArchive::verify(&d).is_empty());
        // A crash after the old copy was moved aside but before the new one
        // took its place: the next open finishes the swap.
        std::fs::rename(&d, sibling(&d, "compact")).unwrap();
        write_synced(&sibling(&d, "compact").join(COMPLETE), b"").unwrap();
        let c = UserArchive::open(&d, 400, false).unwrap();
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn damage_in_a_sealed_file_is_reported_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("u");
        let mut a = UserArchive::open(&d, 200, true).unwrap();
        for i in 1..=4 {
            a.append(&[msg(i, &"y".repeat(150))]).unwrap();
        }
        drop(a);
        let first = d.join(data_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        let at = HEADER_LEN as usize + 40;
        bytes[at] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();
        let problems = UserArchive::verify(&d);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("000001.tma at byte 32: record checksum mismatch"),
            "{problems:?}"
        );
        // The index still opens the archive; reading the damaged message
        // fails with the spot named, the others read fine.
        let b = UserArchive::open(&d, 200, false).unwrap();
        assert!(matches!(
            b.read(1),
            Err(ArchiveError::Damaged { offset: 32, .. })
        ));
        assert!(b.read(4).is_ok());
    }
}
