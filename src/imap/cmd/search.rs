//! The SEARCH command (evaluation is in `imap::search`).

use std::num::{NonZeroU32, NonZeroU64};

use imap_types::core::{Charset, Tag, Vec1};
use imap_types::response::{Code, Data};
use imap_types::search::SearchKey;

use super::fetch::{FETCH_BATCH, META_BATCH};
use crate::imap::core::{Authed, Ctx};
use crate::imap::search::Needs;
use crate::imap::view::View;
use crate::imap::{code, mime, search};

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub async fn search(
        &mut self,
        a: &Authed,
        view: &View,
        tag: &Tag<'_>,
        charset: Option<Charset<'_>>,
        criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) {
        if !self.charset_ok(tag, charset.as_ref()) {
            return;
        }
        let Some((hits, with_modseq)) = self.matching(a, view, tag, criteria).await else {
            return;
        };
        let mut found = Vec::with_capacity(hits.len());
        let mut max_modseq = 0u64;
        for (seq, u, modseq) in hits {
            found.push(if uid { u } else { seq });
            max_modseq = max_modseq.max(modseq);
        }
        self.search_done(tag, found, max_modseq, with_modseq, uid)
    }

    /// Searches are run in UTF-8 (US-ASCII is a subset); another charset
    /// is refused with `NO [BADCHARSET]`. `false` when answered.
    pub fn charset_ok(&mut self, tag: &Tag<'_>, charset: Option<&Charset<'_>>) -> bool {
        if let Some(cs) = charset {
            let cs = cs.as_ref().to_ascii_uppercase();
            if cs != "UTF-8" && cs != "US-ASCII" {
                self.no(
                    tag,
                    Some(Code::badcharset(vec![
                        Charset::try_from("UTF-8").expect("valid charset"),
                        Charset::try_from("US-ASCII").expect("valid charset"),
                    ])),
                    "Only UTF-8 and US-ASCII searches are supported",
                );
                return false;
            }
        }
        true
    }

    /// (seq, uid, modseq) of the messages matching `criteria`, in mailbox
    /// order, and whether the criteria named MODSEQ; `None` when the
    /// command is already answered (refused, or the store failed).
    pub async fn matching(
        &mut self,
        a: &Authed,
        view: &View,
        tag: &Tag<'_>,
        criteria: Vec1<SearchKey<'_>>,
    ) -> Option<(Vec<(u32, u32, u64)>, bool)> {
        let key = if criteria.as_ref().len() == 1 {
            criteria.into_inner().remove(0)
        } else {
            SearchKey::And(criteria)
        };
        let program = match search::Program::new(&key, self.app.config.limits.max_line_length) {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => {
                self.bad(Some(tag), None, &e.to_string());
                return None;
            }
        };
        let with_modseq = program.mentions_modseq();
        if with_modseq {
            self.condstore = true;
        }
        let needs = program.needs();
        let largest_seq = view.len();
        let largest_uid = view.entries.last().map(|e| e.uid).unwrap_or(0);
        let mut found: Vec<(u32, u32, u64)> = Vec::new();
        if let (Needs::View, Some(live)) = (needs, &view.live) {
            // Flags, numbers, sizes and dates: the view and the live state
            // hold them all; nothing is read.
            let st = live.read();
            for (i, e) in view.entries.iter().enumerate() {
                // Expunged meanwhile (not yet announced): not a match.
                let Some(m) = st.message(e.uid).filter(|_| !e.gone) else {
                    continue;
                };
                let c = search::Candidate {
                    seq: i as u32 + 1,
                    uid: e.uid,
                    flags: e.flag_set(),
                    recent: e.recent,
                    modseq: e.modseq,
                    size: m.size,
                    internal_date: m.internal_date,
                    meta: None,
                    largest_seq,
                    largest_uid,
                };
                if program.matches(&c, None) {
                    found.push((i as u32 + 1, e.uid, e.modseq));
                }
            }
            drop(st);
            return Some((found, with_modseq));
        }
        let needs_body = needs == Needs::Body;
        let live: Vec<(u32, u32)> = view
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.gone)
            .map(|(i, e)| (i as u32 + 1, e.uid))
            .collect();
        let batch_size = if needs_body { FETCH_BATCH } else { META_BATCH };
        for batch in live.chunks(batch_size) {
            let uids: Vec<u32> = batch.iter().map(|(_, u)| *u).collect();
            let loaded = match self.load_messages(&a.user, view, uids, needs_body).await {
                Ok(l) => l,
                Err(why) => {
                    self.archive_unavailable(&a.user, tag, &why);
                    return None;
                }
            };
            // `loaded` keeps the order asked for, without expunged ones.
            let mut seqs = batch.iter();
            let mut work = Vec::with_capacity(loaded.len());
            for (u, meta, body) in loaded {
                let Some(&(seq, _)) = seqs.find(|(_, x)| *x == u) else {
                    continue;
                };
                let (flags, recent, modseq) = view
                    .entry_ref(u)
                    .map(|e| (e.flag_set().clone(), e.recent, e.modseq))
                    .unwrap_or_default();
                work.push((seq, u, flags, recent, modseq, meta, body));
            }
            let program = program.clone();
            let eval = move || -> Vec<(u32, u32, u64)> {
                let mut hits = Vec::new();
                for (seq, u, flags, recent, modseq, meta, body) in &work {
                    let parsed = body.as_deref().map(mime::parse);
                    let c = search::Candidate {
                        seq: *seq,
                        uid: *u,
                        flags,
                        recent: *recent,
                        modseq: *modseq,
                        size: meta.size,
                        internal_date: meta.internal_date,
                        meta: Some(meta),
                        largest_seq,
                        largest_uid,
                    };
                    if program.matches(&c, parsed.as_ref()) {
                        hits.push((*seq, *u, *modseq));
                    }
                }
                hits
            };
            let hits = if needs_body {
                // Text search reads every byte: off the async threads, one
                // search per spare core, so other sessions keep being served.
                match crate::imap::heavy(&self.app, eval).await {
                    Some(h) => h,
                    None => {
                        self.no(tag, Some(code("UNAVAILABLE")), "Search failed, try again");
                        return None;
                    }
                }
            } else {
                eval()
            };
            found.extend(hits);
        }
        Some((found, with_modseq))
    }

    fn search_done(
        &mut self,
        tag: &Tag<'_>,
        found: Vec<u32>,
        max_modseq: u64,
        with_modseq: bool,
        uid: bool,
    ) {
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
