//! Turning a request into WAL records. Planning only reads the transaction;
//! it checks everything that can fail before emitting anything, so a refused
//! request leaves no trace, and the records it returns carry every choice
//! made (ids, UIDs, modseqs, UIDVALIDITY) so replay never has to choose again.

use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};

use super::StoreError;
use super::message::{MessageMeta, Summary};
use super::record::{OnceKey, Record};
use super::schema::{self, DEFAULT_MAILBOXES, MAILBOXES, MESSAGES, MailboxInfo, USERS};

/// A new message for one user's mailbox.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub user: String,
    pub mailbox: String,
    pub raw: Arc<Vec<u8>>,
    pub internal_date: i64,
    pub flags: Vec<String>,
    pub summary: Summary,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagAction {
    Add,
    Remove,
    Replace,
}

/// How long a delivered transaction's key is kept against a resend (two
/// days: MTAs retry a temporary failure within minutes to hours).
pub const ONCE_WINDOW_SECS: i64 = 2 * 86_400;

#[derive(Debug, Clone)]
pub enum Op {
    /// A new message (SMTP delivery or IMAP APPEND); creates the user with
    /// the default mailboxes when they are new.
    Deliver(Delivery),
    /// A delivery of one recipient of a multi-recipient SMTP transaction
    /// named by the key: done once per recipient however often the client
    /// resends it within [`ONCE_WINDOW_SECS`] (a transaction that was
    /// answered 451 after some recipients got it, or not at all because the
    /// server died, is resent whole).
    DeliverOnce(Delivery, [u8; 16]),
    /// Creates the user and default mailboxes if missing (first login).
    EnsureUser {
        user: String,
    },
    CreateMailbox {
        user: String,
        name: String,
        /// Refused (`StoreError::Limit`) if the user would have more.
        max_mailboxes: usize,
    },
    DeleteMailbox {
        user: String,
        name: String,
    },
    /// Renames a mailbox and its children; renaming INBOX moves its
    /// messages into a new mailbox and leaves INBOX empty (RFC 3501).
    RenameMailbox {
        user: String,
        from: String,
        to: String,
    },
    Subscribe {
        user: String,
        name: String,
        subscribed: bool,
    },
    Store {
        mailbox_id: u64,
        uids: Vec<u32>,
        action: FlagAction,
        flags: Vec<String>,
        /// CONDSTORE: messages whose modseq is above this are not changed.
        unchanged_since: Option<u64>,
    },
    Expunge {
        mailbox_id: u64,
        uids: Vec<u32>,
    },
    /// Marks messages for the archive agent (those that still exist).
    Tag {
        mailbox_id: u64,
        uids: Vec<u32>,
    },
    /// Removes messages now safely in the user's archive file (and their
    /// tags) in one logged step.
    Archived {
        mailbox_id: u64,
        uids: Vec<u32>,
    },
    /// Messages out of the user's archive into one mailbox, in one logged
    /// step: (archive UID, message). When `moving`, the archive UIDs are
    /// remembered until `RestoreSettled` (the archive copies deleted), so
    /// a crash in between is finished, never leaving a message twice.
    Restore {
        user: String,
        mailbox: String,
        messages: Vec<(u32, Delivery)>,
        moving: bool,
    },
    /// The archive copies of these restored messages are deleted.
    RestoreSettled {
        mailbox_id: u64,
        uids: Vec<u32>,
    },
    /// COPY (or MOVE when `remove`) of `uids` of one mailbox into another of
    /// the same user.
    Copy {
        from: u64,
        uids: Vec<u32>,
        to: u64,
        remove: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Appended {
        uidvalidity: u32,
        uid: u32,
    },
    Done,
    Flags {
        /// (uid, new flags, modseq) of every message whose flags changed.
        changed: Vec<(u32, Vec<String>, u64)>,
        /// UNCHANGEDSINCE refused these.
        modified: Vec<u32>,
        /// Messages left as they were (already had the flags): uid, flags, modseq.
        unchanged: Vec<(u32, Vec<String>, u64)>,
    },
    Expunged {
        uids: Vec<u32>,
    },
    Tagged {
        count: usize,
    },
    Copied {
        uidvalidity: u32,
        pairs: Vec<(u32, u32)>,
    },
    /// (archive UID, new UID) of each restored message.
    Restored {
        uidvalidity: u32,
        mailbox_id: u64,
        pairs: Vec<(u32, u32)>,
    },
}

/// Plans `op` against the state in `txn` (which already holds the effects of
/// earlier requests of the same batch).
pub fn plan(
    txn: &WriteTransaction,
    op: &Op,
    now: i64,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    match op {
        Op::Deliver(d) => plan_delivery(txn, d, now, None),
        Op::DeliverOnce(d, key) => {
            let k = schema::once_key(&d.user, key);
            let seen = txn
                .open_table(schema::DELIVERED_ONCE)?
                .get(k.as_slice())?
                .is_some_and(|until| until.value() >= now);
            if seen {
                // A resend of a transaction this user already has.
                return Ok((Vec::new(), Outcome::Done));
            }
            let once = OnceKey {
                key: *key,
                until: now.saturating_add(ONCE_WINDOW_SECS),
            };
            plan_delivery(txn, d, now, Some(once))
        }
        Op::EnsureUser { user } => {
            let mut records = Vec::new();
            if txn.open_table(USERS)?.get(user.as_str())?.is_none() {
                create_user(txn, user, now, &mut records)?;
            }
            Ok((records, Outcome::Done))
        }
        Op::CreateMailbox {
            user,
            name,
            max_mailboxes,
        } => plan_create(txn, user, name, *max_mailboxes, now),
        Op::DeleteMailbox { user, name } => plan_delete(txn, user, name),
        Op::RenameMailbox { user, from, to } => plan_rename(txn, user, from, to, now),
        Op::Subscribe {
            user,
            name,
            subscribed,
        } => Ok((
            vec![Record::Subscription {
                user: user.clone(),
                name: name.clone(),
                subscribed: *subscribed,
            }],
            Outcome::Done,
        )),
        Op::Store {
            mailbox_id,
            uids,
            action,
            flags,
            unchanged_since,
        } => plan_store(txn, *mailbox_id, uids, *action, flags, *unchanged_since),
        Op::Restore {
            user,
            mailbox,
            messages,
            moving,
        } => plan_restore(txn, user, mailbox, messages, *moving),
        Op::RestoreSettled { mailbox_id, uids } => {
            let restored = txn.open_table(schema::RESTORED)?;
            let mut pairs = Vec::new();
            for uid in uids {
                if let Some(auid) = restored.get((*mailbox_id, *uid))? {
                    pairs.push((*uid, auid.value()));
                }
            }
            let records = if pairs.is_empty() {
                Vec::new()
            } else {
                vec![Record::Restored {
                    mailbox_id: *mailbox_id,
                    pairs,
                    pending: false,
                }]
            };
            Ok((records, Outcome::Done))
        }
        Op::Tag { mailbox_id, uids } => {
            let messages = txn.open_table(MESSAGES)?;
            let tags = txn.open_table(schema::TAGS)?;
            let mut fresh = Vec::new();
            for uid in uids {
                if messages.get((*mailbox_id, *uid))?.is_some()
                    && tags.get((*mailbox_id, *uid))?.is_none()
                {
                    fresh.push(*uid);
                }
            }
            let count = fresh.len();
            let records = if fresh.is_empty() {
                Vec::new()
            } else {
                vec![Record::Tagged {
                    mailbox_id: *mailbox_id,
                    uids: fresh,
                    tagged: true,
                }]
            };
            Ok((records, Outcome::Tagged { count }))
        }
        Op::Expunge { mailbox_id, uids } | Op::Archived { mailbox_id, uids } => {
            let info = info_by_id(txn, *mailbox_id)?;
            let messages = txn.open_table(MESSAGES)?;
            let mut gone = Vec::new();
            for uid in uids {
                if messages.get((*mailbox_id, *uid))?.is_some() {
                    gone.push(*uid);
                }
            }
            if gone.is_empty() {
                return Ok((Vec::new(), Outcome::Expunged { uids: gone }));
            }
            Ok((
                vec![Record::Expunged {
                    mailbox_id: *mailbox_id,
                    modseq: info.highestmodseq + 1,
                    uids: gone.clone(),
                }],
                Outcome::Expunged { uids: gone },
            ))
        }
        Op::Copy {
            from,
            uids,
            to,
            remove,
        } => plan_copy(txn, *from, uids, *to, *remove),
    }
}

fn info_by_id(txn: &WriteTransaction, id: u64) -> Result<MailboxInfo, StoreError> {
    schema::mailbox_by_id(txn, id)?
        .map(|(_, i)| i)
        .ok_or_else(|| StoreError::NoSuchMailbox(format!("#{id}")))
}

fn info_by_name(
    txn: &WriteTransaction,
    user: &str,
    name: &str,
) -> Result<Option<MailboxInfo>, StoreError> {
    let key = schema::mailbox_key(user, name);
    let got = txn
        .open_table(MAILBOXES)?
        .get(key.as_str())?
        .map(|v| MailboxInfo::from_bytes(v.value()));
    Ok(got.transpose()?)
}

/// Records creating `user` with the default mailboxes; returns their infos.
fn create_user(
    txn: &WriteTransaction,
    user: &str,
    now: i64,
    records: &mut Vec<Record>,
) -> Result<Vec<(String, MailboxInfo)>, StoreError> {
    records.push(Record::UserCreated {
        user: user.to_string(),
        created: now,
    });
    let first_id = schema::get_meta(txn, schema::K_NEXT_MAILBOX_ID)?.max(1);
    let first_uidvalidity = next_uidvalidity(txn, now)?;
    let mut out = Vec::new();
    for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
        let id = first_id + i as u64;
        let uidvalidity = first_uidvalidity + i as u32;
        records.push(Record::MailboxCreated {
            user: user.to_string(),
            name: name.to_string(),
            id,
            uidvalidity,
            special_use: special.to_string(),
        });
        out.push((
            name.to_string(),
            MailboxInfo {
                id,
                uidvalidity,
                uidnext: 1,
                highestmodseq: 1,
                special_use: special.to_string(),
                digest: None,
            },
        ));
    }
    Ok(out)
}

/// Hierarchy separator of mailbox names.
pub const SEPARATOR: char = '/';

fn plan_create(
    txn: &WriteTransaction,
    user: &str,
    name: &str,
    max_mailboxes: usize,
    now: i64,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let mut records = Vec::new();
    if txn.open_table(USERS)?.get(user)?.is_none() {
        create_user(txn, user, now, &mut records)?;
        if DEFAULT_MAILBOXES.iter().any(|(n, _)| *n == name) {
            return Err(StoreError::MailboxExists(name.to_string()));
        }
    }
    if info_by_name(txn, user, name)?.is_some() {
        return Err(StoreError::MailboxExists(name.to_string()));
    }
    // Missing parents are created too (RFC 3501 CREATE).
    let mut names = Vec::new();
    let mut prefix = String::new();
    for (i, part) in name.split(SEPARATOR).enumerate() {
        if part.is_empty() {
            return Err(StoreError::BadName(name.to_string()));
        }
        if i > 0 {
            prefix.push(SEPARATOR);
        }
        prefix.push_str(part);
        if prefix != name && info_by_name(txn, user, &prefix)?.is_none() {
            names.push(prefix.clone());
        }
    }
    names.push(name.to_string());
    let existing = if records.is_empty() {
        count_mailboxes(txn, user)?
    } else {
        DEFAULT_MAILBOXES.len()
    };
    if existing.saturating_add(names.len()) > max_mailboxes {
        return Err(StoreError::Limit(format!(
            "at most {max_mailboxes} mailboxes per user"
        )));
    }
    let created_in_batch = records.len();
    let mut id = schema::get_meta(txn, schema::K_NEXT_MAILBOX_ID)?.max(1);
    let mut uidvalidity = next_uidvalidity(txn, now)?;
    if created_in_batch > 0 {
        // The user's default mailboxes were just planned above.
        id += DEFAULT_MAILBOXES.len() as u64;
        uidvalidity += DEFAULT_MAILBOXES.len() as u32;
    }
    for n in names {
        records.push(Record::MailboxCreated {
            user: user.to_string(),
            name: n,
            id,
            uidvalidity,
            special_use: String::new(),
        });
        id += 1;
        uidvalidity += 1;
    }
    Ok((records, Outcome::Done))
}

/// How many mailboxes `user` has.
fn count_mailboxes(txn: &WriteTransaction, user: &str) -> Result<usize, StoreError> {
    let prefix = schema::mailbox_key(user, "");
    let t = txn.open_table(MAILBOXES)?;
    let mut n = 0;
    for row in t.range(prefix.as_str()..)? {
        let (k, _) = row?;
        if !k.value().starts_with(prefix.as_str()) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

fn plan_delete(
    txn: &WriteTransaction,
    user: &str,
    name: &str,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Err(StoreError::BadName("INBOX cannot be deleted".into()));
    }
    let info =
        info_by_name(txn, user, name)?.ok_or_else(|| StoreError::NoSuchMailbox(name.into()))?;
    let child = schema::mailbox_key(user, &format!("{name}{SEPARATOR}"));
    if let Some(row) = txn.open_table(MAILBOXES)?.range(child.as_str()..)?.next() {
        let (k, _) = row?;
        if k.value().starts_with(child.as_str()) {
            return Err(StoreError::HasChildren(name.to_string()));
        }
    }
    Ok((
        vec![Record::MailboxDeleted {
            user: user.to_string(),
            name: name.to_string(),
            id: info.id,
        }],
        Outcome::Done,
    ))
}

fn plan_rename(
    txn: &WriteTransaction,
    user: &str,
    from: &str,
    to: &str,
    now: i64,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let source =
        info_by_name(txn, user, from)?.ok_or_else(|| StoreError::NoSuchMailbox(from.into()))?;
    if info_by_name(txn, user, to)?.is_some() {
        return Err(StoreError::MailboxExists(to.to_string()));
    }
    if to.eq_ignore_ascii_case("INBOX") || to.split(SEPARATOR).any(str::is_empty) {
        return Err(StoreError::BadName(to.to_string()));
    }
    if from != "INBOX" && to.starts_with(&format!("{from}{SEPARATOR}")) {
        // Its children would be renamed into themselves.
        return Err(StoreError::BadName(format!(
            "{to}: a mailbox cannot move below itself"
        )));
    }
    if from == "INBOX" {
        // Create `to`, move every message into it; INBOX stays, empty.
        let (mut records, _) = plan_create(txn, user, to, usize::MAX, now)?;
        // plan_create ends with the mailbox itself; anything else is a bug
        // that must fail this request, not the group's writer thread.
        let Some(Record::MailboxCreated { id: to_id, .. }) = records.last().cloned() else {
            return Err(StoreError::Unavailable(format!(
                "renaming INBOX to {to}: no mailbox was planned"
            )));
        };
        let uids: Vec<u32> = txn
            .open_table(MESSAGES)?
            .range((source.id, 0)..=(source.id, u32::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        if !uids.is_empty() {
            let pairs: Vec<(u32, u32)> = uids
                .iter()
                .enumerate()
                .map(|(i, u)| (*u, i as u32 + 1))
                .collect();
            records.push(Record::MessagesCopied {
                from: source.id,
                to: to_id,
                modseq: 2,
                pairs,
            });
            records.push(Record::Expunged {
                mailbox_id: source.id,
                modseq: source.highestmodseq + 1,
                uids,
            });
        }
        return Ok((records, Outcome::Done));
    }
    let mut records = Vec::new();
    // Parents of the new name that do not exist yet.
    if let Some((parent, _)) = to.rsplit_once(SEPARATOR)
        && info_by_name(txn, user, parent)?.is_none()
    {
        let (r, _) = plan_create(txn, user, parent, usize::MAX, now)?;
        records.extend(r);
    }
    records.push(Record::MailboxRenamed {
        user: user.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        id: source.id,
    });
    // Children move with their parent.
    let child = schema::mailbox_key(user, &format!("{from}{SEPARATOR}"));
    let mut children = Vec::new();
    for row in txn.open_table(MAILBOXES)?.range(child.as_str()..)? {
        let (k, v) = row?;
        let Some(rest) = k.value().strip_prefix(child.as_str()) else {
            break;
        };
        children.push((rest.to_string(), MailboxInfo::from_bytes(v.value())?));
    }
    for (rest, info) in children {
        let new = format!("{to}{SEPARATOR}{rest}");
        if info_by_name(txn, user, &new)?.is_some() {
            return Err(StoreError::MailboxExists(new));
        }
        records.push(Record::MailboxRenamed {
            user: user.to_string(),
            from: format!("{from}{SEPARATOR}{rest}"),
            to: new,
            id: info.id,
        });
    }
    Ok((records, Outcome::Done))
}

fn plan_store(
    txn: &WriteTransaction,
    mailbox_id: u64,
    uids: &[u32],
    action: FlagAction,
    flags: &[String],
    unchanged_since: Option<u64>,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let info = info_by_id(txn, mailbox_id)?;
    let modseq = info.highestmodseq + 1;
    let messages = txn.open_table(MESSAGES)?;
    let mut changes = Vec::new();
    let mut changed = Vec::new();
    let mut modified = Vec::new();
    let mut unchanged = Vec::new();
    for uid in uids {
        let Some(meta) = messages
            .get((mailbox_id, *uid))?
            .map(|v| MessageMeta::from_bytes(v.value()))
            .transpose()?
        else {
            continue; // expunged meanwhile: silently skipped (RFC 3501)
        };
        if unchanged_since.is_some_and(|u| meta.modseq > u) {
            modified.push(*uid);
            continue;
        }
        let new = apply_flags(&meta.flags, action, flags);
        if new == meta.flags {
            unchanged.push((*uid, meta.flags, meta.modseq));
        } else {
            changes.push((*uid, new.clone()));
            changed.push((*uid, new, modseq));
        }
    }
    let records = if changes.is_empty() {
        Vec::new()
    } else {
        vec![Record::FlagsSet {
            mailbox_id,
            modseq,
            changes,
        }]
    };
    Ok((
        records,
        Outcome::Flags {
            changed,
            modified,
            unchanged,
        },
    ))
}

/// The flag list after a STORE; flags compare case-insensitively and keep
/// their first spelling.
pub fn apply_flags(current: &[String], action: FlagAction, flags: &[String]) -> Vec<String> {
    let has = |list: &[String], f: &str| list.iter().any(|x| x.eq_ignore_ascii_case(f));
    let mut out: Vec<String> = match action {
        FlagAction::Replace => Vec::new(),
        _ => current.to_vec(),
    };
    match action {
        FlagAction::Add | FlagAction::Replace => {
            for f in flags {
                if !has(&out, f) {
                    out.push(f.clone());
                }
            }
        }
        FlagAction::Remove => out.retain(|x| !has(flags, x)),
    }
    out
}

fn plan_copy(
    txn: &WriteTransaction,
    from: u64,
    uids: &[u32],
    to: u64,
    remove: bool,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let _ = info_by_id(txn, from)?;
    let dest = info_by_id(txn, to)?;
    let messages = txn.open_table(MESSAGES)?;
    let mut pairs = Vec::new();
    let mut next = dest.uidnext;
    for uid in uids {
        if messages.get((from, *uid))?.is_some() {
            if next == u32::MAX {
                return Err(StoreError::UidsExhausted(format!("#{to}")));
            }
            pairs.push((*uid, next));
            next += 1;
        }
    }
    let mut records = Vec::new();
    if !pairs.is_empty() {
        records.push(Record::MessagesCopied {
            from,
            to,
            modseq: dest.highestmodseq + 1,
            pairs: pairs.clone(),
        });
        if remove {
            // A MOVE within one mailbox renumbers: the copies come first,
            // then the originals go, one MODSEQ later.
            let src = info_by_id(txn, from)?;
            let after_copy = u64::from(from == to);
            records.push(Record::Expunged {
                mailbox_id: from,
                modseq: src.highestmodseq + 1 + after_copy,
                uids: pairs.iter().map(|(a, _)| *a).collect(),
            });
        }
    }
    Ok((
        records,
        Outcome::Copied {
            uidvalidity: dest.uidvalidity,
            pairs,
        },
    ))
}

fn plan_restore(
    txn: &WriteTransaction,
    user: &str,
    mailbox: &str,
    messages: &[(u32, Delivery)],
    moving: bool,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let info = info_by_name(txn, user, mailbox)?
        .ok_or_else(|| StoreError::NoSuchMailbox(mailbox.into()))?;
    let room = u32::MAX - info.uidnext;
    if messages.len() as u64 > u64::from(room) {
        return Err(StoreError::UidsExhausted(mailbox.to_string()));
    }
    let modseq = info.highestmodseq + 1;
    let mut records = Vec::with_capacity(messages.len() + 1);
    let mut pairs = Vec::with_capacity(messages.len());
    for (i, (auid, d)) in messages.iter().enumerate() {
        let uid = info.uidnext + i as u32;
        records.push(appended(info.id, uid, modseq, d)?);
        pairs.push((*auid, uid));
    }
    if moving && !pairs.is_empty() {
        records.push(Record::Restored {
            mailbox_id: info.id,
            pairs: pairs.iter().map(|(a, u)| (*u, *a)).collect(),
            pending: true,
        });
    }
    Ok((
        records,
        Outcome::Restored {
            uidvalidity: info.uidvalidity,
            mailbox_id: info.id,
            pairs,
        },
    ))
}

/// The record of one message added to mailbox `mailbox_id`.
fn appended(mailbox_id: u64, uid: u32, modseq: u64, d: &Delivery) -> Result<Record, StoreError> {
    let size = u32::try_from(d.raw.len()).map_err(|_| StoreError::TooLarge(d.raw.len()))?;
    Ok(Record::MessageAppended {
        mailbox_id,
        uid,
        meta: MessageMeta {
            internal_date: d.internal_date,
            size,
            modseq,
            flags: d.flags.clone(),
            summary: d.summary.clone(),
        },
        raw: d.raw.clone(),
        once: None,
    })
}

fn plan_delivery(
    txn: &WriteTransaction,
    d: &Delivery,
    now: i64,
    once: Option<OnceKey>,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let mut records = Vec::new();
    let user_known = txn.open_table(USERS)?.get(d.user.as_str())?.is_some();
    let info = if user_known {
        info_by_name(txn, &d.user, &d.mailbox)?
            .ok_or_else(|| StoreError::NoSuchMailbox(d.mailbox.clone()))?
    } else {
        let created = create_user(txn, &d.user, now, &mut records)?;
        created
            .into_iter()
            .find(|(n, _)| *n == d.mailbox)
            .map(|(_, i)| i)
            .ok_or_else(|| StoreError::NoSuchMailbox(d.mailbox.clone()))?
    };
    if info.uidnext == u32::MAX {
        return Err(StoreError::UidsExhausted(d.mailbox.clone()));
    }
    let uid = info.uidnext;
    let mut rec = appended(info.id, uid, info.highestmodseq + 1, d)?;
    if let Record::MessageAppended { once: o, .. } = &mut rec {
        *o = once;
    }
    records.push(rec);
    Ok((
        records,
        Outcome::Appended {
            uidvalidity: info.uidvalidity,
            uid,
        },
    ))
}

/// UIDVALIDITY values only grow: the later of "now" and one past the last.
fn next_uidvalidity(txn: &WriteTransaction, now: i64) -> Result<u32, StoreError> {
    let last = schema::get_meta(txn, schema::K_LAST_UIDVALIDITY)? as u32;
    Ok(last
        .saturating_add(1)
        .max(now.clamp(1, i64::from(u32::MAX / 2)) as u32))
}
