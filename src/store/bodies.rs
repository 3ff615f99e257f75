//! Message bodies, kept out of redb in append-only segment files, one copy
//! per distinct body in a storage group.
//!
//! Why: bodies are nearly all of a store's bytes and never change once
//! written. In a B-tree they are copied page by page on every commit and the
//! file never gives the space back; in a segment they are written once,
//! sequentially, and a whole segment can be copied by a backup or deleted
//! when it holds nothing live (the seed's "eliminated at a convenient
//! time"). redb keeps only where each body is, under its BLAKE3 hash, with a
//! count of the messages that refer to it, so a message delivered to several
//! users of a group, COPYed or restored next to itself is stored once.
//!
//! The per-recipient trace headers (`Return-Path:` and the first
//! `Received:`) are split off and kept with the message's reference, so
//! that one mail delivered to a group's users in separate transactions
//! still shares its body.
//!
//! Crash safety: a body is written to its segment before the redb
//! transaction that refers to it commits, and the segments are fsynced
//! before every durable redb commit (the checkpoint), so a durable state
//! never refers to bytes that are not on disk. redb records how far the open
//! segment reaches (`K_BODY_SEGMENT`, `K_BODY_END`) in every transaction
//! that appends; at start-up anything past that point is cut off (the WAL
//! replay that follows writes those bodies again). The byte layout is in
//! docs/formats.md.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::schema::{self, BLOBS, BODY_REFS, K_BODY_END, K_BODY_SEGMENT, LOCATIONS};

pub const SEGMENT_MAGIC: &[u8; 8] = b"TMBODY01";
/// Magic, segment id (u32 LE), 4 reserved bytes.
pub const SEGMENT_HEADER: u64 = 16;
/// Before each body: length (u32 LE), CRC-32C of the body (u32 LE), BLAKE3
/// hash (32 bytes).
pub const ENTRY_HEADER: u64 = 40;
/// Longest trace-header prefix split off a message.
const MAX_PREFIX: usize = 4096;

pub type Hash = [u8; 32];

/// Where one distinct body is and how many messages refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLoc {
    pub segment: u32,
    /// Offset of the entry header in the segment.
    pub offset: u64,
    pub len: u32,
    pub refs: u64,
}

impl BlobLoc {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..4].copy_from_slice(&self.segment.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..].copy_from_slice(&self.refs.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<BlobLoc, StoreError> {
        if b.len() != 24 {
            return Err(StoreError::Format(format!(
                "body location of {} bytes",
                b.len()
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(BlobLoc {
            segment: u32_at(0),
            offset: u64_at(4),
            len: u32_at(12),
            refs: u64_at(16),
        })
    }
}

/// A `locations` value: the body's hash and length.
fn location_value(hash: &Hash, len: u32) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[..32].copy_from_slice(hash);
    v[32..].copy_from_slice(&len.to_le_bytes());
    v
}

pub(super) fn decode_location(b: &[u8]) -> Result<(Hash, u32), StoreError> {
    if b.len() != 36 {
        return Err(StoreError::Format(format!("location of {} bytes", b.len())));
    }
    Ok((
        b[..32].try_into().expect("32 bytes"),
        u32::from_le_bytes(b[32..].try_into().expect("4 bytes")),
    ))
}

/// A message's reference: the body's hash and its own trace headers.
pub fn encode_ref(hash: &Hash, prefix: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + prefix.len());
    v.extend_from_slice(hash);
    v.extend_from_slice(prefix);
    v
}

pub fn decode_ref(b: &[u8]) -> Result<(Hash, &[u8]), StoreError> {
    if b.len() < 32 {
        return Err(StoreError::Format("body reference too short".into()));
    }
    Ok((b[..32].try_into().expect("32 bytes"), &b[32..]))
}

/// Splits `raw` into the trace headers this server prepends (a
/// `Return-Path:` line and one `Received:` header with its continuation
/// lines) and the rest. Only a storage choice: the two parts always join
/// back into `raw`, so a message that merely looks like this loses nothing.
pub fn split_trace(raw: &[u8]) -> (&[u8], &[u8]) {
    let none = (&raw[..0], raw);
    let window = &raw[..raw.len().min(MAX_PREFIX)];
    if !window.starts_with(b"Return-Path: <") {
        return none;
    }
    let line_end =
        |from: usize| memchr::memmem::find(&window[from..], b"\r\n").map(|p| from + p + 2);
    let Some(mut pos) = line_end(0) else {
        return none;
    };
    if !window[pos..].starts_with(b"Received: ") {
        return none;
    }
    loop {
        let Some(next) = line_end(pos) else {
            return none;
        };
        pos = next;
        if !matches!(window.get(pos), Some(b'\t' | b' ')) {
            break;
        }
    }
    raw.split_at(pos)
}

pub(super) fn segment_name(id: u32) -> String {
    format!("{id:08}.body")
}

/// Segment size of stores opened without a configuration (restores).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The segment files beside a redb file: the bodies of `F` live in the
/// directory `F.bodies`, so that a database and its bodies keep one name.
pub fn dir_for(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_os_string();
    name.push(".bodies");
    PathBuf::from(name)
}

/// Renames a database file and its bodies together.
pub fn rename_with(from: &Path, to: &Path) -> std::io::Result<()> {
    let (bf, bt) = (dir_for(from), dir_for(to));
    if bt.exists() {
        std::fs::remove_dir_all(&bt)?;
    }
    if bf.exists() {
        std::fs::rename(&bf, &bt)?;
    }
    std::fs::rename(from, to)
}

/// Removes a database file and its bodies (missing ones are fine).
pub fn remove_with(db_path: &Path) {
    let _ = std::fs::remove_file(db_path);
    let _ = std::fs::remove_dir_all(dir_for(db_path));
}

/// Ids and paths of the segment files in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".body"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        v.push((id, entry.path()));
    }
    v.sort();
    Ok(v)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

struct Writer {
    /// The segment appended to, its id and length.
    open: Option<(u32, Arc<File>, u64)>,
    /// Segments written since the last sync.
    dirty: BTreeMap<u32, Arc<File>>,
    /// A segment file was created since the last sync.
    new_file: bool,
}

/// The segment files of one storage group (or of a group being restored).
pub struct BodyStore {
    dir: PathBuf,
    segment_bytes: u64,
    handles: Mutex<HashMap<u32, Arc<File>>>,
    writer: Mutex<Writer>,
    /// Deleted segments whose open handle is kept a little longer for
    /// readers whose snapshot still names them.
    retired: Mutex<Vec<(u32, std::time::Instant)>>,
    /// Work (a backup) that reads whole snapshots: no segment is deleted
    /// while it runs.
    pins: std::sync::atomic::AtomicUsize,
}

/// Keeps a group's segments from being deleted while it lives.
pub struct Pin<'a>(&'a BodyStore);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.0
            .pins
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for BodyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyStore").field("dir", &self.dir).finish()
    }
}

impl BodyStore {
    /// Opens the segments in `dir` as the redb state in `txn` left them:
    /// bytes past its recorded end, and segments newer than it, were never
    /// part of a durable state and are removed.
    pub fn open(
        dir: &Path,
        txn: &WriteTransaction,
        segment_bytes: u64,
    ) -> Result<BodyStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let seg = u32::try_from(schema::get_meta(txn, K_BODY_SEGMENT)?)
            .map_err(|_| StoreError::Format("body segment id out of range".into()))?;
        let end = schema::get_meta(txn, K_BODY_END)?;
        let mut open = None;
        for (id, path) in list_segments(dir)? {
            if id > seg {
                tracing::info!(file = %path.display(), "removing a body segment no durable state refers to");
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            } else if id == seg {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(&path, e))?;
                let len = f.metadata().map_err(|e| StoreError::io(&path, e))?.len();
                if len < end {
                    return Err(StoreError::Format(format!(
                        "{} holds {len} bytes, the store refers to {end}",
                        path.display()
                    )));
                }
                if len > end {
                    f.set_len(end)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| StoreError::io(&path, e))?;
                }
                open = Some((id, Arc::new(f), end));
            }
        }
        if seg > 0 && open.is_none() {
            let path = dir.join(segment_name(seg));
            return Err(StoreError::Format(format!(
                "{} is missing: the store refers to it",
                path.display()
            )));
        }
        sync_dir(dir)?;
        Ok(BodyStore {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1 << 20),
            handles: Mutex::new(HashMap::new()),
            writer: Mutex::new(Writer {
                open,
                dirty: BTreeMap::new(),
                new_file: false,
            }),
            retired: Mutex::new(Vec::new()),
            pins: Default::default(),
        })
    }

    /// No segment is deleted until the pin is dropped.
    pub fn pin(&self) -> Pin<'_> {
        self.pins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Pin(self)
    }

    pub fn pinned(&self) -> bool {
        self.pins.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Deletes sealed segment `id`, which no durable state refers to any
    /// more; its open handle stays for readers of older snapshots until
    /// [`BodyStore::forget_retired`].
    pub fn retire(&self, id: u32) -> Result<(), StoreError> {
        if self.open_segment() == Some(id) {
            return Err(StoreError::Format(format!("segment {id} is the open one")));
        }
        let path = self.dir.join(segment_name(id));
        // Writable, so that `forget_retired` can cut it down before closing.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(f));
        std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        sync_dir(&self.dir)?;
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, std::time::Instant::now()));
        Ok(())
    }

    /// Closes the handles of segments retired longer than `age` ago; their
    /// space is free once the last handle closes. Each file is first cut
    /// down a few MiB at a time with `pause` between the cuts: freeing
    /// gigabytes of extents at once stalls the file system's journal, and
    /// with it the log's fsyncs.
    pub fn forget_retired(&self, age: std::time::Duration, pause: std::time::Duration) {
        const CUT: u64 = 8 << 20;
        let due: Vec<(u32, Option<Arc<File>>)> = {
            let mut r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            let mut h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            r.retain(|(id, at)| {
                let keep = at.elapsed() < age;
                if !keep {
                    out.push((*id, h.remove(id)));
                }
                keep
            });
            out
        };
        for (_, f) in due {
            let Some(f) = f else { continue };
            let mut len = f.metadata().map_or(0, |m| m.len());
            while len > 0 && !pause.is_zero() {
                len = len.saturating_sub(CUT);
                // Deleted already: nobody reads it; a failed cut only
                // means the space comes back at the close below.
                if f.set_len(len).is_err() {
                    break;
                }
                std::thread::sleep(pause);
            }
            drop(f);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one body and records the new end in `txn`.
    fn append(
        &self,
        txn: &WriteTransaction,
        hash: &Hash,
        body: &[u8],
    ) -> Result<BlobLoc, StoreError> {
        let len = u32::try_from(body.len()).map_err(|_| StoreError::TooLarge(body.len()))?;
        let need = ENTRY_HEADER + u64::from(len);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let rotate = match &w.open {
            None => true,
            Some((_, _, at)) => *at > SEGMENT_HEADER && at + need > self.segment_bytes,
        };
        if rotate {
            self.start_segment(&mut w)?;
        }
        let (id, file, at) = w.open.clone().expect("a segment is open");
        let mut entry = Vec::with_capacity(need as usize);
        entry.extend_from_slice(&len.to_le_bytes());
        entry.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        entry.extend_from_slice(hash);
        entry.extend_from_slice(body);
        file.write_all_at(&entry, at)
            .map_err(|e| StoreError::io(&self.dir.join(segment_name(id)), e))?;
        let end = at + need;
        w.open = Some((id, file.clone(), end));
        w.dirty.entry(id).or_insert(file);
        drop(w);
        let mut meta = txn.open_table(schema::META)?;
        meta.insert(K_BODY_SEGMENT, u64::from(id))?;
        meta.insert(K_BODY_END, end)?;
        Ok(BlobLoc {
            segment: id,
            offset: at,
            len,
            refs: 1,
        })
    }

    /// Creates the next segment and makes it the one appended to.
    fn start_segment(&self, w: &mut Writer) -> Result<(), StoreError> {
        let id = w.open.as_ref().map_or(1, |(id, _, _)| id + 1);
        let path = self.dir.join(segment_name(id));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let mut header = [0u8; SEGMENT_HEADER as usize];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..12].copy_from_slice(&id.to_le_bytes());
        f.write_all_at(&header, 0)
            .map_err(|e| StoreError::io(&path, e))?;
        let f = Arc::new(f);
        w.dirty.insert(id, f.clone());
        w.new_file = true;
        w.open = Some((id, f, SEGMENT_HEADER));
        Ok(())
    }

    /// Seals segment `id` if it is the open one (the next body goes to a
    /// new segment), so that a reclaim may rewrite it. A crash before the
    /// next append leaves the new, empty segment unreferenced: it is removed
    /// at start and `id` is open again.
    pub fn seal(&self, id: u32) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.open.as_ref().is_some_and(|(open, _, _)| *open == id) {
            self.start_segment(&mut w)?;
        }
        Ok(())
    }

    /// Makes every body written so far durable; called before each durable
    /// redb commit.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for (id, f) in std::mem::take(&mut w.dirty) {
            f.sync_data()
                .map_err(|e| StoreError::io(&self.dir.join(segment_name(id)), e))?;
        }
        if std::mem::take(&mut w.new_file) {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Starts write-back of what was written (does not wait) and then
    /// fsyncs it, without holding up appends: bulk writers (a reclaim) call
    /// this so that the next checkpoint's `sync` has little left to do.
    /// The files stay marked for that `sync`, which stays the one that
    /// counts.
    pub fn flush_ahead(&self) -> Result<(), StoreError> {
        let files: Vec<(u32, Arc<File>)> = {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.dirty.iter().map(|(id, f)| (*id, f.clone())).collect()
        };
        for (id, f) in files {
            f.sync_data()
                .map_err(|e| StoreError::io(&self.dir.join(segment_name(id)), e))?;
        }
        Ok(())
    }

    /// Starts write-back of the open segment's dirty pages without
    /// waiting, so that they do not pile up behind the log's fsyncs.
    pub fn start_writeback(&self) {
        use std::os::fd::AsRawFd;
        let open = {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.open.as_ref().map(|(_, f, _)| f.clone())
        };
        if let Some(f) = open {
            // SAFETY: sync_file_range on a file descriptor we own; it only
            // schedules write-back.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }

    /// The open segment's id, if any (reclaim leaves it alone).
    pub fn open_segment(&self) -> Option<u32> {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.open.as_ref().map(|(id, _, _)| *id)
    }

    pub(super) fn handle(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        let mut h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = h.get(&segment) {
            return Ok(f.clone());
        }
        let path = self.dir.join(segment_name(segment));
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            // Reclaimed since the caller's snapshot was taken.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::BodyMoved(path));
            }
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        h.insert(segment, f.clone());
        Ok(f)
    }

    /// The body at `loc`, its length and CRC checked.
    pub fn read(&self, loc: &BlobLoc) -> Result<Vec<u8>, StoreError> {
        let f = self.handle(loc.segment)?;
        let path = || self.dir.join(segment_name(loc.segment));
        let mut head = [0u8; ENTRY_HEADER as usize];
        f.read_exact_at(&mut head, loc.offset)
            .map_err(|e| StoreError::io(&path(), e))?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        if len != loc.len {
            return Err(StoreError::Format(format!(
                "{} at {}: a body of {len} bytes where {} were recorded",
                path().display(),
                loc.offset,
                loc.len
            )));
        }
        let mut body = vec![0u8; len as usize];
        f.read_exact_at(&mut body, loc.offset + ENTRY_HEADER)
            .map_err(|e| StoreError::io(&path(), e))?;
        if crc32c::crc32c(&body) != crc {
            return Err(StoreError::Format(format!(
                "{} at {}: body checksum mismatch",
                path().display(),
                loc.offset
            )));
        }
        Ok(body)
    }
}

/// How much of a sealed segment is still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentUse {
    pub id: u32,
    pub bytes: u64,
    pub live: u64,
    /// The segment appended to (its file may have grown past the snapshot).
    pub open: bool,
}

/// Every segment with its live bytes in the snapshot.
pub fn usage(txn: &ReadTransaction, store: &BodyStore) -> Result<Vec<SegmentUse>, StoreError> {
    let open = store.open_segment();
    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    for row in txn.open_table(LOCATIONS)?.iter()? {
        let (k, v) = row?;
        let (_, len) = decode_location(v.value())?;
        *live.entry(k.value().0).or_default() += ENTRY_HEADER + u64::from(len);
    }
    let mut out = Vec::new();
    for (id, path) in list_segments(&store.dir)? {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        out.push(SegmentUse {
            id,
            bytes,
            live: live.get(&id).copied().unwrap_or(0),
            open: Some(id) == open,
        });
    }
    Ok(out)
}

/// A live body read out of a segment being reclaimed, and where it was.
#[derive(Debug, Clone)]
pub struct Relocation {
    pub hash: Hash,
    pub segment: u32,
    pub offset: u64,
    pub body: Vec<u8>,
}

/// The live bodies of `segment` after offset `after` (from the start when
/// `None`), in order, up to about `max_bytes`.
pub fn live_entries(
    txn: &ReadTransaction,
    store: &BodyStore,
    segment: u32,
    after: Option<u64>,
    max_bytes: usize,
) -> Result<Vec<Relocation>, StoreError> {
    let from = after.map_or(0, |a| a + 1);
    let mut out = Vec::new();
    let mut bytes = 0;
    for row in txn
        .open_table(LOCATIONS)?
        .range((segment, from)..=(segment, u64::MAX))?
    {
        let (k, v) = row?;
        let (hash, len) = decode_location(v.value())?;
        let (_, offset) = k.value();
        let body = store.read(&BlobLoc {
            segment,
            offset,
            len,
            refs: 0,
        })?;
        bytes += body.len();
        out.push(Relocation {
            hash,
            segment,
            offset,
            body,
        });
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Moves each body that is still where it was read into the open segment
/// (in the writer's transaction); returns how many moved.
pub fn relocate(
    txn: &WriteTransaction,
    store: &BodyStore,
    items: &[Relocation],
) -> Result<usize, StoreError> {
    let mut moved = 0;
    let mut blobs = txn.open_table(BLOBS)?;
    let mut locs = txn.open_table(LOCATIONS)?;
    for it in items {
        let Some(old) = blobs
            .get(it.hash.as_slice())?
            .map(|v| BlobLoc::decode(v.value()))
            .transpose()?
        else {
            continue; // freed since it was read
        };
        if (old.segment, old.offset) != (it.segment, it.offset) {
            continue;
        }
        let mut new = store.append(txn, &it.hash, &it.body)?;
        new.refs = old.refs;
        blobs.insert(it.hash.as_slice(), new.encode().as_slice())?;
        locs.remove((old.segment, old.offset))?;
        locs.insert(
            (new.segment, new.offset),
            location_value(&it.hash, new.len).as_slice(),
        )?;
        moved += 1;
    }
    Ok(moved)
}

/// Whether any live body is left in `segment`.
pub fn has_live(txn: &ReadTransaction, segment: u32) -> Result<bool, StoreError> {
    Ok(txn
        .open_table(LOCATIONS)?
        .range((segment, 0)..=(segment, u64::MAX))?
        .next()
        .is_some())
}

/// Stores the body of message (mailbox, uid) and refers the message to it;
/// does nothing when the message already has one (a replayed record).
/// Returns the message's body reference.
pub fn put(
    txn: &WriteTransaction,
    bodies: &BodyStore,
    key: (u64, u32),
    raw: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut refs = txn.open_table(BODY_REFS)?;
    if let Some(r) = refs.get(key)? {
        return Ok(r.value().to_vec());
    }
    let (prefix, body) = split_trace(raw);
    let hash: Hash = *blake3::hash(body).as_bytes();
    let mut blobs = txn.open_table(BLOBS)?;
    let existing = blobs
        .get(hash.as_slice())?
        .map(|v| BlobLoc::decode(v.value()))
        .transpose()?;
    let loc = match existing {
        Some(mut l) => {
            l.refs += 1;
            l
        }
        None => {
            let l = bodies.append(txn, &hash, body)?;
            txn.open_table(LOCATIONS)?.insert(
                (l.segment, l.offset),
                location_value(&hash, l.len).as_slice(),
            )?;
            l
        }
    };
    blobs.insert(hash.as_slice(), loc.encode().as_slice())?;
    let r = encode_ref(&hash, prefix);
    refs.insert(key, r.as_slice())?;
    Ok(r)
}

/// Refers message `to` to the body of message `from` (COPY); false when
/// `from` has no body.
pub fn link(txn: &WriteTransaction, from: (u64, u32), to: (u64, u32)) -> Result<bool, StoreError> {
    let mut refs = txn.open_table(BODY_REFS)?;
    if refs.get(to)?.is_some() {
        return Ok(true);
    }
    let Some(r) = refs.get(from)?.map(|v| v.value().to_vec()) else {
        return Ok(false);
    };
    let (hash, _) = decode_ref(&r)?;
    let mut blobs = txn.open_table(BLOBS)?;
    let mut loc = match blobs.get(hash.as_slice())? {
        Some(v) => BlobLoc::decode(v.value())?,
        None => {
            return Err(StoreError::Format(format!(
                "message {}/{} refers to a body that is not stored",
                from.0, from.1
            )));
        }
    };
    loc.refs += 1;
    blobs.insert(hash.as_slice(), loc.encode().as_slice())?;
    refs.insert(to, r.as_slice())?;
    Ok(true)
}

/// Drops message `key`'s reference; a body no message refers to any more
/// leaves the index (its bytes are dead until its segment is reclaimed).
pub fn unlink(txn: &WriteTransaction, key: (u64, u32)) -> Result<(), StoreError> {
    let Some(r) = txn
        .open_table(BODY_REFS)?
        .remove(key)?
        .map(|v| v.value().to_vec())
    else {
        return Ok(());
    };
    let (hash, _) = decode_ref(&r)?;
    let mut blobs = txn.open_table(BLOBS)?;
    let Some(mut loc) = blobs
        .get(hash.as_slice())?
        .map(|v| BlobLoc::decode(v.value()))
        .transpose()?
    else {
        return Ok(());
    };
    if loc.refs > 1 {
        loc.refs -= 1;
        blobs.insert(hash.as_slice(), loc.encode().as_slice())?;
    } else {
        blobs.remove(hash.as_slice())?;
        txn.open_table(LOCATIONS)?
            .remove((loc.segment, loc.offset))?;
    }
    Ok(())
}

/// Drops the references of every message of mailbox `id`.
pub fn unlink_mailbox(txn: &WriteTransaction, id: u64) -> Result<(), StoreError> {
    let keys: Vec<(u64, u32)> = {
        let refs = txn.open_table(BODY_REFS)?;
        let mut v = Vec::new();
        for row in refs.range((id, 0)..=(id, u32::MAX))? {
            v.push(row?.0.value());
        }
        v
    };
    for k in keys {
        unlink(txn, k)?;
    }
    Ok(())
}

/// The exact bytes of message `key` in the snapshot `txn`.
pub fn read(
    txn: &ReadTransaction,
    bodies: &BodyStore,
    key: (u64, u32),
) -> Result<Option<Vec<u8>>, StoreError> {
    let refs = txn.open_table(BODY_REFS)?;
    let blobs = txn.open_table(BLOBS)?;
    read_with(&refs, &blobs, bodies, key)
}

/// As [`read`], with the tables already open (a reader of many messages).
pub fn read_with(
    refs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    blobs: &impl ReadableTable<&'static [u8], &'static [u8]>,
    bodies: &BodyStore,
    key: (u64, u32),
) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(r) = refs.get(key)? else {
        return Ok(None);
    };
    let (hash, prefix) = decode_ref(r.value())?;
    let loc = match blobs.get(hash.as_slice())? {
        Some(v) => BlobLoc::decode(v.value())?,
        None => {
            return Err(StoreError::Format(format!(
                "message {}/{} refers to a body that is not stored",
                key.0, key.1
            )));
        }
    };
    let body = bodies.read(&loc)?;
    let mut out = Vec::with_capacity(prefix.len() + body.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&body);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_split_is_lossless_and_bounded() {
        let raw = b"Return-Path: <a@b>\r\nReceived: from x ([127.0.0.1])\r\n\tby h (tiermail) with LMTP id 1\r\n\tfor <c@d>; date\r\nSubject: s\r\n\r\nbody\r\n";
        let (p, b) = split_trace(raw);
        assert!(p.ends_with(b"; date\r\n"));
        assert!(b.starts_with(b"Subject: s"));
        for raw in [
            &b"Subject: no trace\r\n\r\n"[..],
            b"Return-Path: <a@b>\r\nSubject: only one\r\n\r\n",
            b"Return-Path: <a@b>\r\nReceived: never ends",
            b"",
        ] {
            assert_eq!(split_trace(raw), (&b""[..], raw));
        }
        let mut long = b"Return-Path: <a@b>\r\nReceived: x\r\n".to_vec();
        long.extend(std::iter::repeat_n(b"\tmore\r\n".as_slice(), 1000).flatten());
        long.extend_from_slice(b"Subject: s\r\n\r\n");
        assert_eq!(
            split_trace(&long).0.len(),
            0,
            "a prefix past the bound is not split"
        );
    }

    #[test]
    fn blob_location_round_trips() {
        let l = BlobLoc {
            segment: 7,
            offset: 1 << 33,
            len: 25 << 20,
            refs: 3,
        };
        assert_eq!(BlobLoc::decode(&l.encode()).unwrap(), l);
        assert!(BlobLoc::decode(&[0; 23]).is_err());
    }
}
