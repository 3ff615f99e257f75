//! SELECT and EXAMINE; CLOSE and UNSELECT.

use imap_types::command::SelectParameter;
use imap_types::core::Tag;
use imap_types::mailbox::Mailbox;
use imap_types::response::Code;
use imap_types::response::Data;

use crate::archive::registry;
use crate::imap::cmd::resync::Resync;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx, Next};
use crate::imap::names;
use crate::imap::view::View;
use crate::store::Op;

impl Ctx {
    pub async fn select(
        &mut self,
        a: &mut Authed,
        was_selected: bool,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        parameters: Vec<SelectParameter>,
    ) -> Next {
        let mut resync = None;
        for p in parameters {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync { .. } if !self.qresync => {
                    // RFC 7162 3.2.5: only once the client enabled it.
                    self.bad(Some(tag), None, "ENABLE QRESYNC first");
                    return Next::Stay;
                }
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    seq_match_data,
                } => {
                    resync = Some(Resync {
                        uidvalidity: uid_validity.get(),
                        modseq: mod_sequence_value.get(),
                        known_uids,
                        seq_match: seq_match_data,
                    })
                }
            }
        }
        // Selecting always ends the previous selection, even on failure;
        // with QRESYNC the client is told where that selection's
        // responses end (RFC 7162 3.2.11).
        if was_selected && self.qresync {
            self.untagged(Code::Closed, "Previous mailbox closed");
        }
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => {
                self.bad_name(tag, e);
                return Next::Unselect;
            }
        };
        // Changes so far are in the snapshot taken below.
        a.changes.borrow_and_update();
        let archive = registry::archive_folder(&name).map(|f| f.map(str::to_string));
        let view = if let Some(folder) = &archive {
            if !self.archive_visible(&a.user) {
                self.no(tag, Some(code("NONEXISTENT")), "No such mailbox");
                return Next::Unselect;
            }
            match self.archive_snapshot(&a.user, folder.as_deref()).await {
                Ok((info, msgs)) => {
                    let ro = read_only || !self.archive_writable(&a.user);
                    let mut view = View::new(name, ro, &info, msgs);
                    view.archive = archive;
                    view.announced = view.keyword_spellings();
                    view
                }
                Err(p) => {
                    self.archive_problem(&a.user, tag, p);
                    return Next::Unselect;
                }
            }
        } else {
            let info = match self.app.store.mailbox(&a.user, &name).await {
                Ok(Some(i)) => i,
                Ok(None) => {
                    self.no(tag, Some(code("NONEXISTENT")), "No such mailbox");
                    return Next::Unselect;
                }
                Err(e) => {
                    self.store_error(tag, e);
                    return Next::Unselect;
                }
            };
            match self.app.store.live(&a.user, info.id).await {
                Ok(Some(live)) => View::from_live(name, read_only, info.id, live),
                Ok(None) => {
                    self.no(tag, Some(code("NONEXISTENT")), "No such mailbox");
                    return Next::Unselect;
                }
                Err(e) => {
                    self.store_error(tag, e);
                    return Next::Unselect;
                }
            }
        };
        let read_only = view.read_only;
        self.flags_responses(&view);
        self.data(Data::Exists(view.len()));
        self.data(Data::Recent(view.recent()));
        if let Some(i) = view.entries.iter().position(|e| !e.has("\\Seen"))
            && let Ok(c) = Code::unseen(i as u32 + 1)
        {
            self.untagged(c, "First unseen");
        }
        if let Ok(c) = Code::uidvalidity(view.uidvalidity) {
            self.untagged(c, "UIDs valid");
        }
        if let Ok(c) = Code::uidnext(view.uidnext.max(1)) {
            self.untagged(c, "Predicted next UID");
        }
        match std::num::NonZeroU64::new(view.highestmodseq) {
            Some(m) => self.untagged(Code::HighestModSeq(m), "Highest"),
            None => self.untagged(Code::NoModSeq, "No modseqs here"),
        }
        if let Some(r) = resync
            && r.uidvalidity == view.uidvalidity
            && let Err(e) = self.resync(&a.user, &view, r).await
        {
            self.store_error(tag, e);
            return Next::Unselect;
        }
        let (c, verb) = if read_only {
            (Code::ReadOnly, "EXAMINE completed")
        } else {
            (Code::ReadWrite, "SELECT completed")
        };
        self.ok(tag, Some(c), verb);
        Next::Select(view)
    }

    /// CLOSE (expunging what is marked \Deleted, silently) or UNSELECT.
    pub async fn close(
        &mut self,
        a: &mut Authed,
        v: &mut View,
        tag: &Tag<'_>,
        expunge: bool,
    ) -> Next {
        let verb = if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        };
        if expunge && !v.read_only {
            let doomed = v.deleted_now();
            if v.archive.is_some() {
                // CLOSE never fails; under legal hold nothing is deleted.
                let _ = self.archive_delete(&a.user, doomed).await;
            } else if !doomed.is_empty()
                && let Err(e) = self
                    .app
                    .store
                    .submit(
                        &a.user,
                        Op::Expunge {
                            mailbox_id: v.id,
                            uids: doomed,
                        },
                    )
                    .await
            {
                self.store_error(tag, e);
                return Next::Unselect;
            }
        }
        self.ok(tag, None, verb);
        Next::Unselect
    }
}
