//! Reporting what other sessions (and the archive agent) changed in the
//! selected mailbox: EXISTS, EXPUNGE and FETCH FLAGS, only where RFC 3501
//! allows them (EXPUNGE is held back during FETCH, STORE and SEARCH).

use std::num::{NonZeroU32, NonZeroU64};

use imap_types::core::Vec1;
use imap_types::fetch::MessageDataItem;
use imap_types::flag::{Flag, FlagPerm};
use imap_types::response::{Code, Data};

use crate::store::live::SYSTEM;

use super::archive_folder::ArchiveProblem;
use super::core::{Authed, Ctx, Next};
use super::view::View;

impl Ctx {
    /// Reconciles the selected mailbox with the store and queues EXISTS,
    /// EXPUNGE and FETCH FLAGS for what changed.
    pub async fn report_changes(&mut self, a: &mut Authed, v: &mut View, expunge_ok: bool) -> Next {
        if v.live.is_some() {
            // O(changes): the live state's log since the view's cursor.
            a.changes.borrow_and_update();
            a.force_refresh = false;
            let Some(up) = v.catch_up(expunge_ok) else {
                // Deleted by another session.
                self.bye("The selected mailbox was deleted");
                return Next::Unselect;
            };
            self.send_updates(v, up);
            return Next::Stay;
        }
        // Archive folders: every write to the user's mail bumps the
        // counter; when it has not moved, there is nothing to reconcile.
        let changed = a.changes.has_changed().unwrap_or(false);
        a.changes.borrow_and_update();
        let changed = changed || std::mem::take(&mut a.force_refresh);
        let held_back = expunge_ok && v.entries.iter().any(|e| e.gone);
        if !changed && !held_back {
            return Next::Stay;
        }
        let Some(folder) = v.archive.clone() else {
            return Next::Stay;
        };
        let snap = match self.archive_snapshot(&a.user, folder.as_deref()).await {
            Ok(s) => Some(s),
            Err(ArchiveProblem::NoSuchFolder) => None,
            Err(ArchiveProblem::Unavailable(why)) => {
                tracing::warn!(error = %why, "cannot refresh the archive folder");
                return Next::Stay;
            }
        };
        let Some((info, msgs)) = snap else {
            // Deleted or renamed away by another session.
            self.bye("The selected mailbox was deleted");
            return Next::Unselect;
        };
        let up = v.refresh(&info, &msgs, expunge_ok);
        self.send_updates(v, up);
        Next::Stay
    }

    /// Before a command whose responses show flags (FETCH, STORE): the
    /// view takes in what other sessions changed, so those responses carry
    /// current flags and each message's FLAGS appear once; what they do
    /// not show is reported after the command. New messages are announced
    /// now (EXISTS may come at any time); expunges wait.
    pub fn take_in_changes(&mut self, v: &mut View) {
        if v.live.is_none() {
            return;
        }
        let Some(up) = v.catch_up(false) else {
            return;
        };
        if up.new_keywords {
            self.flags_responses(v);
        }
        if let Some(n) = up.exists {
            self.data(Data::Exists(n));
            self.data(Data::Recent(v.recent()));
        }
    }

    fn send_updates(&mut self, v: &mut View, up: super::view::Updates) {
        let condstore = self.condstore;
        if up.new_keywords {
            self.flags_responses(v);
        }
        if self.qresync {
            // RFC 7162 3.2.10: UIDs, all in one response.
            let mut uids: Vec<u32> = up.expunged.iter().map(|(_, u)| *u).collect();
            uids.sort_unstable();
            uids.dedup();
            if let Some(known_uids) = super::uidset::to_set(&super::view::ranges(&uids)) {
                self.data(Data::Vanished {
                    earlier: false,
                    known_uids,
                });
            }
        } else {
            for (seq, _) in up.expunged {
                if let Ok(d) = Data::expunge(seq) {
                    self.data(d);
                }
            }
        }
        if let Some(n) = up.exists {
            self.data(Data::Exists(n));
            let recent = v.recent();
            if recent > 0 || v.live.is_some() {
                self.data(Data::Recent(recent));
            }
        }
        let mut flags = up.flags;
        flags.extend(v.take_unreported(self.app.config.imap.max_flag_updates));
        flags.sort_by_key(|(seq, ..)| *seq);
        for (seq, uid, flags, modseq) in flags {
            self.announce(v, &flags);
            self.fetch_flags_response(seq, uid, &flags, modseq, true, condstore);
        }
    }

    /// The `* FLAGS` and `* OK [PERMANENTFLAGS]` of the view: the system
    /// flags and every keyword announced so far.
    pub fn flags_responses(&mut self, v: &View) {
        let mut flags: Vec<Flag<'static>> = SYSTEM
            .iter()
            .filter_map(|f| super::names::flag_from_string(f))
            .collect();
        flags.extend(
            v.announced
                .values()
                .filter_map(|k| super::names::flag_from_string(k)),
        );
        self.data(Data::Flags(flags.clone()));
        let mut perm: Vec<FlagPerm> = flags.into_iter().map(FlagPerm::Flag).collect();
        perm.push(FlagPerm::Asterisk);
        if v.read_only {
            perm.clear();
        }
        self.untagged(Code::PermanentFlags(perm), "Flags permitted");
    }

    /// Before a response uses `flags`: a keyword the client was not told
    /// of yet is announced first with `* FLAGS` (RFC 3501 7.2.6).
    pub fn announce(&mut self, v: &mut View, flags: &[String]) {
        let mut new = false;
        for f in flags.iter().filter(|f| !f.starts_with('\\')) {
            // Mostly announced already, spelt the same: no allocation.
            if v.announced.values().any(|spelt| spelt == f) {
                continue;
            }
            let key = f.to_ascii_lowercase();
            if let std::collections::btree_map::Entry::Vacant(e) = v.announced.entry(key) {
                e.insert(f.clone());
                new = true;
            }
        }
        if new {
            self.flags_responses(v);
        }
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
