//! QRESYNC's catch-up (RFC 7162): what a client that comes back with
//! `SELECT … (QRESYNC (uidvalidity modseq [known-uids [seq-match]]))` or
//! `UID FETCH … (CHANGEDSINCE m VANISHED)` missed.
//!
//! The UIDs that vanished since the client's modseq come from the store's
//! expunge history (`store::vanished`). When that no longer reaches back
//! far enough (or for an archive folder, which keeps none), the answer is
//! every UID the client may know that is not in the mailbox now: a
//! superset, which RFC 7162 3.2.5.2 allows and a client applies safely,
//! narrowed by the sequence match data when the client sent it. A wrong
//! VANISHED would make a client keep or drop mail it should not, so the
//! answer is never a guess. UIDs still in the session's view are never
//! reported here: they are there, or their expunge is announced later as
//! `* VANISHED` like any other.

use imap_types::sequence::SequenceSet;

use crate::imap::core::Ctx;
use crate::imap::uidset::{self, Ranges};
use crate::imap::view::View;
use crate::store::StoreError;

/// Sequence match data is compared value by value; more than this many
/// values and it is not used (the answer is then the wider superset).
const MAX_SEQ_MATCH: usize = 100_000;

/// The QRESYNC parameter of a SELECT or EXAMINE.
pub struct Resync {
    pub uidvalidity: u32,
    pub modseq: u64,
    pub known_uids: Option<SequenceSet>,
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

impl Ctx {
    /// After a QRESYNC SELECT's usual responses: `* VANISHED (EARLIER)`,
    /// then the flags of every message changed since the client's modseq.
    pub async fn resync(&mut self, user: &str, v: &View, r: Resync) -> Result<(), StoreError> {
        let max = v.uidnext.saturating_sub(1);
        let within = match &r.known_uids {
            Some(set) => uidset::from_set(set, max),
            None => vec![(1, max)],
        };
        let matched = r
            .seq_match
            .as_ref()
            .map_or(0, |(seqs, uids)| matched_below(v, seqs, uids));
        let gone = self
            .vanished_earlier(user, v, r.modseq, within, matched)
            .await?;
        self.send_vanished_earlier(&gone);
        for (i, e) in v.entries.iter().enumerate() {
            if e.modseq > r.modseq && !e.gone {
                let flags = e.response_flags();
                self.fetch_flags_response(i as u32 + 1, e.uid, &flags, e.modseq, true, true);
            }
        }
        Ok(())
    }

    /// The UIDs of `within` expunged since `since` (see the module doc);
    /// `matched`: the client's view is known to be right up to this UID.
    pub async fn vanished_earlier(
        &self,
        user: &str,
        v: &View,
        since: u64,
        within: Ranges,
        matched: u32,
    ) -> Result<Ranges, StoreError> {
        let max = v.uidnext.saturating_sub(1);
        if max == 0 {
            return Ok(Vec::new());
        }
        let within = uidset::intersect(&within, &vec![(1, max)]);
        let known = if v.live.is_some() {
            self.app.store.vanished_since(user, v.id, since).await?
        } else {
            None
        };
        let gone = match known {
            Some(exact) => uidset::intersect(&uidset::normalize(exact), &within),
            None => uidset::above(&within, matched),
        };
        Ok(uidset::without(&gone, v.entries.iter().map(|e| e.uid)))
    }

    pub fn send_vanished_earlier(&mut self, gone: &Ranges) {
        if let Some(known_uids) = uidset::to_set(gone) {
            self.data(imap_types::response::Data::Vanished {
                earlier: true,
                known_uids,
            });
        }
    }
}

/// The highest UID of the sequence match data whose sequence number is
/// the same in the view: below it the client's list is the server's
/// (UIDs only grow, so the same count of messages up to one UID means
/// the same messages). 0 when none matches or the data is unusable.
fn matched_below(v: &View, seqs: &SequenceSet, uids: &SequenceSet) -> u32 {
    let (Some(seqs), Some(uids)) = (
        uidset::values(seqs, v.len(), MAX_SEQ_MATCH),
        uidset::values(uids, v.uidnext.saturating_sub(1), MAX_SEQ_MATCH),
    ) else {
        return 0;
    };
    if seqs.len() != uids.len() {
        return 0;
    }
    seqs.iter()
        .zip(&uids)
        .filter(|(s, u)| v.seq_of(**u) == Some(**s))
        .map(|(_, u)| *u)
        .max()
        .unwrap_or(0)
}
