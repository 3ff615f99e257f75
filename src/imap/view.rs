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

/// A message as the session knows it: 24 bytes plus any keywords, since a
/// session keeps one per message of the selected mailbox for as long as it
/// stays selected (an idle client may sit on a large INBOX for days).
#[derive(Debug, Clone)]
pub struct Entry {
    pub uid: u32,
    /// Expunged in the store, not yet announced to the client.
    pub gone: bool,
    /// The five system flags as bits (see `SYSTEM`).
    system: u8,
    pub modseq: u64,
    // A thin pointer (8 bytes) in every entry; keywords are rare.
    #[allow(clippy::box_collection)]
    keywords: Option<Box<Vec<Box<str>>>>,
}

/// System flags in the order FETCH FLAGS lists them.
const SYSTEM: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

#[allow(clippy::box_collection)]
fn pack(flags: &[String]) -> (u8, Option<Box<Vec<Box<str>>>>) {
    let mut bits = 0u8;
    let mut keywords: Vec<Box<str>> = Vec::new();
    for f in flags {
        match SYSTEM.iter().position(|s| s.eq_ignore_ascii_case(f)) {
            Some(i) => bits |= 1 << i,
            None => {
                if !keywords.iter().any(|k| k.eq_ignore_ascii_case(f)) {
                    keywords.push(f.as_str().into());
                }
            }
        }
    }
    let keywords = (!keywords.is_empty()).then(|| Box::new(keywords));
    (bits, keywords)
}

impl Entry {
    pub fn new(uid: u32, flags: &[String], modseq: u64) -> Entry {
        let (system, keywords) = pack(flags);
        Entry {
            uid,
            gone: false,
            system,
            modseq,
            keywords,
        }
    }

    pub fn flags(&self) -> Vec<String> {
        let mut out: Vec<String> = SYSTEM
            .iter()
            .enumerate()
            .filter(|(i, _)| self.system & (1 << i) != 0)
            .map(|(_, s)| s.to_string())
            .collect();
        if let Some(k) = &self.keywords {
            out.extend(k.iter().map(|s| s.to_string()));
        }
        out
    }

    pub fn has(&self, flag: &str) -> bool {
        match SYSTEM.iter().position(|s| s.eq_ignore_ascii_case(flag)) {
            Some(i) => self.system & (1 << i) != 0,
            None => self
                .keywords
                .as_ref()
                .is_some_and(|k| k.iter().any(|x| x.eq_ignore_ascii_case(flag))),
        }
    }

    /// Replaces the flags; true when they differ from before (as a set).
    pub fn set_flags(&mut self, flags: &[String]) -> bool {
        let (system, keywords) = pack(flags);
        let same_keywords = match (&self.keywords, &keywords) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|x| b.iter().any(|y| x.eq_ignore_ascii_case(y)))
            }
            _ => false,
        };
        let changed = system != self.system || !same_keywords;
        self.system = system;
        self.keywords = keywords;
        changed
    }
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
    /// `Some(folder)` when this is an archive folder (`Some(None)` for
    /// `Archive` itself); `None` for a current-store mailbox.
    pub archive: Option<Option<String>>,
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
            archive: None,
            name,
            read_only,
            uidvalidity: info.uidvalidity,
            uidnext: info.uidnext,
            highestmodseq: info.highestmodseq,
            entries: msgs
                .into_iter()
                .map(|m| Entry::new(m.uid, &m.flags, m.modseq))
                .collect(),
        }
    }

    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Every keyword in use in the mailbox, lower-cased.
    pub fn keywords(&self) -> std::collections::HashSet<String> {
        let mut set = std::collections::HashSet::new();
        for e in &self.entries {
            if let Some(k) = &e.keywords {
                set.extend(k.iter().map(|x| x.to_ascii_lowercase()));
            }
        }
        set
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

    /// (sequence number, flags, modseq) of a message still in the view.
    pub fn state(&self, uid: u32) -> Option<(u32, Vec<String>, u64)> {
        let e = self.entry_ref(uid)?;
        Some((self.seq_of(uid)?, e.flags(), e.modseq))
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
                if !e.gone && m.modseq != e.modseq {
                    if e.set_flags(&m.flags) {
                        up.flags.push((i as u32 + 1, e.uid, e.flags(), m.modseq));
                    }
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
            self.entries.push(Entry::new(m.uid, &m.flags, m.modseq));
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
            modseq: 1 + flags.len() as u64,
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
    fn compact_entries() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let flags: Vec<String> = ["$Work", "\\seen", "\\Deleted"].map(String::from).to_vec();
        let mut e = Entry::new(1, &flags, 1);
        assert_eq!(e.flags(), ["\\Deleted", "\\Seen", "$Work"]);
        assert!(e.has("\\SEEN") && e.has("$work") && !e.has("\\Draft"));
        assert!(!e.set_flags(&["\\Deleted".into(), "$WORK".into(), "\\Seen".into()]));
        assert!(e.set_flags(&[]));
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
