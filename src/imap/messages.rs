//! Message commands: APPEND, FETCH, STORE, COPY/MOVE, EXPUNGE, SEARCH,
//! CLOSE/UNSELECT.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use imap_types::IntoStatic;
use imap_types::command::{FetchModifier, StoreModifier};
use imap_types::core::{Charset, Tag, Vec1};
use imap_types::datetime::DateTime;
use imap_types::extensions::binary::LiteralOrLiteral8;
use imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName};
use imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_types::mailbox::Mailbox;
use imap_types::response::{Code, Data};
use imap_types::search::SearchKey;
use imap_types::sequence::SequenceSet;

use super::names::{self, has_flag};
use super::session::{FLUSH_AT, Session};
use super::view::ranges;
use super::{code, fetch, search};
use crate::archive::registry;
use crate::store::{Delivery, FlagAction, Op, Outcome, Summary};

/// Messages loaded from the store per round of a FETCH that needs bodies.
const FETCH_BATCH: usize = 64;
/// ...and of one that needs only metadata.
const META_BATCH: usize = 1024;
/// A batch of messages with more bytes than this is parsed off the async
/// threads.
const HEAVY_BYTES: usize = 1 << 20;

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

fn seq_set(ids: &[u32]) -> Option<SequenceSet> {
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

fn flag_strings(flags: &[Flag<'_>]) -> Vec<String> {
    flags.iter().map(names::flag_to_string).collect()
}

/// The keywords (not system flags) among `flags`, lower-cased.
fn keyword_set(flags: &[Flag<'_>]) -> std::collections::HashSet<String> {
    flags
        .iter()
        .filter(|f| matches!(f, Flag::Keyword(_)))
        .map(|f| names::flag_to_string(f).to_ascii_lowercase())
        .collect()
}

impl Session {
    pub(super) async fn append(
        &mut self,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        flags: Vec<Flag<'_>>,
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'_>,
    ) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        if self.refuse_archive_name(tag, &name) {
            return;
        }
        let raw = match message {
            LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
            LiteralOrLiteral8::Literal8(_) => {
                // The framer refuses literal8 before it gets here.
                return self.bad(Some(tag), None, "BINARY is not supported");
            }
        };
        let keywords = keyword_set(&flags);
        if !keywords.is_empty() {
            let in_use = match self.keywords_in(&name).await {
                Ok(k) => k,
                Err(e) => return self.store_error(tag, e),
            };
            if let Err(msg) = self.keyword_room(in_use, keywords) {
                return self.no(tag, Some(code("LIMIT")), &msg);
            }
        }
        if raw.len() > self.app.config.limits.max_message_size {
            return self.no(tag, Some(code("TOOBIG")), "Message exceeds the size limit");
        }
        let user = self.user();
        let summary = Summary::parse(&raw);
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let delivery = Delivery {
            user: user.clone(),
            mailbox: name,
            raw: Arc::new(raw),
            internal_date,
            flags: flag_strings(&flags),
            summary,
        };
        match self.app.store.submit(&user, Op::Deliver(delivery)).await {
            Ok(Outcome::Appended { uidvalidity, uid }) => {
                let c = match (NonZeroU32::new(uidvalidity), NonZeroU32::new(uid)) {
                    (Some(v), Some(u)) => Some(Code::AppendUid {
                        uid_validity: v,
                        uid: u,
                    }),
                    _ => None,
                };
                self.ok(tag, c, "APPEND completed");
            }
            Ok(_) => self.ok(tag, None, "APPEND completed"),
            Err(crate::store::StoreError::NoSuchMailbox(_)) => {
                self.no(tag, Some(Code::TryCreate), "No such mailbox")
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    pub(super) async fn fetch(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        what: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> std::io::Result<()> {
        let mut items = match what {
            MacroOrMessageDataItemNames::Macro(Macro::Fast) => vec![
                MessageDataItemName::Flags,
                MessageDataItemName::InternalDate,
                MessageDataItemName::Rfc822Size,
            ],
            MacroOrMessageDataItemNames::Macro(Macro::All) => vec![
                MessageDataItemName::Flags,
                MessageDataItemName::InternalDate,
                MessageDataItemName::Rfc822Size,
                MessageDataItemName::Envelope,
            ],
            MacroOrMessageDataItemNames::Macro(Macro::Full) => vec![
                MessageDataItemName::Flags,
                MessageDataItemName::InternalDate,
                MessageDataItemName::Rfc822Size,
                MessageDataItemName::Envelope,
                MessageDataItemName::Body,
            ],
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
            _ => vec![MessageDataItemName::Flags],
        };
        let mut changed_since = None;
        for m in &modifiers {
            if let FetchModifier::ChangedSince(c) = m {
                changed_since = Some(c.get());
                self.condstore = true;
            }
        }
        if items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            self.condstore = true;
        }
        if uid && !items.iter().any(|i| matches!(i, MessageDataItemName::Uid)) {
            items.insert(0, MessageDataItemName::Uid);
        }
        if self.condstore
            && changed_since.is_some()
            && !items
                .iter()
                .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            items.push(MessageDataItemName::ModSeq);
        }
        let needs_body = items.iter().any(|i| {
            !matches!(
                i,
                MessageDataItemName::Flags
                    | MessageDataItemName::Uid
                    | MessageDataItemName::InternalDate
                    | MessageDataItemName::Rfc822Size
                    | MessageDataItemName::ModSeq
            )
        });
        if items.iter().any(|i| {
            matches!(
                i,
                MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
            )
        }) {
            self.bad(Some(tag), None, "BINARY is not supported");
            return Ok(());
        }
        let sets_seen = items.iter().any(|i| match i {
            MessageDataItemName::BodyExt { peek, .. } => !peek,
            MessageDataItemName::Binary { peek, .. } => !peek,
            MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
            _ => false,
        });
        let view = self.selected.as_ref().expect("selected checked by caller");
        let mut uids: Vec<u32> = view
            .resolve(set, uid)
            .into_iter()
            .filter(|u| {
                view.entry_ref(*u)
                    .is_some_and(|e| !e.gone && changed_since.is_none_or(|c| e.modseq > c))
            })
            .collect();
        let (read_only, mailbox_id) = (view.read_only, view.id);
        let user = self.user();
        // Reading a body marks it \Seen first, so the FETCH shows the new flags.
        if sets_seen && !read_only {
            let unseen: Vec<u32> = uids
                .iter()
                .copied()
                .filter(|u| {
                    self.selected
                        .as_ref()
                        .and_then(|v| v.entry_ref(*u))
                        .is_some_and(|e| !e.has("\\Seen"))
                })
                .collect();
            let in_archive = self.selected.as_ref().is_some_and(|v| v.archive.is_some());
            if !unseen.is_empty() && in_archive {
                // Archived mail keeps its flags in the archive file.
                let seen = ["\\Seen".to_string()];
                if let Err(why) = self.archive_store(&unseen, FlagAction::Add, &seen).await {
                    self.archive_unavailable(tag, &why);
                    return Ok(());
                }
            } else if !unseen.is_empty() {
                let op = Op::Store {
                    mailbox_id,
                    uids: unseen,
                    action: FlagAction::Add,
                    flags: vec!["\\Seen".into()],
                    unchanged_since: None,
                };
                match self.app.store.submit(&user, op).await {
                    Ok(Outcome::Flags { changed, .. }) => self.apply_flag_changes(&changed),
                    Ok(_) => {}
                    Err(e) => {
                        self.store_error(tag, e);
                        return Ok(());
                    }
                }
            }
        }
        let condstore = self.condstore;
        uids.dedup();
        let done = if uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        };
        let view_only = items.iter().all(|i| {
            matches!(
                i,
                MessageDataItemName::Flags | MessageDataItemName::Uid | MessageDataItemName::ModSeq
            )
        });
        if view_only {
            // Flags, UIDs and modseqs are current in the view: no store read.
            for u in &uids {
                let Some((seq, flags, modseq)) = self.selected.as_ref().and_then(|v| v.state(*u))
                else {
                    continue;
                };
                let mut out = Vec::with_capacity(items.len());
                for item in &items {
                    match item {
                        MessageDataItemName::Uid => {
                            out.extend(NonZeroU32::new(*u).map(MessageDataItem::Uid))
                        }
                        MessageDataItemName::Flags => {
                            out.push(MessageDataItem::Flags(names::fetch_flags(&flags)))
                        }
                        _ => out.extend(NonZeroU64::new(modseq).map(MessageDataItem::ModSeq)),
                    }
                }
                if let (Some(seq), Ok(items)) = (NonZeroU32::new(seq), Vec1::try_from(out)) {
                    self.data(Data::Fetch { seq, items });
                }
                if self.out.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
            self.ok(tag, None, done);
            return Ok(());
        }
        let batch_size = if needs_body { FETCH_BATCH } else { META_BATCH };
        let want = std::sync::Arc::new(fetch::Want {
            items: items.into_iter().map(IntoStatic::into_static).collect(),
            mime_depth: self.app.config.limits.max_mime_depth,
            modseq: condstore && changed_since.is_some(),
        });
        for batch in uids.chunks(batch_size) {
            let loaded = match self.load_messages(batch.to_vec(), needs_body).await {
                Ok(l) => l,
                Err(why) => {
                    self.archive_unavailable(tag, &why);
                    return Ok(());
                }
            };
            let mut work = Vec::with_capacity(loaded.len());
            let mut bytes = 0usize;
            for (uid, meta, body) in loaded {
                let Some((seq, flags, modseq)) = self.selected.as_ref().and_then(|v| v.state(uid))
                else {
                    continue;
                };
                bytes = bytes.saturating_add(body.as_ref().map_or(0, Vec::len));
                work.push(fetch::Loaded {
                    seq,
                    uid,
                    flags,
                    modseq,
                    meta,
                    body,
                });
            }
            let want = want.clone();
            let build = move || -> Vec<Data<'static>> {
                work.iter()
                    .filter_map(|m| fetch::response(&want, m))
                    .collect()
            };
            // Parsing is cheap for everyday mail; large messages are parsed
            // off the async threads.
            let responses = if bytes > HEAVY_BYTES {
                match super::heavy(&self.app, build).await {
                    Some(r) => r,
                    None => {
                        self.no(tag, Some(code("UNAVAILABLE")), "Fetch failed, try again");
                        return Ok(());
                    }
                }
            } else {
                build()
            };
            for d in responses {
                self.data(d);
            }
            if self.out.len() >= FLUSH_AT {
                self.flush().await?;
            }
        }
        self.ok(tag, None, done);
        Ok(())
    }

    /// Records in the view flag changes this session made itself.
    fn apply_flag_changes(&mut self, changed: &[(u32, Vec<String>, u64)]) {
        if let Some(v) = self.selected.as_mut() {
            for (uid, flags, modseq) in changed {
                if let Some(e) = v.entry_mut(*uid) {
                    e.set_flags(flags);
                    e.modseq = *modseq;
                }
                v.highestmodseq = v.highestmodseq.max(*modseq);
            }
        }
    }

    /// Keywords in use in the mailbox `name` of the user.
    async fn keywords_in(
        &self,
        name: &str,
    ) -> Result<std::collections::HashSet<String>, crate::store::StoreError> {
        if let Some(v) = self.selected.as_ref().filter(|v| v.name == name) {
            return Ok(v.keywords());
        }
        let user = self.user();
        let Some(info) = self.app.store.mailbox(&user, name).await? else {
            // APPEND answers TRYCREATE itself.
            return Ok(Default::default());
        };
        let msgs = self
            .app
            .store
            .snapshot(&user, info.id)
            .await?
            .map(|(_, m)| m)
            .unwrap_or_default();
        Ok(msgs
            .iter()
            .flat_map(|m| m.flags.iter())
            .filter(|f| !f.starts_with('\\'))
            .map(|f| f.to_ascii_lowercase())
            .collect())
    }

    /// Whether `new` keywords fit beside those `in_use` in one mailbox
    /// (which bounds every message of it too).
    fn keyword_room(
        &self,
        mut in_use: std::collections::HashSet<String>,
        new: std::collections::HashSet<String>,
    ) -> Result<(), String> {
        let max = self.app.config.limits.max_keywords;
        in_use.extend(new);
        if in_use.len() > max {
            return Err(format!("At most {max} keywords may be used in one mailbox"));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store(
        &mut self,
        tag: &Tag<'_>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'_>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) {
        if flag_strings(&flags)
            .iter()
            .any(|f| f.eq_ignore_ascii_case("\\Recent"))
        {
            return self.bad(Some(tag), None, "\\Recent cannot be stored");
        }
        let view = self.selected.as_ref().expect("selected checked by caller");
        if view.read_only {
            return self.no(tag, Some(code("READ-ONLY")), "Mailbox is read-only");
        }
        let new = keyword_set(&flags);
        if !new.is_empty()
            && kind != StoreType::Remove
            && let Err(msg) = self.keyword_room(view.keywords(), new)
        {
            return self.no(tag, Some(code("LIMIT")), &msg);
        }
        let view = self.selected.as_ref().expect("selected checked by caller");
        let mut unchanged_since = None;
        for m in &modifiers {
            let StoreModifier::UnchangedSince(u) = m;
            unchanged_since = Some(*u);
            self.condstore = true;
        }
        let uids: Vec<u32> = view
            .resolve(set, uid)
            .into_iter()
            .filter(|u| view.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        let mailbox_id = view.id;
        let action = match kind {
            StoreType::Add => FlagAction::Add,
            StoreType::Remove => FlagAction::Remove,
            StoreType::Replace => FlagAction::Replace,
        };
        if self.selected.as_ref().is_some_and(|v| v.archive.is_some()) {
            let silent = response == StoreResponse::Silent;
            return match self
                .archive_store(&uids, action, &flag_strings(&flags))
                .await
            {
                Ok(changed) => {
                    if !silent {
                        for (u, f) in changed {
                            if let Some(seq) = self.selected.as_ref().and_then(|v| v.seq_of(u)) {
                                self.fetch_flags_response(seq, u, &f, 1, uid, false);
                            }
                        }
                    }
                    self.ok(tag, None, store_done(uid))
                }
                Err(why) => self.archive_unavailable(tag, &why),
            };
        }
        let user = self.user();
        let op = Op::Store {
            mailbox_id,
            uids,
            action,
            flags: flag_strings(&flags),
            unchanged_since,
        };
        let (changed, modified, unchanged) = match self.app.store.submit(&user, op).await {
            Ok(Outcome::Flags {
                changed,
                modified,
                unchanged,
            }) => (changed, modified, unchanged),
            Ok(_) => (Vec::new(), Vec::new(), Vec::new()),
            Err(e) => return self.store_error(tag, e),
        };
        self.apply_flag_changes(&changed);
        let condstore = self.condstore;
        let silent = response == StoreResponse::Silent;
        let mut shown: Vec<(u32, Vec<String>, u64)> = Vec::new();
        if !silent {
            shown.extend(changed.iter().cloned());
            shown.extend(unchanged);
        } else if condstore {
            // RFC 7162: a silent STORE still reports the new MODSEQ.
            shown.extend(changed.iter().cloned());
        }
        shown.sort_by_key(|(u, ..)| *u);
        for (u, f, m) in shown {
            let Some(seq) = self.selected.as_ref().and_then(|v| v.seq_of(u)) else {
                continue;
            };
            self.fetch_flags_response(seq, u, &f, m, uid, condstore);
        }
        if modified.is_empty() {
            self.ok(tag, None, store_done(uid));
        } else {
            let ids: Vec<u32> = if uid {
                modified
            } else {
                let v = self.selected.as_ref().expect("still selected");
                let mut s: Vec<u32> = modified.iter().filter_map(|u| v.seq_of(*u)).collect();
                s.sort();
                s
            };
            let c = seq_set(&ids).map(Code::Modified);
            self.ok(tag, c, "Some messages were modified since UNCHANGEDSINCE");
        }
    }

    pub(super) async fn copy(
        &mut self,
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
        if self.selected.as_ref().is_some_and(|v| v.archive.is_some()) {
            return self.copy_from_archive(tag, set, &name, uid, remove).await;
        }
        let view = self.selected.as_ref().expect("selected checked by caller");
        if remove && view.read_only {
            return self.no(tag, Some(code("READ-ONLY")), "Mailbox is read-only");
        }
        let uids: Vec<u32> = view
            .resolve(set, uid)
            .into_iter()
            .filter(|u| view.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        if let Some(target) = registry::archive_folder(&name) {
            return self.copy_to_archive(tag, uids, target, uid, remove).await;
        }
        let from = view.id;
        let user = self.user();
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
                    .await
            }
            Ok(_) => self.ok(tag, None, verb),
            Err(e) => self.store_error(tag, e),
        }
    }

    /// The replies of a finished COPY or MOVE. A MOVE sends COPYUID
    /// untagged, then the EXPUNGEs, then OK (RFC 6851); a COPY puts COPYUID
    /// on its OK.
    async fn copied(
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
            self.report_changes(true).await;
            self.ok(tag, None, verb);
        } else {
            self.ok(tag, copyuid, verb);
        }
    }

    /// COPY/MOVE out of an archive folder into a current one: restored with
    /// the same bytes, flags and date; a MOVE then deletes the archive copy.
    async fn copy_from_archive(
        &mut self,
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
        if remove && !self.archive_writable() {
            return self.no(tag, Some(code("READ-ONLY")), "The archive is read-only");
        }
        if remove && self.archive_policy().on_hold(&self.user()) {
            return self.no(
                tag,
                Some(code("CANNOT")),
                "Legal hold: archived mail cannot be moved out; use COPY",
            );
        }
        let view = self.selected.as_ref().expect("selected checked by caller");
        let auids: Vec<u32> = view
            .resolve(set, uid)
            .into_iter()
            .filter(|u| view.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        if auids.is_empty() {
            return self.ok(tag, None, verb);
        }
        let user = self.user();
        match self.app.store.mailbox(&user, name).await {
            Ok(Some(_)) => {}
            Ok(None) => return self.no(tag, Some(Code::TryCreate), "No such mailbox"),
            Err(e) => return self.store_error(tag, e),
        }
        let (validity, pairs) = match self.archive_restore(auids, name).await {
            Ok(r) => r,
            Err(e) => return self.store_error(tag, e),
        };
        let src: Vec<u32> = pairs.iter().map(|(a, _)| *a).collect();
        // Restored (fsynced) first, then the archive copy goes.
        if remove && let Err(why) = self.archive_delete(src).await {
            return self.delete_refused(tag, why);
        }
        self.copied(tag, copyuid(validity, &pairs), remove, verb, "Restored")
            .await
    }

    /// COPY/MOVE into an Archive folder: archived now (the Archive button of
    /// mail clients), under the message's own folder name.
    async fn copy_to_archive(
        &mut self,
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
        let source = self
            .selected
            .as_ref()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let user = self.user();
        let pairs = match crate::archive::agent::archive_now(
            &self.app.store,
            &self.app.archives,
            &user,
            &source,
            uids,
            remove,
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
        self.copied(tag, c, remove, verb, "Archived").await
    }

    pub(super) async fn expunge(&mut self, tag: &Tag<'_>, only: Option<SequenceSet>) {
        let view = self.selected.as_ref().expect("selected checked by caller");
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
            if let Err(why) = self.archive_delete(doomed).await {
                return self.delete_refused(tag, why);
            }
            self.report_changes(true).await;
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
        let user = self.user();
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
        self.report_changes(true).await;
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

    pub(super) async fn close(&mut self, tag: &Tag<'_>, expunge: bool) {
        if expunge
            && self
                .selected
                .as_ref()
                .is_some_and(|v| v.archive.is_some() && !v.read_only)
        {
            let doomed: Vec<u32> = self
                .selected
                .as_ref()
                .map(|v| {
                    v.entries
                        .iter()
                        .filter(|e| !e.gone && e.has("\\Deleted"))
                        .map(|e| e.uid)
                        .collect()
                })
                .unwrap_or_default();
            // CLOSE never fails; under legal hold nothing is deleted.
            let _ = self.archive_delete(doomed).await;
            self.selected = None;
            return self.ok(tag, None, "CLOSE completed");
        }
        let view = self.selected.take().expect("selected checked by caller");
        if expunge && !view.read_only {
            let user = self.user();
            if let Ok(Some((_, msgs))) = self.app.store.snapshot(&user, view.id).await {
                let uids: Vec<u32> = msgs
                    .iter()
                    .filter(|m| has_flag(&m.flags, "\\Deleted"))
                    .map(|m| m.uid)
                    .collect();
                if !uids.is_empty()
                    && let Err(e) = self
                        .app
                        .store
                        .submit(
                            &user,
                            Op::Expunge {
                                mailbox_id: view.id,
                                uids,
                            },
                        )
                        .await
                {
                    return self.store_error(tag, e);
                }
            }
        }
        self.ok(
            tag,
            None,
            if expunge {
                "CLOSE completed"
            } else {
                "UNSELECT completed"
            },
        );
    }

    pub(super) async fn search(
        &mut self,
        tag: &Tag<'_>,
        charset: Option<Charset<'_>>,
        criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) {
        if let Some(cs) = charset {
            let cs = cs.as_ref().to_ascii_uppercase();
            if cs != "UTF-8" && cs != "US-ASCII" {
                return self.no(
                    tag,
                    Some(Code::badcharset(vec![
                        Charset::try_from("UTF-8").expect("valid charset"),
                        Charset::try_from("US-ASCII").expect("valid charset"),
                    ])),
                    "Only UTF-8 and US-ASCII searches are supported",
                );
            }
        }
        let key = if criteria.as_ref().len() == 1 {
            criteria.into_inner().remove(0)
        } else {
            SearchKey::And(criteria)
        };
        let program = match search::Program::new(&key, self.app.config.limits.max_line_length) {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => return self.bad(Some(tag), None, &e.to_string()),
        };
        let with_modseq = program.mentions_modseq();
        if with_modseq {
            self.condstore = true;
        }
        let needs_body = program.needs_body();
        let view = self.selected.as_ref().expect("selected checked by caller");
        let live: Vec<(u32, u32)> = view
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.gone)
            .map(|(i, e)| (i as u32 + 1, e.uid))
            .collect();
        let largest_seq = view.len();
        let largest_uid = view.entries.last().map(|e| e.uid).unwrap_or(0);
        let mut found: Vec<u32> = Vec::new();
        let mut max_modseq = 0u64;
        let batch_size = if needs_body { FETCH_BATCH } else { META_BATCH };
        for batch in live.chunks(batch_size) {
            let uids: Vec<u32> = batch.iter().map(|(_, u)| *u).collect();
            let loaded = match self.load_messages(uids, needs_body).await {
                Ok(l) => l,
                Err(why) => return self.archive_unavailable(tag, &why),
            };
            // `loaded` keeps the order asked for, without expunged ones.
            let mut seqs = batch.iter();
            let mut work = Vec::with_capacity(loaded.len());
            for (u, meta, body) in loaded {
                let Some(&(seq, _)) = seqs.find(|(_, x)| *x == u) else {
                    continue;
                };
                let flags = self
                    .selected
                    .as_ref()
                    .and_then(|v| v.entry_ref(u))
                    .map(|e| e.flags())
                    .unwrap_or_default();
                work.push((seq, u, flags, meta, body));
            }
            let program = program.clone();
            let eval = move || -> Vec<(u32, u32, u64)> {
                let mut hits = Vec::new();
                for (seq, u, flags, meta, body) in &work {
                    let parsed = body.as_deref().map(fetch::parse);
                    let c = search::Candidate {
                        seq: *seq,
                        uid: *u,
                        flags,
                        meta,
                        largest_seq,
                        largest_uid,
                    };
                    if program.matches(&c, parsed.as_ref()) {
                        hits.push((*seq, *u, meta.modseq));
                    }
                }
                hits
            };
            let hits = if needs_body {
                // Text search reads every byte: off the async threads, one
                // search per spare core, so other sessions keep being served.
                match super::heavy(&self.app, eval).await {
                    Some(h) => h,
                    None => {
                        return self.no(tag, Some(code("UNAVAILABLE")), "Search failed, try again");
                    }
                }
            } else {
                eval()
            };
            for (seq, u, modseq) in hits {
                found.push(if uid { u } else { seq });
                max_modseq = max_modseq.max(modseq);
            }
        }
        let ids: Vec<NonZeroU32> = found.into_iter().filter_map(NonZeroU32::new).collect();
        let modseq = if with_modseq && !ids.is_empty() {
            NonZeroU64::new(max_modseq)
        } else {
            None
        };
        self.data(Data::Search(ids, modseq));
        self.ok(
            tag,
            None,
            if uid {
                "UID SEARCH completed"
            } else {
                "SEARCH completed"
            },
        );
    }
}

/// The text of a STORE's tagged OK.
fn store_done(uid: bool) -> &'static str {
    if uid {
        "UID STORE completed"
    } else {
        "STORE completed"
    }
}
