//! Per-user digests of a storage group's state: how many messages each user
//! has and one checksum over every mailbox name, UIDVALIDITY, UID, flag
//! list and body. A backup stores the digests of the state it restores to;
//! a restore drill recomputes them from what it restored and compares, so a
//! drill proves the restored mail, not just the file's checksums.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::bodies::{self, BodyStore};
use super::codec::{Dec, DecodeError, Enc};
use super::digest::{self, MailboxDigest};
use super::message::MessageMeta;
use super::schema::{self, MailboxInfo};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserDigest {
    pub messages: u64,
    pub checksum: u32,
}

pub type Manifest = BTreeMap<String, UserDigest>;

/// Digests of every user in the snapshot `txn` as backups of the inline
/// kind recorded them (a checksum chained over every message), reading
/// every body (each one's checksum verified on the way): what a drill of
/// such a backup compares.
pub fn compute(txn: &ReadTransaction, store: &BodyStore) -> Result<Manifest, StoreError> {
    let refs = txn.open_table(schema::BODY_REFS)?;
    let blobs = txn.open_table(schema::BLOBS)?;
    chained(txn, &mut |key| {
        Ok(bodies::read_with(&refs, &blobs, store, key)?
            .map(|b| crc32c::crc32c(&b))
            .unwrap_or(0))
    })
}

/// Digests of every user from the digests each mailbox keeps (one row per
/// mailbox, whatever the number of messages): what a backup records. A
/// backup of the segment kind records these; of the inline kind, those of
/// [`compute`].
pub fn recorded(txn: &ReadTransaction) -> Result<Manifest, StoreError> {
    let messages = txn.open_table(schema::MESSAGES)?;
    let refs = txn.open_table(schema::BODY_REFS)?;
    summed(txn, &mut |info| match info.digest {
        Some(d) => Ok(d),
        None => digest::recompute(&messages, &refs, info.id),
    })
}

/// The digests of [`recorded`], recomputed from every message and body
/// (each body read, its checksum and hash checked): what a drill of a
/// backup of the segment kind compares.
pub fn compute_verified(txn: &ReadTransaction, store: &BodyStore) -> Result<Manifest, StoreError> {
    let messages = txn.open_table(schema::MESSAGES)?;
    let refs = txn.open_table(schema::BODY_REFS)?;
    let blobs = txn.open_table(schema::BLOBS)?;
    summed(txn, &mut |info| {
        digest::recompute_verified(&messages, &refs, &blobs, store, info.id)
    })
}

fn summed(
    txn: &ReadTransaction,
    mailbox: &mut dyn FnMut(&MailboxInfo) -> Result<MailboxDigest, StoreError>,
) -> Result<Manifest, StoreError> {
    let mut out = Manifest::new();
    for row in txn.open_table(schema::USERS)?.iter()? {
        out.insert(row?.0.value().to_string(), UserDigest::default());
    }
    for row in txn.open_table(schema::MAILBOXES)?.iter()? {
        let (k, v) = row?;
        let key = k.value();
        let Some((user, name)) = key.split_once('\0') else {
            continue;
        };
        let info = MailboxInfo::from_bytes(v.value())?;
        let m = mailbox(&info)?;
        let d = out.entry(user.to_string()).or_default();
        let mut c = crc32c::crc32c_append(d.checksum, name.as_bytes());
        c = crc32c::crc32c_append(c, &[0]);
        c = crc32c::crc32c_append(c, &info.uidvalidity.to_le_bytes());
        c = crc32c::crc32c_append(c, &m.messages.to_le_bytes());
        c = crc32c::crc32c_append(c, &m.sum.to_le_bytes());
        d.checksum = c;
        d.messages += m.messages;
    }
    Ok(out)
}

fn chained(
    txn: &ReadTransaction,
    body_crc: &mut dyn FnMut((u64, u32)) -> Result<u32, StoreError>,
) -> Result<Manifest, StoreError> {
    let mut out = Manifest::new();
    for row in txn.open_table(schema::USERS)?.iter()? {
        out.insert(row?.0.value().to_string(), UserDigest::default());
    }
    let boxes = txn.open_table(schema::MAILBOXES)?;
    let messages = txn.open_table(schema::MESSAGES)?;
    for row in boxes.iter()? {
        let (k, v) = row?;
        let key = k.value();
        let Some((user, name)) = key.split_once('\0') else {
            continue;
        };
        let info = MailboxInfo::from_bytes(v.value())?;
        let d = out.entry(user.to_string()).or_default();
        for m in messages.range((info.id, 0)..=(info.id, u32::MAX))? {
            let (mk, mv) = m?;
            let uid = mk.value().1;
            let (_, _, _, flags) = MessageMeta::state_from_bytes(mv.value())?;
            let body_crc = body_crc((info.id, uid))?;
            let mut c = crc32c::crc32c_append(d.checksum, name.as_bytes());
            c = crc32c::crc32c_append(c, &[0]);
            c = crc32c::crc32c_append(c, &info.uidvalidity.to_le_bytes());
            c = crc32c::crc32c_append(c, &uid.to_le_bytes());
            for f in &flags {
                c = crc32c::crc32c_append(c, f.as_bytes());
                c = crc32c::crc32c_append(c, b" ");
            }
            c = crc32c::crc32c_append(c, &body_crc.to_le_bytes());
            d.checksum = c;
            d.messages += 1;
        }
    }
    Ok(out)
}

pub fn encode(m: &Manifest, e: &mut Enc) {
    e.u32(m.len() as u32);
    for (user, d) in m {
        e.str(user).u64(d.messages).u32(d.checksum);
    }
}

pub fn decode(d: &mut Dec) -> Result<Manifest, DecodeError> {
    let n = d.count(16)?;
    let mut m = Manifest::new();
    for _ in 0..n {
        let user = d.str()?;
        let messages = d.u64()?;
        let checksum = d.u32()?;
        m.insert(user, UserDigest { messages, checksum });
    }
    Ok(m)
}

/// Lines naming every user whose digest differs (empty when equal).
pub fn differences(want: &Manifest, got: &Manifest) -> Vec<String> {
    let mut v = Vec::new();
    for (user, w) in want {
        match got.get(user) {
            None => v.push(format!("{user}: missing from the restored store")),
            Some(g) if g != w => v.push(format!(
                "{user}: {} messages (checksum {:08x}) restored, the backup holds {} ({:08x})",
                g.messages, g.checksum, w.messages, w.checksum
            )),
            Some(_) => {}
        }
    }
    for user in got.keys() {
        if !want.contains_key(user) {
            v.push(format!("{user}: restored but not in the backup"));
        }
    }
    v
}
