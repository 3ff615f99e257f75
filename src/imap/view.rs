//! One session's view of its selected mailbox.
//!
//! IMAP sequence numbers belong to a session: they change only when that
//! session is told of an EXPUNGE. So each session keeps its own list of
//! messages and reconciles it with a store snapshot when told the user's
//! mail changed. Expunges found while EXPUNGE responses are not allowed
//! (during FETCH, STORE, SEARCH) stay as ghosts until the next point where
//! they are.

use std::num::NonZeroU32;

use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::store::{MailboxInfo, MessageState};

#[derive(Debug, Clone)]
pub struct Entry {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: u64,
    /// Expunged in the store, not yet announced to the client.
    pub gone: bool,
}

#[derive(Debug, Default)]
pub struct Updates {
    /// Sequence numbers to announce as EXPUNGE, in the order to send them.
    pub expunged: Vec<u32>,
    /// New message count to announce as EXISTS, if it grew.
    pub exists: Option<u32>,
    /// (seq, uid, flags, modseq) whose flags changed.
    pub flags: Vec<(u32, u32, Vec<String>, u64)>,
}

#[derive(Debug)]
pub struct View {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    pub entries: Vec<Entry>,
}

impl View {
    pub fn new(name: String, read_only: bool, info: &MailboxInfo, msgs: Vec<MessageState>) -> View {
        View {
            id: info.id,
            name,
            read_only,
            uidvalidity: info.uidvalidity,
            uidnext: info.uidnext,
            highestmodseq: info.highestmodseq,
            entries: msgs
                .into_iter()
                .map(|m| Entry {
                    uid: m.uid,
                    flags: m.flags,
                    modseq: m.modseq,
                    gone: false,
                })
                .collect(),
        }
    }

    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.entries
            .binary_search_by_key(&uid, |e| e.uid)
            .ok()
            .map(|i| i as u32 + 1)
    }

    pub fn entry_ref(&self, uid: u32) -> Option<&Entry> {
        let i = self.entries.binary_search_by_key(&uid, |e| e.uid).ok()?;
        Some(&self.entries[i])
    }

    pub fn entry_mut(&mut self, uid: u32) -> Option<&mut Entry> {
        let i = self.entries.binary_search_by_key(&uid, |e| e.uid).ok()?;
        Some(&mut self.entries[i])
    }

    /// Reconciles with a fresh snapshot. `expunge_ok` says whether EXPUNGE
    /// responses may be sent now.
    pub fn refresh(
        &mut self,
        info: &MailboxInfo,
        msgs: &[MessageState],
        expunge_ok: bool,
    ) -> Updates {
        let mut up = Updates::default();
        // Mark what disappeared and note flag changes.
        let mut j = 0;
        for (i, e) in self.entries.iter_mut().enumerate() {
            while j < msgs.len() && msgs[j].uid < e.uid {
                j += 1;
            }
            if j < msgs.len() && msgs[j].uid == e.uid {
                let m = &msgs[j];
                if !e.gone && (m.flags != e.flags || m.modseq != e.modseq) {
                    if m.flags != e.flags {
                        up.flags
                            .push((i as u32 + 1, e.uid, m.flags.clone(), m.modseq));
                    }
                    e.flags = m.flags.clone();
                    e.modseq = m.modseq;
                }
            } else {
                e.gone = true;
            }
        }
        if expunge_ok {
            let mut i = 0;
            while i < self.entries.len() {
                if self.entries[i].gone {
                    up.expunged.push(i as u32 + 1);
                    self.entries.remove(i);
                } else {
                    i += 1;
                }
            }
            // Flag updates were numbered before the removals: renumber.
            up.flags
                .retain_mut(|(seq, uid, ..)| match self.seq_of(*uid) {
                    Some(s) => {
                        *seq = s;
                        true
                    }
                    None => false,
                });
        }
        // New messages.
        let last = self.entries.last().map(|e| e.uid).unwrap_or(0);
        let before = self.entries.len();
        for m in msgs.iter().filter(|m| m.uid > last) {
            self.entries.push(Entry {
                uid: m.uid,
                flags: m.flags.clone(),
                modseq: m.modseq,
                gone: false,
            });
        }
        if self.entries.len() != before {
            up.exists = Some(self.len());
        }
        self.uidnext = self.uidnext.max(info.uidnext);
        self.highestmodseq = self.highestmodseq.max(info.highestmodseq);
        up
    }

    /// UIDs of the messages a sequence set (of numbers or of UIDs) names, in
    /// ascending order. Ghosts are included: callers skip them.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<u32> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        if uid {
            let largest = self.entries.last().map(|e| e.uid).unwrap_or(1);
            self.entries
                .iter()
                .filter(|e| contains(set, e.uid, largest))
                .map(|e| e.uid)
                .collect()
        } else {
            let largest = self.len();
            self.entries
                .iter()
                .enumerate()
                .filter(|(i, _)| contains(set, *i as u32 + 1, largest))
                .map(|(_, e)| e.uid)
                .collect()
        }
    }
}

/// Whether `value` is in `set`, where `*` stands for `largest`; a range
/// may be written in either order.
pub fn contains(set: &SequenceSet, value: u32, largest: u32) -> bool {
    let largest = NonZeroU32::new(largest.max(1)).expect("max(1) is non-zero");
    let get = |s: &SeqOrUid| s.expand(largest).get();
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(x) => get(x) == value,
        Sequence::Range(a, b) => {
            let (a, b) = (get(a), get(b));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (lo..=hi).contains(&value)
        }
    })
}

/// Compact UID set text pieces: consecutive UIDs as ranges.
pub fn ranges(uids: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &u in uids {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == u => *hi = u,
            _ => out.push((u, u)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uid: u32, flags: &[&str]) -> MessageState {
        MessageState {
            uid,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            modseq: 1,
            size: 10,
            internal_date: 0,
        }
    }

    fn info() -> MailboxInfo {
        MailboxInfo {
            id: 1,
            uidvalidity: 7,
            uidnext: 10,
            highestmodseq: 5,
            special_use: String::new(),
        }
    }

    #[test]
    fn expunges_are_numbered_as_the_client_sees_them() {
        let msgs: Vec<_> = (1..=5).map(|u| state(u, &[])).collect();
        let mut v = View::new("INBOX".into(), false, &info(), msgs);
        // 2 and 4 vanish; 6 arrives.
        let now = vec![
            state(1, &[]),
            state(3, &["\\Seen"]),
            state(5, &[]),
            state(6, &[]),
        ];
        let held = v.refresh(&info(), &now, false);
        assert!(held.expunged.is_empty());
        assert_eq!(held.exists, Some(6));
        assert_eq!(held.flags.len(), 1);
        let up = v.refresh(&info(), &now, true);
        assert_eq!(up.expunged, vec![2, 3]);
        assert_eq!(
            v.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
            vec![1, 3, 5, 6]
        );
    }

    #[test]
    fn sets() {
        let set = SequenceSet::try_from("1:3,7:*").unwrap();
        assert!(contains(&set, 2, 10));
        assert!(!contains(&set, 5, 10));
        assert!(contains(&set, 9, 10));
        let rev = SequenceSet::try_from("5:2").unwrap();
        assert!(contains(&rev, 3, 10));
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
    }
}
