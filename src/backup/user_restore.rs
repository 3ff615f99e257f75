//! Per-user restore (the "recovery database" of other mail servers): one
//! user's mail as a backup holds it is put back into a folder of the live
//! store, `Restored/<original folder>`, with flags and dates kept, while
//! the server serves. Only the user's group is rebuilt, in a scratch
//! directory, and read from there; the copies are ordinary deliveries, so
//! they are logged and acknowledged like any other write.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::export::Rebuilt;

use super::BackupError;
use super::restore;
use crate::store::{Delivery, Op, SEPARATOR, Store, StoreError};

/// Messages read from the scratch database per step.
const STEP: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct UserRestoreReport {
    pub folders: usize,
    pub messages: u64,
}

/// Puts `user`'s mail from `file` under `folder` in the live store;
/// `scratch` is a directory of its own (created, then removed).
pub async fn restore_user(
    store: Arc<Store>,
    file: PathBuf,
    user: String,
    folder: String,
    scratch: PathBuf,
) -> Result<UserRestoreReport, BackupError> {
    if folder.is_empty() || folder.split(SEPARATOR).any(str::is_empty) {
        return Err(BackupError::Restore(format!(
            "`{folder}` is not a folder name"
        )));
    }
    // The group that held the user when the backup was taken (the group
    // count may have changed since).
    let described = restore::describe(&file)?;
    let id = described
        .groups
        .iter()
        .find(|(_, end)| end.manifest.contains_key(&user))
        .map(|(start, _)| start.id)
        .ok_or_else(|| {
            BackupError::Restore(format!("{} holds no mail of {user}", file.display()))
        })?;
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| BackupError::io(&scratch, e))?;
    let result = copy(store, &file, &user, &folder, &scratch, id).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

async fn copy(
    store: Arc<Store>,
    file: &Path,
    user: &str,
    folder: &str,
    scratch: &Path,
    id: u32,
) -> Result<UserRestoreReport, BackupError> {
    let path = scratch.join(format!("g{id:03}.redb"));
    let (f, p) = (file.to_path_buf(), path.clone());
    let (_, restored) = crate::background::run_alone("restore", move || {
        restore::materialize_chain(
            &restore::chain_of(&f)?,
            &|g| (g == id).then(|| p.clone()),
            &|_, _| {},
        )
    })
    .await
    .map_err(|e| BackupError::Restore(e.to_string()))??;
    let Some(r) = restored.first() else {
        return Err(BackupError::Restore(format!(
            "{} holds no storage group {id}",
            file.display()
        )));
    };
    if !r.manifest.contains_key(user) {
        return Err(BackupError::Restore(format!(
            "{} holds no mail of {user}",
            file.display()
        )));
    }
    let db = Arc::new(
        Rebuilt::open(&path)
            .map_err(|e| BackupError::Restore(format!("{}: {e}", path.display())))?,
    );
    let read = {
        let db = db.clone();
        let user = user.to_string();
        move || db.mailboxes_of(&user)
    };
    let boxes = tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| BackupError::Restore(e.to_string()))??;
    let mut report = UserRestoreReport::default();
    store.ensure_user(user).await?;
    for (name, mailbox_id, uids) in boxes {
        let dest = format!("{folder}{SEPARATOR}{name}");
        match store
            .submit(
                user,
                Op::CreateMailbox {
                    user: user.to_string(),
                    name: dest.clone(),
                    // A restore brings back what the user had.
                    max_mailboxes: usize::MAX,
                },
            )
            .await
        {
            Ok(_) | Err(StoreError::MailboxExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        report.folders += 1;
        for chunk in uids.chunks(STEP) {
            let db = db.clone();
            let chunk = chunk.to_vec();
            let msgs = tokio::task::spawn_blocking(move || db.messages(mailbox_id, &chunk))
                .await
                .map_err(|e| BackupError::Restore(e.to_string()))??;
            for (meta, raw) in msgs {
                store
                    .deliver(Delivery {
                        user: user.to_string(),
                        mailbox: dest.clone(),
                        raw: Arc::new(raw),
                        internal_date: meta.internal_date,
                        flags: meta.flags,
                        summary: meta.summary,
                    })
                    .await?;
                report.messages += 1;
            }
        }
    }
    Ok(report)
}
