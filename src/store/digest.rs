//! A digest of each mailbox's messages (count and a sum of per-message
//! hashes), kept in its info by every write that adds, changes or removes
//! a message. Why: a backup records every user's digest so that a restore
//! drill can prove the restored mail, and computing them from the
//! messages costs time in proportion to the store, which an incremental
//! backup every minute cannot pay. A sum (wrapping, so order-free) of
//! hashes changes by the hashes of what changed, in the writer
//! transaction that changes it; a drill recomputes it from the restored
//! messages and bodies (`recompute_verified`) and compares.
//!
//! A message's hash covers its UID, its flags and its body reference (the
//! BLAKE3 hash of its body and its own trace headers), so it names every
//! byte of the message without reading the body.

use redb::{ReadableTable, WriteTransaction};

use super::StoreError;
use super::bodies::{self, BlobLoc, BodyStore};
use super::message::MessageMeta;
use super::schema::{BODY_REFS, MAILBOXES, MESSAGES, MailboxInfo};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxDigest {
    pub messages: u64,
    pub sum: u64,
}

impl MailboxDigest {
    pub fn add(&mut self, h: u64) {
        self.messages = self.messages.wrapping_add(1);
        self.sum = self.sum.wrapping_add(h);
    }

    pub fn remove(&mut self, h: u64) {
        self.messages = self.messages.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(h);
    }

    /// Applies a change gathered with [`Change`].
    pub fn apply(&mut self, c: &Change) {
        self.messages = self.messages.wrapping_add(c.added).wrapping_sub(c.removed);
        self.sum = self.sum.wrapping_add(c.plus).wrapping_sub(c.minus);
    }
}

/// What one record did to a mailbox's digest.
#[derive(Debug, Default)]
pub struct Change {
    added: u64,
    removed: u64,
    plus: u64,
    minus: u64,
}

impl Change {
    pub fn add(&mut self, h: u64) {
        self.added += 1;
        self.plus = self.plus.wrapping_add(h);
    }

    pub fn remove(&mut self, h: u64) {
        self.removed += 1;
        self.minus = self.minus.wrapping_add(h);
    }

    /// A message whose hash went from `old` to `new`.
    pub fn replace(&mut self, old: u64, new: u64) {
        self.plus = self.plus.wrapping_add(new);
        self.minus = self.minus.wrapping_add(old);
    }
}

/// The hash of one message.
pub fn message_hash(uid: u32, flags: &[String], body_ref: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&uid.to_le_bytes());
    h.update(&(flags.len() as u32).to_le_bytes());
    for f in flags {
        h.update(&(f.len() as u32).to_le_bytes());
        h.update(f.as_bytes());
    }
    h.update(body_ref);
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The digest of mailbox `id` from its messages and body references (no
/// body is read).
pub fn recompute(
    messages: &impl ReadableTable<(u64, u32), &'static [u8]>,
    refs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: u64,
) -> Result<MailboxDigest, StoreError> {
    summed(messages, refs, id, &mut |_, _| Ok(()))
}

/// As [`recompute`], reading every body and checking it against its
/// checksum and its hash: what a drill proves.
pub fn recompute_verified(
    messages: &impl ReadableTable<(u64, u32), &'static [u8]>,
    refs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    blobs: &impl ReadableTable<&'static [u8], &'static [u8]>,
    store: &BodyStore,
    id: u64,
) -> Result<MailboxDigest, StoreError> {
    summed(messages, refs, id, &mut |uid, r| {
        if r.is_empty() {
            return Err(StoreError::Format(format!(
                "message {id}/{uid} has no body"
            )));
        }
        let (hash, _) = bodies::decode_ref(r)?;
        let loc = blobs
            .get(hash.as_slice())?
            .map(|v| BlobLoc::decode(v.value()))
            .transpose()?
            .ok_or_else(|| {
                StoreError::Format(format!(
                    "message {id}/{uid} refers to a body that is not stored"
                ))
            })?;
        let body = store.read(&loc)?;
        if blake3::hash(&body).as_bytes() != &hash {
            return Err(StoreError::Format(format!(
                "message {id}/{uid}: its body does not match its hash"
            )));
        }
        Ok(())
    })
}

/// Sees each message's UID and body reference before it is summed.
type Check<'a> = dyn FnMut(u32, &[u8]) -> Result<(), StoreError> + 'a;

/// Sums the hashes of mailbox `id`'s messages, `check` seeing each UID and
/// body reference first.
fn summed(
    messages: &impl ReadableTable<(u64, u32), &'static [u8]>,
    refs: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: u64,
    check: &mut Check<'_>,
) -> Result<MailboxDigest, StoreError> {
    let mut d = MailboxDigest::default();
    for row in messages.range((id, 0)..=(id, u32::MAX))? {
        let (k, v) = row?;
        let uid = k.value().1;
        let (_, _, _, flags) = MessageMeta::state_from_bytes(v.value())?;
        let r = refs
            .get((id, uid))?
            .map(|r| r.value().to_vec())
            .unwrap_or_default();
        check(uid, &r)?;
        d.add(message_hash(uid, &flags, &r));
    }
    Ok(d)
}

/// Gives every mailbox without a digest (written before digests were
/// kept) one; returns how many. Runs at start-up, before any backup.
pub fn backfill(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let missing: Vec<(String, MailboxInfo)> = {
        let boxes = txn.open_table(MAILBOXES)?;
        let mut v = Vec::new();
        for row in boxes.iter()? {
            let (k, val) = row?;
            let info = MailboxInfo::from_bytes(val.value())?;
            if info.digest.is_none() {
                v.push((k.value().to_string(), info));
            }
        }
        v
    };
    if missing.is_empty() {
        return Ok(0);
    }
    let messages = txn.open_table(MESSAGES)?;
    let refs = txn.open_table(BODY_REFS)?;
    let mut boxes = txn.open_table(MAILBOXES)?;
    for (key, mut info) in missing.iter().cloned() {
        info.digest = Some(recompute(&messages, &refs, info.id)?);
        boxes.insert(key.as_str(), info.to_bytes().as_slice())?;
    }
    Ok(missing.len())
}
