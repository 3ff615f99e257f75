//! A storage group's consistent image: every row of every table, read from
//! one redb read transaction (an MVCC snapshot, so writers never wait), and
//! loaded back into a fresh database. redb has no backup API of its own and
//! copying its file while it is written is unsafe; rows are what it
//! guarantees. Keys and values keep redb's own fixed encoding of each
//! table's types (pinned by a test, since a redb upgrade could change it).
//!
//! A row is `u32 key length | key | u32 value length | value`; rows follow
//! each other across block boundaries (a message body may be larger than a
//! block), so a reader joins the blocks of one table before splitting rows.
//!
//! Two kinds of image exist. The inline kind (backups made before body
//! segments were copied whole) holds every message's bytes as rows of a
//! "bodies" table, loaded into new segments at restore. The segment kind,
//! the one written now, holds the body indexes as they are and the segment
//! bytes travel beside it (`store::export`), so a restore writes them back
//! sequentially instead of storing body after body.

use redb::{
    Key, ReadTransaction, ReadableTable, TableDefinition, TableHandle, Value, WriteTransaction,
};

use super::StoreError;
use super::bodies::{self, BodyStore};
use super::schema::{
    BLOBS, BODY_REFS, DELIVERED_ONCE, K_FORMAT, LOCAL_META, LOCATIONS, MAILBOX_IDS, MAILBOXES,
    MESSAGES, META, RESTORED, SUBSCRIPTIONS, TABLES, TAGS, USERS, VANISHED, VANISHED_FLOOR,
};

/// Receives each row's key and value bytes.
pub type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Index in [`TABLES`] of the bodies table of inline images.
pub const BODIES_TABLE: u8 = 5;

/// How an image holds the bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ImageKind {
    /// Message bytes as rows of the "bodies" table.
    Inline = 1,
    /// Body indexes as rows; the segments copied beside the image.
    Segments = 2,
}

impl ImageKind {
    pub fn from_u8(b: u8) -> Option<ImageKind> {
        match b {
            1 => Some(ImageKind::Inline),
            2 => Some(ImageKind::Segments),
            _ => None,
        }
    }

    /// The table indexes (of [`TABLES`]) such an image holds, in order.
    pub fn tables(self) -> Vec<u8> {
        let all = 0..TABLES.len() as u8;
        match self {
            ImageKind::Inline => all.take(9).collect(),
            ImageKind::Segments => all.filter(|i| *i != BODIES_TABLE).collect(),
        }
    }
}

fn dump<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    sink: &mut RowSink<'_>,
) -> Result<(), StoreError> {
    let table = txn.open_table(def)?;
    for row in table.iter()? {
        let (k, v) = row?;
        let kv = k.value();
        let vv = v.value();
        sink(K::as_bytes(&kv).as_ref(), V::as_bytes(&vv).as_ref())?;
    }
    Ok(())
}

fn load<K: Key + 'static, V: Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def)?;
    for (k, v) in rows {
        // redb's decoders of fixed-width types assume the width.
        if K::fixed_width().is_some_and(|w| w != k.len())
            || V::fixed_width().is_some_and(|w| w != v.len())
        {
            return Err(StoreError::Format(format!(
                "a row of {} key and {} value bytes in table {}",
                k.len(),
                v.len(),
                def.name()
            )));
        }
        table.insert(K::from_bytes(k), V::from_bytes(v))?;
    }
    Ok(())
}

/// Calls `sink` with every row of table `index` (of [`TABLES`]) of an
/// image of the segment kind, in key order.
pub fn dump_table(
    txn: &ReadTransaction,
    index: u8,
    sink: &mut RowSink<'_>,
) -> Result<(), StoreError> {
    match index {
        0 => dump(txn, META, sink),
        1 => dump(txn, USERS, sink),
        2 => dump(txn, MAILBOXES, sink),
        3 => dump(txn, MAILBOX_IDS, sink),
        4 => dump(txn, MESSAGES, sink),
        6 => dump(txn, SUBSCRIPTIONS, sink),
        7 => dump(txn, TAGS, sink),
        8 => dump(txn, RESTORED, sink),
        9 => dump(txn, BODY_REFS, sink),
        10 => dump(txn, BLOBS, sink),
        11 => dump(txn, LOCATIONS, sink),
        12 => dump(txn, DELIVERED_ONCE, sink),
        13 => dump(txn, VANISHED, sink),
        14 => dump(txn, VANISHED_FLOOR, sink),
        _ => Err(StoreError::Format(format!(
            "no table number {index} in an image"
        ))),
    }
}

/// Inserts rows into table `index` of a database being restored from an
/// image of `kind` (inline bodies into its segments).
pub fn load_rows(
    txn: &WriteTransaction,
    store: &BodyStore,
    kind: ImageKind,
    index: u8,
    rows: &[(Vec<u8>, Vec<u8>)],
) -> Result<(), StoreError> {
    if !kind.tables().contains(&index) {
        return Err(StoreError::Format(format!(
            "table number {index} in an image of the {kind:?} kind"
        )));
    }
    match index {
        0 => {
            // The restored store has its own format; an inline image's
            // bodies get new segments, so their positions are its own too.
            let keep: Vec<(Vec<u8>, Vec<u8>)> = rows
                .iter()
                .filter(|(k, _)| {
                    std::str::from_utf8(k).is_ok_and(|k| {
                        k != K_FORMAT && (kind == ImageKind::Segments || !LOCAL_META.contains(&k))
                    })
                })
                .cloned()
                .collect();
            load(txn, META, &keep)
        }
        1 => load(txn, USERS, rows),
        2 => load(txn, MAILBOXES, rows),
        3 => load(txn, MAILBOX_IDS, rows),
        4 => load(txn, MESSAGES, rows),
        5 => {
            for (k, v) in rows {
                if k.len() != 12 {
                    return Err(StoreError::Format(format!(
                        "a body row keyed by {} bytes",
                        k.len()
                    )));
                }
                bodies::put(txn, store, <(u64, u32)>::from_bytes(k), v)?;
            }
            Ok(())
        }
        6 => load(txn, SUBSCRIPTIONS, rows),
        7 => load(txn, TAGS, rows),
        8 => load(txn, RESTORED, rows),
        9 => load(txn, BODY_REFS, rows),
        10 => load(txn, BLOBS, rows),
        11 => load(txn, LOCATIONS, rows),
        12 => load(txn, DELIVERED_ONCE, rows),
        13 => load(txn, VANISHED, rows),
        14 => load(txn, VANISHED_FLOOR, rows),
        _ => Err(StoreError::Format(format!("no table number {index}"))),
    }
}

/// Fails when the database holds a table the image would leave out.
pub fn check_tables(txn: &ReadTransaction) -> Result<(), StoreError> {
    for t in txn.list_tables()? {
        if !TABLES.contains(&t.name()) {
            return Err(StoreError::Format(format!(
                "table `{}` is not known to the backup image",
                t.name()
            )));
        }
    }
    Ok(())
}

/// Splits whole rows off the front of `buf`, leaving a partial row there.
/// A declared length above `limit` is damage, not a row.
pub fn take_rows(
    buf: &mut Vec<u8>,
    limit: usize,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 4 {
            break;
        }
        let klen = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if klen > limit {
            return Err(format!("impossible key length {klen}"));
        }
        if rest.len() < 4 + klen + 4 {
            break;
        }
        let vlen =
            u32::from_le_bytes(rest[4 + klen..8 + klen].try_into().expect("4 bytes")) as usize;
        if vlen > limit {
            return Err(format!("impossible value length {vlen}"));
        }
        if rest.len() < 8 + klen + vlen {
            break;
        }
        out.push((
            rest[4..4 + klen].to_vec(),
            rest[8 + klen..8 + klen + vlen].to_vec(),
        ));
        at += 8 + klen + vlen;
    }
    buf.drain(..at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends one row in image encoding.
    fn encode_row(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        buf.extend_from_slice(value);
    }

    /// The image stores redb's encoding of these types; if a redb upgrade
    /// changes it, old backups would restore wrongly, so it is pinned here.
    #[test]
    fn redb_encodings_are_pinned() {
        fn enc<'a, V: Value + 'a>(v: &V::SelfType<'a>) -> Vec<u8> {
            V::as_bytes(v).as_ref().to_vec()
        }
        let mut want = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
        want.extend_from_slice(&0x0a0b_0c0du32.to_le_bytes());
        assert_eq!(
            enc::<(u64, u32)>(&(0x0102_0304_0506_0708, 0x0a0b_0c0d)),
            want
        );
        assert_eq!(enc::<&str>(&"ab"), b"ab");
        assert_eq!(enc::<&[u8]>(&&b"xy"[..]), b"xy");
        assert_eq!(enc::<u64>(&5), 5u64.to_le_bytes());
        assert_eq!(enc::<i64>(&-2), (-2i64).to_le_bytes());
        assert_eq!(enc::<u8>(&1), [1u8]);
        assert!(enc::<()>(&()).is_empty());
        assert_eq!(TABLES[BODIES_TABLE as usize], "bodies");
    }

    #[test]
    fn rows_split_across_chunks() {
        let mut all = Vec::new();
        encode_row(&mut all, b"k1", &[7u8; 1000]);
        encode_row(&mut all, b"key2", b"");
        let mut got = Vec::new();
        let mut buf = Vec::new();
        for chunk in all.chunks(7) {
            buf.extend_from_slice(chunk);
            take_rows(&mut buf, 1 << 20, &mut got).unwrap();
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, b"key2");
        let mut bad = vec![0xff, 0xff, 0xff, 0x7f];
        assert!(take_rows(&mut bad, 1 << 20, &mut got).is_err());
    }
}
