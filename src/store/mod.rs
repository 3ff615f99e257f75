//! The current store: every user's live mailboxes, spread over storage groups.
//!
//! Only this module touches redb. Each group is a redb file (metadata and
//! indexes), its body segments (`bodies`) and a write-ahead log (`wal`),
//! written by one thread (`group`) that turns
//! requests into resolved records (`ops`), applies them (`schema`) and
//! group-commits them; `recovery` replays the log at start-up. A user belongs
//! to the group recorded for them in the store, so changing the configured
//! group count never moves anyone silently. Reads run on the blocking pool
//! as redb MVCC snapshots and never wait for the writer.

pub(crate) mod bodies;
pub(crate) mod codec;
pub(crate) mod compact;
pub(crate) mod digest;
pub mod export;
pub(crate) mod group;
pub(crate) mod image;
pub(crate) mod live;
pub(crate) mod manifest;
pub(crate) mod message;
pub(crate) mod migrate;
pub(crate) mod ops;
pub(crate) mod reclaim;
pub(crate) mod record;
pub(crate) mod recovery;
pub(crate) mod replay;
pub(crate) mod schema;
pub(crate) mod vanished;
pub(crate) mod wal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

pub use group::Group;
pub use message::{MessageMeta, Summary};
pub use ops::{Delivery, FlagAction, Op, Outcome, SEPARATOR};
pub use schema::MailboxInfo;

use crate::config::StoreConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error("stored data is malformed: {0}")]
    Decode(#[from] codec::DecodeError),
    #[error("store format: {0}")]
    Format(String),
    #[error("{0} is in use by another tiermail process")]
    Locked(PathBuf),
    #[error("no mailbox {0}")]
    NoSuchMailbox(String),
    #[error("mailbox {0} already exists")]
    MailboxExists(String),
    #[error("mailbox {0} has child mailboxes; delete them first")]
    HasChildren(String),
    #[error("invalid mailbox name: {0}")]
    BadName(String),
    #[error("message of {0} bytes is too large to store")]
    TooLarge(usize),
    #[error("mailbox {0} has used up its UIDs")]
    UidsExhausted(String),
    #[error("limit reached: {0}")]
    Limit(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A body segment named by an old snapshot was reclaimed: read again.
    #[error("{0}: reclaimed while it was read")]
    BodyMoved(PathBuf),
    #[error("store is shutting down")]
    ShuttingDown,
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True for errors about the request itself (the store is fine).
    pub fn is_request_error(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchMailbox(_)
                | StoreError::MailboxExists(_)
                | StoreError::HasChildren(_)
                | StoreError::BadName(_)
                | StoreError::TooLarge(_)
                | StoreError::UidsExhausted(_)
                | StoreError::Limit(_)
        )
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A message as FETCH loads it: UID, metadata and (when asked) its bytes.
pub type Fetched = (u32, MessageMeta, Option<Vec<u8>>);

/// What a session needs to know of each message to keep its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    pub size: u32,
    pub internal_date: i64,
}

/// A snapshot of one group's counters, for status and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    pub id: u32,
    pub users: u64,
    pub messages: u64,
    pub ops: u64,
    pub records: u64,
    pub batches: u64,
    pub fsyncs: u64,
    pub applied_lsn: u64,
    pub checkpoint_lsn: u64,
    /// Highest LSN held by a backup (`None`: backups not configured).
    pub backup_lsn: Option<u64>,
    pub wal_bytes: u64,
    pub wal_segments: u64,
    /// Size of the redb file (metadata and indexes).
    pub db_bytes: u64,
    /// Size of the body segment files, and how many segments and distinct
    /// bodies there are.
    pub body_bytes: u64,
    pub body_segments: u64,
    pub distinct_bodies: u64,
}

pub struct Store {
    data_dir: PathBuf,
    groups: Vec<Arc<Group>>,
    /// Groups that could not be opened, and why: their users get a
    /// temporary error, everyone else is served.
    failed: Vec<(u32, String)>,
    configured: u32,
    /// user -> group, as recorded in the groups' `users` tables.
    directory: RwLock<HashMap<String, u32>>,
    /// Per-user change counters that IMAP sessions wait on (IDLE, NOOP).
    watchers: std::sync::Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
    /// Counts reads and writes that sessions ask for: background work
    /// (backups) watches it to get out of their way.
    activity: std::sync::atomic::AtomicU64,
    /// The mailboxes in use, in memory (see `live`).
    live: Arc<live::Registry>,
    /// Page cache of a database being rebuilt, and the smallest file that
    /// is (`store.compact_min_mib`).
    cache_bytes: usize,
    compact_min_bytes: u64,
}

/// A hash that never changes between versions or platforms.
fn stable_hash(user: &str) -> u32 {
    crc32c::crc32c(user.as_bytes())
}

impl Store {
    /// Opens and recovers every group (blocking: call before serving or
    /// from the blocking pool).
    pub fn open(data_dir: &Path, cfg: &StoreConfig) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(data_dir.join("groups"))
            .map_err(|e| StoreError::io(data_dir, e))?;
        let mut ids: Vec<u32> = (0..cfg.groups).collect();
        // Groups created under an earlier, larger count keep serving their users.
        let rd =
            std::fs::read_dir(data_dir.join("groups")).map_err(|e| StoreError::io(data_dir, e))?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_prefix('g').and_then(|n| n.parse::<u32>().ok())
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids.sort();
        let mut groups = Vec::new();
        let mut directory = HashMap::new();
        let live = live::Registry::new(cfg.live_cache_messages);
        let mut failed = Vec::new();
        let mut first_error = None;
        for id in ids {
            let opened = Group::open(data_dir, id, cfg, live.clone()).and_then(|g| {
                let txn = g.db().begin_read()?;
                let mut users = Vec::new();
                for row in txn.open_table(schema::USERS)?.iter()? {
                    users.push(row?.0.value().to_string());
                }
                drop(txn);
                Ok((g, users))
            });
            match opened {
                Ok((g, users)) => {
                    for u in users {
                        directory.insert(u, id);
                    }
                    groups.push(Arc::new(g));
                }
                // Another process holds it: never serve beside it.
                Err(e @ StoreError::Locked(_)) => return Err(e),
                Err(e) => {
                    tracing::error!(group = id, error = %e, "storage group cannot be opened; its users get temporary errors, the other groups are served");
                    failed.push((id, e.to_string()));
                    first_error.get_or_insert(e);
                }
            }
        }
        if groups.is_empty()
            && let Some(e) = first_error
        {
            return Err(e);
        }
        Ok(Arc::new(Store {
            data_dir: data_dir.to_path_buf(),
            groups,
            failed,
            configured: cfg.groups,
            directory: RwLock::new(directory),
            watchers: Default::default(),
            activity: Default::default(),
            live,
            cache_bytes: cfg.cache_mib.max(1) << 20,
            compact_min_bytes: cfg.compact_min_mib << 20,
        }))
    }

    /// The live state of one of `user`'s mailboxes (loaded on first use);
    /// `None` if there is no such mailbox.
    pub async fn live(
        self: &Arc<Self>,
        user: &str,
        mailbox_id: u64,
    ) -> Result<Option<Arc<live::LiveMailbox>>, StoreError> {
        self.activity.fetch_add(1, Ordering::Relaxed);
        let group = self.group_of(user)?.clone();
        let id = group.id;
        self.live
            .open(id, mailbox_id, move || {
                read_snapshot(&group, |txn, _| snapshot_in(txn, mailbox_id))
            })
            .await
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn groups(&self) -> &[Arc<Group>] {
        &self.groups
    }

    /// The group holding `user` (a new user: by stable hash over the configured count).
    /// A user whose group could not be opened (or a new user placed there)
    /// gets `Unavailable`: never a home in another group, which would hide
    /// the mail of the group once it is back.
    pub fn group_of(&self, user: &str) -> Result<&Arc<Group>, StoreError> {
        let known = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied();
        let id = known.unwrap_or_else(|| stable_hash(user) % self.configured);
        if let Some(g) = self.groups.iter().find(|g| g.id == id) {
            return Ok(g);
        }
        let why = self
            .failed
            .iter()
            .find(|(f, _)| *f == id)
            .map_or("not open", |(_, w)| w.as_str());
        Err(StoreError::Unavailable(format!(
            "storage group {id}: {why}"
        )))
    }

    /// Every mailbox's kept digest beside one recomputed from its messages
    /// (`user/mailbox`, kept, recomputed): they must be equal.
    pub fn digest_check(
        &self,
    ) -> Result<Vec<(String, Option<digest::MailboxDigest>, digest::MailboxDigest)>, StoreError>
    {
        let mut out = Vec::new();
        for g in &self.groups {
            let db = g.db();
            let txn = db.begin_read()?;
            let messages = txn.open_table(schema::MESSAGES)?;
            let refs = txn.open_table(schema::BODY_REFS)?;
            for row in txn.open_table(schema::MAILBOXES)?.iter()? {
                let (k, v) = row?;
                let info = MailboxInfo::from_bytes(v.value())?;
                let again = digest::recompute(&messages, &refs, info.id)?;
                out.push((k.value().replace('\0', "/"), info.digest, again));
            }
        }
        Ok(out)
    }

    /// Groups that could not be opened at start, and why.
    pub fn failed_groups(&self) -> &[(u32, String)] {
        &self.failed
    }

    /// Stores a message; returns once it is in the fsynced log.
    pub async fn deliver(&self, d: Delivery) -> Result<Outcome, StoreError> {
        let user = d.user.clone();
        self.submit(&user, Op::Deliver(d)).await
    }

    /// As [`Store::deliver`] for one recipient of the SMTP transaction
    /// `key`: a resend of the transaction is not stored again for this
    /// user (`Outcome::Done` then).
    pub async fn deliver_once(&self, d: Delivery, key: [u8; 16]) -> Result<Outcome, StoreError> {
        let user = d.user.clone();
        self.submit(&user, Op::DeliverOnce(d, key)).await
    }

    /// Runs a change of `user`'s mail; returns once it is in the fsynced log
    /// and visible to readers, after waking everyone watching the user.
    pub async fn submit(&self, user: &str, op: Op) -> Result<Outcome, StoreError> {
        self.activity.fetch_add(1, Ordering::Relaxed);
        let group = self.group_of(user)?.clone();
        let out = group.submit(op).await?;
        self.directory
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_string())
            .or_insert(group.id);
        self.notify(user);
        Ok(out)
    }

    /// A receiver that changes whenever `user`'s mail changes.
    pub fn watch(&self, user: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(user.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Wakes every session watching `user` (also for archive changes).
    pub fn notify(&self, user: &str) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = w.get(user) {
            if tx.receiver_count() == 0 {
                w.remove(user);
            } else {
                tx.send_modify(|v| *v += 1);
            }
        }
    }

    /// A counter that moves with every session read or write.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// Every user with mail in the store, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Whether any message of any user is tagged for archiving (cheap: one
    /// table length per group).
    pub fn has_tagged(&self) -> Result<bool, StoreError> {
        for g in &self.groups {
            if g.db().begin_read()?.open_table(schema::TAGS)?.len()? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a move out of some archive may be unfinished (cheap: one
    /// table length per group).
    pub fn has_restored(&self) -> Result<bool, StoreError> {
        for g in &self.groups {
            if g.db().begin_read()?.open_table(schema::RESTORED)?.len()? > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// (mailbox id, uid, archive UID) of `user`'s messages moved out of the
    /// archive whose archive copies may still be there.
    pub async fn restored(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<Vec<(u64, u32, u32)>, StoreError> {
        let user_name = user.to_string();
        self.read(user, move |txn, _| {
            let restored = txn.open_table(schema::RESTORED)?;
            let mut out = Vec::new();
            for id in mailbox_ids(txn, &user_name)? {
                for t in restored.range((id, 0)..=(id, u32::MAX))? {
                    let (key, auid) = t?;
                    out.push((id, key.value().1, auid.value()));
                }
            }
            Ok(out)
        })
        .await
    }

    /// (mailbox id, uid) of every message of `user` tagged for archiving.
    pub async fn tagged(self: &Arc<Self>, user: &str) -> Result<Vec<(u64, u32)>, StoreError> {
        let user_name = user.to_string();
        self.read(user, move |txn, _| {
            let tags = txn.open_table(schema::TAGS)?;
            let mut out = Vec::new();
            for id in mailbox_ids(txn, &user_name)? {
                for t in tags.range((id, 0)..=(id, u32::MAX))? {
                    out.push(t?.0.value());
                }
            }
            Ok(out)
        })
        .await
    }

    /// Creates the user's default mailboxes if they have none yet.
    pub async fn ensure_user(self: &Arc<Self>, user: &str) -> Result<(), StoreError> {
        let known = self
            .directory
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(user);
        if !known {
            self.submit(
                user,
                Op::EnsureUser {
                    user: user.to_string(),
                },
            )
            .await?;
        }
        Ok(())
    }

    /// One mailbox's info, if it exists.
    pub async fn mailbox(
        self: &Arc<Self>,
        user: &str,
        name: &str,
    ) -> Result<Option<MailboxInfo>, StoreError> {
        let key = schema::mailbox_key(user, name);
        self.read(user, move |txn, _| mailbox_info(txn, &key)).await
    }

    /// Names the user subscribed to (existing or not), sorted.
    pub async fn subscriptions(self: &Arc<Self>, user: &str) -> Result<Vec<String>, StoreError> {
        let prefix = schema::mailbox_key(user, "");
        self.read(user, move |txn, _| {
            let t = txn.open_table(schema::SUBSCRIPTIONS)?;
            let mut v = Vec::new();
            for row in t.range(prefix.as_str()..)? {
                let (k, _) = row?;
                let Some(name) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                v.push(name.to_string());
            }
            Ok(v)
        })
        .await
    }

    /// The UIDs expunged from a mailbox at a modseq above `since`, as UID
    /// ranges (unsorted, may overlap); `None` when the store no longer
    /// knows all of them (see `vanished`).
    pub async fn vanished_since(
        self: &Arc<Self>,
        user: &str,
        mailbox_id: u64,
        since: u64,
    ) -> Result<Option<Vec<(u32, u32)>>, StoreError> {
        self.read(user, move |txn, _| vanished::since(txn, mailbox_id, since))
            .await
    }

    /// The current state of a mailbox by id: its info and (uid, flags,
    /// modseq, size) of every message, by UID. `None` if it is gone.
    pub async fn snapshot(
        self: &Arc<Self>,
        user: &str,
        mailbox_id: u64,
    ) -> Result<Option<(MailboxInfo, Vec<MessageState>)>, StoreError> {
        self.read(user, move |txn, _| snapshot_in(txn, mailbox_id))
            .await
    }

    /// As [`Store::snapshot`], on the calling thread.
    pub fn snapshot_blocking(
        &self,
        user: &str,
        mailbox_id: u64,
    ) -> Result<Option<(MailboxInfo, Vec<MessageState>)>, StoreError> {
        let txn = self.group_of(user)?.db().begin_read()?;
        snapshot_in(&txn, mailbox_id)
    }

    /// Metadata and (when `with_body`) bytes of some messages of a mailbox by
    /// id, in the order asked; expunged ones are left out.
    pub async fn fetch(
        self: &Arc<Self>,
        user: &str,
        mailbox_id: u64,
        uids: Vec<u32>,
        with_body: bool,
    ) -> Result<Vec<Fetched>, StoreError> {
        self.read(user, move |txn, bodies| {
            fetch_in(txn, bodies, mailbox_id, &uids, with_body)
        })
        .await
    }

    /// As [`Store::fetch`], on the calling thread (for background work
    /// that runs on its own threads).
    pub fn fetch_blocking(
        &self,
        user: &str,
        mailbox_id: u64,
        uids: &[u32],
        with_body: bool,
    ) -> Result<Vec<Fetched>, StoreError> {
        read_snapshot(self.group_of(user)?, |txn, bodies| {
            fetch_in(txn, bodies, mailbox_id, uids, with_body)
        })
    }

    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        user: &str,
        f: impl Fn(&redb::ReadTransaction, &bodies::BodyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.activity.fetch_add(1, Ordering::Relaxed);
        let group = self.group_of(user)?.clone();
        tokio::task::spawn_blocking(move || read_snapshot(&group, f))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// The user's mailboxes, sorted by name (empty for an unknown user).
    pub async fn mailboxes(
        self: &Arc<Self>,
        user: &str,
    ) -> Result<Vec<(String, MailboxInfo)>, StoreError> {
        let prefix = schema::mailbox_key(user, "");
        self.read(user, move |txn, _| {
            let t = txn.open_table(schema::MAILBOXES)?;
            let mut v = Vec::new();
            for row in t.range(prefix.as_str()..)? {
                let (k, val) = row?;
                let Some(name) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                v.push((name.to_string(), MailboxInfo::from_bytes(val.value())?));
            }
            Ok(v)
        })
        .await
    }

    /// (uid, metadata) of every message in a mailbox, by UID.
    pub async fn messages(
        self: &Arc<Self>,
        user: &str,
        mailbox: &str,
    ) -> Result<Vec<(u32, MessageMeta)>, StoreError> {
        let key = schema::mailbox_key(user, mailbox);
        let name = mailbox.to_string();
        self.read(user, move |txn, _| {
            let info =
                mailbox_info(txn, &key)?.ok_or_else(|| StoreError::NoSuchMailbox(name.clone()))?;
            let t = txn.open_table(schema::MESSAGES)?;
            let mut v = Vec::new();
            for row in t.range((info.id, 0)..=(info.id, u32::MAX))? {
                let (k, val) = row?;
                v.push((k.value().1, MessageMeta::from_bytes(val.value())?));
            }
            Ok(v)
        })
        .await
    }

    /// The exact stored bytes of one message.
    pub async fn raw(
        self: &Arc<Self>,
        user: &str,
        mailbox: &str,
        uid: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = schema::mailbox_key(user, mailbox);
        let name = mailbox.to_string();
        self.read(user, move |txn, bodies| {
            let info =
                mailbox_info(txn, &key)?.ok_or_else(|| StoreError::NoSuchMailbox(name.clone()))?;
            bodies::read(txn, bodies, (info.id, uid))
        })
        .await
    }

    /// Counters of every group (users and messages counted from a snapshot).
    pub fn status(&self) -> Result<Vec<GroupStatus>, StoreError> {
        let mut out = Vec::new();
        for g in &self.groups {
            let txn = g.db().begin_read()?;
            let s = &g.stats;
            let segments = bodies::list_segments(g.bodies.dir())?;
            out.push(GroupStatus {
                id: g.id,
                users: txn.open_table(schema::USERS)?.len()?,
                messages: txn.open_table(schema::MESSAGES)?.len()?,
                ops: s.ops.load(Ordering::Relaxed),
                records: s.records.load(Ordering::Relaxed),
                batches: s.batches.load(Ordering::Relaxed),
                fsyncs: s.fsyncs.load(Ordering::Relaxed),
                applied_lsn: s.applied_lsn.load(Ordering::Relaxed),
                checkpoint_lsn: s.checkpoint_lsn.load(Ordering::Relaxed),
                backup_lsn: Some(s.backup_lsn.load(Ordering::Relaxed)).filter(|b| *b != u64::MAX),
                wal_bytes: s.wal_bytes.load(Ordering::Relaxed),
                wal_segments: s.wal_segments.load(Ordering::Relaxed),
                db_bytes: std::fs::metadata(g.dir.join("store.redb"))
                    .map(|m| m.len())
                    .unwrap_or(0),
                body_bytes: segments
                    .iter()
                    .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                    .sum(),
                body_segments: segments.len() as u64,
                distinct_bodies: txn.open_table(schema::BLOBS)?.len()?,
            });
        }
        Ok(out)
    }

    /// Reclaims the mostly-dead body segments of every group (blocking:
    /// run it on a background thread); one report per group.
    pub fn reclaim_blocking(
        &self,
        dead_percent: u8,
    ) -> Result<Vec<(u32, reclaim::ReclaimReport)>, StoreError> {
        let mut out = Vec::new();
        for g in &self.groups {
            let mut r = reclaim::reclaim_group(g, dead_percent, &mut || {})?;
            // Then the database, if it is mostly free pages now.
            r.db_rebuilt = g.compact_blocking(self.cache_bytes, self.compact_min_bytes)?;
            out.push((g.id, r));
        }
        if out.iter().any(|(_, r)| r.segments > 0) {
            // Readers of a snapshot from before the moves may still be
            // reading the deleted segments; then their space is given back.
            std::thread::sleep(reclaim::RETIRED_GRACE);
            for g in &self.groups {
                g.bodies
                    .forget_retired(Duration::ZERO, reclaim::RELEASE_PAUSE);
            }
        }
        Ok(out)
    }

    /// As [`Store::reclaim_blocking`], on a background thread of its own.
    pub async fn reclaim(
        self: &Arc<Self>,
        dead_percent: u8,
    ) -> Result<Vec<(u32, reclaim::ReclaimReport)>, StoreError> {
        let store = self.clone();
        crate::background::run_alone("reclaim", move || store.reclaim_blocking(dead_percent))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }

    /// Checkpoints and stops every group writer.
    pub fn shutdown(&self) {
        for g in &self.groups {
            g.shutdown();
        }
    }
}

/// Runs `f` on a snapshot of `group`; again on a newer one when a reclaim
/// deleted a body segment the snapshot named (`BodyMoved`) or a rebuild
/// replaced the database.
fn read_snapshot<T>(
    group: &Group,
    f: impl Fn(&redb::ReadTransaction, &bodies::BodyStore) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut tries = 0;
    loop {
        let db = group.db();
        let result = db
            .begin_read()
            .map_err(StoreError::from)
            .and_then(|txn| f(&txn, &group.bodies));
        match result {
            // A rebuild switched the group to a new file meanwhile (the
            // old one may refuse new snapshots), or a reclaim deleted a
            // segment the snapshot named: again on the current state.
            Err(_) if tries < 3 && !Arc::ptr_eq(&db, &group.db()) => tries += 1,
            Err(StoreError::BodyMoved(_)) if tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn snapshot_in(
    txn: &redb::ReadTransaction,
    mailbox_id: u64,
) -> Result<Option<(MailboxInfo, Vec<MessageState>)>, StoreError> {
    let Some(key) = txn
        .open_table(schema::MAILBOX_IDS)?
        .get(mailbox_id)?
        .map(|k| k.value().to_string())
    else {
        return Ok(None);
    };
    let Some(info) = mailbox_info(txn, &key)? else {
        return Ok(None);
    };
    let t = txn.open_table(schema::MESSAGES)?;
    let mut v = Vec::new();
    for row in t.range((mailbox_id, 0)..=(mailbox_id, u32::MAX))? {
        let (k, val) = row?;
        let (internal_date, size, modseq, flags) = MessageMeta::state_from_bytes(val.value())?;
        v.push(MessageState {
            uid: k.value().1,
            flags,
            modseq,
            size,
            internal_date,
        });
    }
    Ok(Some((info, v)))
}

fn fetch_in(
    txn: &redb::ReadTransaction,
    store: &bodies::BodyStore,
    mailbox_id: u64,
    uids: &[u32],
    with_body: bool,
) -> Result<Vec<Fetched>, StoreError> {
    let metas = txn.open_table(schema::MESSAGES)?;
    let refs = txn.open_table(schema::BODY_REFS)?;
    let blobs = txn.open_table(schema::BLOBS)?;
    let mut v = Vec::with_capacity(uids.len());
    for &uid in uids {
        let Some(m) = metas.get((mailbox_id, uid))? else {
            continue;
        };
        let meta = MessageMeta::from_bytes(m.value())?;
        let body = if with_body {
            bodies::read_with(&refs, &blobs, store, (mailbox_id, uid))?
        } else {
            None
        };
        v.push((uid, meta, body));
    }
    Ok(v)
}

fn mailbox_info(txn: &redb::ReadTransaction, key: &str) -> Result<Option<MailboxInfo>, StoreError> {
    let t = txn.open_table(schema::MAILBOXES)?;
    Ok(t.get(key)?
        .map(|v| MailboxInfo::from_bytes(v.value()))
        .transpose()?)
}

/// The ids of every mailbox of `user`.
fn mailbox_ids(txn: &redb::ReadTransaction, user: &str) -> Result<Vec<u64>, StoreError> {
    let prefix = schema::mailbox_key(user, "");
    let boxes = txn.open_table(schema::MAILBOXES)?;
    let mut ids = Vec::new();
    for row in boxes.range(prefix.as_str()..)? {
        let (k, v) = row?;
        if !k.value().starts_with(prefix.as_str()) {
            break;
        }
        ids.push(MailboxInfo::from_bytes(v.value())?.id);
    }
    Ok(ids)
}
