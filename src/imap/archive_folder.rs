//! The virtual Archive folders: `Archive` shows every archived message of
//! the user, `Archive/INBOX`, `Archive/Sent`, ... the ones archived from
//! that folder. They read the user's archive files through the server's
//! archive registry; when the archive root is unreachable they answer
//! `NO [UNAVAILABLE]` and nothing else is affected. For now they are
//! read-only.

use crate::archive::registry::{self, FOLDER};
use crate::store::{Fetched, MailboxInfo, MessageState};

use super::session::Session;

/// Why an archive folder cannot be shown.
pub enum ArchiveProblem {
    Unavailable(String),
    NoSuchFolder,
}

impl Session {
    /// The archive folder's info and messages.
    pub(super) async fn archive_snapshot(
        &self,
        folder: Option<&str>,
    ) -> Result<(MailboxInfo, Vec<MessageState>), ArchiveProblem> {
        let user = self.user();
        let shared = self
            .app
            .archives
            .get(&user)
            .await
            .map_err(|e| ArchiveProblem::Unavailable(e.to_string()))?;
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
        let shared = self
            .app
            .archives
            .get(&user)
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || {
            let a = shared.lock().unwrap_or_else(|p| p.into_inner());
            registry::load(&a, &uids).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
