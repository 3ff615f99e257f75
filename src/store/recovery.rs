//! Start-up recovery of one storage group: redb reopens at its last durable
//! commit (the checkpoint, which names the last LSN it contains); every log
//! record after that LSN is applied again. A damaged tail of the newest
//! segment is a write that never completed (and so was never acknowledged):
//! it is cut off with a warning. Damage anywhere else, or a gap in the LSNs,
//! is real corruption and stops the group with the file and offset named.

use std::path::{Path, PathBuf};

use redb::Database;

use super::StoreError;
use super::bodies::BodyStore;
use super::record::Record;
use super::replay::Replayer;
use super::schema::{self, K_APPLIED_LSN};
use super::wal::{self, SegmentEnd, WalError};

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Records applied again.
    pub replayed: u64,
    /// LSN the next record gets.
    pub next_lsn: u64,
    /// A cut-off torn tail: file, offset, why.
    pub truncated: Option<(PathBuf, u64, String)>,
}

pub fn recover(
    db: &Database,
    bodies: &BodyStore,
    wal_dir: &Path,
) -> Result<RecoveryReport, StoreError> {
    let txn = db.begin_write()?;
    schema::create_tables(&txn)?;
    let applied = schema::get_meta(&txn, K_APPLIED_LSN)?;
    txn.commit()?;

    let segments = wal::list_segments(wal_dir)?;
    let mut report = RecoveryReport::default();
    let mut last_lsn = applied;
    let mut pending: Vec<(u64, Record)> = Vec::new();
    let mut rp = Replayer::new(db, bodies, applied, None);
    let mut expect: Option<u64> = None;

    for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        // A closed segment wholly at or below the applied LSN (kept for a
        // backup) need not be read: the next one's name says where it ends.
        if let Some((next_first, _)) = segments.get(i + 1)
            && *next_first <= applied + 1
            && expect.is_none_or(|e| e == *first)
        {
            expect = Some(*next_first);
            continue;
        }
        let end = wal::read_segment(path, |r| {
            let want = expect.unwrap_or(*first);
            if expect.is_none() && r.lsn > applied + 1 {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: wal::HEADER_LEN,
                    problem: format!(
                        "log resumes only at LSN {} but the store holds up to {applied}: records are missing",
                        r.lsn
                    ),
                });
            }
            if r.lsn != want {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    problem: format!("LSN {} where {want} was expected", r.lsn),
                });
            }
            expect = Some(r.lsn + 1);
            if r.lsn > applied {
                let rec = Record::decode(r.kind, &r.payload).map_err(|e| WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    problem: format!("record {}: {e}", r.lsn),
                })?;
                pending.push((r.lsn, rec));
            }
            Ok(())
        })?;
        if expect.is_none() {
            // An empty segment: its name says which LSN comes next.
            if *first > applied + 1 {
                return Err(StoreError::Wal(WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    problem: format!(
                        "log resumes only at LSN {first} but the store holds up to {applied}"
                    ),
                }));
            }
            expect = Some(*first);
        }
        for (lsn, rec) in pending.drain(..) {
            rp.feed_decoded(lsn, rec)?;
        }
        rp.flush()?;
        if let SegmentEnd::Damaged { offset, problem } = end {
            if !is_last {
                return Err(StoreError::Wal(WalError::Corrupt {
                    path: path.clone(),
                    offset,
                    problem,
                }));
            }
            tracing::warn!(file = %path.display(), offset, %problem, "cutting off the torn tail of the write-ahead log (an unacknowledged write)");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| WalError::Io {
                    path: path.clone(),
                    source,
                })?;
            if offset < wal::HEADER_LEN {
                // Not even the header survived: start the segment afresh.
                drop(f);
                std::fs::remove_file(path).map_err(|source| WalError::Io {
                    path: path.clone(),
                    source,
                })?;
            } else {
                f.set_len(offset)
                    .and_then(|()| f.sync_all())
                    .map_err(|source| WalError::Io {
                        path: path.clone(),
                        source,
                    })?;
            }
            report.truncated = Some((path.clone(), offset, problem));
        }
        if let Some(e) = expect {
            last_lsn = last_lsn.max(e - 1);
        }
    }

    // Make the replayed state durable so the log before it may be pruned.
    report.replayed = rp.replayed();
    let (applied_now, _, _) = rp.finish(None)?;
    let txn = db.begin_write()?;
    schema::prune_once(&txn, chrono::Utc::now().timestamp())?;
    let filled = super::digest::backfill(&txn)?;
    if filled > 0 {
        tracing::info!(mailboxes = filled, "mailbox digests computed");
    }
    super::vanished::backfill(&txn)?;
    txn.commit()?;
    report.next_lsn = last_lsn.max(applied_now) + 1;
    Ok(report)
}
