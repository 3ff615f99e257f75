//! EXPUNGE and UID EXPUNGE.

use imap_types::core::Tag;
use imap_types::sequence::SequenceSet;

use crate::imap::code;
use crate::imap::core::{Authed, Ctx, Next};
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
        let allowed: Option<Vec<u32>> = only.as_ref().map(|s| view.resolve(s, true));
        let uids: Vec<u32> = view
            .deleted_now()
            .into_iter()
            .filter(|u| allowed.as_ref().is_none_or(|a| a.binary_search(u).is_ok()))
            .collect();
        let verb = if only.is_some() {
            "UID EXPUNGE completed"
        } else {
            "EXPUNGE completed"
        };
        if view.archive.is_some() {
            if let Err(why) = self.archive_delete(&a.user, uids).await {
                return self.delete_refused(&a.user, tag, why);
            }
            return self.ok(tag, None, verb);
        }
        let mailbox_id = view.id;
        let user = a.user.clone();
        if !uids.is_empty()
            && let Err(e) = self
                .app
                .store
                .submit(&user, Op::Expunge { mailbox_id, uids })
                .await
        {
            return self.store_error(tag, e);
        }
        self.ok(tag, None, verb);
    }
}
