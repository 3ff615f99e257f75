//! SORT (RFC 5256) and its DISPLAYFROM/DISPLAYTO keys (RFC 5957), and
//! THREAD=ORDEREDSUBJECT: the
//! SEARCH is run as SEARCH runs it, then the matches' headers are read in
//! batches off the async threads and the keys (`imap::sort`) ordered.

use std::num::{NonZeroU32, NonZeroU64};

use std::collections::HashMap;

use imap_types::core::{Charset, Tag, Vec1, Vec2};
use imap_types::extensions::sort::{SortCriterion, SortKey};
use imap_types::extensions::thread::{Thread, ThreadingAlgorithm};
use imap_types::response::Data;
use imap_types::search::SearchKey;

use super::fetch::FETCH_BATCH;
use crate::imap::core::{Authed, Ctx};
use crate::imap::view::View;
use crate::imap::{code, mime, sort};

/// The matches' sort keys, with what the answer needs.
struct Sorted {
    keys: Vec<sort::Keys>,
    with_modseq: bool,
    max_modseq: u64,
}

/// A message's number in the answer.
fn id(k: &sort::Keys, uid: bool) -> Option<NonZeroU32> {
    NonZeroU32::new(if uid { k.uid } else { k.seq })
}

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
        let criteria = criteria.into_inner();
        let needs_header = sort::needs_header(&criteria);
        let Some(mut s) = self
            .sort_keys(a, view, tag, charset, search, needs_header)
            .await
        else {
            return;
        };
        sort::order(&mut s.keys, &criteria);
        let ids: Vec<NonZeroU32> = s.keys.iter().filter_map(|k| id(k, uid)).collect();
        let modseq = if s.with_modseq && !ids.is_empty() {
            NonZeroU64::new(s.max_modseq)
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

    /// THREAD=ORDEREDSUBJECT (RFC 5256): messages of one base subject in
    /// one thread, ordered by sent date, the first the parent of the rest;
    /// threads ordered by their first message.
    #[allow(clippy::too_many_arguments)]
    pub async fn thread(
        &mut self,
        a: &Authed,
        view: &View,
        tag: &Tag<'_>,
        algorithm: ThreadingAlgorithm<'_>,
        charset: Charset<'_>,
        search: Vec1<SearchKey<'_>>,
        uid: bool,
    ) {
        if algorithm != ThreadingAlgorithm::OrderedSubject {
            return self.bad(Some(tag), None, "Threading algorithms: ORDEREDSUBJECT");
        }
        let Some(mut s) = self.sort_keys(a, view, tag, charset, search, true).await else {
            return;
        };
        let by_date = [
            SortCriterion {
                reverse: false,
                key: SortKey::Subject,
            },
            SortCriterion {
                reverse: false,
                key: SortKey::Date,
            },
        ];
        sort::order(&mut s.keys, &by_date);
        let mut threads: Vec<(i64, u32, Thread)> = Vec::new();
        for group in s.keys.chunk_by(|x, y| x.subject == y.subject) {
            let ids: Vec<NonZeroU32> = group.iter().filter_map(|k| id(k, uid)).collect();
            let Some(t) = ordered_subject(ids) else {
                continue;
            };
            threads.push((group[0].date, group[0].seq, t));
        }
        threads.sort_by_key(|(date, seq, _)| (*date, *seq));
        self.data(Data::Thread(
            threads.into_iter().map(|(_, _, t)| t).collect(),
        ));
        self.ok(
            tag,
            None,
            if uid {
                "UID THREAD completed"
            } else {
                "THREAD completed"
            },
        );
    }

    /// Runs the search and takes each match's keys (from its header when
    /// `needs_header`); `None` when the command is already answered.
    async fn sort_keys(
        &mut self,
        a: &Authed,
        view: &View,
        tag: &Tag<'_>,
        charset: Charset<'_>,
        search: Vec1<SearchKey<'_>>,
        needs_header: bool,
    ) -> Option<Sorted> {
        if !self.charset_ok(tag, Some(&charset)) {
            return None;
        }
        let (hits, with_modseq) = self.matching(a, view, tag, search).await?;
        let max_modseq = hits.iter().map(|h| h.2).max().unwrap_or(0);
        let mut keys: Vec<sort::Keys> = Vec::with_capacity(hits.len());
        if !needs_header && let Some(live) = &view.live {
            let st = live.read();
            for (seq, u, _) in &hits {
                if let Some(m) = st.message(*u) {
                    keys.push(sort::Keys::of(*seq, *u, m.internal_date, m.size, None));
                }
            }
        } else {
            for batch in hits.chunks(FETCH_BATCH) {
                let uids: Vec<u32> = batch.iter().map(|(_, u, _)| *u).collect();
                let loaded = match self.load_messages(&a.user, view, uids, needs_header).await {
                    Ok(l) => l,
                    Err(why) => {
                        self.archive_unavailable(&a.user, tag, &why);
                        return None;
                    }
                };
                let seq_of: HashMap<u32, u32> =
                    batch.iter().map(|(seq, u, _)| (*u, *seq)).collect();
                let work: Vec<(u32, u32, crate::store::MessageMeta, Option<Vec<u8>>)> = loaded
                    .into_iter()
                    .filter_map(|(u, meta, body)| Some((*seq_of.get(&u)?, u, meta, body)))
                    .collect();
                let build = move || -> Vec<sort::Keys> {
                    work.iter()
                        .map(|(seq, u, meta, body)| {
                            let parsed = body.as_deref().map(mime::parse);
                            sort::Keys::of(
                                *seq,
                                *u,
                                meta.internal_date,
                                meta.size,
                                parsed.as_deref(),
                            )
                        })
                        .collect()
                };
                match crate::imap::heavy(&self.app, build).await {
                    Some(k) => keys.extend(k),
                    None => {
                        self.no(tag, Some(code("UNAVAILABLE")), "Sort failed, try again");
                        return None;
                    }
                }
            }
        }
        Some(Sorted {
            keys,
            with_modseq,
            max_modseq,
        })
    }
}

/// One ORDEREDSUBJECT thread: `(a)`, `(a b)`, or `(a (b)(c)…)`; never
/// deeper than two levels.
fn ordered_subject(ids: Vec<NonZeroU32>) -> Option<Thread> {
    let leaf = |id: NonZeroU32| Thread::Members {
        prefix: Vec1::from(id),
        answers: None,
    };
    match ids.as_slice() {
        [] => None,
        [a] => Some(leaf(*a)),
        [a, b] => Some(Thread::Members {
            prefix: Vec1::try_from(vec![*a, *b]).ok()?,
            answers: None,
        }),
        [a, rest @ ..] => Some(Thread::Members {
            prefix: Vec1::from(*a),
            answers: Some(Vec2::try_from(rest.iter().map(|i| leaf(*i)).collect::<Vec<_>>()).ok()?),
        }),
    }
}
