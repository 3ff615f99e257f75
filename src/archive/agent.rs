//! The old-mail archiver activity (the archive agent): seekers find and tag
//! aged mail, a bounded queue hands users over, archivers move each user's
//! tagged mail into that user's archive file.
//!
//! Exactly once: an archiver appends a user's tagged messages to the archive
//! file and fsyncs it *before* it removes them from the current store in one
//! logged step. A crash in between leaves the messages in both places; the
//! archive records carry each message's origin (mailbox id, UIDVALIDITY,
//! UID), so [`reconcile`] (run at start-up and at the start of every run)
//! finishes the removal instead of archiving twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Mutex, mpsc};

use super::file::ArchiveError;
use super::format::{Origin, Record, user_dir_name};
use super::registry::Archives;
use crate::config::ArchiveConfig;
use crate::store::{MailboxInfo, Op, Store, StoreError};

/// Counters of a run, shared with `tiermail status`.
#[derive(Debug, Default)]
pub struct Progress {
    pub users_total: AtomicUsize,
    pub users_done: AtomicUsize,
    pub tagged: AtomicU64,
    pub archived: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Archived messages deleted by retention.
    pub expired: AtomicU64,
    /// Users handled by each seeker and each archiver.
    pub per_seeker: std::sync::Mutex<Vec<usize>>,
    pub per_archiver: std::sync::Mutex<Vec<usize>>,
}

impl Progress {
    pub fn summary(&self) -> String {
        format!(
            "users {}/{}, tagged {}, archived {} ({} bytes), expired {}, errors {}",
            self.users_done.load(Ordering::Relaxed),
            self.users_total.load(Ordering::Relaxed),
            self.tagged.load(Ordering::Relaxed),
            self.archived.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.expired.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("archive root {0} is not available: {1}")]
    Unavailable(PathBuf, std::io::Error),
    #[error("archive worker: {0}")]
    Worker(std::io::Error),
}

pub fn user_dir(cfg: &ArchiveConfig, user: &str) -> PathBuf {
    cfg.root.join(user_dir_name(user))
}

/// Checks that the archive root exists and is writable. It is never
/// created here: on a NAS whose mount is missing that would quietly put the
/// archive on the local disk (the server creates the default root inside
/// its data directory at start-up).
pub fn check_root(cfg: &ArchiveConfig) -> Result<(), AgentError> {
    let missing = || {
        AgentError::Unavailable(
            cfg.root.clone(),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing (is the NAS mounted?)",
            ),
        )
    };
    if !cfg.root.is_dir() {
        return Err(missing());
    }
    let probe = cfg.root.join(".tiermail-probe");
    std::fs::write(&probe, b"ok").map_err(|e| AgentError::Unavailable(cfg.root.clone(), e))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

pub(crate) fn failpoint(name: &str) {
    crate::failpoint::hit(name);
}

/// The archive activity as the server holds it: one run at a time, the
/// last result kept for `tiermail status`.
#[derive(Debug, Default)]
pub struct Activity {
    running: std::sync::atomic::AtomicBool,
    current: std::sync::Mutex<Option<Arc<Progress>>>,
    last: std::sync::Mutex<Option<String>>,
    next: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    last_progress: std::sync::Mutex<Option<Arc<Progress>>>,
}

impl Activity {
    /// Runs once unless a run is already under way (then says so).
    pub async fn run_once(
        &self,
        store: Arc<Store>,
        archives: Arc<Archives>,
        cfg: Arc<ArchiveConfig>,
    ) -> Result<String, String> {
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err("an archive run is already in progress".into());
        }
        let progress = Arc::new(Progress::default());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(progress.clone());
        let started = chrono::Utc::now();
        let result = run(store, archives, cfg, progress.clone()).await;
        let line = match &result {
            Ok(()) => format!(
                "archive: last run {} ok: {}",
                started.format("%F %T UTC"),
                progress.summary()
            ),
            Err(e) => format!(
                "archive: last run {} failed: {e}",
                started.format("%F %T UTC")
            ),
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(line.clone());
        *self.last_progress.lock().unwrap_or_else(|p| p.into_inner()) = Some(progress.clone());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.running.store(false, Ordering::SeqCst);
        result.map(|()| line).map_err(|e| e.to_string())
    }

    /// The counters of the last finished run.
    pub fn last_progress(&self) -> Option<Arc<Progress>> {
        self.last_progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records when the scheduler will start the next run.
    pub fn set_next(&self, next: Option<chrono::DateTime<chrono::Utc>>) {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Lines for `tiermail status`: the current or last run, the next one.
    pub fn status(&self) -> String {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| format!("archive: running: {}", p.summary()));
        let now = current.unwrap_or_else(|| {
            self.last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "archive: no run since start".into())
        });
        let next = match *self.next.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(t) => format!("archive: next run {}", t.format("%F %T UTC")),
            None => "archive: next run: none scheduled".into(),
        };
        format!("{now}\n{next}")
    }
}

/// Runs the activity once over every user.
pub async fn run(
    store: Arc<Store>,
    archives: Arc<Archives>,
    cfg: Arc<ArchiveConfig>,
    progress: Arc<Progress>,
) -> Result<(), AgentError> {
    check_root(&cfg)?;
    reconcile(&store, &archives, &cfg).await?;
    let users = store.users();
    progress.users_total.store(users.len(), Ordering::Relaxed);
    let seekers = cfg.seeker_count().min(users.len()).max(1);
    let archivers = cfg.archiver_count().max(1);
    *progress
        .per_seeker
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = vec![0; seekers];
    *progress
        .per_archiver
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = vec![0; archivers];
    let (tx, rx) = mpsc::channel::<String>(cfg.queue.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let now = chrono::Utc::now().timestamp();

    let mut archiver_tasks = Vec::new();
    for a in 0..archivers {
        let (store, progress, rx) = (store.clone(), progress.clone(), rx.clone());
        let archives = archives.clone();
        archiver_tasks.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(user) = next else { break };
                if let Err(e) = archive_user(&store, &archives, &progress, &user).await {
                    archives.forget(&user);
                    tracing::error!(user = %user, error = %e, "archiving failed for this user; others go on");
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                let done = progress.users_done.fetch_add(1, Ordering::Relaxed) + 1;
                progress.per_archiver.lock().unwrap_or_else(|p| p.into_inner())[a] += 1;
                let total = progress.users_total.load(Ordering::Relaxed).max(1);
                if done * 10 / total != (done - 1) * 10 / total {
                    tracing::info!(progress = %progress.summary(), "archive run progress");
                }
            }
        }));
    }
    // Seekers: user i goes to seeker i % S.
    let mut seeker_tasks = Vec::new();
    for s in 0..seekers {
        let mine: Vec<String> = users.iter().skip(s).step_by(seekers).cloned().collect();
        let (store, cfg, progress, tx) = (store.clone(), cfg.clone(), progress.clone(), tx.clone());
        let archives = archives.clone();
        seeker_tasks.push(tokio::spawn(async move {
            for user in mine {
                let policy = archives.policy(&cfg, &user);
                match seek_user(&store, &policy, &progress, &user, now).await {
                    Ok(true) => {
                        if tx.send(user).await.is_err() {
                            break;
                        }
                    }
                    Ok(false) => {
                        progress.users_done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(user = %user, error = %e, "seeking failed for this user");
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        progress.users_done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                progress
                    .per_seeker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())[s] += 1;
            }
        }));
    }
    drop(tx);
    for t in seeker_tasks {
        let _ = t.await;
    }
    for t in archiver_tasks {
        let _ = t.await;
    }
    {
        for user in store.users() {
            let policy = archives.policy(&cfg, &user);
            if let Err(e) = expire_user(&archives, &policy, &progress, &user, now).await {
                tracing::error!(user = %user, error = %e, "retention failed for this user");
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tracing::info!(progress = %progress.summary(), "archive run finished");
    Ok(())
}

/// What the policy selects in one user's current folders: per folder
/// (name, mailbox id, selected (uid, size)).
pub async fn select(
    store: &Arc<Store>,
    cfg: &ArchiveConfig,
    user: &str,
    now: i64,
) -> Result<Vec<(String, u64, Vec<(u32, u32)>)>, AgentError> {
    let watermark = now - i64::from(cfg.age_days) * 86_400;
    let has = |flags: &[String], f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f));
    let mut out = Vec::new();
    for (name, info) in store.mailboxes(user).await? {
        if cfg
            .exclude_folders
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&name))
        {
            continue;
        }
        // Read at background priority: seekers walk every mailbox.
        let (reader, who, id) = (store.clone(), user.to_string(), info.id);
        let Some((_, msgs)) = crate::background::run(move || reader.snapshot_blocking(&who, id))
            .await
            .map_err(AgentError::Worker)??
        else {
            continue;
        };
        let picked: Vec<(u32, u32)> = msgs
            .iter()
            .filter(|m| m.internal_date < watermark)
            .filter(|m| !(cfg.keep_flagged && has(&m.flags, "\\Flagged")))
            .filter(|m| !cfg.only_seen || has(&m.flags, "\\Seen"))
            .filter(|m| m.size >= cfg.min_size)
            .map(|m| (m.uid, m.size))
            .collect();
        if !picked.is_empty() {
            out.push((name, info.id, picked));
        }
    }
    Ok(out)
}

/// The dry run: per user and folder, how many messages and bytes the
/// current policy would move now. Changes nothing.
pub async fn simulate(
    store: &Arc<Store>,
    archives: &Archives,
    cfg: &ArchiveConfig,
    only: Option<&str>,
) -> Result<Vec<(String, String, usize, u64)>, AgentError> {
    let now = chrono::Utc::now().timestamp();
    let mut rows = Vec::new();
    for user in store.users() {
        if only.is_some_and(|u| !u.eq_ignore_ascii_case(&user)) {
            continue;
        }
        let policy = archives.policy(cfg, &user);
        for (folder, _, picked) in select(store, &policy, &user, now).await? {
            let bytes = picked.iter().map(|(_, s)| u64::from(*s)).sum();
            rows.push((user.clone(), folder, picked.len(), bytes));
        }
    }
    Ok(rows)
}

/// The dry run as a table.
pub fn simulation_table(rows: &[(String, String, usize, u64)]) -> String {
    let mut out = String::from("user\tfolder\tmessages\tbytes\n");
    let (mut n, mut b) = (0usize, 0u64);
    for (user, folder, count, bytes) in rows {
        out.push_str(&format!("{user}\t{folder}\t{count}\t{bytes}\n"));
        n += count;
        b += bytes;
    }
    out.push_str(&format!("total\t\t{n}\t{b}\n"));
    out
}

/// Tags what the policy selects; true when the user has tagged mail (new or
/// left from an interrupted run).
async fn seek_user(
    store: &Arc<Store>,
    cfg: &ArchiveConfig,
    progress: &Progress,
    user: &str,
    now: i64,
) -> Result<bool, AgentError> {
    for (_, mailbox_id, picked) in select(store, cfg, user, now).await? {
        let op = Op::Tag {
            mailbox_id,
            uids: picked.into_iter().map(|(u, _)| u).collect(),
        };
        if let crate::store::Outcome::Tagged { count } = store.submit(user, op).await? {
            progress.tagged.fetch_add(count as u64, Ordering::Relaxed);
        }
        failpoint("archive-after-tag");
    }
    Ok(!store.tagged(user).await?.is_empty())
}

/// Messages fetched from the store per archive append.
const BATCH: usize = 256;

async fn archive_user(
    store: &Arc<Store>,
    archives: &Archives,
    progress: &Progress,
    user: &str,
) -> Result<(), AgentError> {
    let tagged = store.tagged(user).await?;
    if tagged.is_empty() {
        return Ok(());
    }
    let boxes: BTreeMap<u64, (String, MailboxInfo)> = store
        .mailboxes(user)
        .await?
        .into_iter()
        .map(|(n, i)| (i.id, (n, i)))
        .collect();
    let archive = archives.get(user).await?;
    let mut by_box: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (mb, uid) in tagged {
        by_box.entry(mb).or_default().push(uid);
    }
    for (mb, uids) in by_box {
        let Some((folder, info)) = boxes.get(&mb).cloned() else {
            continue;
        };
        for chunk in uids.chunks(BATCH) {
            let (n, bytes, _) =
                move_batch(store, &archive, user, mb, &folder, &info, chunk, true).await?;
            progress.archived.fetch_add(n, Ordering::Relaxed);
            progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Appends messages of one current mailbox to the user's archive (fsynced)
/// and, when `remove`, then takes them out of the current store. Messages
/// already archived from the same origin are not appended again. Returns
/// (messages appended, bytes appended, (uid, archive UID) pairs).
#[allow(clippy::too_many_arguments)]
async fn move_batch(
    store: &Arc<Store>,
    archive: &super::registry::Shared,
    user: &str,
    mb: u64,
    folder: &str,
    info: &MailboxInfo,
    uids: &[u32],
    remove: bool,
) -> Result<(u64, u64, Vec<(u32, u32)>), AgentError> {
    let folder = folder.to_string();
    let uidvalidity = info.uidvalidity;
    let shared = archive.clone();
    let (reader, user_name, wanted) = (store.clone(), user.to_string(), uids.to_vec());
    // Checking what is already archived and appending happen under one
    // lock, so two movers of the same user never archive a message twice.
    let (n, bytes, pairs, done) = crate::background::run(move || {
        let loaded = reader.fetch_blocking(&user_name, mb, &wanted, true)?;
        let done: Vec<u32> = loaded.iter().map(|(uid, ..)| *uid).collect();
        let mut a = shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut auid = a.next_auid();
        let mut records = Vec::new();
        let mut pairs = Vec::new();
        let mut bytes = 0u64;
        for (uid, meta, body) in loaded {
            let origin = Origin {
                mailbox_id: mb,
                uidvalidity,
                uid,
            };
            if remove && a.has_origin(&origin) {
                continue; // archived before an interruption
            }
            let raw = Arc::new(body.unwrap_or_default());
            bytes += raw.len() as u64;
            pairs.push((uid, auid));
            records.push(Record::Message {
                auid,
                folder: folder.clone(),
                flags: meta.flags,
                internal_date: meta.internal_date,
                archived_at: chrono::Utc::now().timestamp(),
                origin,
                raw,
            });
            auid += 1;
        }
        failpoint("archive-before-append");
        a.append(&records)?;
        Ok::<_, AgentError>((records.len() as u64, bytes, pairs, done))
    })
    .await
    .map_err(AgentError::Worker)??;
    failpoint("archive-after-append");
    if remove && !done.is_empty() {
        store
            .submit(
                user,
                Op::Archived {
                    mailbox_id: mb,
                    uids: done,
                },
            )
            .await?;
        failpoint("archive-after-remove");
    }
    Ok((n, bytes, pairs))
}

/// MOVE (or COPY) into an archive folder from IMAP: these messages of one
/// current mailbox are archived now, recorded under `into` (the archive
/// folder the client named: "" for `Archive`, `2024` for `Archive/2024`).
/// A MOVE tags them first, so a crash halfway is finished like an agent
/// run. Returns (uid, archive UID) pairs.
pub async fn archive_now(
    store: &Arc<Store>,
    archives: &Archives,
    user: &str,
    mailbox: &str,
    uids: Vec<u32>,
    remove: bool,
    into: &str,
) -> Result<Vec<(u32, u32)>, AgentError> {
    let info = store
        .mailbox(user, mailbox)
        .await?
        .ok_or_else(|| StoreError::NoSuchMailbox(mailbox.to_string()))?;
    let archive = archives.get(user).await?;
    if remove {
        store
            .submit(
                user,
                Op::Tag {
                    mailbox_id: info.id,
                    uids: uids.clone(),
                },
            )
            .await?;
    }
    let mut pairs = Vec::new();
    for chunk in uids.chunks(BATCH) {
        let (_, _, p) =
            move_batch(store, &archive, user, info.id, into, &info, chunk, remove).await?;
        pairs.extend(p);
    }
    Ok(pairs)
}

/// Retention: deletes this user's archived mail older than the retention
/// period and rewrites the archive files without it. Users on legal hold
/// are skipped.
async fn expire_user(
    archives: &Archives,
    cfg: &ArchiveConfig,
    progress: &Progress,
    user: &str,
    now: i64,
) -> Result<(), AgentError> {
    if cfg.retention_days == 0 || cfg.on_hold(user) || !user_dir(cfg, user).exists() {
        return Ok(());
    }
    let limit = now - i64::from(cfg.retention_days) * 86_400;
    let shared = archives.get(user).await?;
    let expired = tokio::task::spawn_blocking(move || {
        let mut a = shared.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<Record> = a
            .entries()
            .filter(|e| e.internal_date < limit)
            .map(|e| Record::Delete { auid: e.auid })
            .collect();
        let n = doomed.len() as u64;
        if n > 0 {
            a.append(&doomed)?;
            a.compact()?;
        }
        Ok::<_, ArchiveError>(n)
    })
    .await
    .map_err(|e| AgentError::Worker(std::io::Error::other(e)))??;
    progress.expired.fetch_add(expired, Ordering::Relaxed);
    Ok(())
}

/// Finishes moves out of the archive a crash interrupted: messages already
/// restored into the current store lose their archive copies (unless the
/// user is on legal hold, which keeps both), and the store forgets them.
/// Returns how many archive copies were deleted.
async fn settle_restores(
    store: &Arc<Store>,
    archives: &Archives,
    cfg: &ArchiveConfig,
) -> Result<u64, AgentError> {
    if !store.has_restored()? {
        return Ok(0);
    }
    let mut deleted = 0;
    for user in store.users() {
        let restored = store.restored(&user).await?;
        if restored.is_empty() {
            continue;
        }
        if user_dir(cfg, &user).exists() && !cfg.on_hold(&user) {
            let archive = archives.get(&user).await?;
            let auids: Vec<u32> = restored.iter().map(|(_, _, a)| *a).collect();
            let n = crate::background::run(move || {
                let mut a = archive.lock().unwrap_or_else(|p| p.into_inner());
                let doomed: Vec<Record> = auids
                    .into_iter()
                    .filter(|auid| a.entry(*auid).is_some())
                    .map(|auid| Record::Delete { auid })
                    .collect();
                a.append(&doomed)?;
                Ok::<_, AgentError>(doomed.len() as u64)
            })
            .await
            .map_err(AgentError::Worker)??;
            deleted += n;
        }
        let mut by_box: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (mb, uid, _) in restored {
            by_box.entry(mb).or_default().push(uid);
        }
        for (mailbox_id, uids) in by_box {
            store
                .submit(&user, Op::RestoreSettled { mailbox_id, uids })
                .await?;
        }
    }
    if deleted > 0 {
        tracing::info!(
            deleted,
            "finished moves out of the archive interrupted by a crash"
        );
    }
    Ok(deleted)
}

/// Finishes moves a crash interrupted: tagged messages already in the
/// user's archive file are removed from the current store. Returns how
/// many were removed.
pub async fn reconcile(
    store: &Arc<Store>,
    archives: &Archives,
    cfg: &ArchiveConfig,
) -> Result<u64, AgentError> {
    let mut removed = settle_restores(store, archives, cfg).await?;
    // The usual case (nothing was interrupted) costs one look per group,
    // not one per user.
    if !store.has_tagged()? {
        return Ok(removed);
    }
    for user in store.users() {
        let tagged = store.tagged(&user).await?;
        if tagged.is_empty() || !user_dir(cfg, &user).exists() {
            continue;
        }
        let archive = archives.get(&user).await?;
        let boxes: BTreeMap<u64, MailboxInfo> = store
            .mailboxes(&user)
            .await?
            .into_iter()
            .map(|(_, i)| (i.id, i))
            .collect();
        let mut by_box: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        {
            let a = archive.lock().unwrap_or_else(|p| p.into_inner());
            for (mb, uid) in tagged {
                let Some(info) = boxes.get(&mb) else { continue };
                let origin = Origin {
                    mailbox_id: mb,
                    uidvalidity: info.uidvalidity,
                    uid,
                };
                if a.has_origin(&origin) {
                    by_box.entry(mb).or_default().push(uid);
                }
            }
        }
        for (mb, uids) in by_box {
            removed += uids.len() as u64;
            store
                .submit(
                    &user,
                    Op::Archived {
                        mailbox_id: mb,
                        uids,
                    },
                )
                .await?;
        }
    }
    if removed > 0 {
        tracing::info!(removed, "finished archive moves interrupted by a crash");
    }
    Ok(removed)
}
