//! The virtual Archive folders: `Archive` shows every archived message of
//! the user, `Archive/INBOX`, `Archive/Sent`, ... the ones archived from
//! that folder. They read the user's archive files through the server's
//! archive registry; when the archive root is unreachable they answer
//! `NO [UNAVAILABLE]` and nothing else is affected. For now they are
//! read-only.

use crate::archive::format::Record;
use crate::archive::registry::{self, FOLDER};
use crate::store::ops::apply_flags;
use crate::store::{Delivery, Fetched, FlagAction, MailboxInfo, MessageState, Op, Outcome};

use super::session::Session;

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

impl Session {
    /// The logged-in user's archive, or why it cannot be opened.
    async fn own_archive(&self) -> Result<crate::archive::registry::Shared, String> {
        self.app
            .archives
            .get(&self.user())
            .await
            .map_err(|e| e.to_string())
    }

    /// The archive folder's info and messages.
    pub(super) async fn archive_snapshot(
        &self,
        folder: Option<&str>,
    ) -> Result<(MailboxInfo, Vec<MessageState>), ArchiveProblem> {
        let shared = self
            .own_archive()
            .await
            .map_err(ArchiveProblem::Unavailable)?;
        let a = shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = folder
            && !registry::folders(&a).iter().any(|x| x == f)
        {
            return Err(ArchiveProblem::NoSuchFolder);
        }
        Ok(registry::snapshot(&a, folder))
    }

    /// Names of the archive folders to list (`Archive` first); just
    /// `Archive` when the archive cannot be read right now.
    pub(super) async fn archive_folder_names(&self) -> Vec<String> {
        if !self.archive_visible() {
            return Vec::new();
        }
        let mut names = vec![FOLDER.to_string()];
        if let Ok(shared) = self.app.archives.get(&self.user()).await {
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
    pub(super) async fn load_messages(
        &self,
        uids: Vec<u32>,
        with_body: bool,
    ) -> Result<Vec<Fetched>, String> {
        let Some(view) = self.selected.as_ref() else {
            return Ok(Vec::new());
        };
        let user = self.user();
        if view.archive.is_none() {
            return self
                .app
                .store
                .fetch(&user, view.id, uids, with_body)
                .await
                .map_err(|e| e.to_string());
        }
        let shared = self.own_archive().await?;
        tokio::task::spawn_blocking(move || {
            let a = shared.lock().unwrap_or_else(|p| p.into_inner());
            registry::load(&a, &uids).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

impl Session {
    /// The archive policy of the logged-in user (global + users.toml).
    pub(super) fn archive_policy(&self) -> crate::config::ArchiveConfig {
        self.app
            .archives
            .policy(&self.app.config.archive, &self.user())
    }

    fn archive_access(&self) -> String {
        self.archive_policy().access
    }

    /// Whether the Archive folders are shown at all.
    pub(super) fn archive_visible(&self) -> bool {
        self.archive_access() != "hidden"
    }

    /// Whether clients may change archived mail (flags, delete, move out).
    pub(super) fn archive_writable(&self) -> bool {
        self.archive_access() == "read-write"
    }

    /// Appends records to the user's archive and wakes the user's sessions.
    async fn archive_append(&self, records: Vec<Record>) -> Result<(), String> {
        let user = self.user();
        let shared = self.own_archive().await?;
        tokio::task::spawn_blocking(move || {
            shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&records)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.app.store.notify(&user);
        Ok(())
    }

    /// STORE in an archive folder: a Flags record per changed message.
    /// Returns (uid, new flags) of the changed ones.
    pub(super) async fn archive_store(
        &mut self,
        uids: &[u32],
        action: FlagAction,
        flags: &[String],
    ) -> Result<Vec<(u32, Vec<String>)>, String> {
        let mut changed = Vec::new();
        if let Some(v) = self.selected.as_ref() {
            for u in uids {
                if let Some(e) = v.entry_ref(*u) {
                    let before = e.flags();
                    let after = apply_flags(&before, action, flags);
                    if after != before {
                        changed.push((*u, after));
                    }
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
        self.archive_append(records).await?;
        if let Some(v) = self.selected.as_mut() {
            for (u, f) in &changed {
                if let Some(e) = v.entry_mut(*u) {
                    e.set_flags(f);
                }
            }
        }
        Ok(changed)
    }

    /// Deletes archived messages (EXPUNGE in an archive folder, or MOVE
    /// out). Refused for users on legal hold.
    pub(super) async fn archive_delete(&mut self, auids: Vec<u32>) -> Result<(), DeleteRefused> {
        if auids.is_empty() {
            return Ok(());
        }
        if self.archive_policy().on_hold(&self.user()) {
            return Err(DeleteRefused::LegalHold);
        }
        let records = auids
            .into_iter()
            .map(|auid| Record::Delete { auid })
            .collect();
        self.archive_append(records)
            .await
            .map_err(DeleteRefused::Unavailable)
    }

    /// Answers an archive failure: the detail goes to the log, the client
    /// gets `NO [UNAVAILABLE]` and a short reason.
    pub(super) fn archive_unavailable(&mut self, tag: &imap_types::core::Tag<'_>, detail: &str) {
        tracing::warn!(user = %self.user(), error = %detail, "archive unavailable");
        self.no(
            tag,
            Some(super::code("UNAVAILABLE")),
            "The archive is unavailable right now; current folders work as usual",
        );
    }

    /// Answers a refused delete of archived mail.
    pub(super) fn delete_refused(&mut self, tag: &imap_types::core::Tag<'_>, why: DeleteRefused) {
        match why {
            DeleteRefused::LegalHold => self.no(
                tag,
                Some(super::code("CANNOT")),
                "Legal hold: archived mail of this user cannot be deleted",
            ),
            DeleteRefused::Unavailable(detail) => self.archive_unavailable(tag, &detail),
        }
    }

    /// Restores archived messages into a current mailbox (COPY or MOVE out
    /// of an archive folder): same bytes, flags and internal date. Returns
    /// (archive UID, new UID) pairs and the mailbox's UIDVALIDITY.
    pub(super) async fn archive_restore(
        &mut self,
        auids: Vec<u32>,
        mailbox: &str,
    ) -> Result<(u32, Vec<(u32, u32)>), crate::store::StoreError> {
        let user = self.user();
        let loaded = self
            .load_messages(auids, true)
            .await
            .map_err(crate::store::StoreError::Unavailable)?;
        let mut pairs = Vec::new();
        let mut validity = 0;
        for (auid, meta, body) in loaded {
            let raw = body.unwrap_or_default();
            let d = Delivery {
                user: user.clone(),
                mailbox: mailbox.to_string(),
                summary: meta.summary,
                raw: std::sync::Arc::new(raw),
                internal_date: meta.internal_date,
                flags: meta.flags,
            };
            if let Outcome::Appended { uidvalidity, uid } =
                self.app.store.submit(&user, Op::Deliver(d)).await?
            {
                validity = uidvalidity;
                pairs.push((auid, uid));
            }
        }
        Ok((validity, pairs))
    }
}
