//! The redb tables of a storage group and the one function that changes
//! them, [`apply`]. Every table is listed in [`TABLES`] so that a backup can
//! copy a group table by table from one read transaction.
//!
//! `apply` is idempotent: applying a record twice leaves the same state as
//! applying it once, which is what makes WAL replay after a crash safe.

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::StoreError;
use super::bodies::BodyStore;
use super::codec::{Dec, DecodeError, Enc};
use super::digest::{Change, MailboxDigest, message_hash};
use super::message::MessageMeta;
use super::record::Record;

/// Group-wide counters: see the `K_*` keys.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// user address -> creation time (unix seconds).
pub const USERS: TableDefinition<&str, i64> = TableDefinition::new("users");
/// `user \0 mailbox name` -> encoded [`MailboxInfo`].
pub const MAILBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("mailboxes");
/// mailbox id -> `user \0 mailbox name`.
pub const MAILBOX_IDS: TableDefinition<u64, &str> = TableDefinition::new("mailbox_ids");
/// (mailbox id, uid) -> encoded [`MessageMeta`].
pub const MESSAGES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("messages");
/// Format 1 only: (mailbox id, uid) -> the exact message bytes. Format 2
/// keeps bodies in segment files (`bodies`); [`super::migrate`] moves them.
pub const BODIES_V1: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("bodies");
/// (mailbox id, uid) -> the BLAKE3 hash of the message's body followed by
/// the message's own trace headers (`bodies::encode_ref`).
pub const BODY_REFS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("body_refs");
/// body hash -> encoded `bodies::BlobLoc` (segment, offset, length, refs).
pub const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// (segment, offset) -> hash (32 bytes) and length (u32) of every live
/// body, in segment order (what a reclaim of one segment reads).
pub const LOCATIONS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("locations");

/// `user \0 mailbox name` -> 1 for every subscribed name (which need not exist).
pub const SUBSCRIPTIONS: TableDefinition<&str, u8> = TableDefinition::new("subscriptions");

/// (mailbox id, uid) of every message tagged for archiving.
pub const TAGS: TableDefinition<(u64, u32), ()> = TableDefinition::new("tags");
/// (mailbox id, uid) -> archive UID of messages moved out of the archive
/// whose archive copy may still exist (see `Record::Restored`).
pub const RESTORED: TableDefinition<(u64, u32), u32> = TableDefinition::new("restored");
/// `user \0 key` -> unix time until which a resend of that SMTP
/// transaction is not delivered to the user again (`Record::MessageAppended`'s
/// once key).
pub const DELIVERED_ONCE: TableDefinition<&[u8], i64> = TableDefinition::new("delivered_once");
/// (mailbox id, modseq) -> when, and the UIDs expunged at that modseq
/// (`super::vanished`).
pub const VANISHED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("vanished");
/// mailbox id -> the modseq above which every expunge is in `vanished`.
pub const VANISHED_FLOOR: TableDefinition<u64, u64> = TableDefinition::new("vanished_floor");

/// The tables of a backup image, by their index there. "bodies" is no
/// longer a redb table: an image of the inline kind (written before body
/// segments were copied whole) holds each message's bytes under that name,
/// loaded into the body segments at restore. An image of the segment kind
/// leaves it out and holds the last three, which point into the segments
/// copied beside it.
pub const TABLES: &[&str] = &[
    "meta",
    "users",
    "mailboxes",
    "mailbox_ids",
    "messages",
    "bodies",
    "subscriptions",
    "tags",
    "restored",
    "body_refs",
    "blobs",
    "locations",
    "delivered_once",
    "vanished",
    "vanished_floor",
];

pub const K_FORMAT: &str = "format_version";
pub const K_APPLIED_LSN: &str = "applied_lsn";
pub const K_CHECKPOINT_LSN: &str = "checkpoint_lsn";
/// Highest LSN a completed backup holds: the log above it is kept.
pub const K_BACKUP_LSN: &str = "backup_lsn";
pub const K_NEXT_MAILBOX_ID: &str = "next_mailbox_id";
pub const K_LAST_UIDVALIDITY: &str = "last_uidvalidity";
/// The body segment appended to, and how far it reaches in this state.
pub const K_BODY_SEGMENT: &str = "body_segment";
pub const K_BODY_END: &str = "body_end";
/// Meta keys that describe this group's files, not its mail: an image of
/// the inline kind leaves them out (one of the segment kind keeps them, as
/// it keeps the segments).
pub const LOCAL_META: &[&str] = &[K_BODY_SEGMENT, K_BODY_END];
/// 1: bodies in the `bodies` table; 2: bodies in segment files.
pub const FORMAT_VERSION: u64 = 2;

/// Mailboxes every user gets on first use, with their SPECIAL-USE attribute.
pub const DEFAULT_MAILBOXES: &[(&str, &str)] = &[
    ("INBOX", ""),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
];

/// Version 2 added the digest.
const MAILBOX_VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    pub id: u64,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub special_use: String,
    /// `None` in an info written before digests were kept (until the
    /// start-up backfill), and in infos made up outside the store.
    pub digest: Option<MailboxDigest>,
}

impl MailboxInfo {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(MAILBOX_VERSION)
            .u64(self.id)
            .u32(self.uidvalidity)
            .u32(self.uidnext)
            .u64(self.highestmodseq)
            .str(&self.special_use);
        match &self.digest {
            Some(g) => e.u8(1).u64(g.messages).u64(g.sum),
            None => e.u8(0),
        };
        e.finish()
    }

    pub fn from_bytes(b: &[u8]) -> Result<MailboxInfo, DecodeError> {
        let mut d = Dec::new(b);
        let version = d.u8()?;
        if version != 1 && version != MAILBOX_VERSION {
            return Err(DecodeError("unknown mailbox record version"));
        }
        let mut m = MailboxInfo {
            id: d.u64()?,
            uidvalidity: d.u32()?,
            uidnext: d.u32()?,
            highestmodseq: d.u64()?,
            special_use: d.str()?,
            digest: None,
        };
        if version == MAILBOX_VERSION {
            m.digest = match d.u8()? {
                0 => None,
                1 => Some(MailboxDigest {
                    messages: d.u64()?,
                    sum: d.u64()?,
                }),
                _ => return Err(DecodeError("bad digest flag in a mailbox record")),
            };
        }
        d.end()?;
        Ok(m)
    }
}

pub fn mailbox_key(user: &str, name: &str) -> String {
    format!("{user}\0{name}")
}

/// The format version of the store in `txn`, `None` for a new one.
pub fn format_version(txn: &WriteTransaction) -> Result<Option<u64>, StoreError> {
    Ok(txn.open_table(META)?.get(K_FORMAT)?.map(|g| g.value()))
}

/// Creates every table so that read transactions never meet a missing one.
/// A store of another format is refused (`super::migrate` upgrades format 1
/// before this runs).
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    match format_version(txn)? {
        None => set_meta(txn, K_FORMAT, FORMAT_VERSION)?,
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(StoreError::Format(format!(
                "store format version {v}, this tiermail reads {FORMAT_VERSION}"
            )));
        }
    }
    txn.open_table(USERS)?;
    txn.open_table(MAILBOXES)?;
    txn.open_table(MAILBOX_IDS)?;
    txn.open_table(MESSAGES)?;
    txn.open_table(BODY_REFS)?;
    txn.open_table(BLOBS)?;
    txn.open_table(LOCATIONS)?;
    txn.open_table(SUBSCRIPTIONS)?;
    txn.open_table(TAGS)?;
    txn.open_table(RESTORED)?;
    txn.open_table(DELIVERED_ONCE)?;
    txn.open_table(VANISHED)?;
    txn.open_table(VANISHED_FLOOR)?;
    Ok(())
}

pub fn get_meta(txn: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    Ok(txn
        .open_table(META)?
        .get(key)?
        .map(|g| g.value())
        .unwrap_or(0))
}

pub fn set_meta(txn: &WriteTransaction, key: &str, value: u64) -> Result<(), StoreError> {
    txn.open_table(META)?.insert(key, value)?;
    Ok(())
}

fn raise_meta(txn: &WriteTransaction, key: &str, at_least: u64) -> Result<(), StoreError> {
    if get_meta(txn, key)? < at_least {
        set_meta(txn, key, at_least)?;
    }
    Ok(())
}

pub fn mailbox_by_id(
    txn: &WriteTransaction,
    id: u64,
) -> Result<Option<(String, MailboxInfo)>, StoreError> {
    let key = match txn.open_table(MAILBOX_IDS)?.get(id)? {
        Some(k) => k.value().to_string(),
        None => return Ok(None),
    };
    let info = txn
        .open_table(MAILBOXES)?
        .get(key.as_str())?
        .map(|v| MailboxInfo::from_bytes(v.value()))
        .transpose()?;
    Ok(info.map(|i| (key, i)))
}

/// The `delivered_once` key of `user` and transaction `key`.
pub fn once_key(user: &str, key: &[u8; 16]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + 17);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Forgets once keys that expired before `now`; returns how many.
pub fn prune_once(txn: &WriteTransaction, now: i64) -> Result<u64, StoreError> {
    let mut n = 0;
    txn.open_table(DELIVERED_ONCE)?.retain(|_, until| {
        let keep = until >= now;
        n += u64::from(!keep);
        keep
    })?;
    Ok(n)
}

/// The body reference of message `key` (empty when it has none).
fn body_ref(txn: &WriteTransaction, key: (u64, u32)) -> Result<Vec<u8>, StoreError> {
    Ok(txn
        .open_table(BODY_REFS)?
        .get(key)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default())
}

/// Rewrites the info of mailbox `id` (no-op when it no longer exists).
fn update_info(
    txn: &WriteTransaction,
    id: u64,
    f: impl FnOnce(&mut MailboxInfo),
) -> Result<(), StoreError> {
    if let Some((key, mut info)) = mailbox_by_id(txn, id)? {
        f(&mut info);
        txn.open_table(MAILBOXES)?
            .insert(key.as_str(), info.to_bytes().as_slice())?;
    }
    Ok(())
}

/// Applies one record to the group's tables and body segments.
pub fn apply(
    txn: &WriteTransaction,
    bodies: &BodyStore,
    record: &Record,
) -> Result<(), StoreError> {
    match record {
        Record::UserCreated { user, created } => {
            let mut users = txn.open_table(USERS)?;
            if users.get(user.as_str())?.is_none() {
                users.insert(user.as_str(), *created)?;
            }
        }
        Record::MailboxCreated {
            user,
            name,
            id,
            uidvalidity,
            special_use,
        } => {
            let key = mailbox_key(user, name);
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let exists = match mailboxes.get(key.as_str())? {
                Some(v) => MailboxInfo::from_bytes(v.value())?.id == *id,
                None => false,
            };
            if !exists {
                let info = MailboxInfo {
                    id: *id,
                    uidvalidity: *uidvalidity,
                    uidnext: 1,
                    highestmodseq: 1,
                    special_use: special_use.clone(),
                    digest: Some(MailboxDigest::default()),
                };
                mailboxes.insert(key.as_str(), info.to_bytes().as_slice())?;
                txn.open_table(MAILBOX_IDS)?.insert(*id, key.as_str())?;
                super::vanished::created(txn, *id)?;
            }
            drop(mailboxes);
            raise_meta(txn, K_NEXT_MAILBOX_ID, id + 1)?;
            raise_meta(txn, K_LAST_UIDVALIDITY, u64::from(*uidvalidity))?;
        }
        Record::MessageAppended {
            mailbox_id,
            uid,
            meta,
            raw,
            once,
        } => {
            let (key, mut info) = mailbox_by_id(txn, *mailbox_id)?.ok_or_else(|| {
                StoreError::Format(format!("record names unknown mailbox id {mailbox_id}"))
            })?;
            let old = txn
                .open_table(MESSAGES)?
                .insert((*mailbox_id, *uid), meta.to_bytes().as_slice())?
                .map(|v| MessageMeta::state_from_bytes(v.value()))
                .transpose()?;
            let r = super::bodies::put(txn, bodies, (*mailbox_id, *uid), raw)?;
            if let Some(d) = &mut info.digest {
                let new = message_hash(*uid, &meta.flags, &r);
                // A record applied again replaces the message it made.
                match old {
                    Some((_, _, _, flags)) => {
                        d.remove(message_hash(*uid, &flags, &r));
                        d.add(new);
                    }
                    None => d.add(new),
                }
            }
            if let Some(o) = once
                && let Some((user, _)) = key.split_once('\0')
            {
                txn.open_table(DELIVERED_ONCE)?
                    .insert(once_key(user, &o.key).as_slice(), o.until)?;
            }
            info.uidnext = info.uidnext.max(uid + 1);
            info.highestmodseq = info.highestmodseq.max(meta.modseq);
            txn.open_table(MAILBOXES)?
                .insert(key.as_str(), info.to_bytes().as_slice())?;
        }
        Record::FlagsSet {
            mailbox_id,
            modseq,
            changes,
        } => {
            let mut messages = txn.open_table(MESSAGES)?;
            let refs = txn.open_table(BODY_REFS)?;
            let mut change = Change::default();
            for (uid, flags) in changes {
                let current = messages
                    .get((*mailbox_id, *uid))?
                    .map(|v| MessageMeta::from_bytes(v.value()));
                if let Some(mut meta) = current.transpose()? {
                    let r = refs
                        .get((*mailbox_id, *uid))?
                        .map(|v| v.value().to_vec())
                        .unwrap_or_default();
                    change.replace(
                        message_hash(*uid, &meta.flags, &r),
                        message_hash(*uid, flags, &r),
                    );
                    meta.flags = flags.clone();
                    meta.modseq = *modseq;
                    messages.insert((*mailbox_id, *uid), meta.to_bytes().as_slice())?;
                }
            }
            drop((messages, refs));
            update_info(txn, *mailbox_id, |i| {
                i.highestmodseq = i.highestmodseq.max(*modseq);
                if let Some(d) = &mut i.digest {
                    d.apply(&change);
                }
            })?;
        }
        Record::Expunged {
            mailbox_id,
            modseq,
            uids,
        } => {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut tags = txn.open_table(TAGS)?;
            let mut change = Change::default();
            for uid in uids {
                let old = messages
                    .remove((*mailbox_id, *uid))?
                    .map(|v| MessageMeta::state_from_bytes(v.value()))
                    .transpose()?;
                if let Some((_, _, _, flags)) = old {
                    let r = body_ref(txn, (*mailbox_id, *uid))?;
                    change.remove(message_hash(*uid, &flags, &r));
                }
                tags.remove((*mailbox_id, *uid))?;
                super::bodies::unlink(txn, (*mailbox_id, *uid))?;
            }
            drop((messages, tags));
            super::vanished::expunged(
                txn,
                *mailbox_id,
                *modseq,
                uids,
                chrono::Utc::now().timestamp(),
            )?;
            update_info(txn, *mailbox_id, |i| {
                i.highestmodseq = i.highestmodseq.max(*modseq);
                if let Some(d) = &mut i.digest {
                    d.apply(&change);
                }
            })?;
        }
        Record::MessagesCopied {
            from,
            to,
            modseq,
            pairs,
        } => {
            let mut messages = txn.open_table(MESSAGES)?;
            let mut last = 0;
            let mut change = Change::default();
            for (src, dst) in pairs {
                last = last.max(*dst);
                if messages.get((*to, *dst))?.is_some() {
                    continue; // already applied
                }
                let meta = messages
                    .get((*from, *src))?
                    .map(|v| MessageMeta::from_bytes(v.value()))
                    .transpose()?;
                let Some(mut meta) = meta else {
                    return Err(StoreError::Format(format!(
                        "copy of missing message {from}/{src}"
                    )));
                };
                if !super::bodies::link(txn, (*from, *src), (*to, *dst))? {
                    return Err(StoreError::Format(format!(
                        "copy of message {from}/{src}, which has no body"
                    )));
                }
                change.add(message_hash(
                    *dst,
                    &meta.flags,
                    &body_ref(txn, (*to, *dst))?,
                ));
                meta.modseq = *modseq;
                messages.insert((*to, *dst), meta.to_bytes().as_slice())?;
            }
            drop(messages);
            update_info(txn, *to, |i| {
                i.uidnext = i.uidnext.max(last.saturating_add(1));
                i.highestmodseq = i.highestmodseq.max(*modseq);
                if let Some(d) = &mut i.digest {
                    d.apply(&change);
                }
            })?;
        }
        Record::MailboxDeleted { user, name, id } => {
            let key = mailbox_key(user, name);
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let current = mailboxes
                .get(key.as_str())?
                .map(|v| MailboxInfo::from_bytes(v.value()))
                .transpose()?;
            if current.is_some_and(|i| i.id == *id) {
                mailboxes.remove(key.as_str())?;
                txn.open_table(MAILBOX_IDS)?.remove(*id)?;
                let mut messages = txn.open_table(MESSAGES)?;
                messages.retain_in((*id, 0)..=(*id, u32::MAX), |_, _| false)?;
                drop(messages);
                super::bodies::unlink_mailbox(txn, *id)?;
                txn.open_table(TAGS)?
                    .retain_in((*id, 0)..=(*id, u32::MAX), |_, _| false)?;
                txn.open_table(RESTORED)?
                    .retain_in((*id, 0)..=(*id, u32::MAX), |_, _| false)?;
                super::vanished::deleted(txn, *id)?;
            }
        }
        Record::MailboxRenamed { user, from, to, id } => {
            let old = mailbox_key(user, from);
            let new = mailbox_key(user, to);
            let mut mailboxes = txn.open_table(MAILBOXES)?;
            let current = mailboxes.get(old.as_str())?.map(|v| v.value().to_vec());
            if let Some(bytes) = current
                && MailboxInfo::from_bytes(&bytes)?.id == *id
            {
                mailboxes.remove(old.as_str())?;
                mailboxes.insert(new.as_str(), bytes.as_slice())?;
                txn.open_table(MAILBOX_IDS)?.insert(*id, new.as_str())?;
            }
        }
        Record::Clock { .. } => {}
        Record::Restored {
            mailbox_id,
            pairs,
            pending,
        } => {
            let mut restored = txn.open_table(RESTORED)?;
            for (uid, auid) in pairs {
                if *pending {
                    restored.insert((*mailbox_id, *uid), *auid)?;
                } else {
                    restored.remove((*mailbox_id, *uid))?;
                }
            }
        }
        Record::Tagged {
            mailbox_id,
            uids,
            tagged,
        } => {
            let messages = txn.open_table(MESSAGES)?;
            let mut tags = txn.open_table(TAGS)?;
            for uid in uids {
                if !*tagged {
                    tags.remove((*mailbox_id, *uid))?;
                } else if messages.get((*mailbox_id, *uid))?.is_some() {
                    tags.insert((*mailbox_id, *uid), ())?;
                }
            }
        }
        Record::Subscription {
            user,
            name,
            subscribed,
        } => {
            let key = mailbox_key(user, name);
            let mut subs = txn.open_table(SUBSCRIPTIONS)?;
            if *subscribed {
                subs.insert(key.as_str(), 1)?;
            } else {
                subs.remove(key.as_str())?;
            }
        }
    }
    Ok(())
}
