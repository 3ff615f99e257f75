//! Turning a request into WAL records. Planning only reads the transaction;
//! it checks everything that can fail before emitting anything, so a refused
//! request leaves no trace, and the records it returns carry every choice
//! made (ids, UIDs, modseqs, UIDVALIDITY) so replay never has to choose again.

use std::sync::Arc;

use redb::{ReadableTable, WriteTransaction};

use super::StoreError;
use super::message::{MessageMeta, Summary};
use super::record::Record;
use super::schema::{self, DEFAULT_MAILBOXES, MAILBOXES, MailboxInfo, USERS};

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

#[derive(Debug, Clone)]
pub enum Op {
    Deliver(Delivery),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Appended { uidvalidity: u32, uid: u32 },
}

/// Plans `op` against the state in `txn` (which already holds the effects of
/// earlier requests of the same batch).
pub fn plan(
    txn: &WriteTransaction,
    op: &Op,
    now: i64,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    match op {
        Op::Deliver(d) => plan_delivery(txn, d, now),
    }
}

fn plan_delivery(
    txn: &WriteTransaction,
    d: &Delivery,
    now: i64,
) -> Result<(Vec<Record>, Outcome), StoreError> {
    let size = u32::try_from(d.raw.len()).map_err(|_| StoreError::TooLarge(d.raw.len()))?;
    let mut records = Vec::new();
    let user_known = txn.open_table(USERS)?.get(d.user.as_str())?.is_some();
    let info = if user_known {
        let key = schema::mailbox_key(&d.user, &d.mailbox);
        let got = txn
            .open_table(MAILBOXES)?
            .get(key.as_str())?
            .map(|v| MailboxInfo::from_bytes(v.value()));
        got.transpose()?
            .ok_or_else(|| StoreError::NoSuchMailbox(d.mailbox.clone()))?
    } else {
        if !DEFAULT_MAILBOXES.iter().any(|(n, _)| *n == d.mailbox) {
            return Err(StoreError::NoSuchMailbox(d.mailbox.clone()));
        }
        records.push(Record::UserCreated {
            user: d.user.clone(),
            created: now,
        });
        let first_id = schema::get_meta(txn, schema::K_NEXT_MAILBOX_ID)?.max(1);
        let first_uidvalidity = next_uidvalidity(txn, now)?;
        let mut target = None;
        for (i, (name, special)) in DEFAULT_MAILBOXES.iter().enumerate() {
            let next_id = first_id + i as u64;
            let uidvalidity = first_uidvalidity + i as u32;
            records.push(Record::MailboxCreated {
                user: d.user.clone(),
                name: name.to_string(),
                id: next_id,
                uidvalidity,
                special_use: special.to_string(),
            });
            if *name == d.mailbox {
                target = Some(MailboxInfo {
                    id: next_id,
                    uidvalidity,
                    uidnext: 1,
                    highestmodseq: 1,
                    special_use: special.to_string(),
                });
            }
        }
        target.expect("delivery mailbox is one of the defaults")
    };
    if info.uidnext == u32::MAX {
        return Err(StoreError::UidsExhausted(d.mailbox.clone()));
    }
    let uid = info.uidnext;
    records.push(Record::MessageAppended {
        mailbox_id: info.id,
        uid,
        meta: MessageMeta {
            internal_date: d.internal_date,
            size,
            modseq: info.highestmodseq + 1,
            flags: d.flags.clone(),
            summary: d.summary.clone(),
        },
        raw: d.raw.clone(),
    });
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
