//! Continuous online backup and restore. A backup (`session`) streams every
//! storage group's consistent image, log and patch files into one file of
//! the `format` container, written to every mirror `target` at once; a
//! restore (`restore`) rebuilds groups from image + patch and rolls them
//! forward with the live log or up to a point in time; `agent` runs backups
//! and restore drills on their schedules and keeps their state for
//! `tiermail status`.

pub mod agent;
pub mod drill;
pub mod format;
pub mod marks;
pub mod restore;
pub mod session;
pub mod target;
pub mod user_restore;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup targets configured (backup.targets)")]
    NoTargets,
    #[error("{0}")]
    Targets(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup file: {0}")]
    Format(#[from] format::FormatError),
    #[error("{0}")]
    Log(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Restore(String),
    #[error("the backup writer stopped")]
    Pipe,
    #[error("cancelled by the server's shutdown")]
    Cancelled,
}

impl From<crate::store::wal::WalError> for BackupError {
    fn from(e: crate::store::wal::WalError) -> Self {
        BackupError::Store(e.into())
    }
}

impl BackupError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> BackupError {
        BackupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
