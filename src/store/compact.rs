//! Rebuilding a group's redb file when most of it is free pages, online.
//!
//! redb reuses freed pages but never gives them back to the file system,
//! and `Database::compact` needs the database to itself (no reader, no
//! writer). So after an archive run or a reclaim left the file mostly free,
//! the group's tables are copied from a snapshot (at LSN S) into a fresh
//! file while sessions go on; then the writer pauses between two batches,
//! applies the log records after S to the new file, makes it durable,
//! renames it over the old one and continues with it. Readers of the old
//! file finish on it (the renamed-over file lives until its last snapshot
//! is dropped). A crash before the rename leaves the old file, which is
//! the store (the half-built one is removed at start); after it the new
//! file is the store, durable at its own checkpoint, and the log replays
//! what follows.

use std::path::{Path, PathBuf};

use redb::{Database, Key, ReadTransaction, ReadableTable, TableDefinition, TableHandle, Value};

use super::StoreError;
use super::schema::{
    BLOBS, BODY_REFS, DELIVERED_ONCE, LOCATIONS, MAILBOX_IDS, MAILBOXES, MESSAGES, META, RESTORED,
    SUBSCRIPTIONS, TAGS, USERS, VANISHED, VANISHED_FLOOR,
};

/// Rows per write transaction of the copy.
const COPY_ROWS: usize = 50_000;
/// A file whose free part is at least this share of it is rebuilt (when it
/// is at least `store.compact_min_mib` large).
const MIN_FREE_PERCENT: u64 = 50;

/// The file a rebuild writes before it is renamed over `db_path`.
pub fn temp_path(db_path: &Path) -> PathBuf {
    let mut p = db_path.as_os_str().to_os_string();
    p.push(".compacting");
    PathBuf::from(p)
}

/// Whether `db` (in the file at `db_path`) is worth rebuilding: how many
/// bytes its file has and how many its tables use.
pub fn worth_it(
    db: &Database,
    db_path: &Path,
    min_file_bytes: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let file = std::fs::metadata(db_path)
        .map_err(|e| StoreError::io(db_path, e))?
        .len();
    if file < min_file_bytes {
        return Ok(None);
    }
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    let used = stats.allocated_pages() * stats.page_size() as u64;
    let free = file.saturating_sub(used);
    Ok((free * 100 >= file * MIN_FREE_PERCENT).then_some((file, used)))
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let table = src.open_table(def)?;
    let mut rows = table.iter()?;
    let mut copied = 0u64;
    loop {
        let mut txn = dst.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let mut n = 0;
        {
            let mut out = txn.open_table(def)?;
            for row in rows.by_ref() {
                let (k, v) = row?;
                out.insert(k.value(), v.value())?;
                n += 1;
                if n >= COPY_ROWS {
                    break;
                }
            }
        }
        txn.commit()?;
        copied += n as u64;
        if n < COPY_ROWS {
            return Ok(copied);
        }
    }
}

/// Every table [`copy`] copies.
const COPIED: &[&str] = &[
    "meta",
    "users",
    "mailboxes",
    "mailbox_ids",
    "messages",
    "body_refs",
    "blobs",
    "locations",
    "subscriptions",
    "tags",
    "restored",
    "delivered_once",
    "vanished",
    "vanished_floor",
];

/// Copies every table of the snapshot `src` into a new file at `path`
/// (not durable yet: the writer's catch-up makes it so).
pub fn copy(
    src: &ReadTransaction,
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    let _ = std::fs::remove_file(path);
    let dst = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
    copy_table(src, &dst, META)?;
    copy_table(src, &dst, USERS)?;
    copy_table(src, &dst, MAILBOXES)?;
    copy_table(src, &dst, MAILBOX_IDS)?;
    copy_table(src, &dst, MESSAGES)?;
    copy_table(src, &dst, BODY_REFS)?;
    copy_table(src, &dst, BLOBS)?;
    copy_table(src, &dst, LOCATIONS)?;
    copy_table(src, &dst, SUBSCRIPTIONS)?;
    copy_table(src, &dst, TAGS)?;
    copy_table(src, &dst, RESTORED)?;
    copy_table(src, &dst, DELIVERED_ONCE)?;
    copy_table(src, &dst, VANISHED)?;
    copy_table(src, &dst, VANISHED_FLOOR)?;
    // A table added to the schema but not here would be lost by the swap.
    for t in src.list_tables()? {
        if !COPIED.contains(&t.name()) {
            return Err(StoreError::Format(format!(
                "table `{}` is not known to compaction",
                t.name()
            )));
        }
    }
    Ok(dst)
}

/// Replaces the file at `db_path` by the rebuilt one at `temp` (already
/// durable), making the rename itself durable.
pub fn swap_files(temp: &Path, db_path: &Path) -> Result<(), StoreError> {
    std::fs::rename(temp, db_path).map_err(|e| StoreError::io(db_path, e))?;
    let dir = db_path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
