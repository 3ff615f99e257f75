//! FETCH, as a job: the command is checked and its messages chosen once,
//! then each step loads and answers one batch, so the driver writes the
//! output as it goes and a `FETCH 1:* BODY[]` never sits whole in memory.

use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use imap_types::IntoStatic;
use imap_types::command::FetchModifier;
use imap_types::core::{Tag, Vec1};
use imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName};
use imap_types::response::Data;
use imap_types::sequence::SequenceSet;

use crate::imap::code;
use crate::imap::core::{Authed, Ctx};
use crate::imap::mime;
use crate::imap::names;
use crate::imap::view::View;
use crate::store::{FlagAction, Op, Outcome};

/// Messages loaded from the store per round of a FETCH that needs bodies.
pub const FETCH_BATCH: usize = 64;
/// ...and of one that needs only metadata.
pub const META_BATCH: usize = 1024;
/// A batch of messages with more bytes than this is parsed off the async
/// threads.
const HEAVY_BYTES: usize = 1 << 20;
/// A batch stops early once it has produced this much output.
const BATCH_OUTPUT: usize = 256 * 1024;

/// A FETCH under way.
pub struct FetchJob {
    tag: Tag<'static>,
    uids: Vec<u32>,
    next: usize,
    want: Arc<mime::Want>,
    /// Only flags, UIDs and modseqs: answered from the view.
    view_only: bool,
    needs_body: bool,
    uid: bool,
    /// Messages this FETCH marked \Seen (ascending).
    newly_seen: Vec<u32>,
    /// FLAGS is one of the items.
    shows_flags: bool,
    /// A BINARY section of some message could not be decoded.
    undecodable: Option<mime::UnknownCte>,
}

impl FetchJob {
    /// Whether EXPUNGE may be reported after it (UID FETCH only).
    pub fn expunge_ok(&self) -> bool {
        self.uid
    }

    fn done_text(&self) -> &'static str {
        if self.uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        }
    }
}

impl Ctx {
    /// Starts a FETCH: `None` when it is already answered (refused, or
    /// nothing to fetch), else the job whose batches `fetch_batch` runs.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch(
        &mut self,
        a: &mut Authed,
        v: &mut View,
        tag: Tag<'static>,
        set: &SequenceSet,
        what: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> Option<FetchJob> {
        let items = match what {
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
        self.take_in_changes(v);
        let mut changed_since = None;
        let mut vanished = false;
        for m in &modifiers {
            match m {
                FetchModifier::ChangedSince(c) => {
                    changed_since = Some(c.get());
                    self.condstore = true;
                }
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished {
            // RFC 7162 3.2.6: UID FETCH only, with CHANGEDSINCE, once
            // QRESYNC is enabled.
            let Some(since) = changed_since.filter(|_| uid && self.qresync) else {
                self.bad(
                    Some(&tag),
                    None,
                    "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
                );
                return None;
            };
            // `*` reaches to the last UID given out: expunged ones above
            // the last message still count.
            let within = crate::imap::uidset::from_set(set, v.uidnext.saturating_sub(1));
            match self.vanished_earlier(&a.user, v, since, within, 0).await {
                Ok(gone) => self.send_vanished_earlier(&gone),
                Err(e) => {
                    self.store_error(&tag, e);
                    return None;
                }
            }
        }
        if items
            .iter()
            .any(|i| matches!(i, MessageDataItemName::ModSeq))
        {
            self.condstore = true;
        }
        // Each item once in every response, whatever the client listed.
        let mut distinct: Vec<MessageDataItemName<'_>> = Vec::with_capacity(items.len());
        for i in items {
            if !distinct.contains(&i) {
                distinct.push(i);
            }
        }
        let mut items = distinct;
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
        let sets_seen = items.iter().any(|i| match i {
            MessageDataItemName::BodyExt { peek, .. } => !peek,
            MessageDataItemName::Binary { peek, .. } => !peek,
            MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => true,
            _ => false,
        });
        let mut uids: Vec<u32> = v
            .resolve(set, uid)
            .into_iter()
            .filter(|u| {
                v.entry_ref(*u)
                    .is_some_and(|e| !e.gone && changed_since.is_none_or(|c| e.modseq > c))
            })
            .collect();
        uids.dedup();
        let mut newly_seen = Vec::new();
        // Reading a body marks it \Seen first, so the FETCH shows the new flags.
        if sets_seen && !v.read_only {
            let unseen: Vec<u32> = uids
                .iter()
                .copied()
                .filter(|u| v.entry_ref(*u).is_some_and(|e| !e.has("\\Seen")))
                .collect();
            if !unseen.is_empty() && v.archive.is_some() {
                // Archived mail keeps its flags in the archive file.
                let seen = ["\\Seen".to_string()];
                if let Err(why) = self
                    .archive_store(&a.user, v, &unseen, FlagAction::Add, &seen)
                    .await
                {
                    self.archive_unavailable(&a.user, &tag, &why);
                    return None;
                }
                newly_seen = unseen;
            } else if !unseen.is_empty() {
                let op = Op::Store {
                    mailbox_id: v.id,
                    uids: unseen,
                    action: FlagAction::Add,
                    flags: vec!["\\Seen".into()],
                    unchanged_since: None,
                };
                match self.app.store.submit(&a.user, op).await {
                    Ok(Outcome::Flags { changed, .. }) => {
                        Self::apply_flag_changes(v, &changed);
                        newly_seen = changed.iter().map(|(u, ..)| *u).collect();
                        newly_seen.sort_unstable();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.store_error(&tag, e);
                        return None;
                    }
                }
            }
        }
        let view_only = items.iter().all(|i| {
            matches!(
                i,
                MessageDataItemName::Flags | MessageDataItemName::Uid | MessageDataItemName::ModSeq
            )
        });
        let shows_flags = items.contains(&MessageDataItemName::Flags);
        let want = Arc::new(mime::Want {
            items: items.into_iter().map(IntoStatic::into_static).collect(),
            mime_depth: self.app.config.limits.max_mime_depth,
            modseq: self.condstore && changed_since.is_some(),
        });
        let job = FetchJob {
            tag,
            uids,
            next: 0,
            want,
            view_only,
            needs_body,
            uid,
            newly_seen,
            shows_flags,
            undecodable: None,
        };
        if job.uids.is_empty() {
            self.ok(&job.tag, None, job.done_text());
            return None;
        }
        Some(job)
    }

    /// Answers the next batch of a FETCH; `true` when it is complete (its
    /// completion is then set).
    pub async fn fetch_batch(&mut self, a: &mut Authed, v: &mut View, job: &mut FetchJob) -> bool {
        if job.view_only {
            self.fetch_from_view(v, job);
        } else if let Err(why) = self.fetch_loaded(a, v, job).await {
            self.archive_unavailable(&a.user, &job.tag, &why);
            return true;
        }
        if job.next >= job.uids.len() {
            match &job.undecodable {
                // RFC 3516 4.2: the FETCH fails, the others are answered.
                Some(e) => self.no(&job.tag, Some(code("UNKNOWN-CTE")), &e.0),
                None => self.ok(&job.tag, None, job.done_text()),
            }
            return true;
        }
        false
    }

    /// Flags, UIDs and modseqs are current in the view: no store read.
    fn fetch_from_view(&mut self, v: &mut View, job: &mut FetchJob) {
        let start = self.out.ready_len();
        while job.next < job.uids.len() && self.out.ready_len() - start < BATCH_OUTPUT {
            let u = job.uids[job.next];
            job.next += 1;
            let Some((seq, flags, modseq)) = v.state(u) else {
                continue;
            };
            self.announce(v, &flags);
            if job.shows_flags {
                v.unreported.remove(&u);
            }
            let mut out = Vec::with_capacity(job.want.items.len());
            for item in &job.want.items {
                match item {
                    MessageDataItemName::Uid => {
                        out.extend(NonZeroU32::new(u).map(MessageDataItem::Uid))
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
        }
    }

    /// One batch loaded from the store (or the archive) and answered.
    async fn fetch_loaded(
        &mut self,
        a: &Authed,
        v: &mut View,
        job: &mut FetchJob,
    ) -> Result<(), String> {
        let size = if job.needs_body {
            FETCH_BATCH
        } else {
            META_BATCH
        };
        let mut end = (job.next + size).min(job.uids.len());
        if job.needs_body
            && let Some(live) = &v.live
        {
            // Bodies are loaded whole: as many as fill one batch's output
            // (at least one), so a session holds a few large messages at a
            // time, never 64 of them.
            let st = live.read();
            let mut bytes = 0usize;
            for (i, uid) in job.uids[job.next..end].iter().enumerate() {
                if i > 0 && bytes >= BATCH_OUTPUT {
                    end = job.next + i;
                    break;
                }
                bytes = bytes.saturating_add(st.message(*uid).map_or(0, |m| m.size as usize));
            }
        }
        let batch = job.uids[job.next..end].to_vec();
        let loaded = self
            .load_messages(&a.user, v, batch.clone(), job.needs_body)
            .await?;
        let mut work = Vec::with_capacity(loaded.len());
        let mut bytes = 0usize;
        // The whole batch is answered, unless the output limit stops it
        // before a message (which the next step starts with).
        let mut consumed = end;
        for (uid, meta, body) in loaded {
            if bytes >= BATCH_OUTPUT {
                consumed = job.next + batch.iter().position(|u| *u == uid).unwrap_or(batch.len());
                break;
            }
            let Some((seq, flags, modseq)) = v.state(uid) else {
                continue;
            };
            bytes = bytes.saturating_add(body.as_ref().map_or(0, Vec::len));
            // A keyword is announced before the response that uses it.
            self.announce(v, &flags);
            let show_flags = job.newly_seen.binary_search(&uid).is_ok();
            if show_flags || job.shows_flags {
                v.unreported.remove(&uid);
            }
            work.push(mime::Loaded {
                seq,
                uid,
                flags,
                modseq,
                meta,
                body,
                show_flags,
            });
        }
        job.next = consumed;
        let want = job.want.clone();
        let build = move || -> (Vec<Data<'static>>, Option<mime::UnknownCte>) {
            let mut out = Vec::with_capacity(work.len());
            let mut failed = None;
            for m in &work {
                match mime::response(&want, m) {
                    Ok(Some(d)) => out.push(d),
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
            (out, failed)
        };
        // Parsing is cheap for everyday mail; large messages are parsed
        // off the async threads.
        let responses = if bytes > HEAVY_BYTES {
            match crate::imap::heavy(&self.app, build).await {
                Some(r) => r,
                None => {
                    self.no(
                        &job.tag,
                        Some(code("UNAVAILABLE")),
                        "Fetch failed, try again",
                    );
                    job.next = job.uids.len();
                    return Ok(());
                }
            }
        } else {
            build()
        };
        let (responses, failed) = responses;
        for d in responses {
            self.data(d);
        }
        if let Some(e) = failed {
            job.undecodable = Some(e);
        }
        Ok(())
    }
}
