//! SORT (RFC 5256) and its DISPLAYFROM/DISPLAYTO keys (RFC 5957): the
//! SEARCH is run as SEARCH runs it, then the matches' headers are read in
//! batches off the async threads and the keys (`imap::sort`) ordered.

use std::num::{NonZeroU32, NonZeroU64};

use imap_types::core::{Charset, Tag, Vec1};
use imap_types::extensions::sort::SortCriterion;
use imap_types::response::Data;
use imap_types::search::SearchKey;

use super::fetch::FETCH_BATCH;
use crate::imap::core::{Authed, Ctx};
use crate::imap::view::View;
use crate::imap::{code, mime, sort};

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub async fn sort(
        &mut self,
        a: &Authed,
        view: &View,
        tag: &Tag<'_>,
        criteria: Vec1<SortCriterion>,
        charset: Charset<'_>,
        search: Vec1<SearchKey<'_>>,
        uid: bool,
    ) {
        if !self.charset_ok(tag, Some(&charset)) {
            return;
        }
        let Some((hits, with_modseq)) = self.matching(a, view, tag, search).await else {
            return;
        };
        let criteria = criteria.into_inner();
        let max_modseq = hits.iter().map(|h| h.2).max().unwrap_or(0);
        let mut keys: Vec<sort::Keys> = Vec::with_capacity(hits.len());
        let uid_of: std::collections::HashMap<u32, u32> =
            hits.iter().map(|(seq, u, _)| (*seq, *u)).collect();
        if !sort::needs_header(&criteria)
            && let Some(live) = &view.live
        {
            let st = live.read();
            for (seq, u, _) in &hits {
                if let Some(m) = st.message(*u) {
                    keys.push(sort::Keys::of(*seq, m.internal_date, m.size, None));
                }
            }
        } else {
            let needs_body = sort::needs_header(&criteria);
            for batch in hits.chunks(FETCH_BATCH) {
                let uids: Vec<u32> = batch.iter().map(|(_, u, _)| *u).collect();
                let loaded = match self.load_messages(&a.user, view, uids, needs_body).await {
                    Ok(l) => l,
                    Err(why) => return self.archive_unavailable(&a.user, tag, &why),
                };
                let seq_of: std::collections::HashMap<u32, u32> =
                    batch.iter().map(|(seq, u, _)| (*u, *seq)).collect();
                let work: Vec<(u32, crate::store::MessageMeta, Option<Vec<u8>>)> = loaded
                    .into_iter()
                    .filter_map(|(u, meta, body)| Some((*seq_of.get(&u)?, meta, body)))
                    .collect();
                let build = move || -> Vec<sort::Keys> {
                    work.iter()
                        .map(|(seq, meta, body)| {
                            let parsed = body.as_deref().map(mime::parse);
                            sort::Keys::of(*seq, meta.internal_date, meta.size, parsed.as_deref())
                        })
                        .collect()
                };
                match crate::imap::heavy(&self.app, build).await {
                    Some(k) => keys.extend(k),
                    None => {
                        return self.no(tag, Some(code("UNAVAILABLE")), "Sort failed, try again");
                    }
                }
            }
        }
        sort::order(&mut keys, &criteria);
        let ids: Vec<NonZeroU32> = keys
            .iter()
            .filter_map(|k| {
                let id = if uid { *uid_of.get(&k.seq)? } else { k.seq };
                NonZeroU32::new(id)
            })
            .collect();
        let modseq = if with_modseq && !ids.is_empty() {
            NonZeroU64::new(max_modseq)
        } else {
            None
        };
        self.data(Data::Sort(ids, modseq));
        self.ok(
            tag,
            None,
            if uid {
                "UID SORT completed"
            } else {
                "SORT completed"
            },
        );
    }
}
