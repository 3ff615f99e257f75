//! The WAL record payloads: every mutation of a storage group, fully resolved
//! (UIDs, ids, modseqs already chosen) so that replay is a sequence of puts
//! that gives the same result however often it runs.

use std::sync::Arc;

use super::codec::{Dec, DecodeError, Enc};
use super::message::MessageMeta;

pub const T_USER_CREATED: u8 = 1;
pub const T_MAILBOX_CREATED: u8 = 2;
pub const T_MESSAGE_APPENDED: u8 = 3;

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
    },
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::UserCreated { .. } => T_USER_CREATED,
            Record::MailboxCreated { .. } => T_MAILBOX_CREATED,
            Record::MessageAppended { .. } => T_MESSAGE_APPENDED,
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
            } => {
                e.u64(*mailbox_id).u32(*uid);
                meta.encode(e);
                e.bytes(raw);
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
            T_MESSAGE_APPENDED => Record::MessageAppended {
                mailbox_id: d.u64()?,
                uid: d.u32()?,
                meta: MessageMeta::decode(&mut d)?,
                raw: Arc::new(d.bytes()?.to_vec()),
            },
            _ => return Err(DecodeError("unknown record type")),
        };
        d.end()?;
        Ok(r)
    }
}
