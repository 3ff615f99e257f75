//! One storage group: a redb file, its write-ahead log, and the single writer
//! thread that owns both.
//!
//! Group commit: the writer takes every request waiting in its queue, plans
//! and applies them in one redb transaction, appends all their records to the
//! log with one fsync, commits redb without fsync, and only then answers each
//! caller. Callers that arrive during an fsync simply make the next batch
//! bigger. A checkpoint (durable redb commit recording the applied LSN) runs
//! every few seconds or records, and on shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use redb::{Database, ReadableDatabase};
use tokio::sync::oneshot;

use super::StoreError;
use super::bodies::{self, BodyStore};
use super::codec::Enc;
use super::compact;
use super::live;
use super::migrate;
use super::ops::{self, Op, Outcome};
use super::record::{self, Record};
use super::recovery::{self, RecoveryReport};
use super::schema::{self, K_APPLIED_LSN, K_BACKUP_LSN, K_CHECKPOINT_LSN};
use super::wal::{self, Wal};
use crate::config::StoreConfig;

/// Most requests one batch takes, and roughly most bytes.
const BATCH_JOBS: usize = 1024;
const BATCH_BYTES: usize = 32 << 20;
/// Longest a batch waits for writers that were active in the previous one.
const COMMIT_WAIT: Duration = Duration::from_micros(150);

/// Counters readable without stopping the writer.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub ops: AtomicU64,
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub fsyncs: AtomicU64,
    pub applied_lsn: AtomicU64,
    pub checkpoint_lsn: AtomicU64,
    pub checkpoints: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_segments: AtomicU64,
    /// Highest LSN held by a backup (`u64::MAX`: backups not configured).
    pub backup_lsn: AtomicU64,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

enum Msg {
    Op(Job),
    Checkpoint(oneshot::Sender<Result<u64, StoreError>>),
    /// A backup now holds every record up to this LSN: log segments up to
    /// it may go once a checkpoint covers them too.
    BackedUp(u64, oneshot::Sender<Result<u64, StoreError>>),
    /// Bodies read out of a segment being reclaimed, to append again.
    Relocate(
        Vec<bodies::Relocation>,
        oneshot::Sender<Result<usize, StoreError>>,
    ),
    /// A rebuild starts: a snapshot of the state now, and the log after it
    /// kept until it ends.
    RebuildBegin(oneshot::Sender<Result<redb::ReadTransaction, StoreError>>),
    /// The copy of that snapshot (`None`: it failed): bring it up to date
    /// and switch to it.
    RebuildFinish(Option<Database>, oneshot::Sender<Result<(), StoreError>>),
    Shutdown,
}

pub struct Group {
    pub id: u32,
    pub dir: PathBuf,
    /// The group's database: swapped for a rebuilt one by `compact`.
    db: Arc<std::sync::RwLock<Arc<Database>>>,
    /// The group's body segments (`bodies`).
    pub bodies: Arc<BodyStore>,
    /// What opening found to upgrade.
    pub upgrade: migrate::Upgrade,
    pub stats: Arc<GroupStats>,
    pub recovery: RecoveryReport,
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

pub fn group_dir(data_dir: &Path, id: u32) -> PathBuf {
    data_dir.join("groups").join(format!("g{id:03}"))
}

impl Group {
    /// Opens (creating if needed) and recovers group `id`, then starts its
    /// writer, which reports what it commits to `live`.
    pub fn open(
        data_dir: &Path,
        id: u32,
        cfg: &StoreConfig,
        live: Arc<live::Registry>,
    ) -> Result<Group, StoreError> {
        let dir = group_dir(data_dir, id);
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(|e| StoreError::io(&wal_dir, e))?;
        let db_path = dir.join("store.redb");
        let mut db = Database::builder()
            .set_cache_size(cfg.cache_mib.max(1) << 20)
            .create(&db_path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(db_path.clone()),
                other => StoreError::Db(format!("{}: {other}", db_path.display())),
            })?;
        let (bodies, upgrade) =
            migrate::open(&mut db, &db_path, cfg.body_segment_mib.max(1) << 20)?;
        let bodies = Arc::new(bodies);
        // A rebuild that a crash cut before its rename left this behind.
        let _ = std::fs::remove_file(compact::temp_path(&db_path));
        let report = recovery::recover(&db, &bodies, &wal_dir)?;
        if report.replayed > 0 || report.truncated.is_some() {
            tracing::info!(
                group = id,
                replayed = report.replayed,
                next_lsn = report.next_lsn,
                "storage group recovered"
            );
        }
        let vanished_keep_secs =
            i64::try_from(cfg.vanished_keep_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
        {
            // Expunge history past its horizon (also at every tenth-minute
            // checkpoint): a derived state, so no log record.
            let txn = db.begin_write()?;
            let before = chrono::Utc::now()
                .timestamp()
                .saturating_sub(vanished_keep_secs);
            super::vanished::prune(&txn, before)?;
            txn.commit()?;
        }
        let wal = Wal::open(&wal_dir, cfg.wal_segment_bytes, report.next_lsn)?;
        let db = Arc::new(db);
        let shared = Arc::new(std::sync::RwLock::new(db.clone()));
        let stats = Arc::new(GroupStats::default());
        let applied = report.next_lsn - 1;
        let backup_floor = if cfg.hold_wal_for_backup {
            let txn = db.begin_read()?;
            let meta = txn.open_table(schema::META)?;
            meta.get(K_BACKUP_LSN)?.map(|v| v.value()).unwrap_or(0)
        } else {
            u64::MAX
        };
        stats.backup_lsn.store(backup_floor, Ordering::Relaxed);
        stats.applied_lsn.store(applied, Ordering::Relaxed);
        stats.checkpoint_lsn.store(applied, Ordering::Relaxed);
        stats.wal_bytes.store(wal.total_bytes(), Ordering::Relaxed);
        stats
            .wal_segments
            .store(wal.segment_count() as u64, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = Writer {
            id,
            db: db.clone(),
            shared: shared.clone(),
            db_path: db_path.clone(),
            wal_dir: wal_dir.clone(),
            hold: None,
            bodies: bodies.clone(),
            wal,
            next_lsn: report.next_lsn,
            stats: stats.clone(),
            interval: Duration::from_secs(cfg.checkpoint_interval_secs),
            every_records: cfg.checkpoint_records,
            vanished_keep_secs,
            last_checkpoint: Instant::now(),
            last_once_prune: Instant::now(),
            since_checkpoint: 0,
            last_batch: 1,
            poisoned: AtomicBool::new(false),
            backup_floor,
            checkpointed: applied,
            live,
        };
        let thread = std::thread::Builder::new()
            .name(format!("tiermail-g{id:03}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::io(&dir, e))?;
        Ok(Group {
            id,
            dir,
            db: shared,
            bodies,
            upgrade,
            stats,
            recovery: report,
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Logs, applies and acknowledges `op`; returns once its record is fsynced.
    pub async fn submit(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Op(Job { op, reply }))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Forces a checkpoint now; returns the checkpointed LSN.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Tells the writer that a backup holds every record up to `lsn`; the
    /// log segments that it and the last checkpoint both cover are deleted.
    /// Returns the checkpointed LSN.
    pub async fn backed_up(&self, lsn: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::BackedUp(lsn, reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// As [`Group::backed_up`], for a blocking caller.
    pub fn backed_up_blocking(&self, lsn: u64) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::BackedUp(lsn, reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// As [`Group::checkpoint`], for a blocking caller.
    pub fn checkpoint_blocking(&self) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// Appends bodies read out of a segment being reclaimed to the open
    /// segment, for those still where they were read; returns how many
    /// moved. Not logged: until the next checkpoint the old places stay
    /// valid (the reclaimed segment is deleted only after one).
    pub fn relocate_blocking(&self, items: Vec<bodies::Relocation>) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Relocate(items, reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?
    }

    /// The group's database (a rebuild may replace it: take it for each
    /// snapshot, do not keep it).
    pub fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the database into a fresh file if most of the current one
    /// is free pages (see `compact`); returns (file bytes before, after)
    /// when it did.
    pub fn compact_blocking(
        &self,
        cache_bytes: usize,
        min_file_bytes: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let db_path = self.dir.join("store.redb");
        if compact::worth_it(&self.db(), &db_path, min_file_bytes)?.is_none() {
            return Ok(None);
        }
        let before = std::fs::metadata(&db_path).map_or(0, |m| m.len());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::RebuildBegin(reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        let snapshot = rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)??;
        let temp = compact::temp_path(&db_path);
        let copied = compact::copy(&snapshot, &temp, cache_bytes);
        drop(snapshot);
        crate::failpoint::hit("compact-after-copy");
        let (reply, rx) = oneshot::channel();
        let new = match copied {
            Ok(db) => Some(db),
            Err(e) => {
                tracing::warn!(group = self.id, error = %e, "rebuilding the database failed");
                None
            }
        };
        let failed = new.is_none();
        self.tx
            .send(Msg::RebuildFinish(new, reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        let switched = rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?;
        if failed || switched.is_err() {
            // Not renamed: the old file is the store.
            let _ = std::fs::remove_file(&temp);
            switched?;
            return Ok(None);
        }
        let after = std::fs::metadata(&db_path).map_or(0, |m| m.len());
        tracing::info!(group = self.id, before, after, "database file rebuilt");
        Ok(Some((before, after)))
    }

    /// Checkpoints and stops the writer; waits for it.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

struct Writer {
    id: u32,
    db: Arc<Database>,
    /// What readers take the database from (see `Group::db`).
    shared: Arc<std::sync::RwLock<Arc<Database>>>,
    db_path: PathBuf,
    wal_dir: PathBuf,
    /// A rebuild copies the state at this LSN: the log after it is kept.
    hold: Option<u64>,
    bodies: Arc<BodyStore>,
    wal: Wal,
    next_lsn: u64,
    stats: Arc<GroupStats>,
    interval: Duration,
    every_records: u64,
    last_checkpoint: Instant,
    /// When expired once keys (`schema::DELIVERED_ONCE`) were last dropped.
    last_once_prune: Instant,
    /// Expunge history (`schema::VANISHED`) is kept this many seconds.
    vanished_keep_secs: i64,
    since_checkpoint: u64,
    last_batch: usize,
    poisoned: AtomicBool,
    /// Log records above this LSN are not in any backup yet and are kept
    /// (`u64::MAX` when no backup targets are configured).
    backup_floor: u64,
    /// LSN of the last checkpoint.
    checkpointed: u64,
    /// Mailboxes sessions have in memory: told of every committed change.
    live: Arc<live::Registry>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self
                .interval
                .saturating_sub(self.last_checkpoint.elapsed())
                .max(Duration::from_millis(1));
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.checkpoint_logged();
                    return;
                }
            };
            let mut jobs = Vec::new();
            let mut control = None;
            let mut bytes = 0usize;
            match first {
                Some(Msg::Op(j)) => {
                    bytes += job_bytes(&j);
                    jobs.push(j);
                }
                Some(other) => control = Some(other),
                None => {}
            }
            while control.is_none() && jobs.len() < BATCH_JOBS && bytes < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Op(j)) => {
                        bytes += job_bytes(&j);
                        jobs.push(j);
                    }
                    Ok(other) => control = Some(other),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // Group commit with siblings: when the previous batch had more
            // writers than this one has yet, give the others a moment to
            // arrive so that one fsync covers them all. A lone writer never
            // waits (its previous batch was itself).
            let deadline = Instant::now() + COMMIT_WAIT;
            while control.is_none()
                && !jobs.is_empty()
                && jobs.len() < self.last_batch
                && jobs.len() < BATCH_JOBS
                && bytes < BATCH_BYTES
            {
                match rx.recv_deadline(deadline) {
                    Ok(Msg::Op(j)) => {
                        bytes += job_bytes(&j);
                        jobs.push(j);
                    }
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.last_batch = jobs.len();
                self.process(jobs);
            }
            let due = self.since_checkpoint > 0
                && (self.since_checkpoint >= self.every_records
                    || self.last_checkpoint.elapsed() >= self.interval);
            match control {
                Some(Msg::Checkpoint(reply)) => match self.checkpoint() {
                    // Answered once the pruned segments are gone.
                    Ok(_) => self.prune(Some(reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Some(Msg::BackedUp(lsn, reply)) => {
                    // No checkpoint here (it would stall this writer once per
                    // backup): the next regular one records the new floor.
                    if self.backup_floor == u64::MAX || lsn > self.backup_floor {
                        self.backup_floor = lsn;
                    }
                    self.stats
                        .backup_lsn
                        .store(self.backup_floor, Ordering::Relaxed);
                    self.prune(Some(reply));
                }
                Some(Msg::Relocate(items, reply)) => {
                    let _ = reply.send(self.relocate(&items));
                }
                Some(Msg::RebuildBegin(reply)) => {
                    self.hold = Some(self.next_lsn - 1);
                    let r = self.db.begin_read().map_err(StoreError::from);
                    if r.is_err() {
                        self.hold = None;
                    }
                    let _ = reply.send(r);
                }
                Some(Msg::RebuildFinish(new, reply)) => {
                    let r = match new {
                        Some(db) => self.switch_to(db),
                        None => Ok(()),
                    };
                    self.hold = None;
                    let _ = reply.send(r);
                }
                Some(Msg::Shutdown) => {
                    self.checkpoint_logged();
                    return;
                }
                _ if due => self.checkpoint_logged(),
                _ => {}
            }
        }
    }

    fn process(&mut self, jobs: Vec<Job>) {
        if self.poisoned.load(Ordering::Relaxed) {
            for j in jobs {
                let _ = j.reply.send(Err(StoreError::Unavailable(format!(
                    "storage group {} stopped after a write failure; restart to recover it",
                    self.id
                ))));
            }
            return;
        }
        match self.commit_batch(&jobs) {
            Ok((results, events)) => {
                // Durable now: sessions see it before the callers hear back.
                self.live.publish(self.id, events);
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(group = self.id, error = %e, "write batch failed");
                let text = e.to_string();
                for j in jobs {
                    let _ = j.reply.send(Err(StoreError::Unavailable(text.clone())));
                }
            }
        }
    }

    /// Plans, applies, logs (one fsync) and commits a batch. An `Err` means
    /// nothing of the batch was acknowledged.
    #[allow(clippy::type_complexity)]
    fn commit_batch(
        &mut self,
        jobs: &[Job],
    ) -> Result<(Vec<Result<Outcome, StoreError>>, Vec<(u64, live::Event)>), StoreError> {
        let now = chrono::Utc::now().timestamp();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let first_lsn = self.next_lsn;
        // Every batch starts with the time it commits at, for
        // point-in-time restore.
        let mut framed = Vec::new();
        let mut e = Enc::new();
        Record::Clock {
            unix_ms: chrono::Utc::now().timestamp_millis(),
        }
        .encode_payload(&mut e);
        wal::encode_record(&mut framed, record::T_CLOCK, first_lsn, &e.buf);
        let mut lsn = first_lsn + 1;
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        for job in jobs {
            match ops::plan(&txn, &job.op, now) {
                Ok((records, outcome)) => {
                    for rec in &records {
                        schema::apply(&txn, &self.bodies, rec)?;
                        live_events(&txn, rec, &mut events)?;
                        let mut e = Enc::new();
                        rec.encode_payload(&mut e);
                        wal::encode_record(&mut framed, rec.kind(), lsn, &e.buf);
                        lsn += 1;
                    }
                    results.push(Ok(outcome));
                }
                Err(e) if e.is_request_error() => results.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if lsn == first_lsn + 1 {
            txn.abort()?;
            return Ok((results, Vec::new()));
        }
        schema::set_meta(&txn, K_APPLIED_LSN, lsn - 1)?;
        self.wal.append(&framed, first_lsn)?;
        // The records are durable from here on: a failed redb commit now
        // would leave memory and log apart, so the group stops until restart
        // (whose replay brings redb up to the log).
        if let Err(e) = txn.commit() {
            self.poisoned.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
        let n = lsn - first_lsn;
        self.next_lsn = lsn;
        self.since_checkpoint += n;
        let s = &self.stats;
        s.ops.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        s.records.fetch_add(n, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.fsyncs.store(self.wal.fsyncs, Ordering::Relaxed);
        s.applied_lsn.store(lsn - 1, Ordering::Relaxed);
        s.wal_bytes
            .fetch_add(framed.len() as u64, Ordering::Relaxed);
        Ok((results, events))
    }

    /// Applies the log after the rebuild's snapshot to `db`, makes it
    /// durable, renames it over the store file and continues with it.
    fn switch_to(&mut self, db: Database) -> Result<(), StoreError> {
        let from = self.hold.unwrap_or(u64::MAX);
        let mut records = Vec::new();
        let segments = wal::list_segments(&self.wal_dir)?;
        for (i, (_, path)) in segments.iter().enumerate() {
            // Segments wholly at or below the snapshot (kept for a backup)
            // are not read: the next one's name says where each ends.
            if segments
                .get(i + 1)
                .is_some_and(|(next, _)| *next <= from + 1)
            {
                continue;
            }
            wal::read_segment(path, |r| {
                if r.lsn > from {
                    records.push(r);
                }
                Ok(())
            })?;
        }
        let applied = self.next_lsn - 1;
        if records.first().is_some_and(|r| r.lsn != from + 1)
            || (records.is_empty() && from != applied)
        {
            return Err(StoreError::Format(format!(
                "log after LSN {from} is not all there for the rebuild"
            )));
        }
        let mut rp = super::replay::Replayer::new(&db, &self.bodies, from, None);
        for r in records {
            rp.feed(r, &|| "the rebuild's catch-up".to_string())?;
        }
        rp.finish(Some(self.backup_floor).filter(|b| *b != u64::MAX))?;
        crate::failpoint::hit("compact-before-rename");
        compact::swap_files(&compact::temp_path(&self.db_path), &self.db_path)?;
        let db = Arc::new(db);
        self.db = db.clone();
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = db;
        self.checkpointed = applied;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.stats.checkpoint_lsn.store(applied, Ordering::Relaxed);
        Ok(())
    }

    fn relocate(&mut self, items: &[bodies::Relocation]) -> Result<usize, StoreError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable(format!(
                "storage group {} stopped after a write failure",
                self.id
            )));
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let moved = bodies::relocate(&txn, &self.bodies, items)?;
        txn.commit()?;
        Ok(moved)
    }

    fn checkpoint_logged(&mut self) {
        match self.checkpoint() {
            Ok(_) => self.prune(None),
            Err(e) => tracing::error!(group = self.id, error = %e, "checkpoint failed"),
        }
    }

    fn checkpoint(&mut self) -> Result<u64, StoreError> {
        let applied = self.next_lsn - 1;
        // A durable state may refer only to bodies that are on disk.
        self.bodies.sync()?;
        crate::failpoint::hit("checkpoint-after-body-sync");
        let txn = self.db.begin_write()?;
        schema::set_meta(&txn, K_CHECKPOINT_LSN, applied)?;
        if self.backup_floor != u64::MAX {
            schema::set_meta(&txn, K_BACKUP_LSN, self.backup_floor)?;
        }
        // Expired keys only stop suppressing resends; dropping them needs
        // no log record (a replay puts them back, a later prune drops them).
        if self.last_once_prune.elapsed() >= std::time::Duration::from_secs(600) {
            let now = chrono::Utc::now().timestamp();
            schema::prune_once(&txn, now)?;
            super::vanished::prune(&txn, now.saturating_sub(self.vanished_keep_secs))?;
            self.last_once_prune = Instant::now();
        }
        txn.commit()?;
        self.last_checkpoint = Instant::now();
        self.since_checkpoint = 0;
        self.stats.checkpoint_lsn.store(applied, Ordering::Relaxed);
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpointed = applied;
        Ok(applied)
    }

    /// Prunes the log segments that neither recovery (the last checkpoint
    /// covers them) nor the next backup (the last one holds them) needs;
    /// `reply` hears the checkpointed LSN once they are deleted, which
    /// happens off this thread.
    fn prune(&mut self, reply: Option<oneshot::Sender<Result<u64, StoreError>>>) {
        let checkpointed = self.checkpointed;
        let then = reply.map(|r| {
            Box::new(move || {
                let _ = r.send(Ok(checkpointed));
            }) as wal::AfterPrune
        });
        let keep = self.hold.unwrap_or(u64::MAX);
        self.wal
            .prune(self.checkpointed.min(self.backup_floor).min(keep), then);
        self.stats
            .wal_bytes
            .store(self.wal.total_bytes(), Ordering::Relaxed);
        self.stats
            .wal_segments
            .store(self.wal.segment_count() as u64, Ordering::Relaxed);
    }
}

/// What `rec` (just applied in `txn`) means for the live mailboxes.
///
/// Computed for every record, not only for mailboxes loaded now: a
/// mailbox may be registered between this and the commit, and its
/// snapshot, read before the commit, would then miss the change. The
/// registry drops what no loaded mailbox needs when it is published,
/// which is after the commit, so a mailbox registered later reads the
/// change in its snapshot.
fn live_events(
    txn: &redb::WriteTransaction,
    rec: &Record,
    out: &mut Vec<(u64, live::Event)>,
) -> Result<(), StoreError> {
    use live::{Change, ChangeKind, Event, FlagSet, LiveMessage};
    use redb::ReadableTable;
    match rec {
        Record::MessageAppended {
            mailbox_id,
            uid,
            meta,
            ..
        } => out.push((
            *mailbox_id,
            Event::Change(Change {
                modseq: meta.modseq,
                uid: *uid,
                kind: ChangeKind::Added(LiveMessage {
                    uid: *uid,
                    size: meta.size,
                    modseq: meta.modseq,
                    internal_date: meta.internal_date,
                    flags: FlagSet::new(&meta.flags),
                }),
            }),
        )),
        Record::FlagsSet {
            mailbox_id,
            modseq,
            changes,
        } => {
            for (uid, flags) in changes {
                out.push((
                    *mailbox_id,
                    Event::Change(Change {
                        modseq: *modseq,
                        uid: *uid,
                        kind: ChangeKind::Flags(FlagSet::new(flags)),
                    }),
                ));
            }
        }
        Record::Expunged {
            mailbox_id,
            modseq,
            uids,
        } => {
            for uid in uids {
                out.push((
                    *mailbox_id,
                    Event::Change(Change {
                        modseq: *modseq,
                        uid: *uid,
                        kind: ChangeKind::Expunged,
                    }),
                ));
            }
        }
        Record::MessagesCopied {
            to, modseq, pairs, ..
        } => {
            let messages = txn.open_table(schema::MESSAGES)?;
            for (_, dst) in pairs {
                let Some(m) = messages.get((*to, *dst))? else {
                    continue;
                };
                let meta = super::message::MessageMeta::from_bytes(m.value())?;
                out.push((
                    *to,
                    Event::Change(Change {
                        modseq: *modseq,
                        uid: *dst,
                        kind: ChangeKind::Added(LiveMessage {
                            uid: *dst,
                            size: meta.size,
                            modseq: *modseq,
                            internal_date: meta.internal_date,
                            flags: FlagSet::new(&meta.flags),
                        }),
                    }),
                ));
            }
        }
        Record::MailboxDeleted { id, .. } => out.push((*id, Event::Deleted)),
        _ => {}
    }
    Ok(())
}

fn job_bytes(j: &Job) -> usize {
    match &j.op {
        Op::Deliver(d) | Op::DeliverOnce(d, _) => d.raw.len(),
        Op::Restore { messages, .. } => messages.iter().map(|(_, d)| d.raw.len()).sum(),
        _ => 64,
    }
}
