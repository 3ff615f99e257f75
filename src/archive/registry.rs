//! The open user archives of a running server, shared by IMAP sessions and
//! the archive agent so that what an archiver appends is what a session
//! reads. Each archive is opened on first use; an unreachable archive root
//! is an error for that use only, never for the server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::file::{ArchiveError, UserArchive};
use super::format::user_dir_name;
use crate::config::{ArchiveConfig, ArchiveOverride};
use crate::store::{Fetched, MailboxInfo, MessageMeta, MessageState, Summary};

pub type Shared = Arc<Mutex<UserArchive>>;

/// Looks up a user's own archive policy (from users.toml).
pub type Overrides = Arc<dyn Fn(&str) -> Option<ArchiveOverride> + Send + Sync>;

pub struct Archives {
    root: PathBuf,
    limit: u64,
    open: Mutex<HashMap<String, Shared>>,
    overrides: Option<Overrides>,
}

/// The name of the virtual folder holding the whole archive; its children
/// (`Archive/INBOX`, `Archive/Sent`, ...) show the mail by original folder.
pub const FOLDER: &str = "Archive";

impl Archives {
    pub fn new(cfg: &ArchiveConfig) -> Archives {
        Archives {
            root: cfg.root.clone(),
            limit: cfg.file_limit_mib << 20,
            open: Mutex::new(HashMap::new()),
            overrides: None,
        }
    }

    /// Adds the per-user policy lookup.
    pub fn with_overrides(mut self, f: Overrides) -> Archives {
        self.overrides = Some(f);
        self
    }

    /// The archive policy that applies to `user`.
    pub fn policy(&self, base: &ArchiveConfig, user: &str) -> ArchiveConfig {
        let o = self.overrides.as_ref().and_then(|f| f(user));
        base.for_user(user, o.as_ref())
    }

    /// The user's archive, opened (and created) on first use.
    pub async fn get(&self, user: &str) -> Result<Shared, ArchiveError> {
        if let Some(a) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return Ok(a.clone());
        }
        let dir = self.root.join(user_dir_name(user));
        let root = self.root.clone();
        let limit = self.limit;
        let opened = tokio::task::spawn_blocking(move || {
            if !root.is_dir() {
                return Err(ArchiveError::Io {
                    path: root,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "archive root is missing (is the NAS mounted?)",
                    ),
                });
            }
            UserArchive::open(&dir, limit, true)
        })
        .await
        .map_err(|e| ArchiveError::Io {
            path: self.root.clone(),
            source: std::io::Error::other(e),
        })??;
        let shared = Arc::new(Mutex::new(opened));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        Ok(open.entry(user.to_string()).or_insert(shared).clone())
    }

    /// Forgets an open archive (after an I/O error, so the next use reopens).
    pub fn forget(&self, user: &str) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }
}

/// Splits a mailbox name into the archive folder it shows: `Some(None)` for
/// `Archive` itself (everything), `Some(Some(f))` for `Archive/f`, `None`
/// for a current-store mailbox.
pub fn archive_folder(name: &str) -> Option<Option<&str>> {
    if name == FOLDER {
        return Some(None);
    }
    name.strip_prefix(FOLDER)
        .and_then(|r| r.strip_prefix('/'))
        .map(Some)
}

/// UIDVALIDITY of an archive folder: archive UIDs are never reused, so it
/// only has to be stable and distinct per folder name.
pub fn uidvalidity(folder: Option<&str>) -> u32 {
    let key = format!("archive/{}", folder.unwrap_or(""));
    crc32c::crc32c(key.as_bytes()) | 1
}

/// The archive folder a message recorded under `folder` shows in: the
/// agent records the current folder it came from (`INBOX` →
/// `Archive/INBOX`), a client's APPEND, COPY or MOVE the archive folder it
/// named (`Archive` → "", `Archive/2024` → "2024").
pub fn shows_in(recorded: &str, folder: Option<&str>, all_in_one: bool) -> bool {
    match folder {
        None => all_in_one || recorded.is_empty(),
        Some(f) => recorded == f,
    }
}

/// The archive folder as a mailbox: info and message states. Every
/// message is in exactly one folder, unless `all_in_one` makes `Archive`
/// show them all.
pub fn snapshot(
    a: &UserArchive,
    folder: Option<&str>,
    all_in_one: bool,
) -> (MailboxInfo, Vec<MessageState>) {
    let msgs: Vec<MessageState> = a
        .entries()
        .filter(|e| shows_in(&e.folder, folder, all_in_one))
        .map(|e| MessageState {
            uid: e.auid,
            flags: e.flags.clone(),
            modseq: 1,
            size: e.size,
            internal_date: e.internal_date,
        })
        .collect();
    let info = MailboxInfo {
        id: 0,
        uidvalidity: uidvalidity(folder),
        uidnext: a.next_auid(),
        highestmodseq: 1,
        special_use: if folder.is_none() {
            "\\Archive".into()
        } else {
            String::new()
        },
        digest: None,
    };
    (info, msgs)
}

/// The archive folders below `Archive`, sorted: those with archived mail
/// and those clients created.
pub fn folders(a: &UserArchive) -> Vec<String> {
    let mut v: Vec<String> = a
        .entries()
        .filter(|e| !e.folder.is_empty())
        .map(|e| e.folder.clone())
        .chain(a.created_folders().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Messages as FETCH and SEARCH load them from the current store.
pub fn load(a: &UserArchive, uids: &[u32]) -> Result<Vec<Fetched>, ArchiveError> {
    let mut out = Vec::with_capacity(uids.len());
    for uid in uids {
        if a.entry(*uid).is_none() {
            continue;
        }
        let m = a.read(*uid)?;
        let meta = MessageMeta {
            internal_date: m.entry.internal_date,
            size: m.entry.size,
            modseq: 1,
            flags: m.entry.flags.clone(),
            summary: Summary::parse(&m.raw),
        };
        out.push((*uid, meta, Some(m.raw.to_vec())));
    }
    Ok(out)
}
