//! The restore drill: a backup is only as good as a restore from it. The
//! drill rebuilds every group of a backup in a scratch directory, which
//! checks every block, mark and log record, then recomputes each user's
//! message count and content checksum from the rebuilt databases and
//! compares them with the manifest the backup recorded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::BackupError;
use super::restore;
use super::target;
use crate::store::manifest::{self, Manifest};

#[derive(Debug, Clone)]
pub struct DrillReport {
    pub file: PathBuf,
    pub secs: f64,
    pub groups: usize,
    pub users: usize,
    pub messages: u64,
    /// Users whose restored mail differs from the manifest.
    pub problems: Vec<String>,
}

impl DrillReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let head = format!(
            "{}: {} groups, {} users, {} messages restored and checked in {:.1}s",
            self.file.display(),
            self.groups,
            self.users,
            self.messages,
            self.secs
        );
        if self.ok() {
            format!("ok: {head}")
        } else {
            format!("FAILED: {head}; {}", self.problems.join("; "))
        }
    }
}

/// The newest backup in any of `targets`.
pub fn latest(targets: &[PathBuf]) -> Option<PathBuf> {
    targets
        .iter()
        .filter_map(|t| target::backups(t).ok())
        .flatten()
        .max_by(|a, b| a.file_name().cmp(&b.file_name()))
}

/// Restores `file` into `scratch` (created, then removed) and checks it.
pub fn drill(file: &Path, scratch: &Path) -> Result<DrillReport, BackupError> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(|e| BackupError::io(scratch, e))?;
    let result = check(file, scratch);
    let _ = std::fs::remove_dir_all(scratch);
    let (groups, got) = result?;
    let mut want = Manifest::new();
    let mut have = Manifest::new();
    for (w, g) in got {
        want.extend(w);
        have.extend(g);
    }
    Ok(DrillReport {
        file: file.to_path_buf(),
        secs: started.elapsed().as_secs_f64(),
        groups,
        users: want.len(),
        messages: have.values().map(|d| d.messages).sum(),
        problems: manifest::differences(&want, &have),
    })
}

type Pair = (Manifest, Manifest);

fn check(file: &Path, scratch: &Path) -> Result<(usize, Vec<Pair>), BackupError> {
    let (header, restored) = restore::materialize_chain(
        &restore::chain_of(file)?,
        &|id| Some(scratch.join(format!("g{id:03}.redb"))),
        &|_, _| {},
    )?;
    let mut out = Vec::new();
    for r in &restored {
        let got = crate::store::export::Rebuilt::open(&r.path)?.manifest_verified(header.image)?;
        out.push((r.manifest.clone(), got));
    }
    Ok((restored.len(), out))
}
