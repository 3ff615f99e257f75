//! Opening a group's files at the current format, upgrading older ones in
//! place on first start.
//!
//! Format 1 kept every body in the redb table `bodies`. The upgrade moves
//! them into body segments in batches of non-durable transactions and makes
//! the result durable once, at the end, together with the new format
//! number: a crash anywhere before that leaves the durable state at format
//! 1 (the segments written so far are unreferenced and removed at the next
//! start, which upgrades again). The file is then compacted, since the
//! bodies' pages are free. The write-ahead log needs no upgrade: its
//! records carry whole messages in both formats.

use std::path::Path;

use redb::{Database, ReadableTable, TableHandle};

use super::StoreError;
use super::bodies::{self, BodyStore};
use super::schema::{self, BODIES_V1, FORMAT_VERSION, K_FORMAT};

/// Bodies moved per transaction, roughly.
const BATCH_BYTES: usize = 32 << 20;

/// What opening a group's files found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// Bodies moved out of a format 1 store (0: none was needed).
    pub bodies_moved: u64,
}

/// Opens (creating if needed) the database at `path` and its bodies, at
/// the current format: what restores and drills use for the groups they
/// rebuild.
pub fn open_path(path: &Path, cache_bytes: usize) -> Result<(Database, BodyStore), StoreError> {
    let mut db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
    let (bodies, _) = open(&mut db, path, bodies::DEFAULT_SEGMENT_BYTES)?;
    Ok((db, bodies))
}

/// Brings the store in `db` (kept at `db_path`) to the current format and
/// opens its body segments.
pub fn open(
    db: &mut Database,
    db_path: &Path,
    segment_bytes: u64,
) -> Result<(BodyStore, Upgrade), StoreError> {
    let dir = bodies::dir_for(db_path);
    let txn = db.begin_write()?;
    let version = schema::format_version(&txn)?;
    let store = BodyStore::open(&dir, &txn, segment_bytes)?;
    match version {
        Some(1) => {
            txn.abort()?;
            let moved = from_v1(db, &store)?;
            tracing::info!(
                db = %db_path.display(),
                bodies = moved,
                "store upgraded from format 1 to {FORMAT_VERSION}: bodies moved into segment files"
            );
            Ok((
                store,
                Upgrade {
                    bodies_moved: moved,
                },
            ))
        }
        _ => {
            schema::create_tables(&txn)?;
            txn.commit()?;
            Ok((store, Upgrade::default()))
        }
    }
}

fn from_v1(db: &mut Database, store: &BodyStore) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    loop {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let batch: Vec<((u64, u32), Vec<u8>)> = {
            let table = txn.open_table(BODIES_V1)?;
            let mut v = Vec::new();
            let mut bytes = 0;
            for row in table.iter()? {
                let (k, b) = row?;
                bytes += b.value().len();
                v.push((k.value(), b.value().to_vec()));
                if bytes >= BATCH_BYTES {
                    break;
                }
            }
            v
        };
        if batch.is_empty() {
            txn.abort()?;
            break;
        }
        {
            let mut table = txn.open_table(BODIES_V1)?;
            for (key, raw) in &batch {
                bodies::put(&txn, store, *key, raw)?;
                table.remove(*key)?;
            }
        }
        txn.commit()?;
        moved += batch.len() as u64;
        crate::failpoint::hit("upgrade-after-batch");
    }
    store.sync()?;
    let txn = db.begin_write()?;
    if txn.list_tables()?.any(|t| t.name() == BODIES_V1.name()) {
        txn.delete_table(BODIES_V1)?;
    }
    txn.open_table(schema::META)?
        .insert(K_FORMAT, FORMAT_VERSION)?;
    schema::create_tables(&txn)?;
    txn.commit()?;
    crate::failpoint::hit("upgrade-before-compact");
    // Give back the pages the bodies held.
    db.compact()
        .map_err(|e| StoreError::Db(format!("compacting after the upgrade: {e}")))?;
    Ok(moved)
}
