//! The backup agent as the server holds it: one backup at a time and one
//! drill at a time (a trigger that finds one running is refused, never
//! doubled), the heavy work on low-priority threads of their own, and the
//! state `tiermail status` shows: the current or last run, the backup lag
//! against `backup.max_staleness`, the last drill.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::drill;
use super::session::{self, Progress};
use super::target;
use crate::config::BackupConfig;
use crate::store::Store;

/// File (in the data directory) keeping the last drill's result across
/// restarts.
pub const DRILL_STATE: &str = "backup-drill.last";

#[derive(Debug, Default)]
pub struct BackupAgent {
    running: AtomicBool,
    drilling: AtomicBool,
    current: Mutex<Option<Arc<Progress>>>,
    last: Mutex<Option<String>>,
    next: Mutex<Option<DateTime<Utc>>>,
    next_drill: Mutex<Option<DateTime<Utc>>>,
    last_drill: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears a flag when dropped (also when the future is cancelled).
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn claim<'a>(flag: &'a AtomicBool, what: &str) -> Result<Running<'a>, String> {
    flag.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .map(|_| Running(flag))
        .map_err(|_| format!("a {what} is already in progress"))
}

impl BackupAgent {
    /// Takes one backup unless one is under way.
    pub async fn run_once(
        &self,
        store: Arc<Store>,
        cfg: Arc<BackupConfig>,
        mode: session::Mode,
    ) -> Result<String, String> {
        let _guard = claim(&self.running, "backup")?;
        let progress = Arc::new(Progress::default());
        *lock(&self.current) = Some(progress.clone());
        let started = Utc::now();
        let p = progress.clone();
        let result = crate::background::run_alone("backup", move || {
            session::run_with(&store, &cfg, &p, mode)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        *lock(&self.current) = None;
        let line = match &result {
            Ok(report) => {
                for f in report.failures() {
                    tracing::error!(error = %f, "backup target failed");
                }
                tracing::info!(backup = %report.summary(), "backup done");
                format!(
                    "backup: last run {} {}: {}",
                    started.format("%F %T UTC"),
                    if report.failures().is_empty() {
                        "ok"
                    } else {
                        "PARTIAL"
                    },
                    report.summary()
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                format!(
                    "backup: last run {} FAILED: {e}",
                    started.format("%F %T UTC")
                )
            }
        };
        *lock(&self.last) = Some(line.clone());
        result.map(|_| line)
    }

    /// Runs a restore drill of `file` (the newest backup when `None`).
    pub async fn drill_once(
        &self,
        cfg: &BackupConfig,
        data_dir: &Path,
        file: Option<PathBuf>,
    ) -> Result<String, String> {
        let _guard = claim(&self.drilling, "restore drill")?;
        let result = run_drill(cfg, data_dir, file).await;
        let line = format!(
            "drill: {} {}",
            Utc::now().format("%F %T UTC"),
            match &result {
                Ok(s) => s.clone(),
                Err(e) => format!("FAILED: {e}"),
            }
        );
        if result.is_err() || line.contains("FAILED") {
            tracing::error!(drill = %line, "restore drill failed");
        } else {
            tracing::info!(drill = %line, "restore drill done");
        }
        let _ = std::fs::write(data_dir.join(DRILL_STATE), format!("{line}\n"));
        *lock(&self.last_drill) = Some(line.clone());
        match result {
            Ok(s) if !s.starts_with("FAILED") => Ok(line),
            Ok(_) => Err(line),
            Err(_) => Err(line),
        }
    }

    /// Stops a running backup at its next block (its temporary files are
    /// removed; nothing is renamed into place).
    pub fn cancel(&self) {
        if let Some(p) = lock(&self.current).as_ref() {
            p.cancel.store(true, Ordering::Relaxed);
        }
    }

    pub fn set_next(&self, next: Option<DateTime<Utc>>) {
        *lock(&self.next) = next;
    }

    pub fn set_next_drill(&self, next: Option<DateTime<Utc>>) {
        *lock(&self.next_drill) = next;
    }

    /// Lines for `tiermail status`.
    pub fn status(&self, cfg: &BackupConfig, data_dir: &Path) -> String {
        let mut lines = Vec::new();
        if cfg.targets.is_empty() {
            return "backup: off (no backup.targets configured)\n".into();
        }
        if let Some(p) = lock(&self.current).as_ref() {
            lines.push(format!(
                "backup: running: {} bytes written, {} groups done",
                p.bytes.load(Ordering::Relaxed),
                p.groups_done.load(Ordering::Relaxed)
            ));
        }
        lines.push(
            lock(&self.last)
                .clone()
                .unwrap_or_else(|| "backup: no run since start".into()),
        );
        lines.push(lag_line(cfg, Utc::now()));
        lines.push(match *lock(&self.next) {
            Some(t) => format!("backup: next run {}", t.format("%F %T UTC")),
            None => "backup: next run: none scheduled".into(),
        });
        let drill = lock(&self.last_drill).clone();
        lines.push(drill.unwrap_or_else(|| saved_drill(data_dir)));
        lines.push(match *lock(&self.next_drill) {
            Some(t) => format!("drill: next run {}", t.format("%F %T UTC")),
            None => "drill: next run: none scheduled".into(),
        });
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }
}

/// The last drill's line as saved in the data directory.
fn saved_drill(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join(DRILL_STATE))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "drill: never run".into())
}

/// Status lines of a stopped server: the backup lag and the last drill.
pub fn offline_status(cfg: &BackupConfig, data_dir: &Path) -> String {
    if cfg.targets.is_empty() {
        return "backup: off (no backup.targets configured)\n".into();
    }
    format!("{}\n{}\n", lag_line(cfg, Utc::now()), saved_drill(data_dir))
}

/// The backup lag: age of the newest good backup, flagged when it is older
/// than `max_staleness`. Only complete, fsynced files ever get a backup's name.
pub fn lag_line(cfg: &BackupConfig, now: DateTime<Utc>) -> String {
    let max = cfg.max_staleness();
    match drill::latest(&cfg.targets) {
        None => format!(
            "backup: lag: STALE: no backup in any target (max_staleness {})",
            cfg.max_staleness
        ),
        Some(p) => {
            let age = target::started_at(&p)
                .map(|t| (now - t).num_seconds().max(0) as u64)
                .unwrap_or(u64::MAX);
            let stale = age > max.as_secs();
            format!(
                "backup: lag: {}newest backup {} is {}s old (max_staleness {})",
                if stale { "STALE: " } else { "" },
                p.display(),
                age,
                cfg.max_staleness
            )
        }
    }
}

async fn run_drill(
    cfg: &BackupConfig,
    data_dir: &Path,
    file: Option<PathBuf>,
) -> Result<String, String> {
    let file = match file {
        Some(f) => f,
        None => drill::latest(&cfg.targets).ok_or("no backup in any target to drill")?,
    };
    let scratch = data_dir.join("drill-scratch");
    // A rebuilt store takes up to about twice the size of the backups it is
    // rebuilt from (an incremental one with its whole chain); the drill
    // must not fill the data disk.
    let chain = super::restore::chain_of(&file).unwrap_or_else(|_| vec![file.clone()]);
    let size: u64 = chain
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let need = size
        .saturating_mul(3)
        .saturating_add(cfg.min_free_mib.saturating_mul(1 << 20));
    if let Ok(free) = target::free_bytes(data_dir)
        && free < need
    {
        return Err(format!(
            "not enough room in {} for a drill of {} ({} MiB free, {} MiB needed)",
            data_dir.display(),
            file.display(),
            free >> 20,
            need >> 20
        ));
    }
    let report = crate::background::run_alone("drill", move || drill::drill(&file, &scratch))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(report.summary())
}
