//! UID sets as sorted, disjoint inclusive ranges: what QRESYNC's
//! `VANISHED` answers are computed in. A client may name
//! `1:4294967295`, and a mailbox may have lost most of its UIDs, so the
//! sets are never expanded into single UIDs: every operation here costs
//! the number of ranges (or of the UIDs present), not of the UIDs named.

use std::num::NonZeroU32;

use imap_types::core::Vec1;
use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

/// Sorted, disjoint, non-adjacent inclusive ranges.
pub type Ranges = Vec<(u32, u32)>;

/// Sorts and joins ranges that overlap or touch.
pub fn normalize(mut r: Ranges) -> Ranges {
    r.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some((_, h)) if lo <= h.saturating_add(1) => *h = (*h).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// A sequence set's ranges, `*` standing for `largest`.
pub fn from_set(set: &SequenceSet, largest: u32) -> Ranges {
    let largest = NonZeroU32::new(largest.max(1)).expect("max(1) is non-zero");
    let get = |s: &SeqOrUid| s.expand(largest).get();
    let r = set
        .0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(x) => (get(x), get(x)),
            Sequence::Range(a, b) => {
                let (a, b) = (get(a), get(b));
                (a.min(b), a.max(b))
            }
        })
        .collect();
    normalize(r)
}

/// What both sets hold.
pub fn intersect(a: &Ranges, b: &Ranges) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `r` without the UIDs of `present` (ascending).
pub fn without(r: &Ranges, present: impl IntoIterator<Item = u32>) -> Ranges {
    let mut out = Vec::with_capacity(r.len());
    let mut present = present.into_iter().peekable();
    for &(lo, hi) in r {
        let mut start = lo;
        while let Some(&u) = present.peek() {
            if u < start {
                present.next();
                continue;
            }
            if u > hi {
                break;
            }
            if u > start {
                out.push((start, u - 1));
            }
            present.next();
            match u.checked_add(1) {
                Some(n) => start = n,
                None => {
                    start = 0;
                    break;
                }
            }
        }
        if start != 0 && start <= hi {
            out.push((start, hi));
        }
    }
    out
}

/// Only the UIDs above `floor`.
pub fn above(r: &Ranges, floor: u32) -> Ranges {
    r.iter()
        .filter(|(_, hi)| *hi > floor)
        .map(|&(lo, hi)| (lo.max(floor.saturating_add(1)), hi))
        .collect()
}

/// The set as IMAP writes it; `None` when it is empty.
pub fn to_set(r: &Ranges) -> Option<SequenceSet> {
    let seqs: Vec<Sequence> = r
        .iter()
        .filter_map(|&(lo, hi)| {
            let (l, h) = (NonZeroU32::new(lo)?, NonZeroU32::new(hi)?);
            Some(if lo == hi {
                Sequence::Single(SeqOrUid::Value(l))
            } else {
                Sequence::Range(SeqOrUid::Value(l), SeqOrUid::Value(h))
            })
        })
        .collect();
    Vec1::try_from(seqs).ok().map(SequenceSet)
}

/// The single values a set names, in the order written; `None` when it
/// names more than `limit` (QRESYNC's sequence match data is two lists of
/// equal length, compared pair by pair).
pub fn values(set: &SequenceSet, largest: u32, limit: usize) -> Option<Vec<u32>> {
    let largest = NonZeroU32::new(largest.max(1)).expect("max(1) is non-zero");
    let mut out = Vec::new();
    for s in set.0.as_ref() {
        let (a, b) = match s {
            Sequence::Single(x) => (x.expand(largest).get(), x.expand(largest).get()),
            Sequence::Range(a, b) => (a.expand(largest).get(), b.expand(largest).get()),
        };
        let (lo, hi) = (a.min(b), a.max(b));
        if out.len() + (hi - lo) as usize >= limit {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> SequenceSet {
        SequenceSet::try_from(s).unwrap()
    }

    #[test]
    fn sets_are_ranges_with_star_as_the_largest() {
        assert_eq!(from_set(&set("5,1:3,4,9:*"), 12), vec![(1, 5), (9, 12)]);
        assert_eq!(from_set(&set("7:2"), 12), vec![(2, 7)]);
    }

    #[test]
    fn intersection_and_removal_work_on_ranges() {
        let a = vec![(1, 10), (20, 30)];
        let b = vec![(5, 25)];
        assert_eq!(intersect(&a, &b), vec![(5, 10), (20, 25)]);
        assert_eq!(
            without(&vec![(1, 10)], [1, 4, 5, 10, 11]),
            vec![(2, 3), (6, 9)]
        );
        assert_eq!(
            without(&vec![(1, u32::MAX)], [u32::MAX]),
            vec![(1, u32::MAX - 1)]
        );
        assert_eq!(above(&vec![(1, 5), (7, 9)], 4), vec![(5, 5), (7, 9)]);
        assert_eq!(to_set(&vec![(1, 3), (5, 5)]).unwrap(), set("1:3,5"));
        assert!(to_set(&vec![]).is_none());
    }

    #[test]
    fn values_are_bounded() {
        assert_eq!(values(&set("1:3,7"), 10, 100), Some(vec![1, 2, 3, 7]));
        assert_eq!(values(&set("1:4294967295"), 10, 1000), None);
    }
}
