//! The UIDs each mailbox lost, with the modseq of their expunge: what
//! QRESYNC (RFC 7162) answers `VANISHED (EARLIER)` from when a client
//! comes back after hours or days, long after the in-memory change log
//! (`live`) has moved on.
//!
//! A row per `Record::Expunged` (one modseq, many UIDs), written by
//! `schema::apply` in the transaction that removes the messages, so the
//! record and its tombstone are one: a replay writes it again. Rows older
//! than `store.vanished_keep_days` are dropped at a checkpoint, and each
//! mailbox keeps a floor: every expunge with a modseq above it is here.
//! Below the floor the answer is unknown, and the IMAP layer falls back to
//! reporting every UID the client may know that no longer exists (which
//! RFC 7162 3.2.5.2 allows) instead of guessing. A mailbox with no floor
//! row (made before this table, or restored from an image without it) gets
//! its current HIGHESTMODSEQ as floor at start-up: nothing below is claimed.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::StoreError;
use super::codec::{Dec, DecodeError, Enc};
use super::schema::{MAILBOXES, MailboxInfo, VANISHED, VANISHED_FLOOR};

/// A row's value: when the expunge was applied, then the UIDs as ranges.
fn encode(at: i64, uids: &[u32]) -> Vec<u8> {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for u in sorted {
        match ranges.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(u) => *hi = u,
            _ => ranges.push((u, u)),
        }
    }
    let mut e = Enc::new();
    e.i64(at).u32(ranges.len() as u32);
    for (lo, hi) in ranges {
        e.u32(lo).u32(hi);
    }
    e.finish()
}

/// (applied at, UID ranges) of a row.
fn decode(b: &[u8]) -> Result<(i64, Vec<(u32, u32)>), DecodeError> {
    let mut d = Dec::new(b);
    let at = d.i64()?;
    let n = d.count(8)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let (lo, hi) = (d.u32()?, d.u32()?);
        if lo > hi {
            return Err(DecodeError("a vanished range that runs backwards"));
        }
        v.push((lo, hi));
    }
    d.end()?;
    Ok((at, v))
}

/// A new mailbox: every expunge it will have is recorded.
pub fn created(txn: &WriteTransaction, mailbox_id: u64) -> Result<(), StoreError> {
    let mut floors = txn.open_table(VANISHED_FLOOR)?;
    if floors.get(mailbox_id)?.is_none() {
        floors.insert(mailbox_id, 0)?;
    }
    Ok(())
}

/// Records that `uids` left `mailbox_id` at `modseq`. Applied again (a
/// replay), the first row stays.
pub fn expunged(
    txn: &WriteTransaction,
    mailbox_id: u64,
    modseq: u64,
    uids: &[u32],
    now: i64,
) -> Result<(), StoreError> {
    if uids.is_empty() {
        return Ok(());
    }
    let mut t = txn.open_table(VANISHED)?;
    if t.get((mailbox_id, modseq))?.is_none() {
        t.insert((mailbox_id, modseq), encode(now, uids).as_slice())?;
    }
    Ok(())
}

/// The mailbox is gone: so is its history (its id is never reused).
pub fn deleted(txn: &WriteTransaction, mailbox_id: u64) -> Result<(), StoreError> {
    txn.open_table(VANISHED)?
        .retain_in((mailbox_id, 0)..=(mailbox_id, u64::MAX), |_, _| false)?;
    txn.open_table(VANISHED_FLOOR)?.remove(mailbox_id)?;
    Ok(())
}

/// Gives every mailbox without a floor its HIGHESTMODSEQ as one; returns
/// how many. Runs at start-up.
pub fn backfill(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let missing: Vec<(u64, u64)> = {
        let boxes = txn.open_table(MAILBOXES)?;
        let floors = txn.open_table(VANISHED_FLOOR)?;
        let mut v = Vec::new();
        for row in boxes.iter()? {
            let (_, val) = row?;
            let info = MailboxInfo::from_bytes(val.value())?;
            if floors.get(info.id)?.is_none() {
                v.push((info.id, info.highestmodseq));
            }
        }
        v
    };
    let mut floors = txn.open_table(VANISHED_FLOOR)?;
    for (id, floor) in &missing {
        floors.insert(*id, *floor)?;
    }
    Ok(missing.len())
}

/// Drops rows applied before `before` (unix seconds), raising each
/// mailbox's floor over them; returns how many rows went.
pub fn prune(txn: &WriteTransaction, before: i64) -> Result<u64, StoreError> {
    let mut old: Vec<(u64, u64)> = Vec::new();
    {
        let t = txn.open_table(VANISHED)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let (at, _) = decode(v.value())?;
            if at < before {
                old.push(k.value());
            }
        }
    }
    if old.is_empty() {
        return Ok(0);
    }
    let mut t = txn.open_table(VANISHED)?;
    let mut floors = txn.open_table(VANISHED_FLOOR)?;
    for (id, modseq) in &old {
        t.remove((*id, *modseq))?;
        let floor = floors.get(*id)?.map(|g| g.value()).unwrap_or(0);
        if floor < *modseq {
            floors.insert(*id, *modseq)?;
        }
    }
    Ok(old.len() as u64)
}

/// The UIDs expunged from `mailbox_id` at a modseq above `since`, as the
/// rows' ranges (in modseq order, so they may overlap), or `None` when
/// some of those expunges are no longer known (`since` is below the floor).
pub fn since(
    txn: &ReadTransaction,
    mailbox_id: u64,
    since: u64,
) -> Result<Option<Vec<(u32, u32)>>, StoreError> {
    let floor = txn
        .open_table(VANISHED_FLOOR)?
        .get(mailbox_id)?
        .map(|g| g.value());
    match floor {
        Some(f) if since >= f => {}
        _ => return Ok(None),
    }
    let t = txn.open_table(VANISHED)?;
    let mut ranges = Vec::new();
    let from = since.saturating_add(1);
    for row in t.range((mailbox_id, from)..=(mailbox_id, u64::MAX))? {
        let (_, v) = row?;
        ranges.extend(decode(v.value())?.1);
    }
    Ok(Some(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_as_ranges() {
        let b = encode(7, &[5, 3, 4, 9, 4]);
        let (at, r) = decode(&b).unwrap();
        assert_eq!(at, 7);
        assert_eq!(r, vec![(3, 5), (9, 9)]);
        assert!(decode(&b[..b.len() - 1]).is_err());
        // A huge count in a short value is refused, not allocated.
        let mut bad = Enc::new();
        bad.i64(0).u32(u32::MAX);
        assert!(decode(&bad.finish()).is_err());
    }
}
