//! Reporting what other sessions (and the archive agent) changed in the
//! selected mailbox: EXISTS, EXPUNGE and FETCH FLAGS, only where RFC 3501
//! allows them (EXPUNGE is held back during FETCH, STORE and SEARCH).

use std::num::{NonZeroU32, NonZeroU64};

use imap_types::core::Vec1;
use imap_types::fetch::MessageDataItem;
use imap_types::response::Data;

use super::archive_folder::ArchiveProblem;
use super::core::{Authed, Ctx, Next};
use super::view::View;

impl Ctx {
    /// Reconciles the selected mailbox with the store and queues EXISTS,
    /// EXPUNGE and FETCH FLAGS for what changed.
    pub async fn report_changes(&mut self, a: &mut Authed, v: &mut View, expunge_ok: bool) -> Next {
        // Every write to the user's mail bumps the counter: when it has not
        // moved since the last look, there is nothing to reconcile.
        let changed = a.changes.has_changed().unwrap_or(false);
        a.changes.borrow_and_update();
        let changed = changed || std::mem::take(&mut a.force_refresh);
        let held_back = expunge_ok && v.entries.iter().any(|e| e.gone);
        if !changed && !held_back {
            return Next::Stay;
        }
        let snap = if let Some(folder) = v.archive.clone() {
            match self.archive_snapshot(&a.user, folder.as_deref()).await {
                Ok(s) => Some(s),
                Err(ArchiveProblem::NoSuchFolder) => None,
                Err(ArchiveProblem::Unavailable(why)) => {
                    tracing::warn!(error = %why, "cannot refresh the archive folder");
                    return Next::Stay;
                }
            }
        } else {
            match self.app.store.snapshot(&a.user, v.id).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the selected mailbox");
                    return Next::Stay;
                }
            }
        };
        let Some((info, msgs)) = snap else {
            // Deleted or renamed away by another session.
            self.bye("The selected mailbox was deleted");
            return Next::Unselect;
        };
        let condstore = self.condstore;
        let up = v.refresh(&info, &msgs, expunge_ok);
        for seq in up.expunged {
            if let Ok(d) = Data::expunge(seq) {
                self.data(d);
            }
        }
        if let Some(n) = up.exists {
            self.data(Data::Exists(n));
        }
        for (seq, uid, flags, modseq) in up.flags {
            self.fetch_flags_response(seq, uid, &flags, modseq, true, condstore);
        }
        Next::Stay
    }

    pub fn fetch_flags_response(
        &mut self,
        seq: u32,
        uid: u32,
        flags: &[String],
        modseq: u64,
        with_uid: bool,
        with_modseq: bool,
    ) {
        let mut items = vec![MessageDataItem::Flags(super::names::fetch_flags(flags))];
        if with_uid && let Some(u) = NonZeroU32::new(uid) {
            items.push(MessageDataItem::Uid(u));
        }
        if with_modseq && let Some(m) = NonZeroU64::new(modseq) {
            items.push(MessageDataItem::ModSeq(m));
        }
        if let (Some(seq), Ok(items)) = (NonZeroU32::new(seq), Vec1::try_from(items)) {
            self.data(Data::Fetch { seq, items });
        }
    }
}
