//! STATUS (also LIST-STATUS's per-mailbox answers).

use std::borrow::Cow;
use std::num::NonZeroU32;

use imap_types::core::Tag;
use imap_types::mailbox::Mailbox;
use imap_types::response::Data;
use imap_types::status::{StatusDataItem, StatusDataItemName};

use crate::archive::registry;
use crate::imap::archive_folder::ArchiveProblem;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx};
use crate::imap::names::{self, has_flag};
use crate::store::StoreError;

impl Ctx {
    pub async fn status(
        &mut self,
        a: &Authed,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) {
        if let Err(e) = names::from_imap(mailbox) {
            return self.bad_name(tag, e);
        }
        match self.status_data(a, mailbox, items).await {
            Ok(()) => self.ok(tag, None, "STATUS completed"),
            Err(None) => self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
            Err(Some(e)) => self.store_error(tag, e),
        }
    }

    /// Queues `* STATUS mailbox (...)`. `Err(None)`: no such mailbox.
    pub async fn status_data(
        &mut self,
        a: &Authed,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) -> Result<(), Option<StoreError>> {
        let name = names::from_imap(mailbox).map_err(|_| None)?;
        let user = a.user.clone();
        // (messages, recent, unseen, deleted, uidnext, uidvalidity, highestmodseq, size)
        let counts: [u64; 8] = if let Some(folder) = registry::archive_folder(&name) {
            let (info, msgs) = match self.archive_snapshot(&user, folder).await {
                Ok(s) => s,
                Err(ArchiveProblem::NoSuchFolder) => return Err(None),
                Err(ArchiveProblem::Unavailable(why)) => {
                    return Err(Some(StoreError::Unavailable(why)));
                }
            };
            let unseen = msgs
                .iter()
                .filter(|m| !has_flag(&m.flags, "\\Seen"))
                .count();
            let deleted = msgs
                .iter()
                .filter(|m| has_flag(&m.flags, "\\Deleted"))
                .count();
            [
                msgs.len() as u64,
                0,
                unseen as u64,
                deleted as u64,
                info.uidnext as u64,
                info.uidvalidity as u64,
                info.highestmodseq,
                msgs.iter().map(|m| u64::from(m.size)).sum(),
            ]
        } else {
            let info = match self.app.store.mailbox(&user, &name).await {
                Ok(Some(i)) => i,
                Ok(None) => return Err(None),
                Err(e) => return Err(Some(e)),
            };
            // Counters of the live state: no message is read.
            let live = match self.app.store.live(&user, info.id).await {
                Ok(Some(l)) => l,
                Ok(None) => return Err(None),
                Err(e) => return Err(Some(e)),
            };
            let st = live.read();
            [
                st.messages.len() as u64,
                st.recent() as u64,
                st.unseen as u64,
                st.deleted as u64,
                st.uidnext as u64,
                st.uidvalidity as u64,
                st.highestmodseq,
                st.bytes,
            ]
        };
        let [
            messages,
            recent,
            unseen,
            deleted,
            uidnext,
            uidvalidity,
            highestmodseq,
            size,
        ] = counts;
        let nz = |n: u64| NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
        let mut out = Vec::new();
        for item in items {
            out.push(match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(messages as u32),
                StatusDataItemName::Recent => StatusDataItem::Recent(recent as u32),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(nz(uidnext)),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(nz(uidvalidity)),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(unseen as u32),
                StatusDataItemName::Deleted => StatusDataItem::Deleted(deleted as u32),
                StatusDataItemName::HighestModSeq => StatusDataItem::HighestModSeq(highestmodseq),
                StatusDataItemName::Size => StatusDataItem::Size(size),
                _ => continue,
            });
        }
        self.data(Data::Status {
            mailbox: names::to_imap(&name),
            items: Cow::Owned(out),
        });
        Ok(())
    }
}
