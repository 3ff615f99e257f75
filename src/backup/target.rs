//! Backup targets: the mirror directories every backup is written to at
//! once. A backup is written under a temporary name in each target,
//! fsynced, its length checked, and only then renamed to its final name,
//! so a target that fills up or disappears mid-way never holds a half
//! file under a backup's name, and one failing target never stops the
//! others. Also listing and retention of the backups in a target.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

pub const SUFFIX: &str = ".tmbak";
const PARTIAL: &str = ".partial-";

/// The file name of a backup started at `t` (sorts by time).
pub fn backup_name(t: DateTime<Utc>) -> String {
    format!("tiermail-{}{SUFFIX}", t.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// When a backup was started, from its file name.
pub fn started_at(path: &Path) -> Option<DateTime<Utc>> {
    let name = path.file_name()?.to_str()?;
    let stamp = name.strip_prefix("tiermail-")?.strip_suffix(SUFFIX)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S%.3fZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Why a target is unusable, or `None` when a backup can be written there.
pub fn check(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("backup target {}: not a directory", dir.display())),
        Err(e) => Some(format!("backup target {}: {e}", dir.display())),
    }
}

struct Out {
    dir: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    error: Option<String>,
    /// Bytes handed to the file, and up to where write-back was started.
    written: u64,
    kicked: u64,
    waited: u64,
    /// Free space the target's file system keeps (when the target shares
    /// it with the store, a full disk would stop deliveries), checked at the
    /// start and every `FREE_CHECK_STEP` bytes.
    min_free: u64,
    checked: u64,
}

const FREE_CHECK_STEP: u64 = 64 << 20;

/// Bytes available to unprivileged writers on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized,
    // writable statvfs that lives across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Write-back is started every `WRITEBACK_STEP` bytes and waited for
/// `WRITEBACK_LAG` behind: a backup never piles up dirty pages whose flush
/// would stall the log's fsyncs on the same disk (ext4 commits them
/// together), the disk works while the backup reads, and the final fsync is
/// short.
const WRITEBACK_STEP: u64 = 256 << 10;
const WRITEBACK_LAG: u64 = 4 << 20;

impl Out {
    fn check_free(&mut self) -> std::io::Result<()> {
        self.checked = self.written;
        if self.min_free == 0 {
            return Ok(());
        }
        let free = free_bytes(&self.dir)?;
        if free < self.min_free {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "only {} MiB free, backup.min_free_mib keeps {} MiB free",
                    free >> 20,
                    self.min_free >> 20
                ),
            ));
        }
        Ok(())
    }

    fn pace(&mut self) -> std::io::Result<()> {
        if self.written - self.checked >= FREE_CHECK_STEP {
            self.check_free()?;
        }
        if self.written - self.kicked < WRITEBACK_STEP {
            return Ok(());
        }
        let Some(f) = &mut self.file else {
            return Ok(());
        };
        f.flush()?;
        use std::os::fd::AsRawFd;
        let fd = f.get_ref().as_raw_fd();
        // SAFETY: sync_file_range only reads the descriptor and ranges; the
        // file stays open for the whole call.
        unsafe {
            libc::sync_file_range(
                fd,
                self.kicked as i64,
                (self.written - self.kicked) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if self.written > self.waited + WRITEBACK_LAG {
                let upto = self.written - WRITEBACK_LAG;
                libc::sync_file_range(
                    fd,
                    self.waited as i64,
                    (upto - self.waited) as i64,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                self.waited = upto;
            }
        }
        self.kicked = self.written;
        Ok(())
    }
}

/// One backup being written to every target.
pub struct Mirrors {
    name: String,
    outs: Vec<Out>,
}

/// How one target fared.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub dir: PathBuf,
    pub result: Result<PathBuf, String>,
}

impl Mirrors {
    /// Opens `name` for writing in every target; a target that cannot be
    /// used is recorded as failed. An error when none can be.
    /// `min_free` bytes must stay free on every target's file system.
    pub fn open(targets: &[PathBuf], name: &str, min_free: u64) -> Result<Mirrors, String> {
        let mut outs = Vec::new();
        for dir in targets {
            let temp = dir.join(format!("{PARTIAL}{name}"));
            let mut out = Out {
                dir: dir.clone(),
                temp: temp.clone(),
                file: None,
                error: check(dir),
                written: 0,
                kicked: 0,
                waited: 0,
                min_free,
                checked: 0,
            };
            if out.error.is_none()
                && let Err(e) = out.check_free()
            {
                out.error = Some(format!("backup target {}: {e}", dir.display()));
            }
            if out.error.is_none() {
                remove_partials(dir);
                match OpenOptions::new().create_new(true).write(true).open(&temp) {
                    Ok(f) => out.file = Some(BufWriter::with_capacity(1 << 20, f)),
                    Err(e) => out.error = Some(format!("backup target {}: {e}", dir.display())),
                }
            }
            outs.push(out);
        }
        if outs.iter().all(|o| o.file.is_none()) {
            let why: Vec<String> = outs.iter().filter_map(|o| o.error.clone()).collect();
            return Err(if why.is_empty() {
                "no backup targets configured (backup.targets)".into()
            } else {
                why.join("; ")
            });
        }
        Ok(Mirrors {
            name: name.to_string(),
            outs,
        })
    }

    fn fail(out: &mut Out, what: &str, e: impl std::fmt::Display) {
        tracing::error!(target_dir = %out.dir.display(), error = %e, "backup target failed; the other targets go on");
        out.file = None;
        let _ = std::fs::remove_file(&out.temp);
        out.error = Some(format!("backup target {}: {what}: {e}", out.dir.display()));
    }

    /// Flushes, fsyncs and checks the length, then renames into place in
    /// every target still writing. (The content was checksummed as it was
    /// made; reading it back from the page cache would prove nothing about
    /// the disk: restore drills read it for real.)
    pub fn finish(mut self) -> Vec<Outcome> {
        for out in &mut self.outs {
            let Some(mut w) = out.file.take() else {
                continue;
            };
            let synced = w
                .flush()
                .and_then(|()| w.get_ref().sync_all())
                .map_err(|e| e.to_string());
            drop(w);
            if let Err(e) = synced {
                Self::fail(out, "write", e);
                continue;
            }
            match std::fs::metadata(&out.temp) {
                Ok(m) if m.len() == out.written => {}
                Ok(m) => {
                    let e = format!("{} bytes on disk, {} written", m.len(), out.written);
                    Self::fail(out, "length check", e);
                    continue;
                }
                Err(e) => {
                    Self::fail(out, "length check", e);
                    continue;
                }
            }
            let dest = out.dir.join(&self.name);
            let renamed = std::fs::rename(&out.temp, &dest)
                .and_then(|()| File::open(&out.dir).and_then(|d| d.sync_all()));
            if let Err(e) = renamed {
                Self::fail(out, "rename", e);
                continue;
            }
            out.file = None;
            out.error = None;
            out.temp = dest;
        }
        std::mem::take(&mut self.outs)
            .into_iter()
            .map(|o| Outcome {
                dir: o.dir,
                result: match o.error {
                    Some(e) => Err(e),
                    None => Ok(o.temp),
                },
            })
            .collect()
    }
}

impl Drop for Mirrors {
    fn drop(&mut self) {
        // An abandoned backup (an error before `finish`) leaves nothing.
        for out in &mut self.outs {
            if out.file.take().is_some() {
                let _ = std::fs::remove_file(&out.temp);
            }
        }
    }
}

impl Write for Mirrors {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut alive = 0;
        for out in &mut self.outs {
            if let Some(f) = &mut out.file {
                let r = f.write_all(buf).and_then(|()| {
                    out.written += buf.len() as u64;
                    out.pace()
                });
                match r {
                    Ok(()) => alive += 1,
                    Err(e) => Self::fail(out, "write", e),
                }
            }
        }
        if alive == 0 {
            let why: Vec<String> = self.outs.iter().filter_map(|o| o.error.clone()).collect();
            return Err(std::io::Error::other(why.join("; ")));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Removes temporary files that a crashed backup left in `dir`.
fn remove_partials(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The backups in `dir`, oldest first.
pub fn backups(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| started_at(p).is_some())
        .collect();
    v.sort();
    Ok(v)
}

/// Deletes backups beyond the newest `keep` and those older than
/// `max_age_days` (0: no limit), never the newest and never one that a
/// kept incremental backup builds on (`parent_of` names the backup a file
/// continues). Returns what went.
pub fn apply_retention(
    dir: &Path,
    keep: u32,
    max_age_days: u32,
    now: DateTime<Utc>,
    parent_of: &dyn Fn(&Path) -> Option<String>,
) -> std::io::Result<Vec<PathBuf>> {
    let all = backups(dir)?;
    let n = all.len();
    let name = |p: &Path| p.file_name().map(|f| f.to_string_lossy().into_owned());
    let mut kept: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, path) in all.iter().enumerate() {
        let newer = n - 1 - i;
        let too_old = max_age_days > 0
            && started_at(path)
                .is_some_and(|t| now - t > chrono::Duration::days(i64::from(max_age_days)));
        if newer == 0 || (newer < keep as usize && !too_old) {
            kept.extend(name(path));
        }
    }
    // Newest first, so that a kept backup's parent is kept before the
    // parent itself is looked at.
    for path in all.iter().rev() {
        if name(path).is_some_and(|n| kept.contains(&n))
            && let Some(p) = parent_of(path)
        {
            kept.insert(p);
        }
    }
    let mut removed = Vec::new();
    for path in all {
        if !name(&path).is_some_and(|n| kept.contains(&n)) {
            std::fs::remove_file(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_and_parse_back() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T01:02:03.456Z")
            .unwrap()
            .with_timezone(&Utc);
        let n = backup_name(t);
        assert_eq!(n, "tiermail-20261125T010203.456Z.tmbak");
        assert_eq!(started_at(Path::new(&n)), Some(t));
        assert!(started_at(Path::new(".partial-x.tmbak")).is_none());
    }

    #[test]
    fn retention_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        for days in [40, 20, 3, 2, 1] {
            let name = backup_name(now - chrono::Duration::days(days));
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let full = |_: &Path| None;
        // Keep 4 and nothing older than 30 days: the 40-day one goes.
        assert_eq!(
            apply_retention(dir.path(), 4, 30, now, &full)
                .unwrap()
                .len(),
            1
        );
        // Keep 10, max 10 days: the 20-day one goes.
        assert_eq!(
            apply_retention(dir.path(), 10, 10, now, &full)
                .unwrap()
                .len(),
            1
        );
        // Keep 1: only the newest stays, even with an age limit of 1 day.
        assert_eq!(
            apply_retention(dir.path(), 1, 0, now, &full).unwrap().len(),
            2
        );
        assert_eq!(backups(dir.path()).unwrap().len(), 1);
        let all_old = apply_retention(dir.path(), 1, 1, now + chrono::Duration::days(9), &full);
        assert!(all_old.unwrap().is_empty(), "the newest is never deleted");
    }

    #[test]
    fn retention_keeps_what_incrementals_build_on() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        // A full backup 5 days ago with four incrementals after it, then a
        // new full and one incremental.
        let names: Vec<String> = [5, 4, 3, 2, 1]
            .iter()
            .map(|d| backup_name(now - chrono::Duration::days(*d)))
            .chain([
                backup_name(now - chrono::Duration::hours(2)),
                backup_name(now - chrono::Duration::hours(1)),
            ])
            .collect();
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let parents: std::collections::HashMap<String, String> =
            [(1, 0), (2, 1), (3, 2), (4, 3), (6, 5)]
                .iter()
                .map(|(c, p)| (names[*c].clone(), names[*p].clone()))
                .collect();
        let parent_of = |p: &Path| {
            parents
                .get(&p.file_name().unwrap().to_string_lossy().into_owned())
                .cloned()
        };
        // Keep 4: the two newest of the first chain are kept, so are the
        // three they build on; nothing goes.
        assert!(
            apply_retention(dir.path(), 4, 0, now, &parent_of)
                .unwrap()
                .is_empty()
        );
        // Keep 2: only the second chain; the first goes whole.
        assert_eq!(
            apply_retention(dir.path(), 2, 0, now, &parent_of)
                .unwrap()
                .len(),
            5
        );
        // Keep 1: the newest incremental keeps its full backup.
        assert!(
            apply_retention(dir.path(), 1, 0, now, &parent_of)
                .unwrap()
                .is_empty()
        );
        assert_eq!(backups(dir.path()).unwrap().len(), 2);
    }
}
