//! Legal discovery over the archive: export one user's archived mail as a
//! standard mbox, and search every user's archive. Both open archives
//! read-only, so they are safe beside a running server.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::file::{ArchiveError, UserArchive};
use super::format::{user_dir_name, user_from_dir_name};

/// Writes `user`'s archived mail (or one folder of it) as an mboxrd file:
/// each message after a `From ` line, lines starting with `>*From ` quoted
/// with one more `>`. Written to a temporary name, fsynced, then renamed.
/// Returns the number of messages written.
pub fn export_mbox(
    root: &Path,
    user: &str,
    folder: Option<&str>,
    out: &Path,
) -> Result<usize, ArchiveError> {
    let dir = root.join(user_dir_name(user));
    let a = UserArchive::open_read_only(&dir)?;
    let tmp = out.with_extension("tmp-export");
    let io = |e| ArchiveError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let mut n = 0;
    for e in a.entries() {
        if folder.is_some_and(|fo| fo != e.folder) {
            continue;
        }
        let m = a.read(e.auid)?;
        let date = chrono::DateTime::from_timestamp(e.internal_date, 0)
            .unwrap_or_default()
            .format("%a %b %e %H:%M:%S %Y");
        writeln!(f, "From MAILER-DAEMON {date}").map_err(io)?;
        for line in m.raw.split_inclusive(|&b| b == b'\n') {
            let unquoted = line.iter().skip_while(|&&b| b == b'>').copied();
            if unquoted.take(5).eq(b"From ".iter().copied()) {
                f.write_all(b">").map_err(io)?;
            }
            f.write_all(line).map_err(io)?;
        }
        if !m.raw.ends_with(b"\n") {
            f.write_all(b"\n").map_err(io)?;
        }
        f.write_all(b"\n").map_err(io)?;
        n += 1;
    }
    let file = f.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(n)
}

/// What a discovery search looks for; every given criterion must match.
#[derive(Debug, Default)]
pub struct Query {
    pub user: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub text: Option<String>,
    pub since: Option<NaiveDate>,
    pub before: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub user: String,
    pub folder: String,
    pub auid: u32,
    pub date: String,
    pub from: String,
    pub subject: String,
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// Searches the archives under `root`; users whose archive cannot be read
/// are reported in the second list and skipped.
pub fn search(root: &Path, q: &Query) -> Result<(Vec<Hit>, Vec<String>), ArchiveError> {
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| ArchiveError::Io {
        path: root.to_path_buf(),
        source: e,
    })? {
        let Ok(e) = e else { continue };
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(u) = user_from_dir_name(&name)
            && q.user
                .as_ref()
                .is_none_or(|want| want.eq_ignore_ascii_case(&u))
        {
            dirs.push((u, e.path()));
        }
    }
    dirs.sort();
    let mut hits = Vec::new();
    let mut skipped = Vec::new();
    for (user, dir) in dirs {
        let a = match UserArchive::open_read_only(&dir) {
            Ok(a) => a,
            Err(e) => {
                skipped.push(format!("{user}: {e}"));
                continue;
            }
        };
        for e in a.entries() {
            let day = chrono::DateTime::from_timestamp(e.internal_date, 0)
                .unwrap_or_default()
                .date_naive();
            if q.since.is_some_and(|s| day < s) || q.before.is_some_and(|b| day >= b) {
                continue;
            }
            let m = match a.read(e.auid) {
                Ok(m) => m,
                Err(err) => {
                    skipped.push(format!("{user}: {err}"));
                    continue;
                }
            };
            let parsed = crate::imap::mime::parse(&m.raw);
            let from = parsed
                .from()
                .and_then(|f| f.first())
                .map(|a| {
                    format!(
                        "{} <{}>",
                        a.name.as_deref().unwrap_or(""),
                        a.address.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            let subject = parsed.subject().unwrap_or("").to_string();
            if q.from.as_ref().is_some_and(|f| !contains_ci(&from, f))
                || q.subject
                    .as_ref()
                    .is_some_and(|s| !contains_ci(&subject, s))
            {
                continue;
            }
            if let Some(t) = &q.text {
                let raw = String::from_utf8_lossy(&m.raw);
                let body = (0..parsed.text_body_count())
                    .filter_map(|i| parsed.body_text(i))
                    .collect::<Vec<_>>()
                    .join("\n");
                if !contains_ci(&raw, t) && !contains_ci(&body, t) && !contains_ci(&subject, t) {
                    continue;
                }
            }
            hits.push(Hit {
                user: user.clone(),
                folder: e.folder.clone(),
                auid: e.auid,
                date: day.to_string(),
                from,
                subject,
            });
        }
    }
    Ok((hits, skipped))
}
