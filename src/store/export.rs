//! The store's export/import API: what a backup reads of a storage group
//! (`Snapshot`: one MVCC snapshot's rows, body segment spans and bytes,
//! manifest) and how a restore rebuilds one (`Rebuilt`), so that nothing
//! outside `store` opens redb or segment files (clippy.toml). Why whole
//! segments and not message by message: a sealed segment never changes, so
//! a full backup and a restore move segment bytes sequentially, at the
//! speed of the disks, and the restored redb indexes (copied as rows)
//! point into the very same offsets.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction};

use super::StoreError;
use super::bodies::{self, BodyStore, SEGMENT_HEADER, SEGMENT_MAGIC};
use super::group::Group;

use super::message::MessageMeta;
use super::replay::Replayer;
use super::schema::{self, K_BODY_END, K_BODY_SEGMENT, LOCATIONS};
use super::{image, manifest, migrate, recovery};

pub use super::digest::MailboxDigest;
pub use super::image::ImageKind;
pub use super::manifest::{Manifest, UserDigest, differences};

/// The log segments in a group's `wal` directory: (first LSN, path), in
/// order (for tools and tests that look at the files).
pub fn wal_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    Ok(super::wal::list_segments(dir)?)
}

/// The LSNs of the records in one log segment, up to any damage.
pub fn wal_lsns(path: &Path) -> Result<Vec<u64>, StoreError> {
    let mut v = Vec::new();
    super::wal::read_segment(path, |r| {
        v.push(r.lsn);
        Ok(())
    })?;
    Ok(v)
}

/// The body segment files beside the redb file `db_path`: (id, path).
pub fn body_segments(db_path: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    bodies::list_segments(&bodies::dir_for(db_path))
}

/// One segment as a snapshot refers to it: bytes `0..len` of segment `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    pub id: u32,
    pub len: u64,
}

/// The segments the snapshot `txn` refers to (every one holding a body
/// it names, and the open one), with the length of each that belongs to
/// the snapshot: the open segment's recorded end, a sealed one's file.
pub fn spans(txn: &ReadTransaction, store: &BodyStore) -> Result<Vec<SegmentSpan>, StoreError> {
    let meta = txn.open_table(schema::META)?;
    let get = |k| -> Result<u64, StoreError> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    let open = u32::try_from(get(K_BODY_SEGMENT)?)
        .map_err(|_| StoreError::Format("body segment id out of range".into()))?;
    let end = get(K_BODY_END)?;
    let mut ids = BTreeSet::new();
    let locs = txn.open_table(LOCATIONS)?;
    // One range probe per segment, not a walk over every body.
    let mut from = 0u32;
    while let Some(row) = locs.range((from, 0)..)?.next() {
        let id = row?.0.value().0;
        ids.insert(id);
        match id.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    if open > 0 {
        ids.insert(open);
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let len = if id == open {
            end
        } else {
            let f = store.handle(id)?;
            f.metadata()
                .map_err(|e| StoreError::io(&store.dir().join(bodies::segment_name(id)), e))?
                .len()
        };
        out.push(SegmentSpan { id, len });
    }
    Ok(out)
}

/// Fills `buf` with the bytes of segment `id` from `offset`.
pub fn read_span(
    store: &BodyStore,
    id: u32,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), StoreError> {
    store
        .handle(id)?
        .read_exact_at(buf, offset)
        .map_err(|e| StoreError::io(&store.dir().join(bodies::segment_name(id)), e))
}

/// Writes the segments of a group being restored, beside its new redb file.
pub struct SegmentImporter {
    dir: PathBuf,
    files: HashMap<u32, File>,
    /// Largest segment accepted (a damaged or hostile offset is refused,
    /// not turned into a huge sparse file).
    max_len: u64,
}

impl SegmentImporter {
    pub fn new(db_path: &Path, max_len: u64) -> Result<SegmentImporter, StoreError> {
        let dir = bodies::dir_for(db_path);
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        Ok(SegmentImporter {
            dir,
            files: HashMap::new(),
            max_len,
        })
    }

    /// Writes `bytes` at `offset` of segment `id`.
    pub fn write(&mut self, id: u32, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        offset
            .checked_add(bytes.len() as u64)
            .filter(|e| *e <= self.max_len)
            .ok_or_else(|| {
                StoreError::Format(format!(
                    "segment {id}: bytes up to offset {offset}+{} exceed the {} bytes a segment may hold",
                    bytes.len(),
                    self.max_len
                ))
            })?;
        if id == 0 {
            return Err(StoreError::Format("segment id 0 does not exist".into()));
        }
        let path = self.dir.join(bodies::segment_name(id));
        let f = match self.files.entry(id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(&path, e))?,
            ),
        };
        f.write_all_at(bytes, offset)
            .map_err(|e| StoreError::io(&path, e))
    }

    /// Checks that every segment written starts with its own header, then
    /// makes them durable.
    pub fn finish(self) -> Result<(), StoreError> {
        for (id, f) in &self.files {
            let path = self.dir.join(bodies::segment_name(*id));
            let mut head = [0u8; SEGMENT_HEADER as usize];
            f.read_exact_at(&mut head, 0)
                .map_err(|e| StoreError::io(&path, e))?;
            if &head[..8] != SEGMENT_MAGIC || head[8..12] != id.to_le_bytes() {
                return Err(StoreError::Format(format!(
                    "{}: not the body segment {id} it was restored as",
                    path.display()
                )));
            }
            f.sync_all().map_err(|e| StoreError::io(&path, e))?;
        }
        bodies::sync_dir(&self.dir)
    }
}

/// One group's state as a backup reads it: a single MVCC snapshot (writers
/// never wait) and the group's segments.
pub struct Snapshot<'a> {
    txn: ReadTransaction,
    bodies: &'a BodyStore,
}

impl Group {
    /// Keeps every segment of the group from being deleted while the pin
    /// lives (a backup holds one while it reads snapshots).
    pub fn pin_segments(&self) -> bodies::Pin<'_> {
        self.bodies.pin()
    }

    /// A snapshot of the group for a backup. Pin the segments first
    /// ([`Group::pin_segments`]) so that none it names is reclaimed meanwhile.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        use redb::ReadableDatabase;
        Ok(Snapshot {
            txn: self.db().begin_read()?,
            bodies: &self.bodies,
        })
    }
}

impl Snapshot<'_> {
    /// The LSN of the last record the snapshot holds.
    pub fn applied_lsn(&self) -> Result<u64, StoreError> {
        Ok(self
            .txn
            .open_table(schema::META)?
            .get(schema::K_APPLIED_LSN)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Fails when the database holds a table an image would leave out.
    pub fn check_tables(&self) -> Result<(), StoreError> {
        image::check_tables(&self.txn)
    }

    /// The segments the snapshot refers to ([`spans`]).
    pub fn spans(&self) -> Result<Vec<SegmentSpan>, StoreError> {
        spans(&self.txn, self.bodies)
    }

    /// Bytes of segment `id` from `offset` ([`read_span`]).
    pub fn read_span(&self, id: u32, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        read_span(self.bodies, id, offset, buf)
    }

    /// Every row of image table `index`, in key order.
    pub fn dump_table(&self, index: u8, sink: &mut image::RowSink<'_>) -> Result<(), StoreError> {
        image::dump_table(&self.txn, index, sink)
    }

    /// The per-user digests of the snapshot, from the mailbox digests.
    pub fn manifest(&self) -> Result<Manifest, StoreError> {
        manifest::recorded(&self.txn)
    }
}

/// A group being rebuilt from a backup in a file of its own (a restore, a
/// drill, a one-user restore), never one that serves.
pub struct Rebuilt {
    path: PathBuf,
    db: Database,
    bodies: BodyStore,
    segments: Option<SegmentImporter>,
}

/// Page cache of a database being rebuilt.
const REBUILD_CACHE: usize = 256 << 20;

impl Rebuilt {
    /// A new, empty group at `path` (anything there before is removed);
    /// `segments` when the backup copies body segments whole, of at most
    /// `max_segment` bytes each.
    pub fn create(path: &Path, segments: bool, max_segment: u64) -> Result<Rebuilt, StoreError> {
        bodies::remove_with(path);
        let mut r = Rebuilt::open(path)?;
        if segments {
            r.segments = Some(SegmentImporter::new(path, max_segment)?);
        }
        Ok(r)
    }

    /// The group rebuilt at `path` before.
    pub fn open(path: &Path) -> Result<Rebuilt, StoreError> {
        let (db, bodies) = migrate::open_path(path, REBUILD_CACHE)
            .map_err(|e| StoreError::Format(format!("{}: {e}", path.display())))?;
        Ok(Rebuilt {
            path: path.to_path_buf(),
            db,
            bodies,
            segments: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes segment bytes of the image (only while it is loaded).
    pub fn write_segment(&mut self, id: u32, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        match self.segments.as_mut() {
            Some(s) => s.write(id, offset, bytes),
            None => Err(StoreError::Format(
                "segment bytes where the image holds none".into(),
            )),
        }
    }

    /// Loads image rows of table `index` in one non-durable transaction.
    pub fn load_rows(
        &self,
        kind: image::ImageKind,
        index: u8,
        rows: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        image::load_rows(&txn, &self.bodies, kind, index, rows)?;
        txn.commit()?;
        Ok(())
    }

    /// The image is loaded: its segments are made durable and taken by the
    /// body store as its own (log records replayed next append to them).
    pub fn end_image(mut self) -> Result<Rebuilt, StoreError> {
        let Some(imp) = self.segments.take() else {
            return Ok(self);
        };
        imp.finish()?;
        crate::failpoint::hit("restore-after-segments");
        let path = self.path.clone();
        // Closed before it is opened again: one handle per file.
        drop(self);
        Rebuilt::open(&path)
    }

    /// Applies log records on top of the state at `applied`.
    pub fn replayer(&self, applied: u64, until_ms: Option<i64>) -> Replayer<'_> {
        Replayer::new(&self.db, &self.bodies, applied, until_ms)
    }

    /// Rolls forward with the log in `wal_dir` as a start-up would.
    pub fn recover(&self, wal_dir: &Path) -> Result<recovery::RecoveryReport, StoreError> {
        recovery::recover(&self.db, &self.bodies, wal_dir)
    }

    /// Per-user digests recomputed from every message and body (each read
    /// and checked), as an image of `kind` recorded them: what a drill
    /// compares.
    pub fn manifest_verified(&self, kind: image::ImageKind) -> Result<Manifest, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        match kind {
            image::ImageKind::Inline => manifest::compute(&txn, &self.bodies),
            image::ImageKind::Segments => manifest::compute_verified(&txn, &self.bodies),
        }
    }

    /// `user`'s mailboxes: name, id and every UID.
    pub fn mailboxes_of(&self, user: &str) -> Result<Vec<(String, u64, Vec<u32>)>, StoreError> {
        use redb::ReadableDatabase;
        let prefix = schema::mailbox_key(user, "");
        let txn = self.db.begin_read()?;
        let boxes = txn.open_table(schema::MAILBOXES)?;
        let msgs = txn.open_table(schema::MESSAGES)?;
        let mut v = Vec::new();
        for row in boxes.range(prefix.as_str()..)? {
            let (k, val) = row?;
            let Some(name) = k.value().strip_prefix(prefix.as_str()).map(str::to_string) else {
                break;
            };
            let info = schema::MailboxInfo::from_bytes(val.value())?;
            let mut uids = Vec::new();
            for m in msgs.range((info.id, 0)..=(info.id, u32::MAX))? {
                uids.push(m?.0.value().1);
            }
            v.push((name, info.id, uids));
        }
        Ok(v)
    }

    /// Metadata and exact bytes of some messages of mailbox `id` (those
    /// that exist).
    pub fn messages(
        &self,
        id: u64,
        uids: &[u32],
    ) -> Result<Vec<(MessageMeta, Vec<u8>)>, StoreError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let metas = txn.open_table(schema::MESSAGES)?;
        let refs = txn.open_table(schema::BODY_REFS)?;
        let blobs = txn.open_table(schema::BLOBS)?;
        let mut v = Vec::new();
        for uid in uids {
            let Some(m) = metas.get((id, *uid))? else {
                continue;
            };
            let Some(raw) = bodies::read_with(&refs, &blobs, &self.bodies, (id, *uid))? else {
                continue;
            };
            v.push((MessageMeta::from_bytes(m.value())?, raw));
        }
        Ok(v)
    }

    /// Removes a rebuilt group's files.
    pub fn remove(path: &Path) {
        bodies::remove_with(path);
    }

    /// Moves a rebuilt group's files (database and segments) to `to`.
    pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
        bodies::rename_with(from, to)
    }
}
