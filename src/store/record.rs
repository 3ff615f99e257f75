//! The WAL record payloads: every mutation of a storage group, fully resolved
//! (UIDs, ids, modseqs already chosen) so that replay is a sequence of puts
//! that gives the same result however often it runs.

use std::sync::Arc;

use super::codec::{Dec, DecodeError, Enc};
use super::message::MessageMeta;

pub const T_USER_CREATED: u8 = 1;
pub const T_MAILBOX_CREATED: u8 = 2;
pub const T_MESSAGE_APPENDED: u8 = 3;
pub const T_FLAGS_SET: u8 = 4;
pub const T_EXPUNGED: u8 = 5;
pub const T_MESSAGES_COPIED: u8 = 6;
pub const T_MAILBOX_DELETED: u8 = 7;
pub const T_MAILBOX_RENAMED: u8 = 8;
pub const T_SUBSCRIPTION: u8 = 9;
pub const T_TAGGED: u8 = 10;
pub const T_CLOCK: u8 = 11;
pub const T_RESTORED: u8 = 12;

/// Marks a delivery that a resend of the same SMTP transaction must not
/// repeat: `key` names the transaction (sender, recipients, bytes), kept
/// for the recipient until unix time `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnceKey {
    pub key: [u8; 16],
    pub until: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    UserCreated {
        user: String,
        created: i64,
    },
    MailboxCreated {
        user: String,
        name: String,
        id: u64,
        uidvalidity: u32,
        special_use: String,
    },
    MessageAppended {
        mailbox_id: u64,
        uid: u32,
        meta: MessageMeta,
        raw: Arc<Vec<u8>>,
        /// Set for the recipients of a multi-recipient SMTP transaction
        /// (an optional trailing field: older records have none).
        once: Option<OnceKey>,
    },
    /// The complete new flag lists of some messages, all at one modseq.
    FlagsSet {
        mailbox_id: u64,
        modseq: u64,
        changes: Vec<(u32, Vec<String>)>,
    },
    /// Messages removed from a mailbox; the mailbox's modseq becomes `modseq`.
    Expunged {
        mailbox_id: u64,
        modseq: u64,
        uids: Vec<u32>,
    },
    /// Copies (source uid -> destination uid) with their flags, bytes and
    /// internal date; the copies get modseq `modseq`.
    MessagesCopied {
        from: u64,
        to: u64,
        modseq: u64,
        pairs: Vec<(u32, u32)>,
    },
    /// A mailbox and every message in it removed.
    MailboxDeleted {
        user: String,
        name: String,
        id: u64,
    },
    /// A mailbox renamed, keeping its id, UIDVALIDITY and messages.
    MailboxRenamed {
        user: String,
        from: String,
        to: String,
        id: u64,
    },
    Subscription {
        user: String,
        name: String,
        subscribed: bool,
    },
    /// Messages marked (or unmarked) for the archive agent. Tagged mail
    /// stays visible and usable where it is until it is archived.
    Tagged {
        mailbox_id: u64,
        uids: Vec<u32>,
        tagged: bool,
    },
    /// Messages moved out of the user's archive into `mailbox_id`, as
    /// (uid, archive UID): `pending` while the archive copies are not yet
    /// deleted (a crash then is finished by deleting them), cleared after.
    Restored {
        mailbox_id: u64,
        pairs: Vec<(u32, u32)>,
        pending: bool,
    },
    /// When the batch of records after it was committed (unix milliseconds).
    /// Changes nothing; point-in-time restore stops at the first clock past
    /// the chosen time.
    Clock {
        unix_ms: i64,
    },
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::UserCreated { .. } => T_USER_CREATED,
            Record::MailboxCreated { .. } => T_MAILBOX_CREATED,
            Record::MessageAppended { .. } => T_MESSAGE_APPENDED,
            Record::FlagsSet { .. } => T_FLAGS_SET,
            Record::Expunged { .. } => T_EXPUNGED,
            Record::MessagesCopied { .. } => T_MESSAGES_COPIED,
            Record::MailboxDeleted { .. } => T_MAILBOX_DELETED,
            Record::MailboxRenamed { .. } => T_MAILBOX_RENAMED,
            Record::Subscription { .. } => T_SUBSCRIPTION,
            Record::Tagged { .. } => T_TAGGED,
            Record::Restored { .. } => T_RESTORED,
            Record::Clock { .. } => T_CLOCK,
        }
    }

    pub fn encode_payload(&self, e: &mut Enc) {
        match self {
            Record::UserCreated { user, created } => {
                e.str(user).i64(*created);
            }
            Record::MailboxCreated {
                user,
                name,
                id,
                uidvalidity,
                special_use,
            } => {
                e.str(user)
                    .str(name)
                    .u64(*id)
                    .u32(*uidvalidity)
                    .str(special_use);
            }
            Record::MessageAppended {
                mailbox_id,
                uid,
                meta,
                raw,
                once,
            } => {
                e.u64(*mailbox_id).u32(*uid);
                meta.encode(e);
                e.bytes(raw);
                if let Some(o) = once {
                    e.u8(1).bytes(&o.key).i64(o.until);
                }
            }
            Record::FlagsSet {
                mailbox_id,
                modseq,
                changes,
            } => {
                e.u64(*mailbox_id).u64(*modseq).u32(changes.len() as u32);
                for (uid, flags) in changes {
                    e.u32(*uid).strs(flags);
                }
            }
            Record::Expunged {
                mailbox_id,
                modseq,
                uids,
            } => {
                e.u64(*mailbox_id).u64(*modseq).u32(uids.len() as u32);
                for uid in uids {
                    e.u32(*uid);
                }
            }
            Record::MessagesCopied {
                from,
                to,
                modseq,
                pairs,
            } => {
                e.u64(*from).u64(*to).u64(*modseq).u32(pairs.len() as u32);
                for (a, b) in pairs {
                    e.u32(*a).u32(*b);
                }
            }
            Record::MailboxDeleted { user, name, id } => {
                e.str(user).str(name).u64(*id);
            }
            Record::MailboxRenamed { user, from, to, id } => {
                e.str(user).str(from).str(to).u64(*id);
            }
            Record::Subscription {
                user,
                name,
                subscribed,
            } => {
                e.str(user).str(name).u8(u8::from(*subscribed));
            }
            Record::Tagged {
                mailbox_id,
                uids,
                tagged,
            } => {
                e.u64(*mailbox_id)
                    .u8(u8::from(*tagged))
                    .u32(uids.len() as u32);
                for uid in uids {
                    e.u32(*uid);
                }
            }
            Record::Restored {
                mailbox_id,
                pairs,
                pending,
            } => {
                e.u64(*mailbox_id)
                    .u8(u8::from(*pending))
                    .u32(pairs.len() as u32);
                for (uid, auid) in pairs {
                    e.u32(*uid).u32(*auid);
                }
            }
            Record::Clock { unix_ms } => {
                e.i64(*unix_ms);
            }
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, DecodeError> {
        let mut d = Dec::new(payload);
        let r = match kind {
            T_USER_CREATED => Record::UserCreated {
                user: d.str()?,
                created: d.i64()?,
            },
            T_MAILBOX_CREATED => Record::MailboxCreated {
                user: d.str()?,
                name: d.str()?,
                id: d.u64()?,
                uidvalidity: d.u32()?,
                special_use: d.str()?,
            },
            T_MESSAGE_APPENDED => {
                let mailbox_id = d.u64()?;
                let uid = d.u32()?;
                let meta = MessageMeta::decode(&mut d)?;
                let raw = Arc::new(d.bytes()?.to_vec());
                let once = if d.is_empty() {
                    None
                } else {
                    if d.u8()? != 1 {
                        return Err(DecodeError("bad once-key flag"));
                    }
                    let key = d
                        .bytes()?
                        .try_into()
                        .map_err(|_| DecodeError("once key of the wrong length"))?;
                    Some(OnceKey {
                        key,
                        until: d.i64()?,
                    })
                };
                Record::MessageAppended {
                    mailbox_id,
                    uid,
                    meta,
                    raw,
                    once,
                }
            }
            T_FLAGS_SET => {
                let mailbox_id = d.u64()?;
                let modseq = d.u64()?;
                let n = d.count(4)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    changes.push((d.u32()?, d.strs()?));
                }
                Record::FlagsSet {
                    mailbox_id,
                    modseq,
                    changes,
                }
            }
            T_EXPUNGED => {
                let mailbox_id = d.u64()?;
                let modseq = d.u64()?;
                let n = d.count(4)?;
                let uids = (0..n).map(|_| d.u32()).collect::<Result<_, _>>()?;
                Record::Expunged {
                    mailbox_id,
                    modseq,
                    uids,
                }
            }
            T_MESSAGES_COPIED => {
                let from = d.u64()?;
                let to = d.u64()?;
                let modseq = d.u64()?;
                let n = d.count(8)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    pairs.push((d.u32()?, d.u32()?));
                }
                Record::MessagesCopied {
                    from,
                    to,
                    modseq,
                    pairs,
                }
            }
            T_MAILBOX_DELETED => Record::MailboxDeleted {
                user: d.str()?,
                name: d.str()?,
                id: d.u64()?,
            },
            T_MAILBOX_RENAMED => Record::MailboxRenamed {
                user: d.str()?,
                from: d.str()?,
                to: d.str()?,
                id: d.u64()?,
            },
            T_SUBSCRIPTION => Record::Subscription {
                user: d.str()?,
                name: d.str()?,
                subscribed: d.u8()? != 0,
            },
            T_TAGGED => {
                let mailbox_id = d.u64()?;
                let tagged = d.u8()? != 0;
                let n = d.count(4)?;
                let uids = (0..n).map(|_| d.u32()).collect::<Result<_, _>>()?;
                Record::Tagged {
                    mailbox_id,
                    uids,
                    tagged,
                }
            }
            T_RESTORED => {
                let mailbox_id = d.u64()?;
                let pending = d.u8()? != 0;
                let n = d.count(8)?;
                let pairs = (0..n)
                    .map(|_| Ok((d.u32()?, d.u32()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Record::Restored {
                    mailbox_id,
                    pairs,
                    pending,
                }
            }
            T_CLOCK => Record::Clock { unix_ms: d.i64()? },
            _ => return Err(DecodeError("unknown record type")),
        };
        d.end()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_round_trips_and_rejects_a_short_count() {
        for pending in [true, false] {
            let r = Record::Restored {
                mailbox_id: 7,
                pairs: vec![(1, 100), (2, 101), (u32::MAX - 1, 5)],
                pending,
            };
            let mut e = Enc::new();
            r.encode_payload(&mut e);
            let bytes = e.finish();
            assert_eq!(Record::decode(T_RESTORED, &bytes).unwrap(), r);
            // A count larger than the payload holds is an error, not an
            // allocation.
            let mut bad = bytes.clone();
            bad[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
            assert!(Record::decode(T_RESTORED, &bad).is_err());
        }
    }
}
