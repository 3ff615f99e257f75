//! Mailbox commands: SELECT/EXAMINE, LIST/LSUB, STATUS, CREATE, DELETE,
//! RENAME, (UN)SUBSCRIBE, NAMESPACE.

use std::borrow::Cow;
use std::num::NonZeroU32;

use imap_types::core::{QuotedChar, Tag};
use imap_types::extensions::namespace::Namespace;
use imap_types::flag::{Flag, FlagNameAttribute, FlagPerm};
use imap_types::mailbox::{ListMailbox, Mailbox};
use imap_types::response::{Code, Data};
use imap_types::status::{StatusDataItem, StatusDataItemName};

use super::archive_folder::ArchiveProblem;
use super::list_extended::{ListExtended, Returns, Selection};
use super::names::{self, BadName, has_flag};
use super::session::Session;
use super::view::View;
use super::{atom, code};
use crate::archive::registry;
use crate::store::{Op, SEPARATOR, StoreError};

impl Session {
    /// Answers a store error as a tagged NO with the matching response code.
    pub(super) fn store_error(&mut self, tag: &Tag<'_>, e: StoreError) {
        let (c, msg) = match &e {
            StoreError::NoSuchMailbox(_) => (Some(code("NONEXISTENT")), e.to_string()),
            StoreError::MailboxExists(_) => (Some(code("ALREADYEXISTS")), e.to_string()),
            StoreError::HasChildren(_) => (Some(code("INUSE")), e.to_string()),
            StoreError::BadName(_) => (Some(code("CANNOT")), e.to_string()),
            StoreError::TooLarge(_) => (Some(code("TOOBIG")), e.to_string()),
            StoreError::UidsExhausted(_) | StoreError::Limit(_) => {
                (Some(code("LIMIT")), e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store error");
                (
                    Some(code("UNAVAILABLE")),
                    "Mail store unavailable, try again later".to_string(),
                )
            }
        };
        self.no(tag, c, &msg);
    }

    pub(super) fn archive_problem(&mut self, tag: &Tag<'_>, p: ArchiveProblem) {
        match p {
            ArchiveProblem::Unavailable(why) => self.archive_unavailable(tag, &why),
            ArchiveProblem::NoSuchFolder => {
                self.no(tag, Some(code("NONEXISTENT")), "No such archive folder")
            }
        }
    }

    /// Refuses changes to the archive folders' names and contents that the
    /// archive does not support (yet).
    pub(super) fn refuse_archive_name(&mut self, tag: &Tag<'_>, name: &str) -> bool {
        if registry::archive_folder(name).is_some() {
            self.no(
                tag,
                Some(code("CANNOT")),
                "Archive folders are kept by the archive agent",
            );
            return true;
        }
        false
    }

    pub(super) fn bad_name(&mut self, tag: &Tag<'_>, e: BadName) {
        self.no(tag, Some(code("CANNOT")), &e.0);
    }

    /// The configured length and depth limits for a new mailbox name.
    pub(super) fn within_name_limits(&self, name: &str) -> Result<(), BadName> {
        let l = &self.app.config.limits;
        names::within_limits(name, l.max_mailbox_name, l.max_mailbox_depth)
    }

    pub(super) fn namespace(&mut self, tag: &Tag<'_>) {
        let personal = vec![Namespace::new(
            super::istr(""),
            QuotedChar::try_from(SEPARATOR).ok(),
        )];
        self.data(Data::Namespace {
            personal,
            other: Vec::new(),
            shared: Vec::new(),
        });
        self.ok(tag, None, "NAMESPACE completed");
    }

    pub(super) async fn select(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        read_only: bool,
        condstore: bool,
    ) {
        // Selecting always ends the previous selection, even on failure.
        self.selected = None;
        if condstore {
            self.condstore = true;
        }
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        let user = self.user();
        self.mark_changes_seen();
        let archive = registry::archive_folder(&name).map(|f| f.map(str::to_string));
        let (info, msgs, read_only) = if let Some(folder) = &archive {
            if !self.archive_visible() {
                return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox");
            }
            match self.archive_snapshot(folder.as_deref()).await {
                Ok((info, msgs)) => (info, msgs, read_only || !self.archive_writable()),
                Err(p) => return self.archive_problem(tag, p),
            }
        } else {
            let info = match self.app.store.mailbox(&user, &name).await {
                Ok(Some(i)) => i,
                Ok(None) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
                Err(e) => return self.store_error(tag, e),
            };
            match self.app.store.snapshot(&user, info.id).await {
                Ok(Some((info, msgs))) => (info, msgs, read_only),
                Ok(None) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
                Err(e) => return self.store_error(tag, e),
            }
        };
        let mut view = View::new(name, read_only, &info, msgs);
        view.archive = archive;
        let system = [
            Flag::Answered,
            Flag::Flagged,
            Flag::Deleted,
            Flag::Seen,
            Flag::Draft,
        ];
        self.data(Data::Flags(system.to_vec()));
        let mut perm: Vec<FlagPerm> = system.iter().cloned().map(FlagPerm::Flag).collect();
        perm.push(FlagPerm::Asterisk);
        if read_only {
            perm.clear();
        }
        self.untagged(Code::PermanentFlags(perm), "Flags permitted");
        self.data(Data::Exists(view.len()));
        self.data(Data::Recent(0));
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
        if let Some(m) = std::num::NonZeroU64::new(view.highestmodseq) {
            self.untagged(Code::HighestModSeq(m), "Highest");
        }
        let (c, verb) = if read_only {
            (Code::ReadOnly, "EXAMINE completed")
        } else {
            (Code::ReadWrite, "SELECT completed")
        };
        self.selected = Some(view);
        self.ok(tag, Some(c), verb);
    }

    pub(super) async fn list(
        &mut self,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        wildcard: &ListMailbox<'_>,
        lsub: bool,
    ) {
        let patterns = [wildcard.clone()];
        let (sel, ret) = (Selection::default(), Returns::default());
        self.list_any(tag, reference, &patterns, &sel, &ret, lsub)
            .await
    }

    pub(super) async fn list_extended(&mut self, l: ListExtended) {
        let ListExtended {
            tag,
            selection,
            reference,
            patterns,
            returns,
        } = l;
        self.list_any(&tag, &reference, &patterns, &selection, &returns, false)
            .await
    }

    async fn list_any(
        &mut self,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        wildcards: &[ListMailbox<'_>],
        sel: &Selection,
        ret: &Returns,
        lsub: bool,
    ) {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let delimiter = QuotedChar::try_from(SEPARATOR).ok();
        let done = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        let patterns: Vec<String> = wildcards.iter().map(names::pattern).collect();
        if patterns.len() == 1 && patterns[0].is_empty() && !lsub {
            // The hierarchy delimiter and root (RFC 3501 6.3.8).
            self.data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
            });
            return self.ok(tag, None, done);
        }
        let user = self.user();
        let mut boxes = match self.app.store.mailboxes(&user).await {
            Ok(b) => b,
            Err(e) => return self.store_error(tag, e),
        };
        // The archive folders are listed beside the current ones.
        for name in self.archive_folder_names().await {
            let folder = registry::archive_folder(&name).flatten();
            boxes.push((
                name.clone(),
                crate::store::MailboxInfo {
                    id: 0,
                    uidvalidity: registry::uidvalidity(folder),
                    uidnext: 1,
                    highestmodseq: 1,
                    special_use: if folder.is_none() {
                        "\\Archive".into()
                    } else {
                        String::new()
                    },
                },
            ));
        }
        boxes.sort_by(|a, b| a.0.cmp(&b.0));
        let subs = match self.app.store.subscriptions(&user).await {
            Ok(s) => s,
            Err(e) => return self.store_error(tag, e),
        };
        let has_children = |name: &str| {
            let prefix = format!("{name}{SEPARATOR}");
            boxes.iter().any(|(n, _)| n.starts_with(&prefix))
        };
        // LSUB and LIST (SUBSCRIBED) walk the subscriptions, LIST the mailboxes.
        let by_subscription = lsub || sel.subscribed;
        let candidates: Vec<String> = if by_subscription {
            subs.clone()
        } else {
            boxes.iter().map(|(n, _)| n.clone()).collect()
        };
        let mut listed = Vec::new();
        let full: Vec<names::ListPattern> = patterns
            .iter()
            .map(|p| names::ListPattern::new(&format!("{reference}{p}")))
            .collect();
        for name in candidates {
            if !full.iter().any(|p| p.matches(&name)) {
                continue;
            }
            let info = boxes.iter().find(|(n, _)| *n == name).map(|(_, i)| i);
            let special = info.map(|i| i.special_use.as_str()).unwrap_or("");
            if sel.special_use && special.is_empty() {
                continue;
            }
            let mut attrs: Vec<&str> = Vec::new();
            match info {
                None if lsub => attrs.push("\\Noselect"),
                None => attrs.push("\\NonExistent"),
                Some(_) => attrs.push(if has_children(&name) {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }),
            }
            if !special.is_empty() {
                attrs.push(special);
            }
            if (sel.subscribed || ret.subscribed) && subs.contains(&name) {
                attrs.push("\\Subscribed");
            }
            let items = attrs
                .into_iter()
                .filter_map(|a| {
                    if a == "\\Noselect" {
                        return Some(FlagNameAttribute::Noselect);
                    }
                    a.strip_prefix('\\')
                        .and_then(atom)
                        .map(FlagNameAttribute::from)
                })
                .collect();
            let mailbox = names::to_imap(&name);
            self.data(if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            });
            if info.is_some() {
                listed.push(name);
            }
        }
        // LIST-STATUS: one STATUS per listed, selectable mailbox.
        if !ret.status.is_empty() {
            for name in listed {
                let mb = names::to_imap(&name);
                // A mailbox deleted meanwhile simply gets no STATUS line.
                let _ = self.status_data(&mb, &ret.status).await;
            }
        }
        self.ok(tag, None, done);
    }

    pub(super) async fn status(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) {
        if let Err(e) = names::from_imap(mailbox) {
            return self.bad_name(tag, e);
        }
        match self.status_data(mailbox, items).await {
            Ok(()) => self.ok(tag, None, "STATUS completed"),
            Err(None) => self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
            Err(Some(e)) => self.store_error(tag, e),
        }
    }

    /// Queues `* STATUS mailbox (...)`. `Err(None)`: no such mailbox.
    async fn status_data(
        &mut self,
        mailbox: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) -> Result<(), Option<StoreError>> {
        let name = names::from_imap(mailbox).map_err(|_| None)?;
        let user = self.user();
        let (info, msgs) = if let Some(folder) = registry::archive_folder(&name) {
            match self.archive_snapshot(folder).await {
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
                StatusDataItemName::UidNext => {
                    StatusDataItem::UidNext(NonZeroU32::new(info.uidnext.max(1)).expect("max(1)"))
                }
                StatusDataItemName::UidValidity => StatusDataItem::UidValidity(
                    NonZeroU32::new(info.uidvalidity.max(1)).expect("max(1)"),
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

    pub(super) async fn create(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n.trim_end_matches(SEPARATOR).to_string(),
            Err(e) => return self.bad_name(tag, e),
        };
        if name == "INBOX" {
            return self.no(tag, Some(code("ALREADYEXISTS")), "INBOX always exists");
        }
        if self.refuse_archive_name(tag, &name) {
            return;
        }
        if let Err(e) = names::check_new(&name) {
            return self.bad_name(tag, e);
        }
        if let Err(e) = self.within_name_limits(&name) {
            return self.no(tag, Some(code("LIMIT")), &e.0);
        }
        let user = self.user();
        let op = Op::CreateMailbox {
            user: user.clone(),
            name,
            max_mailboxes: self.app.config.limits.max_mailboxes,
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => self.ok(tag, None, "CREATE completed"),
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn delete(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        if self.refuse_archive_name(tag, &name) {
            return;
        }
        if self.selected.as_ref().is_some_and(|v| v.name == name) {
            self.selected = None;
        }
        let user = self.user();
        let op = Op::DeleteMailbox {
            user: user.clone(),
            name,
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => self.ok(tag, None, "DELETE completed"),
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn rename(&mut self, tag: &Tag<'_>, from: &Mailbox<'_>, to: &Mailbox<'_>) {
        let (from, to) = match (names::from_imap(from), names::from_imap(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return self.bad_name(tag, e),
        };
        if let Err(e) = names::check_new(&to) {
            return self.bad_name(tag, e);
        }
        if self.refuse_archive_name(tag, &from) || self.refuse_archive_name(tag, &to) {
            return;
        }
        let user = self.user();
        // The children move along: their new names must fit too.
        match self.app.store.mailboxes(&user).await {
            Ok(boxes) => {
                let prefix = format!("{from}{SEPARATOR}");
                let renamed = std::iter::once(to.clone()).chain(
                    boxes
                        .iter()
                        .filter_map(|(n, _)| n.strip_prefix(&prefix))
                        .map(|rest| format!("{to}{SEPARATOR}{rest}")),
                );
                for n in renamed {
                    if let Err(e) = self.within_name_limits(&n) {
                        return self.no(tag, Some(code("LIMIT")), &e.0);
                    }
                }
                if from == "INBOX" && boxes.len() >= self.app.config.limits.max_mailboxes {
                    return self.no(
                        tag,
                        Some(code("LIMIT")),
                        "Renaming INBOX creates a mailbox: the mailbox limit is reached",
                    );
                }
            }
            Err(e) => return self.store_error(tag, e),
        }
        let op = Op::RenameMailbox {
            user: user.clone(),
            from: from.clone(),
            to: to.clone(),
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => {
                if let Some(v) = self.selected.as_mut()
                    && v.name == from
                    && from != "INBOX"
                {
                    v.name = to;
                }
                self.ok(tag, None, "RENAME completed")
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn subscribe(&mut self, tag: &Tag<'_>, mailbox: &Mailbox<'_>, on: bool) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        let user = self.user();
        if on {
            match self.app.store.mailbox(&user, &name).await {
                Ok(Some(_)) => {}
                Ok(None) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
                Err(e) => return self.store_error(tag, e),
            }
        }
        let op = Op::Subscribe {
            user: user.clone(),
            name,
            subscribed: on,
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => self.ok(
                tag,
                None,
                if on {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                },
            ),
            Err(e) => self.store_error(tag, e),
        }
    }
}
