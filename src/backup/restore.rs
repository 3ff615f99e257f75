//! Restore: rebuild storage groups from a backup file, then roll them
//! forward. Image + patch gives each group as it was at the backup's end
//! LSN; the surviving live WAL then brings it to the last acknowledged
//! write, or the log files of later backups (and the live WAL) bring it to a
//! chosen point in time, stopping at the first commit clock past it.
//!
//! Nothing is restored from a damaged file: groups are rebuilt under a
//! temporary name, and only once the whole file has been read and its
//! trailer checked (every block CRC, the block count and whole-file CRC)
//! are they moved into place. The old database, when there is one and the
//! caller said to replace it, is kept beside it under another name.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::BackupError;
use super::format::{Kind, Reader, Skimmer};
use super::marks::{self, GroupEnd, GroupStart, Header};
use crate::store::export::Rebuilt;
use crate::store::group::group_dir;
use crate::store::image::{self, ImageKind};
use crate::store::manifest::Manifest;
use crate::store::record::Record;
use crate::store::replay::Replayer;
use crate::store::wal;

/// Image rows gathered before one write transaction.
const LOAD_BATCH_BYTES: usize = 64 << 20;
/// Largest key or value an image row may declare.
const ROW_LIMIT: usize = 1 << 30;
/// Largest body segment a backup may hold (segments are cut at
/// `store.body_segment_mib`; one body past that gets a segment of its own).
const MAX_SEGMENT: u64 = 16 << 30;

/// One group rebuilt from a backup (not yet rolled forward).
#[derive(Debug)]
pub struct Restored {
    pub id: u32,
    pub path: PathBuf,
    pub image_lsn: u64,
    pub end_lsn: u64,
    pub end_ms: i64,
    pub manifest: Manifest,
}

fn open_db(path: &Path) -> Result<Rebuilt, BackupError> {
    Rebuilt::open(path).map_err(|e| BackupError::Restore(e.to_string()))
}

fn damaged(file: &Path, offset: u64, problem: impl std::fmt::Display) -> BackupError {
    BackupError::Restore(format!(
        "{}: block at byte {offset}: {problem}",
        file.display()
    ))
}

struct Current {
    start: GroupStart,
    db: Option<Rebuilt>,
    table: Option<u8>,
    rows: Vec<u8>,
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    pending_bytes: usize,
    records: Vec<u8>,
    patch_lsn: u64,
    log: Vec<u8>,
    log_next: u64,
    files: bool,
    kind: ImageKind,
}

impl Current {
    fn load_pending(&mut self) -> Result<(), BackupError> {
        if let (Some(db), Some(t)) = (&self.db, self.table)
            && !self.pending.is_empty()
        {
            db.load_rows(self.kind, t, &self.pending)?;
        }
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }
}

/// Reads a whole backup, rebuilding each group `select` gives a database
/// path for (image + patch), and checks everything on the way. On any
/// damage the databases made so far are removed and the spot is named.
/// `progress` is told (bytes read, file size) now and then.
pub fn materialize(
    file: &Path,
    select: &dyn Fn(u32) -> Option<PathBuf>,
    progress: &dyn Fn(u64, u64),
) -> Result<(Header, Vec<Restored>), BackupError> {
    let mut made: Vec<PathBuf> = Vec::new();
    let result = materialize_inner(file, select, progress, &mut made);
    if result.is_err() {
        for p in made {
            Rebuilt::remove(&p);
        }
    }
    result
}

fn materialize_inner(
    file: &Path,
    select: &dyn Fn(u32) -> Option<PathBuf>,
    progress: &dyn Fn(u64, u64),
    made: &mut Vec<PathBuf>,
) -> Result<(Header, Vec<Restored>), BackupError> {
    let f = std::fs::File::open(file).map_err(|e| BackupError::io(file, e))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = Reader::new(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(|e| BackupError::Restore(format!("{}: {e}", file.display())))?;
    let mut header: Option<Header> = None;
    let mut cur: Option<Current> = None;
    let mut done = Vec::new();
    let mut last_report = 0u64;
    loop {
        let block = match reader.next_block() {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => return Err(BackupError::Restore(format!("{}: {e}", file.display()))),
        };
        if reader.offset() - last_report >= 64 << 20 {
            last_report = reader.offset();
            progress(last_report, total);
        }
        let at = block.offset;
        let bad = |p: String| damaged(file, at, p);
        if header.is_none() && block.kind != Kind::Header {
            return Err(bad("the file does not start with a header mark".into()));
        }
        match block.kind {
            Kind::Header => {
                if header.is_some() {
                    return Err(bad("a second header mark".into()));
                }
                let h = Header::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                if let Some(p) = &h.parent {
                    return Err(bad(format!(
                        "an incremental backup (it continues {p}): restore it with the backups it builds on"
                    )));
                }
                header = Some(h);
            }
            Kind::GroupStart => {
                if cur.is_some() {
                    return Err(bad("a group starts before the last one ended".into()));
                }
                let start = GroupStart::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                let kind = header.as_ref().map_or(ImageKind::Inline, |h| h.image);
                let db = match select(start.id) {
                    Some(path) => {
                        made.push(path.clone());
                        Some(
                            Rebuilt::create(&path, kind == ImageKind::Segments, MAX_SEGMENT)
                                .map_err(|e| BackupError::Restore(e.to_string()))?,
                        )
                    }
                    None => None,
                };
                cur = Some(Current {
                    start,
                    db,
                    kind,
                    table: None,
                    rows: Vec::new(),
                    pending: Vec::new(),
                    pending_bytes: 0,
                    records: Vec::new(),
                    patch_lsn: start.image_lsn,
                    log: Vec::new(),
                    log_next: start.log_from,
                    files: false,
                });
            }
            Kind::Image => {
                let c = cur
                    .as_mut()
                    .ok_or_else(|| bad("image rows outside a group".into()))?;
                if c.files || block.payload.is_empty() {
                    return Err(bad("image rows after the group's files mark".into()));
                }
                if c.db.is_none() {
                    continue;
                }
                let t = block.payload[0];
                if c.table != Some(t) {
                    if !c.rows.is_empty() {
                        return Err(bad("an image row is cut off".into()));
                    }
                    c.load_pending()?;
                    c.table = Some(t);
                }
                c.rows.extend_from_slice(&block.payload[1..]);
                let before = c.pending.len();
                image::take_rows(&mut c.rows, ROW_LIMIT, &mut c.pending).map_err(&bad)?;
                c.pending_bytes += c.pending[before..]
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
                if c.pending_bytes >= LOAD_BATCH_BYTES {
                    c.load_pending()?;
                }
            }
            Kind::Segment => {
                let c = cur
                    .as_mut()
                    .ok_or_else(|| bad("segment bytes outside a group".into()))?;
                if c.files || c.kind != ImageKind::Segments || c.table.is_some() {
                    return Err(bad("segment bytes out of place".into()));
                }
                if block.payload.len() < 12 {
                    return Err(bad("a segment block too short for its position".into()));
                }
                if let Some(db) = c.db.as_mut() {
                    let id = u32::from_le_bytes(block.payload[..4].try_into().expect("4 bytes"));
                    let off = u64::from_le_bytes(block.payload[4..12].try_into().expect("8 bytes"));
                    db.write_segment(id, off, &block.payload[12..])
                        .map_err(|e| bad(e.to_string()))?;
                }
            }
            Kind::Files => {
                let c = cur
                    .as_mut()
                    .ok_or_else(|| bad("a files mark outside a group".into()))?;
                if !c.rows.is_empty() {
                    return Err(bad("an image row is cut off".into()));
                }
                c.load_pending()?;
                if let Some(db) = c.db.take() {
                    c.db = Some(db.end_image().map_err(|e| bad(e.to_string()))?);
                }
                marks::decode_files(&block.payload).map_err(|e| bad(e.to_string()))?;
                c.files = true;
            }
            Kind::Log => {
                let c = cur
                    .as_mut()
                    .ok_or_else(|| bad("log records outside a group".into()))?;
                if !c.files {
                    return Err(bad("log records before the files mark".into()));
                }
                c.log.extend_from_slice(&block.payload);
                let mut recs = Vec::new();
                wal::take_framed(&mut c.log, &mut recs).map_err(&bad)?;
                for r in recs {
                    if r.lsn != c.log_next || r.lsn > c.start.image_lsn {
                        return Err(bad(format!(
                            "log record LSN {} where {} was expected",
                            r.lsn, c.log_next
                        )));
                    }
                    Record::decode(r.kind, &r.payload)
                        .map_err(|e| bad(format!("log record {}: {e}", r.lsn)))?;
                    c.log_next += 1;
                }
            }
            Kind::Patch => {
                let c = cur
                    .as_mut()
                    .ok_or_else(|| bad("patch records outside a group".into()))?;
                if !c.files {
                    return Err(bad("patch records before the files mark".into()));
                }
                c.records.extend_from_slice(&block.payload);
                let mut recs = Vec::new();
                wal::take_framed(&mut c.records, &mut recs).map_err(&bad)?;
                match &c.db {
                    Some(db) => {
                        let mut rp = db.replayer(c.patch_lsn, None);
                        for r in recs {
                            rp.feed(r, &|| {
                                format!("{}: patch block at byte {at}", file.display())
                            })?;
                        }
                        rp.flush()?;
                        c.patch_lsn = rp.applied();
                    }
                    None => {
                        for r in recs {
                            if r.lsn != c.patch_lsn + 1 {
                                return Err(bad(format!(
                                    "patch record LSN {} where {} was expected",
                                    r.lsn,
                                    c.patch_lsn + 1
                                )));
                            }
                            Record::decode(r.kind, &r.payload)
                                .map_err(|e| bad(format!("patch record {}: {e}", r.lsn)))?;
                            c.patch_lsn = r.lsn;
                        }
                    }
                }
            }
            Kind::GroupEnd => {
                let mut c = cur
                    .take()
                    .ok_or_else(|| bad("a group end outside a group".into()))?;
                if !c.files || !c.records.is_empty() || !c.log.is_empty() {
                    return Err(bad("the group ends inside its log".into()));
                }
                if c.start.log_from <= c.start.image_lsn && c.log_next != c.start.image_lsn + 1 {
                    return Err(bad(format!(
                        "the log files reach LSN {} but the image is at {}",
                        c.log_next - 1,
                        c.start.image_lsn
                    )));
                }
                let end = GroupEnd::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                if c.patch_lsn != end.end_lsn {
                    return Err(bad(format!(
                        "the patch reaches LSN {} but the group ends at {}",
                        c.patch_lsn, end.end_lsn
                    )));
                }
                if let Some(db) = c.db.take() {
                    db.replayer(end.end_lsn, None).finish(Some(end.end_lsn))?;
                    let path = db.path().to_path_buf();
                    drop(db);
                    done.push(Restored {
                        id: c.start.id,
                        path,
                        image_lsn: c.start.image_lsn,
                        end_lsn: end.end_lsn,
                        end_ms: end.end_ms,
                        manifest: end.manifest,
                    });
                }
            }
            // The reader checks and consumes the trailer itself.
            Kind::Trailer => return Err(bad("a trailer before the end".into())),
        }
    }
    if cur.is_some() {
        return Err(damaged(
            file,
            reader.offset(),
            "the last group has no end mark",
        ));
    }
    let header = header.ok_or_else(|| damaged(file, reader.offset(), "no header mark"))?;
    progress(total, total);
    Ok((header, done))
}

/// The backups `file` builds on, its full backup first and `file` last:
/// an incremental backup names the one it continues, in the same
/// directory.
pub fn chain_of(file: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut chain = vec![(file.to_path_buf(), describe(file)?)];
    loop {
        let (here, d) = chain.last().expect("not empty");
        let Some(parent) = d.header.parent.clone() else {
            break;
        };
        let here_name = here.file_name().map(|n| n.to_string_lossy().into_owned());
        // A bare backup name, older than the one naming it: never a path
        // elsewhere, never a loop.
        if super::target::started_at(Path::new(&parent)).is_none()
            || parent.contains('/')
            || here_name.is_none_or(|h| parent >= h)
        {
            return Err(BackupError::Restore(format!(
                "{} names `{parent}` as the backup it continues: not an older backup's name",
                here.display()
            )));
        }
        let path = dir.join(&parent);
        if !path.exists() {
            return Err(BackupError::Restore(format!(
                "{} continues {parent}, which is not in {}: the chain is broken",
                here.display(),
                dir.display()
            )));
        }
        let older = describe(&path)?;
        // Each group of the incremental starts where the older one ends.
        for (start, _) in &d.groups {
            let end = older.groups.iter().find(|(s, _)| s.id == start.id);
            if end.is_none_or(|(_, e)| e.end_lsn != start.image_lsn) {
                return Err(BackupError::Restore(format!(
                    "{}: group {} starts at LSN {}, which is not where {parent} ends",
                    here.display(),
                    start.id,
                    start.image_lsn
                )));
            }
        }
        chain.push((path, older));
    }
    Ok(chain.into_iter().rev().map(|(p, _)| p).collect())
}

/// As [`materialize`], for a chain from [`chain_of`]: its full backup
/// rebuilt, then the log of each incremental one applied, every checksum
/// of every file checked. The result is the state the last file ends at.
pub fn materialize_chain(
    chain: &[PathBuf],
    select: &dyn Fn(u32) -> Option<PathBuf>,
    progress: &dyn Fn(u64, u64),
) -> Result<(Header, Vec<Restored>), BackupError> {
    let first = chain
        .first()
        .ok_or_else(|| BackupError::Restore("no backup to restore".into()))?;
    let (header, mut restored) = materialize(first, select, progress)?;
    if chain.len() == 1 {
        return Ok((header, restored));
    }
    let result = (|| {
        let mut dbs = Vec::with_capacity(restored.len());
        for r in &restored {
            dbs.push(open_db(&r.path)?);
        }
        let mut rps: Vec<Replayer> = dbs
            .iter()
            .zip(&restored)
            .map(|(db, r)| db.replayer(r.end_lsn, None))
            .collect();
        for pair in chain.windows(2) {
            roll_incremental(&pair[1], &pair[0], &mut restored, &mut rps)?;
        }
        for (rp, r) in rps.into_iter().zip(&restored) {
            rp.finish(Some(r.end_lsn))?;
        }
        Ok::<(), BackupError>(())
    })();
    if let Err(e) = result {
        for r in &restored {
            Rebuilt::remove(&r.path);
        }
        return Err(e);
    }
    Ok((header, restored))
}

/// Applies incremental backup `file`, which must continue `parent`, to the
/// groups restored so far.
fn roll_incremental(
    file: &Path,
    parent: &Path,
    restored: &mut [Restored],
    rps: &mut [Replayer],
) -> Result<(), BackupError> {
    let f = std::fs::File::open(file).map_err(|e| BackupError::io(file, e))?;
    let mut reader = Reader::new(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(|e| BackupError::Restore(format!("{}: {e}", file.display())))?;
    let parent_name = parent.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut cur: Option<usize> = None;
    let mut in_group = false;
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut header = false;
    while let Some(block) = reader
        .next_block()
        .map_err(|e| BackupError::Restore(format!("{}: {e}", file.display())))?
    {
        let at = block.offset;
        let bad = |p: String| damaged(file, at, p);
        match block.kind {
            Kind::Header => {
                let h = Header::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                if header || h.parent != parent_name {
                    return Err(bad(format!("it does not continue {}", parent.display())));
                }
                header = true;
            }
            _ if !header => return Err(bad("the file does not start with a header mark".into())),
            Kind::GroupStart => {
                if in_group {
                    return Err(bad("a group starts before the last one ended".into()));
                }
                let st = GroupStart::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                in_group = true;
                cur = restored.iter().position(|r| r.id == st.id);
                if let Some(i) = cur {
                    if st.image_lsn != restored[i].end_lsn {
                        return Err(bad(format!(
                            "group {} continues from LSN {}, the backups before it end at {}",
                            st.id, st.image_lsn, restored[i].end_lsn
                        )));
                    }
                    seen.push(st.id);
                }
            }
            Kind::Files if in_group => {
                marks::decode_files(&block.payload).map_err(|e| bad(e.to_string()))?;
            }
            Kind::Patch if in_group => {
                buf.extend_from_slice(&block.payload);
                let mut recs = Vec::new();
                wal::take_framed(&mut buf, &mut recs).map_err(&bad)?;
                if let Some(i) = cur {
                    for r in recs {
                        rps[i].feed(r, &|| {
                            format!("{}: patch block at byte {at}", file.display())
                        })?;
                    }
                }
            }
            Kind::GroupEnd if in_group => {
                let end = GroupEnd::decode(&block.payload).map_err(|e| bad(e.to_string()))?;
                if !buf.is_empty() {
                    return Err(bad("the group ends inside its log".into()));
                }
                if let Some(i) = cur.take() {
                    if rps[i].applied() != end.end_lsn {
                        return Err(bad(format!(
                            "the log reaches LSN {} but the group ends at {}",
                            rps[i].applied(),
                            end.end_lsn
                        )));
                    }
                    restored[i].end_lsn = end.end_lsn;
                    restored[i].end_ms = end.end_ms;
                    restored[i].manifest = end.manifest;
                }
                in_group = false;
            }
            k => {
                return Err(bad(format!(
                    "a {k:?} block has no place in an incremental backup"
                )));
            }
        }
    }
    if in_group {
        return Err(damaged(
            file,
            reader.offset(),
            "the last group has no end mark",
        ));
    }
    for r in restored.iter() {
        if !seen.contains(&r.id) {
            return Err(BackupError::Restore(format!(
                "{} holds no log of storage group {}",
                file.display(),
                r.id
            )));
        }
    }
    Ok(())
}

/// What `describe` finds in a backup without reading its bulk.
#[derive(Debug, Clone)]
pub struct Described {
    pub header: Header,
    /// Start mark and end mark of every group.
    pub groups: Vec<(GroupStart, GroupEnd)>,
}

impl Described {
    /// When the last group's state was taken (unix ms).
    pub fn end_ms(&self) -> i64 {
        self.groups.iter().map(|(_, e)| e.end_ms).max().unwrap_or(0)
    }
}

/// Reads a backup's marks, seeking past images and logs.
pub fn describe(file: &Path) -> Result<Described, BackupError> {
    let f = std::fs::File::open(file).map_err(|e| BackupError::io(file, e))?;
    let err =
        |e: super::format::FormatError| BackupError::Restore(format!("{}: {e}", file.display()));
    let mut s = Skimmer::new(std::io::BufReader::new(f)).map_err(err)?;
    let mut header = None;
    let mut groups = Vec::new();
    let mut start = None;
    while let Some(b) = s
        .next_block(|k| matches!(k, Kind::Header | Kind::GroupStart | Kind::GroupEnd))
        .map_err(err)?
    {
        let bad = |e: crate::store::codec::DecodeError| damaged(file, b.offset, e);
        match b.kind {
            Kind::Header => header = Some(Header::decode(&b.payload).map_err(bad)?),
            Kind::GroupStart => start = Some(GroupStart::decode(&b.payload).map_err(bad)?),
            Kind::GroupEnd => {
                let end = GroupEnd::decode(&b.payload).map_err(bad)?;
                let st = start
                    .take()
                    .ok_or_else(|| damaged(file, b.offset, "a group end outside a group"))?;
                groups.push((st, end));
            }
            _ => {}
        }
    }
    Ok(Described {
        header: header.ok_or_else(|| damaged(file, 0, "no header mark"))?,
        groups,
    })
}

/// Feeds the log and patch records of group `id` in a later backup.
fn feed_backup_logs(file: &Path, id: u32, rp: &mut Replayer) -> Result<(), BackupError> {
    let f = std::fs::File::open(file).map_err(|e| BackupError::io(file, e))?;
    let err =
        |e: super::format::FormatError| BackupError::Restore(format!("{}: {e}", file.display()));
    let mut s = Skimmer::new(std::io::BufReader::new(f)).map_err(err)?;
    let mut in_group = false;
    let mut buf = Vec::new();
    while let Some(b) = s
        .next_block(|k| {
            matches!(
                k,
                Kind::GroupStart | Kind::GroupEnd | Kind::Log | Kind::Patch
            )
        })
        .map_err(err)?
    {
        match b.kind {
            Kind::GroupStart => {
                let st = GroupStart::decode(&b.payload).map_err(|e| damaged(file, b.offset, e))?;
                in_group = st.id == id;
            }
            Kind::GroupEnd => in_group = false,
            Kind::Log | Kind::Patch if in_group => {
                buf.extend_from_slice(&b.payload);
                let mut recs = Vec::new();
                wal::take_framed(&mut buf, &mut recs).map_err(|e| damaged(file, b.offset, e))?;
                let at = b.offset;
                for r in recs {
                    rp.feed(r, &|| format!("{}: block at byte {at}", file.display()))?;
                }
                if rp.stopped() {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Feeds the records of a live WAL directory (a torn tail ends it).
fn feed_live_wal(dir: &Path, rp: &mut Replayer) -> Result<(), BackupError> {
    for (_, path) in wal::list_segments(dir)? {
        if rp.stopped() {
            break;
        }
        let mut failed = None;
        wal::read_segment(&path, |r| {
            if failed.is_none()
                && let Err(e) = rp.feed(r, &|| path.display().to_string())
            {
                failed = Some(e);
            }
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
    }
    Ok(())
}

/// What `restore` asks for.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub file: PathBuf,
    /// Only this group (all groups of the backup when `None`).
    pub group: Option<u32>,
    /// Point in time: roll forward only to here, with the logs of these
    /// later backups (oldest first) and then the live WAL.
    pub until: Option<DateTime<Utc>>,
    pub later: Vec<PathBuf>,
    /// Replace groups that exist in the data directory.
    pub force: bool,
}

impl Options {
    /// All of `file` into `data_dir`, rolled forward with the live log
    /// found there; nothing existing is replaced.
    pub fn new(data_dir: impl Into<PathBuf>, file: impl Into<PathBuf>) -> Options {
        Options {
            data_dir: data_dir.into(),
            file: file.into(),
            group: None,
            until: None,
            later: Vec::new(),
            force: false,
        }
    }
}

/// One group's restore, for the report.
#[derive(Debug, Clone)]
pub struct GroupReport {
    pub id: u32,
    pub end_lsn: u64,
    pub reached_lsn: u64,
    pub replayed: u64,
    pub reached_ms: Option<i64>,
}

/// Restores groups of `opts.file` into `opts.data_dir` and rolls them
/// forward. The server must not be running on that data directory.
pub fn restore(
    opts: &Options,
    progress: &dyn Fn(u64, u64),
) -> Result<Vec<GroupReport>, BackupError> {
    let described = describe(&opts.file)?;
    if let Some(g) = opts.group
        && !described.groups.iter().any(|(s, _)| s.id == g)
    {
        return Err(BackupError::Restore(format!(
            "{} holds no storage group {g}",
            opts.file.display()
        )));
    }
    let chosen: Vec<u32> = described
        .groups
        .iter()
        .map(|(s, _)| s.id)
        .filter(|id| opts.group.is_none_or(|g| g == *id))
        .collect();
    let mut live = Vec::new();
    for id in &chosen {
        let db = group_dir(&opts.data_dir, *id).join("store.redb");
        if db.exists() {
            live.push(db);
        }
    }
    if !live.is_empty() && !opts.force {
        return Err(BackupError::Restore(format!(
            "the data directory already holds {}; restore with --force to replace it (the old files are kept beside it)",
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let temp = |id: u32| group_dir(&opts.data_dir, id).join("store.redb.restoring");
    for id in &chosen {
        let dir = group_dir(&opts.data_dir, *id);
        std::fs::create_dir_all(dir.join("wal")).map_err(|e| BackupError::io(&dir, e))?;
    }
    let chain = chain_of(&opts.file)?;
    let (_, restored) = materialize_chain(
        &chain,
        &|id| chosen.contains(&id).then(|| temp(id)),
        progress,
    )?;
    let mut reports = Vec::new();
    let result = (|| {
        for r in &restored {
            let gdir = group_dir(&opts.data_dir, r.id);
            let db = open_db(&r.path)?;
            let report = match opts.until {
                None => {
                    let rec = db.recover(&gdir.join("wal")).map_err(|e| {
                        BackupError::Restore(format!(
                            "group {}: rolling forward with the live log failed: {e}",
                            r.id
                        ))
                    })?;
                    GroupReport {
                        id: r.id,
                        end_lsn: r.end_lsn,
                        reached_lsn: rec.next_lsn - 1,
                        replayed: rec.replayed,
                        reached_ms: None,
                    }
                }
                Some(t) => {
                    let mut rp = db.replayer(r.end_lsn, Some(t.timestamp_millis()));
                    for later in &opts.later {
                        feed_backup_logs(later, r.id, &mut rp)?;
                    }
                    feed_live_wal(&gdir.join("wal"), &mut rp)?;
                    let (reached, replayed, clock) = rp.finish(None)?;
                    GroupReport {
                        id: r.id,
                        end_lsn: r.end_lsn,
                        reached_lsn: reached,
                        replayed,
                        reached_ms: clock,
                    }
                }
            };
            reports.push(report);
        }
        Ok::<(), BackupError>(())
    })();
    if let Err(e) = result {
        for r in &restored {
            Rebuilt::remove(&r.path);
        }
        return Err(e);
    }
    crate::failpoint::hit("restore-before-rename");
    // Everything is rebuilt: move it into place.
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    for r in &restored {
        let gdir = group_dir(&opts.data_dir, r.id);
        let db = gdir.join("store.redb");
        let io = |e| BackupError::io(&gdir, e);
        if db.exists() {
            Rebuilt::rename(&db, &gdir.join(format!("store.redb.replaced-{stamp}"))).map_err(io)?;
        }
        if opts.until.is_some() {
            // The live log goes on past the chosen time: it must not be
            // replayed at the next start.
            let wal_dir = gdir.join("wal");
            if wal::list_segments(&wal_dir)?.is_empty() {
                let _ = std::fs::remove_dir(&wal_dir);
            } else {
                std::fs::rename(&wal_dir, gdir.join(format!("wal.replaced-{stamp}")))
                    .map_err(io)?;
            }
            std::fs::create_dir_all(&wal_dir).map_err(io)?;
        }
        Rebuilt::rename(&r.path, &db).map_err(io)?;
        std::fs::File::open(&gdir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(reports)
}

/// The backups of `dir` to restore `until`: the newest one that ended by
/// then, and every later one (for their logs), oldest first.
pub fn point_in_time_chain(
    dir: &Path,
    until: DateTime<Utc>,
) -> Result<(PathBuf, Vec<PathBuf>), BackupError> {
    let all = super::target::backups(dir).map_err(|e| BackupError::io(dir, e))?;
    let mut base = None;
    for (i, p) in all.iter().enumerate() {
        if describe(p)?.end_ms() <= until.timestamp_millis() {
            base = Some(i);
        }
    }
    let i = base.ok_or_else(|| {
        BackupError::Restore(format!(
            "no backup in {} ends before {}",
            dir.display(),
            until.format("%F %T UTC")
        ))
    })?;
    Ok((all[i].clone(), all[i + 1..].to_vec()))
}
