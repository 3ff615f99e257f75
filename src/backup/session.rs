//! One backup, taken while the server serves. Per storage group: note the
//! LSN the previous backup reached (the WAL above it is kept for us), take a
//! redb read transaction and stream every table (the image, consistent at
//! the LSN it saw, S); then note the LSN reached meanwhile (E) and digest
//! that state per user; then stream the log records from the previous
//! backup to S (log files, for point-in-time restore) and S to E (the patch
//! file). Image + patch restores the group as it was at E. Writers are never
//! stopped: the image is an MVCC snapshot and the log is only read.
//!
//! The WAL is append-only and its segments are kept until a backup holds
//! them (`store::group`), so the records after S stay readable until this
//! backup succeeds and tells each group how far it reached.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::BackupError;
use super::format::{Kind, MAX_BLOCK, Writer};
use super::marks::{FileEntry, GroupEnd, GroupStart, Header, Role, encode_files};
use super::restore;
use super::target::{self, Mirrors, Outcome};
use crate::config::BackupConfig;
use crate::store::export::Snapshot;
use crate::store::image::ImageKind;
use crate::store::wal;
use crate::store::{Group, Store};

/// Bytes gathered before a block is written (well under `MAX_BLOCK`).
const CHUNK: usize = 256 << 10;

/// Counters of a backup in progress, for `tiermail status`.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub groups_done: AtomicU64,
    /// Set to stop the backup at the next block (server shutdown).
    pub cancel: AtomicBool,
}

/// What one backup did.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    /// The backup an incremental one continues (`None`: a full backup).
    pub parent: Option<String>,
    pub bytes: u64,
    pub secs: f64,
    /// (group, image LSN, end LSN) of every group.
    pub groups: Vec<(u32, u64, u64)>,
    pub targets: Vec<Outcome>,
}

impl Report {
    pub fn written(&self) -> Vec<&PathBuf> {
        self.targets
            .iter()
            .filter_map(|o| o.result.as_ref().ok())
            .collect()
    }

    pub fn failures(&self) -> Vec<&String> {
        self.targets
            .iter()
            .filter_map(|o| o.result.as_ref().err())
            .collect()
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} ({}, {} bytes, {} groups, {:.1}s, {:.1} MB/s) written to {} of {} targets",
            self.name,
            match &self.parent {
                Some(p) => format!("incremental on {p}"),
                None => "full".into(),
            },
            self.bytes,
            self.groups.len(),
            self.secs,
            self.bytes as f64 / self.secs.max(1e-6) / 1e6,
            self.written().len(),
            self.targets.len()
        );
        for f in self.failures() {
            s.push_str(&format!("; {f}"));
        }
        s
    }
}

/// Keeps a backup out of the users' way: after each block written while
/// sessions were reading or writing, the backup pauses for a few times as
/// long as the block took, so that on a busy server it takes a small share
/// of the CPU and disk (and on an idle one runs flat out). Scheduling
/// priority alone does not do it: on small virtual machines a busy
/// low-priority thread still doubles the latency of others.
pub struct Pacer<'a> {
    store: &'a Store,
    seen: u64,
    since: Instant,
    /// Pause = this many times the work since the last pause.
    factor: u32,
}

impl<'a> Pacer<'a> {
    pub fn new(store: &'a Store) -> Pacer<'a> {
        Pacer {
            store,
            seen: store.activity(),
            since: Instant::now(),
            factor: 8,
        }
    }

    /// Called after each block handed to `sink`. While sessions are active
    /// the two halves take turns (the writer drains before the reader goes
    /// on) instead of taking both cores, then both pause.
    fn pace(&mut self, sink: &Sink) {
        let now = self.store.activity();
        if now != self.seen {
            while !sink.tx.is_empty() && !sink.closed.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let worked = self.since.elapsed();
            std::thread::sleep((worked * self.factor).max(Duration::from_millis(1)));
            self.seen = self.store.activity();
        }
        self.since = Instant::now();
    }
}

/// The reading half's end of the pipe to the writing thread, which
/// checksums and writes the blocks: reading the store and writing the file
/// overlap.
struct Sink {
    tx: crossbeam_channel::Sender<(Kind, Vec<u8>)>,
    /// Set when the writing half has stopped (blocks left in the pipe then
    /// stay there).
    closed: Arc<AtomicBool>,
}

/// Sets its flag when dropped, however the thread holding it ends.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Sink {
    fn block(&self, kind: Kind, payload: Vec<u8>) -> Result<(), BackupError> {
        self.tx.send((kind, payload)).map_err(|_| BackupError::Pipe)
    }
}

/// Gathers bytes and writes them out as blocks of one kind.
struct Chunker<'a, 'p> {
    w: &'a Sink,
    kind: Kind,
    prefix: Option<u8>,
    buf: Vec<u8>,
    progress: &'a Progress,
    pacer: &'a mut Pacer<'p>,
}

impl<'a, 'p> Chunker<'a, 'p> {
    fn new(
        w: &'a Sink,
        kind: Kind,
        prefix: Option<u8>,
        progress: &'a Progress,
        pacer: &'a mut Pacer<'p>,
    ) -> Self {
        let mut buf = Vec::with_capacity(CHUNK + 64);
        buf.extend(prefix);
        Chunker {
            w,
            kind,
            prefix,
            buf,
            progress,
            pacer,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), BackupError> {
        let cap = MAX_BLOCK as usize;
        while !bytes.is_empty() {
            let room = cap - self.buf.len();
            let n = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() >= CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BackupError> {
        if self.progress.cancel.load(Ordering::Relaxed) {
            return Err(BackupError::Cancelled);
        }
        let header = usize::from(self.prefix.is_some());
        if self.buf.len() > header {
            self.progress
                .bytes
                .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
            let mut next = Vec::with_capacity(CHUNK + 64);
            next.extend(self.prefix);
            self.w
                .block(self.kind, std::mem::replace(&mut self.buf, next))?;
            self.pacer.pace(self.w);
        }
        Ok(())
    }
}

/// Which kind of backup to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Incremental when the previous backup can be continued and its full
    /// backup is younger than `backup.full_every`; full otherwise.
    Auto,
    Full,
}

/// The backup an incremental one would continue, and why there is none.
fn continuable(
    store: &Store,
    cfg: &BackupConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, String), String> {
    let full_every = cfg.full_every();
    if full_every.is_zero() {
        return Err("backup.full_every is 0".into());
    }
    let mut newest = None;
    for dir in &cfg.targets {
        let last = target::backups(dir)
            .ok()
            .and_then(|v| v.last().cloned())
            .ok_or_else(|| format!("{} holds no backup", dir.display()))?;
        let name = last.file_name().map(|n| n.to_string_lossy().into_owned());
        match &newest {
            None => newest = Some((last, name)),
            Some((_, n)) if *n == name => {}
            Some(_) => return Err("the targets' newest backups differ".into()),
        }
    }
    let (path, name) = newest.ok_or("no targets")?;
    let name = name.unwrap_or_default();
    let d = restore::describe(&path).map_err(|e| e.to_string())?;
    let base = d.header.base.clone().unwrap_or_else(|| name.clone());
    if d.header.image != ImageKind::Segments {
        return Err(format!("{name} is of an older kind"));
    }
    if d.groups.len() != store.groups().len() {
        return Err(format!("{name} holds other storage groups"));
    }
    for (g, (start, end)) in store.groups().iter().zip(&d.groups) {
        if start.id != g.id || g.stats.backup_lsn.load(Ordering::Relaxed) != end.end_lsn {
            return Err(format!(
                "{name} does not end where group {} was last backed up",
                g.id
            ));
        }
    }
    let age = target::started_at(std::path::Path::new(&base))
        .map(|t| (now - t).to_std().unwrap_or_default())
        .ok_or_else(|| format!("{base} is not a backup name"))?;
    if age >= full_every {
        return Err(format!(
            "the full backup {base} is older than backup.full_every ({})",
            cfg.full_every
        ));
    }
    Ok((name, base))
}

/// Takes one backup of every group of `store` to every target of `cfg`,
/// incremental where it can be. Blocking: run it on a background thread.
/// Succeeds when at least one target holds a checked copy; the others'
/// failures are in the report.
pub fn run(store: &Store, cfg: &BackupConfig, progress: &Progress) -> Result<Report, BackupError> {
    run_with(store, cfg, progress, Mode::Auto)
}

/// As [`run`], choosing the kind.
pub fn run_with(
    store: &Store,
    cfg: &BackupConfig,
    progress: &Progress,
    mode: Mode,
) -> Result<Report, BackupError> {
    if cfg.targets.is_empty() {
        return Err(BackupError::NoTargets);
    }
    // A backup without a group would look complete, and retention could
    // then delete the last backups that hold it.
    if let Some((id, why)) = store.failed_groups().first() {
        return Err(BackupError::Store(crate::store::StoreError::Unavailable(
            format!(
                "storage group {id} could not be opened ({why}): no backup until it is repaired or restored"
            ),
        )));
    }
    let started = Instant::now();
    let now = chrono::Utc::now();
    let name = target::backup_name(now);
    let chain = match mode {
        Mode::Full => None,
        Mode::Auto => match continuable(store, cfg, now) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::info!(reason = %why, "taking a full backup");
                None
            }
        },
    };
    let incremental = chain.is_some();
    let mirrors = Mirrors::open(
        &cfg.targets,
        &name,
        cfg.min_free_mib.saturating_mul(1 << 20),
    )
    .map_err(BackupError::Targets)?;
    let header = Header {
        created_ms: now.timestamp_millis(),
        host: hostname(),
        groups: store
            .groups()
            .iter()
            .map(|g| (g.id, "mail".to_string()))
            .collect(),
        image: ImageKind::Segments,
        parent: chain.as_ref().map(|(p, _)| p.clone()),
        base: chain.as_ref().map(|(_, b)| b.clone()),
    };
    let (tx, rx) = crossbeam_channel::bounded::<(Kind, Vec<u8>)>(8);
    let (groups, bytes, targets) = std::thread::scope(|scope| {
        let closed = Arc::new(AtomicBool::new(false));
        let on_exit = SetOnDrop(closed.clone());
        let writer = scope.spawn(move || -> Result<(u64, Vec<Outcome>), BackupError> {
            let _on_exit = on_exit;
            crate::background::idle_priority();
            let mut w = Writer::new(mirrors)?;
            // Only an explicit end (a Trailer kind from the reading half)
            // finishes the file; a reading half that gave up leaves it
            // unfinished, and dropping it removes the temporary files.
            for (kind, payload) in rx {
                if kind == Kind::Trailer {
                    let bytes = w.offset();
                    return Ok((bytes, w.finish()?.finish()));
                }
                w.block(kind, &payload)?;
            }
            Err(BackupError::Targets("the backup was abandoned".into()))
        });
        let sink = Sink { tx, closed };
        let produced = (|| {
            sink.block(Kind::Header, header.encode())?;
            let mut groups = Vec::new();
            let mut pacer = Pacer::new(store);
            for g in store.groups() {
                let (s, e) = backup_group(g, &sink, progress, &mut pacer, incremental)?;
                groups.push((g.id, s, e));
                progress.groups_done.fetch_add(1, Ordering::Relaxed);
            }
            sink.block(Kind::Trailer, Vec::new())?;
            Ok::<_, BackupError>(groups)
        })();
        drop(sink);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(BackupError::Targets("the backup writer panicked".into())));
        match (produced, written) {
            (Ok(groups), Ok((bytes, targets))) => Ok((groups, bytes, targets)),
            // The reading half's error first; a broken pipe is the writer's.
            (Err(e), _) if !matches!(e, BackupError::Pipe) => Err(e),
            (_, Err(e)) | (Err(e), _) => Err(e),
        }
    })?;
    let report = Report {
        name,
        parent: chain.map(|(p, _)| p),
        bytes,
        secs: started.elapsed().as_secs_f64(),
        groups,
        targets,
    };
    if report.written().is_empty() {
        return Err(BackupError::Targets(
            report
                .failures()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    // The backup holds every group up to its end LSN: the log below may go.
    for (id, _, end) in &report.groups {
        if let Some(g) = store.groups().iter().find(|g| g.id == *id) {
            g.backed_up_blocking(*end)?;
        }
    }
    for o in &report.targets {
        if o.result.is_ok() {
            match target::apply_retention(&o.dir, cfg.keep, cfg.max_age_days, now, &|p| {
                restore::describe(p).ok().and_then(|d| d.header.parent)
            }) {
                Ok(gone) => {
                    for p in gone {
                        tracing::info!(file = %p.display(), "old backup removed (retention)");
                    }
                }
                Err(e) => {
                    tracing::warn!(target_dir = %o.dir.display(), error = %e, "backup retention failed")
                }
            }
        }
    }
    Ok(report)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Bytes of a segment per block (with its 12-byte position, well under
/// `MAX_BLOCK`).
const SEGMENT_CHUNK: usize = 4 << 20;

/// Streams one group; returns (image LSN, end LSN). An incremental backup
/// (`incremental`) holds no image: only the log from the previous backup's
/// end, as the patch on top of it.
fn backup_group(
    g: &Group,
    w: &Sink,
    progress: &Progress,
    pacer: &mut Pacer,
    incremental: bool,
) -> Result<(u64, u64), BackupError> {
    let floor = match g.stats.backup_lsn.load(Ordering::Relaxed) {
        u64::MAX => 0,
        f => f,
    };
    // The image reads bodies from this snapshot: no segment it names may
    // be deleted by a reclaim until the group is done.
    let _pin = g.pin_segments();
    let start = |image_lsn, log_from| {
        w.block(
            Kind::GroupStart,
            GroupStart {
                id: g.id,
                image_lsn,
                log_from,
            }
            .encode(),
        )
    };
    let (image_lsn, log_from) = if incremental {
        (floor, floor + 1)
    } else {
        let snap = g.snapshot()?;
        snap.check_tables()?;
        let image_lsn = snap.applied_lsn()?;
        // Log files continue the previous backup; the first backup of a
        // group has none to continue (its image is where history starts).
        let segments = wal::list_segments(&g.dir.join("wal"))?;
        let oldest = segments.first().map_or(image_lsn + 1, |(f, _)| *f);
        let log_from = if floor == 0 {
            image_lsn + 1
        } else {
            (floor + 1).max(oldest).min(image_lsn + 1)
        };
        start(image_lsn, log_from)?;
        copy_segments(&snap, w, progress, pacer)?;
        crate::failpoint::hit("backup-after-segments");
        for index in ImageKind::Segments.tables() {
            let mut c = Chunker::new(w, Kind::Image, Some(index), progress, pacer);
            snap.dump_table(index, &mut |k, v| {
                // A row (`image` module docs), written straight into the chunk.
                let pushed = c
                    .push(&(k.len() as u32).to_le_bytes())
                    .and_then(|()| c.push(k))
                    .and_then(|()| c.push(&(v.len() as u32).to_le_bytes()))
                    .and_then(|()| c.push(v));
                pushed.map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))
            })?;
            c.flush()?;
        }
        (image_lsn, log_from)
    };
    if incremental {
        start(image_lsn, log_from)?;
    }

    // The end of this group's backup: everything applied by now.
    let snap = g.snapshot()?;
    let end_lsn = snap.applied_lsn()?;
    let end_ms = chrono::Utc::now().timestamp_millis();
    let digests = snap.manifest()?;
    drop(snap);

    // Which segments hold the log (log_from..=S) and patch (S+1..=E).
    let segments = wal::list_segments(&g.dir.join("wal"))?;
    let mut files = Vec::new();
    for (i, (first, path)) in segments.iter().enumerate() {
        let last = segments.get(i + 1).map_or(u64::MAX, |(n, _)| n - 1);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (role, lo, hi) in [
            (Role::Log, log_from, image_lsn),
            (Role::Patch, image_lsn + 1, end_lsn),
        ] {
            let a = lo.max(*first);
            let b = hi.min(last);
            if a <= b {
                files.push(FileEntry {
                    role,
                    name: name.clone(),
                    first: a,
                    last: b,
                });
            }
        }
    }
    w.block(Kind::Files, encode_files(&files))?;

    // Stream the records in LSN order: log first, then patch.
    let mut next = log_from;
    for role in [Role::Log, Role::Patch] {
        let (kind, hi) = match role {
            Role::Log => (Kind::Log, image_lsn),
            Role::Patch => (Kind::Patch, end_lsn),
        };
        let mut c = Chunker::new(w, kind, None, progress, pacer);
        let mut framed = Vec::new();
        for (i, (_, path)) in segments.iter().enumerate() {
            if next > hi {
                break;
            }
            // A segment wholly below what is still wanted is not opened: it
            // is already streamed, or held by the previous backup and free to
            // be pruned by a checkpoint meanwhile.
            if segments.get(i + 1).is_some_and(|(first, _)| *first <= next) {
                continue;
            }
            let mut failed = None;
            wal::read_segment(path, |r| {
                if r.lsn < next || r.lsn > hi || failed.is_some() {
                    return Ok(());
                }
                if r.lsn != next {
                    failed = Some(format!(
                        "log of group {} jumps from LSN {} to {}",
                        g.id,
                        next - 1,
                        r.lsn
                    ));
                    return Ok(());
                }
                framed.clear();
                wal::encode_record(&mut framed, r.kind, r.lsn, &r.payload);
                if let Err(e) = c.push(&framed) {
                    failed = Some(e.to_string());
                }
                next += 1;
                Ok(())
            })?;
            if let Some(e) = failed {
                return Err(BackupError::Log(e));
            }
        }
        c.flush()?;
        if next != hi + 1 {
            return Err(BackupError::Log(format!(
                "group {}: log records {next}..={hi} are missing from {}",
                g.id,
                g.dir.join("wal").display()
            )));
        }
    }
    if incremental {
        crate::failpoint::hit("backup-incremental-after-log");
    }
    w.block(
        Kind::GroupEnd,
        GroupEnd {
            end_lsn,
            end_ms,
            manifest: digests,
        }
        .encode(),
    )?;
    Ok((image_lsn, end_lsn))
}

/// Streams the body segments the snapshot `txn` refers to, each from its
/// start to where the snapshot's state ends in it.
fn copy_segments(
    snap: &Snapshot,
    w: &Sink,
    progress: &Progress,
    pacer: &mut Pacer,
) -> Result<(), BackupError> {
    for span in snap.spans()? {
        let mut at = 0u64;
        while at < span.len {
            if progress.cancel.load(Ordering::Relaxed) {
                return Err(BackupError::Cancelled);
            }
            let n = (span.len - at).min(SEGMENT_CHUNK as u64) as usize;
            let mut block = Vec::with_capacity(12 + n);
            block.extend_from_slice(&span.id.to_le_bytes());
            block.extend_from_slice(&at.to_le_bytes());
            block.resize(12 + n, 0);
            snap.read_span(span.id, at, &mut block[12..])?;
            progress
                .bytes
                .fetch_add(block.len() as u64, Ordering::Relaxed);
            w.block(Kind::Segment, block)?;
            pacer.pace(w);
            at += n as u64;
        }
    }
    Ok(())
}
