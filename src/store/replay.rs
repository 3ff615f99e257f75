//! Applying log records to a group's tables: the one path for start-up
//! recovery, restore (patches, incremental backups, the surviving log) and
//! point-in-time restore, so that they cannot drift apart. Records go in
//! non-durable batches; `finish` makes the state durable at the last LSN.

use redb::Database;

use super::StoreError;
use super::bodies::BodyStore;
use super::record::Record;
use super::schema::{self, K_APPLIED_LSN, K_BACKUP_LSN, K_CHECKPOINT_LSN};
use super::wal::RawRecord;

/// Records applied per write transaction.
pub const BATCH: usize = 2_000;

/// Applies records in LSN order on top of a state at `applied`.
pub struct Replayer<'a> {
    db: &'a Database,
    bodies: &'a BodyStore,
    applied: u64,
    pending: Vec<Record>,
    /// Stop before the first commit clock after this (unix ms).
    until_ms: Option<i64>,
    stopped: bool,
    last_clock: Option<i64>,
    replayed: u64,
}

impl<'a> Replayer<'a> {
    pub fn new(
        db: &'a Database,
        bodies: &'a BodyStore,
        applied: u64,
        until_ms: Option<i64>,
    ) -> Self {
        Replayer {
            db,
            bodies,
            applied,
            pending: Vec::new(),
            until_ms,
            stopped: false,
            last_clock: None,
            replayed: 0,
        }
    }

    /// The last LSN taken (applied or pending).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Whether a commit clock past `until_ms` was reached.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Records applied so far.
    pub fn replayed(&self) -> u64 {
        self.replayed + self.pending.len() as u64
    }

    /// Takes one record (those at or below the applied LSN are skipped);
    /// `where_` names its source for error messages.
    pub fn feed(&mut self, r: RawRecord, where_: &dyn Fn() -> String) -> Result<(), StoreError> {
        if self.stopped || r.lsn <= self.applied {
            return Ok(());
        }
        if r.lsn != self.applied + 1 {
            return Err(StoreError::Format(format!(
                "{}: LSN {} where {} was expected: records are missing",
                where_(),
                r.lsn,
                self.applied + 1
            )));
        }
        let rec = Record::decode(r.kind, &r.payload)
            .map_err(|e| StoreError::Format(format!("{}: record {}: {e}", where_(), r.lsn)))?;
        self.feed_decoded(r.lsn, rec)
    }

    /// As [`Replayer::feed`], for a record already decoded (and its LSN
    /// checked) by the caller.
    pub fn feed_decoded(&mut self, lsn: u64, rec: Record) -> Result<(), StoreError> {
        if self.stopped || lsn <= self.applied {
            return Ok(());
        }
        if let Record::Clock { unix_ms } = rec {
            if self.until_ms.is_some_and(|u| unix_ms > u) {
                self.stopped = true;
                return Ok(());
            }
            self.last_clock = Some(unix_ms);
        }
        self.pending.push(rec);
        self.applied = lsn;
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Applies what is pending in one non-durable transaction.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        for rec in &self.pending {
            schema::apply(&txn, self.bodies, rec)?;
        }
        schema::set_meta(&txn, K_APPLIED_LSN, self.applied)?;
        txn.commit()?;
        self.replayed += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Applies what is pending and makes the state durable at the applied
    /// LSN (bodies first); returns (applied LSN, records applied, the last
    /// commit clock seen).
    pub fn finish(
        mut self,
        backup_lsn: Option<u64>,
    ) -> Result<(u64, u64, Option<i64>), StoreError> {
        self.flush()?;
        self.bodies.sync()?;
        let txn = self.db.begin_write()?;
        schema::set_meta(&txn, K_APPLIED_LSN, self.applied)?;
        schema::set_meta(&txn, K_CHECKPOINT_LSN, self.applied)?;
        if let Some(b) = backup_lsn {
            schema::set_meta(&txn, K_BACKUP_LSN, b)?;
        }
        txn.commit()?;
        Ok((self.applied, self.replayed, self.last_clock))
    }
}
