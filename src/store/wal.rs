//! The write-ahead log of one storage group.
//!
//! Why a WAL beside redb, which is crash-safe on its own: a durable redb
//! commit costs an fsync of its own (about 2,400/s here), while appending a
//! batch of records to a log and fsyncing once lets many concurrent writers
//! share one fsync (group commit). redb then commits cheaply without fsync
//! and is made durable by periodic checkpoints. The log is also what backup
//! streams as log and patch files, and what restore rolls forward.
//!
//! A segment is a 16-byte header then records; each record is
//! `len u32 | type u8 | lsn u64 | payload | crc32c u32` (little-endian, the
//! CRC covering everything before it). Segments are named by the LSN of
//! their first record. See docs/formats.md.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"TMWAL\r\n\x1a";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 16;
/// Bytes around a payload: len, type, lsn before it; crc after it.
pub const RECORD_OVERHEAD: usize = 4 + 1 + 8 + 4;
/// A length above this is corruption, not a record.
pub const MAX_PAYLOAD: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("wal {path} at byte {offset}: {problem}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        problem: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Appends one framed record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, kind: u8, lsn: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

pub fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Segment files of `dir`, sorted by first LSN.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(lsn) = stem.parse::<u64>()
        {
            v.push((lsn, entry.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// One decoded, CRC-checked record.
pub struct RawRecord {
    pub lsn: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// How a segment read ended.
pub enum SegmentEnd {
    /// Clean end of file after the last record.
    Clean,
    /// A record could not be read whole or failed its CRC at `offset`.
    Damaged { offset: u64, problem: String },
}

/// Streams the records of one segment into `f`, stopping at the first damage.
pub fn read_segment(
    path: &Path,
    f: impl FnMut(RawRecord) -> Result<(), WalError>,
) -> Result<SegmentEnd, WalError> {
    let file = File::open(path).map_err(io_err(path))?;
    read_records(path, BufReader::with_capacity(1 << 20, file), f)
}

/// As [`read_segment`], from any reader (`path` names it in errors). Memory
/// for a record grows with the bytes actually read, so a corrupt length
/// field never allocates more than the segment holds.
pub fn read_records(
    path: &Path,
    mut r: impl Read,
    mut f: impl FnMut(RawRecord) -> Result<(), WalError>,
) -> Result<SegmentEnd, WalError> {
    let mut h = [0u8; HEADER_LEN as usize];
    if let Err(e) = r.read_exact(&mut h) {
        return Ok(SegmentEnd::Damaged {
            offset: 0,
            problem: format!("segment header unreadable: {e}"),
        });
    }
    if &h[..8] != MAGIC {
        return Ok(SegmentEnd::Damaged {
            offset: 0,
            problem: "not a tiermail WAL segment (bad magic)".into(),
        });
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(WalError::Corrupt {
            path: path.into(),
            offset: 8,
            problem: format!("unsupported WAL version {version}"),
        });
    }
    let mut offset = HEADER_LEN;
    loop {
        let mut head = [0u8; 13];
        match read_full(&mut r, &mut head).map_err(io_err(path))? {
            0 => return Ok(SegmentEnd::Clean),
            13 => {}
            _ => {
                return Ok(SegmentEnd::Damaged {
                    offset,
                    problem: "torn record header".into(),
                });
            }
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Ok(SegmentEnd::Damaged {
                offset,
                problem: format!("impossible record length {len}"),
            });
        }
        let want = len as usize + 4;
        let mut rest = Vec::with_capacity(want.min(1 << 20));
        (&mut r)
            .take(want as u64)
            .read_to_end(&mut rest)
            .map_err(io_err(path))?;
        if rest.len() != want {
            return Ok(SegmentEnd::Damaged {
                offset,
                problem: "torn record".into(),
            });
        }
        let (payload, crc) = rest.split_at(len as usize);
        let mut hasher = crc32c::crc32c(&head);
        hasher = crc32c::crc32c_append(hasher, payload);
        if hasher != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Ok(SegmentEnd::Damaged {
                offset,
                problem: "record checksum mismatch".into(),
            });
        }
        let lsn = u64::from_le_bytes(head[5..13].try_into().expect("8 bytes"));
        rest.truncate(len as usize);
        f(RawRecord {
            lsn,
            kind: head[4],
            payload: rest,
        })?;
        offset += (RECORD_OVERHEAD + len as usize) as u64;
    }
}

/// Splits whole framed records off the front of `buf` (records copied out
/// of a log, as backups hold them), checking each CRC; a partial record
/// stays in `buf`. An error names the problem.
pub fn take_framed(buf: &mut Vec<u8>, out: &mut Vec<RawRecord>) -> Result<(), String> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 13 {
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(format!("impossible record length {len}"));
        }
        let total = RECORD_OVERHEAD + len as usize;
        if rest.len() < total {
            break;
        }
        let body = &rest[..total - 4];
        let crc = u32::from_le_bytes(rest[total - 4..total].try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != crc {
            return Err("record checksum mismatch".into());
        }
        out.push(RawRecord {
            lsn: u64::from_le_bytes(rest[5..13].try_into().expect("8 bytes")),
            kind: rest[4],
            payload: rest[13..total - 4].to_vec(),
        });
        at += total;
    }
    buf.drain(..at);
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The append side of a group's log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    path: PathBuf,
    len: u64,
    /// (first lsn, path) of every segment, the active one last.
    segments: Vec<(u64, PathBuf)>,
    pub fsyncs: u64,
    /// Pruned segments go to this thread to be deleted: unlinking
    /// gigabytes of segments takes long enough to stall the writer's
    /// commits (about a second for 2 GB) if done on its thread.
    deleter: std::sync::mpsc::Sender<Deletion>,
}

/// What runs after a batch of segments is deleted (an answer to whoever
/// asked for the prune).
pub type AfterPrune = Box<dyn FnOnce() + Send>;

/// Segments to delete, oldest first, then what to run.
struct Deletion {
    paths: Vec<PathBuf>,
    then: Option<AfterPrune>,
}

/// Deletes batches in the order they were pruned, oldest segment first,
/// so that a crash part way leaves the log's remaining segments
/// contiguous (recovery skips those a checkpoint covers). A failure is
/// logged: the segment stays on disk, where recovery ignores it and
/// `status` counts it no more.
fn start_deleter(dir: &Path) -> std::sync::mpsc::Sender<Deletion> {
    let (tx, rx) = std::sync::mpsc::channel::<Deletion>();
    let dir = dir.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("tiermail-wal-prune".into())
        .spawn(move || {
            for d in rx {
                delete_segments(&dir, &d.paths);
                if let Some(then) = d.then {
                    then();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no thread for deleting log segments: they stay on disk");
    }
    tx
}

fn delete_segments(dir: &Path, paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot delete a pruned log segment");
        }
    }
    if !paths.is_empty()
        && let Err(e) = sync_dir(dir)
    {
        tracing::warn!(error = %e, "cannot sync the log directory after pruning");
    }
}

impl Wal {
    /// Opens the log for appending after recovery has validated it.
    /// `next_lsn` is the LSN the next record will get.
    pub fn open(dir: &Path, segment_bytes: u64, next_lsn: u64) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segments = list_segments(dir)?;
        match segments.last() {
            Some((_, path)) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_err(path))?;
                let len = file.metadata().map_err(io_err(path))?.len();
                Ok(Wal {
                    dir: dir.into(),
                    segment_bytes,
                    file,
                    path: path.clone(),
                    len,
                    segments,
                    fsyncs: 0,
                    deleter: start_deleter(dir),
                })
            }
            None => {
                let (file, path) = Self::create_segment(dir, next_lsn)?;
                Ok(Wal {
                    dir: dir.into(),
                    segment_bytes,
                    file,
                    path: path.clone(),
                    len: HEADER_LEN,
                    segments: vec![(next_lsn, path)],
                    fsyncs: 0,
                    deleter: start_deleter(dir),
                })
            }
        }
    }

    fn create_segment(dir: &Path, first_lsn: u64) -> Result<(File, PathBuf), WalError> {
        let path = dir.join(segment_name(first_lsn));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&header()).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(dir)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((file, path))
    }

    /// Writes pre-framed records (first LSN `first_lsn`) and fsyncs once.
    /// On failure the segment is cut back to where it was, so that a later
    /// append never follows garbage.
    pub fn append(&mut self, framed: &[u8], first_lsn: u64) -> Result<(), WalError> {
        if self.len >= self.segment_bytes {
            let (file, path) = Self::create_segment(&self.dir, first_lsn)?;
            self.file = file;
            self.path = path.clone();
            self.len = HEADER_LEN;
            self.segments.push((first_lsn, path));
        }
        let result = self
            .file
            .write_all(framed)
            .and_then(|()| self.file.sync_data());
        self.fsyncs += 1;
        match result {
            Ok(()) => {
                self.len += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(io_err(&self.path)(e))
            }
        }
    }

    /// Hands the closed segments whose records all have LSN <= `upto` to
    /// the deleting thread, which runs `then` (if any) once they and every
    /// segment pruned before are gone; returns how many were handed over.
    /// The caller does not wait for the disk.
    pub fn prune(&mut self, upto: u64, then: Option<AfterPrune>) -> usize {
        let mut paths = Vec::new();
        while self.segments.len() >= 2 && self.segments[1].0 <= upto + 1 {
            let (_, path) = self.segments.remove(0);
            paths.push(path);
        }
        let removed = paths.len();
        if removed == 0 && then.is_none() {
            return 0;
        }
        if let Err(std::sync::mpsc::SendError(d)) = self.deleter.send(Deletion { paths, then }) {
            // No deleting thread: do it here rather than never.
            delete_segments(&self.dir, &d.paths);
            if let Some(then) = d.then {
                then();
            }
        }
        removed
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Total bytes of all segments (closed ones measured on disk).
    pub fn total_bytes(&self) -> u64 {
        let closed: u64 = self.segments[..self.segments.len() - 1]
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        closed + self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> (Vec<u64>, SegmentEnd) {
        let mut lsns = Vec::new();
        let end = read_segment(path, |r| {
            lsns.push(r.lsn);
            Ok(())
        })
        .unwrap();
        (lsns, end)
    }

    #[test]
    fn append_read_rotate_prune() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1 << 20, 1).unwrap();
        let payload = vec![7u8; 300_000];
        for lsn in 1..=8u64 {
            let mut buf = Vec::new();
            encode_record(&mut buf, 3, lsn, &payload);
            wal.append(&buf, lsn).unwrap();
        }
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 2, "rotated: {segs:?}");
        let mut all = Vec::new();
        for (_, p) in &segs {
            let (l, end) = records(p);
            assert!(matches!(end, SegmentEnd::Clean));
            all.extend(l);
        }
        assert_eq!(all, (1..=8).collect::<Vec<_>>());
        // Deleted off the caller's thread (the group's writer), and only
        // then is the caller's answer sent.
        let (tx, rx) = std::sync::mpsc::channel();
        let removed = wal.prune(
            8,
            Some(Box::new(move || {
                let name = std::thread::current().name().map(str::to_string);
                tx.send(name).unwrap()
            })),
        );
        assert_eq!(removed, segs.len() - 1);
        assert_eq!(rx.recv().unwrap().as_deref(), Some("tiermail-wal-prune"));
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn torn_tail_and_flipped_byte_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 1 << 20, 1).unwrap();
        let mut good_len = 0;
        for lsn in 1..=3u64 {
            let mut buf = Vec::new();
            encode_record(&mut buf, 1, lsn, format!("record {lsn}").as_bytes());
            wal.append(&buf, lsn).unwrap();
            if lsn == 2 {
                good_len = wal.len;
            }
        }
        let path = list_segments(dir.path()).unwrap()[0].1.clone();
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the last record is a torn tail after record 2.
        for cut in good_len as usize + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (l, end) = records(&path);
            assert_eq!(l, vec![1, 2]);
            assert!(matches!(end, SegmentEnd::Damaged { offset, .. } if offset == good_len));
        }
        // A flipped payload byte in record 2 stops the read before it.
        let mut bad = full.clone();
        bad[good_len as usize - 6] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let (l, end) = records(&path);
        assert_eq!(l, vec![1]);
        assert!(matches!(end, SegmentEnd::Damaged { problem, .. } if problem.contains("checksum")));
    }
}
