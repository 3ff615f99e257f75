//! What a backup copies of a storage group's body segments, and how a
//! restore puts them back. Why whole segments and not message by message:
//! a sealed segment never changes, so a full backup and a restore move
//! segment bytes sequentially, at the speed of the disks, and the restored
//! redb indexes (copied as rows) point into the very same offsets. Only
//! this module and `bodies` open segment files.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::ReadTransaction;

use super::StoreError;
use super::bodies::{self, BodyStore, SEGMENT_HEADER, SEGMENT_MAGIC};
use super::schema::{self, K_BODY_END, K_BODY_SEGMENT, LOCATIONS};

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
