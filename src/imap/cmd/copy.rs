//! COPY and MOVE (UIDPLUS, RFC 6851), within the current store, into the
//! archive (archiving now) and out of it (restoring).

use std::num::NonZeroU32;

use imap_types::core::{Tag, Vec1};
use imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_types::mailbox::Mailbox;
use imap_types::response::Code;
use imap_types::sequence::SequenceSet;

use crate::archive::registry;
use crate::imap::archive_folder::RestoreProblem;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx, Next};
use crate::imap::names;
use crate::imap::view::{View, ranges};
use crate::store::{Op, Outcome};

fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let elems: Vec<UidElement> = ranges(uids)
        .into_iter()
        .filter_map(|(a, b)| {
            let (a, b) = (NonZeroU32::new(a)?, NonZeroU32::new(b)?);
            Some(if a == b {
                UidElement::Single(a)
            } else {
                UidElement::Range(a, b)
            })
        })
        .collect();
    Vec1::try_from(elems).ok().map(UidSet)
}

/// The tagged OK text of COPY/MOVE and their UID forms.
fn copy_verb(uid: bool, remove: bool) -> &'static str {
    match (uid, remove) {
        (false, false) => "COPY completed",
        (true, false) => "UID COPY completed",
        (false, true) => "MOVE completed",
        (true, true) => "UID MOVE completed",
    }
}

/// `[COPYUID validity source destination]` for (source, destination) pairs.
fn copyuid(validity: u32, pairs: &[(u32, u32)]) -> Option<Code<'static>> {
    let src: Vec<u32> = pairs.iter().map(|(a, _)| *a).collect();
    let dst: Vec<u32> = pairs.iter().map(|(_, b)| *b).collect();
    Some(Code::CopyUid {
        uid_validity: NonZeroU32::new(validity)?,
        source: uid_set(&src)?,
        destination: uid_set(&dst)?,
    })
}

pub fn seq_set(ids: &[u32]) -> Option<SequenceSet> {
    let text = ranges(ids)
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    SequenceSet::try_from(text.as_str()).ok()
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub async fn copy(
        &mut self,
        a: &Authed,
        v: &mut View,
        tag: &Tag<'_>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        remove: bool,
    ) -> Next {
        self.copy_or_move(a, v, tag, set, mailbox, uid, remove)
            .await;
        Next::Stay
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_or_move(
        &mut self,
        a: &Authed,
        v: &mut View,
        tag: &Tag<'_>,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        remove: bool,
    ) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        if v.archive.is_some() {
            return self
                .copy_from_archive(a, v, tag, set, &name, uid, remove)
                .await;
        }
        let view = &*v;
        if remove && view.read_only {
            return self.no(tag, Some(code("READ-ONLY")), "Mailbox is read-only");
        }
        let uids: Vec<u32> = view
            .resolve(set, uid)
            .into_iter()
            .filter(|u| view.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        if let Some(target) = registry::archive_folder(&name) {
            return self
                .copy_to_archive(a, v, tag, uids, target, uid, remove)
                .await;
        }
        let from = view.id;
        let user = a.user.clone();
        let to = match self.app.store.mailbox(&user, &name).await {
            Ok(Some(i)) => i.id,
            Ok(None) => return self.no(tag, Some(Code::TryCreate), "No such mailbox"),
            Err(e) => return self.store_error(tag, e),
        };
        let verb = copy_verb(uid, remove);
        if uids.is_empty() {
            return self.ok(tag, None, verb);
        }
        let op = Op::Copy {
            from,
            uids,
            to,
            remove,
        };
        match self.app.store.submit(&user, op).await {
            Ok(Outcome::Copied { uidvalidity, pairs }) => {
                self.copied(tag, copyuid(uidvalidity, &pairs), remove, verb, "Moved")
            }
            Ok(_) => self.ok(tag, None, verb),
            Err(e) => self.store_error(tag, e),
        }
    }

    /// The replies of a finished COPY or MOVE. A MOVE sends COPYUID
    /// untagged, then the EXPUNGEs (added after the command, before its
    /// completion), then OK (RFC 6851); a COPY puts COPYUID on its OK.
    fn copied(
        &mut self,
        tag: &Tag<'_>,
        copyuid: Option<Code<'static>>,
        remove: bool,
        verb: &str,
        what: &str,
    ) {
        if remove {
            if let Some(c) = copyuid {
                self.untagged(c, what);
            }
            self.ok(tag, None, verb);
        } else {
            self.ok(tag, copyuid, verb);
        }
    }

    /// COPY/MOVE out of an archive folder into a current one: restored with
    /// the same bytes, flags and date; a MOVE then deletes the archive copy.
    #[allow(clippy::too_many_arguments)]
    async fn copy_from_archive(
        &mut self,
        a: &Authed,
        v: &mut View,
        tag: &Tag<'_>,
        set: &SequenceSet,
        name: &str,
        uid: bool,
        remove: bool,
    ) {
        let verb = copy_verb(uid, remove);
        if registry::archive_folder(name).is_some() {
            return self.no(tag, Some(code("CANNOT")), "The message is already archived");
        }
        if remove && !self.archive_writable(&a.user) {
            return self.no(tag, Some(code("READ-ONLY")), "The archive is read-only");
        }
        if remove && self.archive_policy(&a.user).on_hold(&a.user) {
            return self.no(
                tag,
                Some(code("CANNOT")),
                "Legal hold: archived mail cannot be moved out; use COPY",
            );
        }
        let auids: Vec<u32> = v
            .resolve(set, uid)
            .into_iter()
            .filter(|u| v.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        if auids.is_empty() {
            return self.ok(tag, None, verb);
        }
        let user = a.user.clone();
        match self.app.store.mailbox(&user, name).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.no(tag, Some(Code::TryCreate), "No such mailbox"),
            Err(e) => return self.store_error(tag, e),
        }
        let (validity, pairs) = match self.archive_restore(&user, v, auids, name, remove).await {
            Ok(r) => r,
            Err(RestoreProblem::Store(e)) => return self.store_error(tag, e),
            Err(RestoreProblem::Archive(why)) => return self.archive_unavailable(&user, tag, &why),
            Err(RestoreProblem::Delete(why)) => return self.delete_refused(&user, tag, why),
        };
        self.copied(tag, copyuid(validity, &pairs), remove, verb, "Restored")
    }

    /// COPY/MOVE into an Archive folder: archived now (the Archive button of
    /// mail clients, Thunderbird's yearly folders), shown in the folder
    /// the client named.
    #[allow(clippy::too_many_arguments)]
    async fn copy_to_archive(
        &mut self,
        a: &Authed,
        v: &View,
        tag: &Tag<'_>,
        uids: Vec<u32>,
        target: Option<&str>,
        uid: bool,
        remove: bool,
    ) {
        let verb = copy_verb(uid, remove);
        if uids.is_empty() {
            return self.ok(tag, None, verb);
        }
        let source = v.name.clone();
        let user = a.user.clone();
        match self.archive_folder_exists(&user, target).await {
            Ok(true) => {}
            Ok(false) => return self.no(tag, Some(Code::TryCreate), "No such archive folder"),
            Err(why) => return self.archive_unavailable(&user, tag, &why),
        }
        let pairs = match crate::archive::agent::archive_now(
            &self.app.store,
            &self.app.archives,
            &user,
            &source,
            uids,
            remove,
            target.unwrap_or(""),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "archiving from IMAP failed");
                return self.no(
                    tag,
                    Some(code("UNAVAILABLE")),
                    "The archive is unavailable right now; nothing was moved",
                );
            }
        };
        let c = copyuid(registry::uidvalidity(target), &pairs);
        self.copied(tag, c, remove, verb, "Archived")
    }
}
