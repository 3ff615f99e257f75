//! The virtual Archive folders: `Archive` shows every archived message of
//! the user, `Archive/INBOX`, `Archive/Sent`, ... the ones archived from
//! that folder. They read the user's archive files through the server's
//! archive registry; when the archive root is unreachable they answer
//! `NO [UNAVAILABLE]` and nothing else is affected.

use crate::archive::format::Record;
use crate::archive::registry::{self, FOLDER};
use crate::store::ops::apply_flags;
use crate::store::{Delivery, Fetched, FlagAction, MailboxInfo, MessageState, Op, Outcome};

use super::core::Ctx;
use super::view::View;

/// Why an archive folder cannot be shown.
pub enum ArchiveProblem {
    /// The detail (paths, OS errors) is for the log, never for the client.
    Unavailable(String),
    NoSuchFolder,
}

/// Why archived mail could not be deleted.
pub enum DeleteRefused {
    /// The user is on legal hold (the client is told so).
    LegalHold,
    /// The archive could not be written; the detail is for the log.
    Unavailable(String),
}

impl Ctx {
    /// The user's archive, or why it cannot be opened.
    async fn own_archive(&self, user: &str) -> Result<crate::archive::registry::Shared, String> {
        self.app.archives.get(user).await.map_err(|e| e.to_string())
    }

    /// The archive folder's info and messages.
    pub async fn archive_snapshot(
        &self,
        user: &str,
        folder: Option<&str>,
    ) -> Result<(MailboxInfo, Vec<MessageState>), ArchiveProblem> {
        let shared = self
            .own_archive(user)
            .await
            .map_err(ArchiveProblem::Unavailable)?;
        let a = shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = folder
            && !registry::folders(&a).iter().any(|x| x == f)
        {
            return Err(ArchiveProblem::NoSuchFolder);
        }
        let all_in_one = self.app.config.archive.all_in_one;
        Ok(registry::snapshot(&a, folder, all_in_one))
    }

    /// Names of the archive folders to list (`Archive` first); just
    /// `Archive` when the archive cannot be read right now.
    pub async fn archive_folder_names(&self, user: &str) -> Vec<String> {
        if !self.archive_visible(user) {
            return Vec::new();
        }
        let mut names = vec![FOLDER.to_string()];
        if let Ok(shared) = self.app.archives.get(user).await {
            let a = shared.lock().unwrap_or_else(|p| p.into_inner());
            names.extend(
                registry::folders(&a)
                    .into_iter()
                    .map(|f| format!("{FOLDER}/{f}")),
            );
        }
        names
    }

    /// Messages of the selected mailbox, from the store or the archive.
    pub async fn load_messages(
        &self,
        user: &str,
        view: &View,
        uids: Vec<u32>,
        with_body: bool,
    ) -> Result<Vec<Fetched>, String> {
        if view.archive.is_none() {
            return self
                .app
                .store
                .fetch(user, view.id, uids, with_body)
                .await
                .map_err(|e| e.to_string());
        }
        let shared = self.own_archive(user).await?;
        tokio::task::spawn_blocking(move || {
            let a = shared.lock().unwrap_or_else(|p| p.into_inner());
            registry::load(&a, &uids).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The archive policy of `user` (global + users.toml).
    pub fn archive_policy(&self, user: &str) -> crate::config::ArchiveConfig {
        self.app.archives.policy(&self.app.config.archive, user)
    }

    /// Whether the Archive folders are shown at all.
    pub fn archive_visible(&self, user: &str) -> bool {
        self.archive_policy(user).access != "hidden"
    }

    /// Whether clients may change archived mail (flags, delete, move out).
    pub fn archive_writable(&self, user: &str) -> bool {
        self.archive_policy(user).access == "read-write"
    }

    /// Whether an archive folder exists: `Archive` always, a folder below
    /// it while it has mail or after a client created it.
    pub async fn archive_folder_exists(
        &self,
        user: &str,
        folder: Option<&str>,
    ) -> Result<bool, String> {
        let Some(f) = folder else { return Ok(true) };
        let shared = self.own_archive(user).await?;
        let a = shared.lock().unwrap_or_else(|p| p.into_inner());
        Ok(registry::folders(&a).iter().any(|x| x == f))
    }

    /// CREATE (`present`) or DELETE of a folder below `Archive`. Deleting
    /// is refused while the folder has mail (`Ok(false)`).
    pub async fn archive_make_folder(
        &self,
        user: &str,
        name: &str,
        present: bool,
    ) -> Result<bool, String> {
        let shared = self.own_archive(user).await?;
        let name = name.to_string();
        let done = tokio::task::spawn_blocking(move || {
            let mut a = shared.lock().unwrap_or_else(|p| p.into_inner());
            if !present && a.entries().any(|e| e.folder == name) {
                return Ok(false);
            }
            a.append(&[Record::Folder { name, present }])?;
            Ok::<_, crate::archive::file::ArchiveError>(true)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.app.store.notify(user);
        Ok(done)
    }

    /// APPEND into an archive folder: the message is archived at once
    /// (written to the user's archive file and fsynced) under that folder.
    /// Returns its archive UID.
    pub async fn archive_new_message(
        &self,
        user: &str,
        folder: &str,
        flags: Vec<String>,
        internal_date: i64,
        raw: Vec<u8>,
    ) -> Result<u32, String> {
        let shared = self.own_archive(user).await?;
        let folder = folder.to_string();
        let raw = std::sync::Arc::new(raw);
        let auid = tokio::task::spawn_blocking(move || {
            let mut a = shared.lock().unwrap_or_else(|p| p.into_inner());
            let auid = a.next_auid();
            let record = Record::Message {
                auid,
                folder,
                flags,
                internal_date,
                archived_at: chrono::Utc::now().timestamp(),
                // Not from the current store: nothing to reconcile.
                origin: crate::archive::format::Origin {
                    mailbox_id: 0,
                    uidvalidity: 0,
                    uid: 0,
                },
                raw,
            };
            a.append(&[record])?;
            Ok::<_, crate::archive::file::ArchiveError>(auid)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.app.store.notify(user);
        Ok(auid)
    }

    /// Appends records to the user's archive and wakes the user's sessions.
    async fn archive_append(&self, user: &str, records: Vec<Record>) -> Result<(), String> {
        let shared = self.own_archive(user).await?;
        tokio::task::spawn_blocking(move || {
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&records)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.app.store.notify(user);
        Ok(())
    }

    /// STORE in an archive folder: a Flags record per changed message.
    /// Returns (uid, new flags) of the changed ones.
    pub async fn archive_store(
        &self,
        user: &str,
        view: &mut View,
        uids: &[u32],
        action: FlagAction,
        flags: &[String],
    ) -> Result<Vec<(u32, Vec<String>)>, String> {
        let mut changed = Vec::new();
        for u in uids {
            if let Some(e) = view.entry_ref(*u) {
                let before = e.flags();
                let after = apply_flags(&before, action, flags);
                if after != before {
                    changed.push((*u, after));
                }
            }
        }
        let records = changed
            .iter()
            .map(|(auid, f)| Record::Flags {
                auid: *auid,
                flags: f.clone(),
            })
            .collect();
        self.archive_append(user, records).await?;
        for (u, f) in &changed {
            if let Some(e) = view.entry_mut(*u) {
                e.set_flags(f);
            }
        }
        Ok(changed)
    }

    /// Deletes archived messages (EXPUNGE in an archive folder, or MOVE
    /// out). Refused for users on legal hold.
    pub async fn archive_delete(&self, user: &str, auids: Vec<u32>) -> Result<(), DeleteRefused> {
        if auids.is_empty() {
            return Ok(());
        }
        if self.archive_policy(user).on_hold(user) {
            return Err(DeleteRefused::LegalHold);
        }
        let records = auids
            .into_iter()
            .map(|auid| Record::Delete { auid })
            .collect();
        self.archive_append(user, records)
            .await
            .map_err(DeleteRefused::Unavailable)
    }

    /// Answers an archive failure: the detail goes to the log, the client
    /// gets `NO [UNAVAILABLE]` and a short reason.
    pub fn archive_unavailable(
        &mut self,
        user: &str,
        tag: &imap_types::core::Tag<'_>,
        detail: &str,
    ) {
        tracing::warn!(user = %user, error = %detail, "archive unavailable");
        self.no(
            tag,
            Some(super::code("UNAVAILABLE")),
            "The archive is unavailable right now; current folders work as usual",
        );
    }

    pub fn archive_problem(
        &mut self,
        user: &str,
        tag: &imap_types::core::Tag<'_>,
        p: ArchiveProblem,
    ) {
        match p {
            ArchiveProblem::Unavailable(why) => self.archive_unavailable(user, tag, &why),
            ArchiveProblem::NoSuchFolder => self.no(
                tag,
                Some(super::code("NONEXISTENT")),
                "No such archive folder",
            ),
        }
    }

    /// Answers a refused delete of archived mail.
    pub fn delete_refused(
        &mut self,
        user: &str,
        tag: &imap_types::core::Tag<'_>,
        why: DeleteRefused,
    ) {
        match why {
            DeleteRefused::LegalHold => self.no(
                tag,
                Some(super::code("CANNOT")),
                "Legal hold: archived mail of this user cannot be deleted",
            ),
            DeleteRefused::Unavailable(detail) => self.archive_unavailable(user, tag, &detail),
        }
    }

    /// Restores archived messages into a current mailbox (COPY or MOVE out
    /// of an archive folder): same bytes, flags and internal date, in
    /// batches of one logged step (one fsync) each. A MOVE is one
    /// crash-safe operation: the store remembers the archive UIDs with the
    /// restored messages, then the archive copies are deleted, then the
    /// store forgets them; a crash in between is finished at the next
    /// start (`archive::agent::reconcile`). Returns (archive UID, new UID)
    /// pairs and the mailbox's UIDVALIDITY.
    pub async fn archive_restore(
        &self,
        user: &str,
        view: &View,
        auids: Vec<u32>,
        mailbox: &str,
        moving: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), RestoreProblem> {
        let mut pairs = Vec::new();
        let mut validity = 0;
        for chunk in auids.chunks(RESTORE_BATCH) {
            let loaded = self
                .load_messages(user, view, chunk.to_vec(), true)
                .await
                .map_err(RestoreProblem::Archive)?;
            let messages = loaded
                .into_iter()
                .map(|(auid, meta, body)| {
                    let d = Delivery {
                        user: user.to_string(),
                        mailbox: mailbox.to_string(),
                        summary: meta.summary,
                        raw: std::sync::Arc::new(body.unwrap_or_default()),
                        internal_date: meta.internal_date,
                        flags: meta.flags,
                    };
                    (auid, d)
                })
                .collect();
            let op = Op::Restore {
                user: user.to_string(),
                mailbox: mailbox.to_string(),
                messages,
                moving,
            };
            let (mailbox_id, done) = match self.app.store.submit(user, op).await {
                Ok(Outcome::Restored {
                    uidvalidity,
                    mailbox_id,
                    pairs,
                }) => {
                    validity = uidvalidity;
                    (mailbox_id, pairs)
                }
                Ok(_) => continue,
                Err(e) => return Err(RestoreProblem::Store(e)),
            };
            if moving && !done.is_empty() {
                crate::archive::agent::failpoint("restore-before-archive-delete");
                let gone: Vec<u32> = done.iter().map(|(a, _)| *a).collect();
                self.archive_delete(user, gone)
                    .await
                    .map_err(RestoreProblem::Delete)?;
                crate::archive::agent::failpoint("restore-after-archive-delete");
                let uids = done.iter().map(|(_, u)| *u).collect();
                self.app
                    .store
                    .submit(user, Op::RestoreSettled { mailbox_id, uids })
                    .await
                    .map_err(RestoreProblem::Store)?;
            }
            pairs.extend(done);
        }
        Ok((validity, pairs))
    }
}

/// Messages restored per logged step (and archive delete).
const RESTORE_BATCH: usize = 256;

/// Why a restore stopped (what was done before stays done).
pub enum RestoreProblem {
    Archive(String),
    Store(crate::store::StoreError),
    Delete(DeleteRefused),
}
