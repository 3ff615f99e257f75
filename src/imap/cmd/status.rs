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
        let (info, msgs) = if let Some(folder) = registry::archive_folder(&name) {
            match self.archive_snapshot(&user, folder).await {
                Ok(s) => s,
                Err(ArchiveProblem::NoSuchFolder) => return Err(None),
                Err(ArchiveProblem::Unavailable(why)) => {
                    return Err(Some(StoreError::Unavailable(why)));
                }
            }
        } else {
            let info = match self.app.store.mailbox(&user, &name).await {
                Ok(Some(i)) => i,
                Ok(None) => return Err(None),
                Err(e) => return Err(Some(e)),
            };
            let Ok(Some(s)) = self.app.store.snapshot(&user, info.id).await else {
                return Err(None);
            };
            s
        };
        let mut out = Vec::new();
        for item in items {
            out.push(match item {
                StatusDataItemName::Messages => StatusDataItem::Messages(msgs.len() as u32),
                StatusDataItemName::Recent => StatusDataItem::Recent(0),
                StatusDataItemName::UidNext => StatusDataItem::UidNext(
                    NonZeroU32::new(info.uidnext).unwrap_or(NonZeroU32::MIN),
                ),
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(
                    NonZeroU32::new(info.uidvalidity).unwrap_or(NonZeroU32::MIN),
                ),
                StatusDataItemName::Unseen => StatusDataItem::Unseen(
                    msgs.iter()
                        .filter(|m| !has_flag(&m.flags, "\\Seen"))
                        .count() as u32,
                ),
                StatusDataItemName::Deleted => StatusDataItem::Deleted(
                    msgs.iter()
                        .filter(|m| has_flag(&m.flags, "\\Deleted"))
                        .count() as u32,
                ),
                StatusDataItemName::HighestModSeq => {
                    StatusDataItem::HighestModSeq(info.highestmodseq)
                }
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
