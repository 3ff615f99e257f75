//! EXPUNGE and UID EXPUNGE.

use imap_types::core::Tag;
use imap_types::sequence::SequenceSet;

use crate::imap::code;
use crate::imap::core::{Authed, Ctx, Next};
use crate::imap::names::has_flag;
use crate::imap::view::View;
use crate::store::Op;

impl Ctx {
    /// EXPUNGE (UID EXPUNGE with `only`); the EXPUNGE responses follow
    /// from the reconcile after the command.
    pub async fn expunge(
        &mut self,
        a: &Authed,
        view: &mut View,
        tag: &Tag<'_>,
        only: Option<SequenceSet>,
    ) -> Next {
        self.expunge_marked(a, view, tag, only).await;
        Next::Stay
    }

    async fn expunge_marked(
        &mut self,
        a: &Authed,
        view: &mut View,
        tag: &Tag<'_>,
        only: Option<SequenceSet>,
    ) {
        if view.read_only {
            return self.no(tag, Some(code("READ-ONLY")), "Mailbox is read-only");
        }
        if view.archive.is_some() {
            let allowed: Option<Vec<u32>> = only.as_ref().map(|s| view.resolve(s, true));
            let doomed: Vec<u32> = view
                .entries
                .iter()
                .filter(|e| !e.gone && e.has("\\Deleted"))
                .filter(|e| allowed.as_ref().is_none_or(|a| a.contains(&e.uid)))
                .map(|e| e.uid)
                .collect();
            if let Err(why) = self.archive_delete(&a.user, doomed).await {
                return self.delete_refused(&a.user, tag, why);
            }
            return self.ok(
                tag,
                None,
                if only.is_some() {
                    "UID EXPUNGE completed"
                } else {
                    "EXPUNGE completed"
                },
            );
        }
        let mailbox_id = view.id;
        let user = a.user.clone();
        // Decide on the store's current flags, not a possibly stale view.
        let Ok(Some((_, msgs))) = self.app.store.snapshot(&user, mailbox_id).await else {
            return self.no(tag, Some(code("NONEXISTENT")), "Mailbox is gone");
        };
        let allowed: Option<Vec<u32>> = only.as_ref().map(|s| view.resolve(s, true));
        let uids: Vec<u32> = msgs
            .iter()
            .filter(|m| has_flag(&m.flags, "\\Deleted"))
            .filter(|m| allowed.as_ref().is_none_or(|a| a.contains(&m.uid)))
            .map(|m| m.uid)
            .collect();
        if !uids.is_empty()
            && let Err(e) = self
                .app
                .store
                .submit(&user, Op::Expunge { mailbox_id, uids })
                .await
        {
            return self.store_error(tag, e);
        }
        self.ok(
            tag,
            None,
            if only.is_some() {
                "UID EXPUNGE completed"
            } else {
                "EXPUNGE completed"
            },
        );
    }
}
