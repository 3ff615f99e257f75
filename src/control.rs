//! The local control socket (`<data_dir>/control.sock`, owner-only): how
//! `tiermail status` and later admin verbs reach a running server. One
//! request line, one text answer, then the connection closes. When no server
//! runs, the CLI opens the store itself; redb's file lock makes sure the two
//! never work on the same data at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::server::App;
use crate::store::{GroupStatus, Store};

pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.server.data_dir.join("control.sock")
}

pub async fn serve(app: Arc<App>, token: CancellationToken) {
    let path = socket_path(&app.config);
    // The store's lock is ours, so a socket file left here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "control socket unavailable; `tiermail status` will not reach this server");
            return;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = token.cancelled() => return,
        };
        let app = app.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r.take(1024));
            if tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let answer = match line.trim() {
                "status" => {
                    let a = app.clone();
                    tokio::task::spawn_blocking(move || running_status(&a))
                        .await
                        .unwrap_or_else(|e| format!("error: {e}\n"))
                }
                "archive run" => {
                    let cfg = Arc::new(app.config.archive.clone());
                    match app
                        .archive
                        .run_once(app.store.clone(), app.archives.clone(), cfg)
                        .await
                    {
                        Ok(line) => format!("{line}\n"),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
                other if other.starts_with("archive simulate") => {
                    let user = other.trim_start_matches("archive simulate").trim();
                    let user = (!user.is_empty()).then_some(user);
                    match crate::archive::agent::simulate(
                        &app.store,
                        &app.archives,
                        &app.config.archive,
                        user,
                    )
                    .await
                    {
                        Ok(rows) => crate::archive::agent::simulation_table(&rows),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
                "backup run" | "backup run full" => {
                    let cfg = Arc::new(app.config.backup.clone());
                    let mode = if line.trim() == "backup run full" {
                        crate::backup::session::Mode::Full
                    } else {
                        crate::backup::session::Mode::Auto
                    };
                    match app.backup.run_once(app.store.clone(), cfg, mode).await {
                        Ok(line) => format!("{line}\n"),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
                other if other.starts_with("backup drill") => {
                    let file = other.trim_start_matches("backup drill").trim();
                    let file = (!file.is_empty()).then(|| PathBuf::from(file));
                    match app
                        .backup
                        .drill_once(&app.config.backup, &app.config.server.data_dir, file)
                        .await
                    {
                        Ok(line) => format!("{line}\n"),
                        Err(e) => format!("error: {e}\n"),
                    }
                }
                other if other.starts_with("restore-user\t") => {
                    let parts: Vec<&str> = other.split('\t').collect();
                    match parts[..] {
                        [_, user, folder, file] => {
                            let scratch = app.config.server.data_dir.join(format!(
                                "restore-scratch-{}",
                                chrono::Utc::now().timestamp_micros()
                            ));
                            match crate::backup::user_restore::restore_user(
                                app.store.clone(),
                                PathBuf::from(file),
                                user.to_string(),
                                folder.to_string(),
                                scratch,
                            )
                            .await
                            {
                                Ok(r) => format!(
                                    "restored {} messages in {} folders of {user} under {folder}\n",
                                    r.messages, r.folders
                                ),
                                Err(e) => format!("error: {e}\n"),
                            }
                        }
                        _ => "error: restore-user needs user, folder and file\n".into(),
                    }
                }
                other => format!("error: unknown control request `{other}`\n"),
            };
            let _ = w.write_all(answer.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Sends one request to a running server; `None` when none answers.
pub fn request(cfg: &Config, line: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket_path(cfg)).ok()?;
    // Archive runs, backups, drills and restores answer when they are done.
    let wait =
        if line.starts_with("archive") || line.starts_with("backup") || line.starts_with("restore")
        {
            24 * 3600
        } else {
            30
        };
    s.set_read_timeout(Some(Duration::from_secs(wait))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn running_status(app: &App) -> String {
    let mut s = format!(
        "tiermail: running, up {}s, {} users in {}\n",
        app.started.elapsed().as_secs(),
        app.users.snapshot().len(),
        app.config.users.file.display()
    );
    s.push_str(&groups_table(app.store.status()));
    s.push_str(&failed_groups(&app.store));
    s.push_str(&app.archive.status());
    s.push('\n');
    s.push_str(
        &app.backup
            .status(&app.config.backup, &app.config.server.data_dir),
    );
    s
}

/// Status of a stopped server: opens (and so recovers) the store itself.
pub fn offline_status(cfg: &Config) -> Result<String, crate::store::StoreError> {
    let store = Store::open(&cfg.server.data_dir, &cfg.store)?;
    let mut s = format!(
        "tiermail: not running (data {})\n",
        cfg.server.data_dir.display()
    );
    s.push_str(&groups_table(store.status()));
    s.push_str(&failed_groups(&store));
    store.shutdown();
    s.push_str(&crate::backup::agent::offline_status(
        &cfg.backup,
        &cfg.server.data_dir,
    ));
    Ok(s)
}

/// A line per storage group that could not be opened.
fn failed_groups(store: &crate::store::Store) -> String {
    store
        .failed_groups()
        .iter()
        .map(|(id, why)| format!("g{id:03} UNAVAILABLE: {why} (its users get temporary errors)\n"))
        .collect()
}

fn groups_table(status: Result<Vec<GroupStatus>, crate::store::StoreError>) -> String {
    let groups = match status {
        Ok(g) => g,
        Err(e) => return format!("storage groups: error: {e}\n"),
    };
    let mut s = String::from(
        "group  users  messages  applied_lsn  checkpoint_lsn  backup_lsn  wal_segments   wal_bytes    db_bytes  body_bytes  bodies  fsyncs  writes\n",
    );
    for g in groups {
        s.push_str(&format!(
            "g{:03} {:>6} {:>9} {:>12} {:>15} {:>11} {:>13} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7}\n",
            g.id,
            g.users,
            g.messages,
            g.applied_lsn,
            g.checkpoint_lsn,
            g.backup_lsn.map_or("-".to_string(), |b| b.to_string()),
            g.wal_segments,
            g.wal_bytes,
            g.db_bytes,
            g.body_bytes,
            g.distinct_bodies,
            g.fsyncs,
            g.ops
        ));
    }
    s
}
