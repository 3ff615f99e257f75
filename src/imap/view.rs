//! One session's view of its selected mailbox.
//!
//! IMAP sequence numbers belong to a session: they change only when that
//! session is told of an EXPUNGE. So each session keeps its own list of
//! messages. For a mailbox of the current store the list is copied from the
//! mailbox's live state at SELECT and then kept up by replaying the live
//! state's change log from the session's cursor (its highest modseq seen):
//! O(changes), no database read. Archive folders are refreshed from a
//! snapshot of the user's archive instead. Expunges found while EXPUNGE
//! responses are not allowed (during FETCH, STORE, SEARCH) stay as ghosts
//! until the next point where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::store::live::{ChangeKind, FlagSet, LiveMailbox, LiveMessage};
use crate::store::{MailboxInfo, MessageState};

/// A message as the session knows it (32 bytes plus any keywords: a
/// session keeps one per message of the selected mailbox for as long as it
/// stays selected, and an idle client may sit on a large INBOX for days).
#[derive(Debug, Clone)]
pub struct Entry {
    pub uid: u32,
    /// Expunged in the store, not yet announced to the client.
    pub gone: bool,
    /// This session is the first to see the message (\Recent).
    pub recent: bool,
    pub modseq: u64,
    flags: FlagSet,
}

impl Entry {
    pub fn new(uid: u32, flags: &[String], modseq: u64) -> Entry {
        Entry {
            uid,
            gone: false,
            recent: false,
            modseq,
            flags: FlagSet::new(flags),
        }
    }

    fn from_live(m: &LiveMessage, recent: bool) -> Entry {
        Entry {
            uid: m.uid,
            gone: false,
            recent,
            modseq: m.modseq,
            flags: m.flags.clone(),
        }
    }

    pub fn flags(&self) -> Vec<String> {
        self.flags.to_vec()
    }

    /// The flags as FETCH shows them: with `\Recent` when it is.
    pub fn response_flags(&self) -> Vec<String> {
        let mut f = self.flags.to_vec();
        if self.recent {
            f.push("\\Recent".to_string());
        }
        f
    }

    pub fn flag_set(&self) -> &FlagSet {
        &self.flags
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.has(flag)
    }

    /// Replaces the flags; true when they differ from before (as a set).
    pub fn set_flags(&mut self, flags: &[String]) -> bool {
        let new = FlagSet::new(flags);
        let changed = !new.same(&self.flags);
        self.flags = new;
        changed
    }
}

#[derive(Debug, Default)]
pub struct Updates {
    /// (sequence number, UID) to announce as EXPUNGE, in the order to send
    /// them (or their UIDs as VANISHED, with QRESYNC).
    pub expunged: Vec<(u32, u32)>,
    /// New message count to announce as EXISTS, if it grew.
    pub exists: Option<u32>,
    /// (seq, uid, flags, modseq) whose flags changed.
    pub flags: Vec<(u32, u32, Vec<String>, u64)>,
    /// Keywords came into use that the client was not told of (they are
    /// in `announced` now; `* FLAGS` is due before anything else).
    pub new_keywords: bool,
}

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
    /// The mailbox's live state (current-store mailboxes).
    pub live: Option<Arc<LiveMailbox>>,
    /// Every live change up to this modseq is in `entries`.
    pub cursor: u64,
    /// Keywords the client was told of (`* FLAGS`): lower-cased name to
    /// the spelling announced.
    pub announced: BTreeMap<String, String>,
    /// Messages whose flags another session changed, taken into `entries`
    /// but not reported yet: a response that shows their FLAGS reports
    /// them, the rest go out as `FETCH (FLAGS)` after the command.
    pub unreported: BTreeSet<u32>,
}

impl View {
    /// An archive folder's view, from a snapshot.
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
            live: None,
            cursor: info.highestmodseq,
            announced: BTreeMap::new(),
            unreported: BTreeSet::new(),
        }
    }

    /// A current-store mailbox's view, copied from its live state. Messages
    /// no session has seen yet are \Recent here, and unless `read_only`
    /// this session takes them: no other session sees them as \Recent.
    pub fn from_live(name: String, read_only: bool, id: u64, live: Arc<LiveMailbox>) -> View {
        let mut st = live.write();
        let entries = st
            .messages
            .iter()
            .map(|m| Entry::from_live(m, m.uid >= st.recent_from))
            .collect();
        let view = View {
            id,
            archive: None,
            name,
            read_only,
            uidvalidity: st.uidvalidity,
            uidnext: st.uidnext,
            highestmodseq: st.highestmodseq,
            entries,
            live: None,
            cursor: st.highestmodseq,
            announced: st
                .keywords()
                .into_iter()
                .map(|k| (k.to_ascii_lowercase(), k))
                .collect(),
            unreported: BTreeSet::new(),
        };
        if !read_only {
            st.recent_from = st.uidnext;
        }
        drop(st);
        View {
            live: Some(live),
            ..view
        }
    }

    /// UIDs marked \Deleted now: in the live state for a current-store
    /// mailbox (another session may have just changed them), in the view
    /// for an archive folder.
    pub fn deleted_now(&self) -> Vec<u32> {
        match &self.live {
            Some(live) => live
                .read()
                .messages
                .iter()
                .filter(|m| m.flags.deleted())
                .map(|m| m.uid)
                .collect(),
            None => self
                .entries
                .iter()
                .filter(|e| !e.gone && e.flags.deleted())
                .map(|e| e.uid)
                .collect(),
        }
    }

    /// Messages this session sees as \Recent.
    pub fn recent(&self) -> u32 {
        self.entries.iter().filter(|e| e.recent && !e.gone).count() as u32
    }

    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Every keyword in use in the mailbox, lower-cased, with the first
    /// spelling seen.
    pub fn keyword_spellings(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for e in &self.entries {
            for k in e.flags.keywords() {
                map.entry(k.to_ascii_lowercase())
                    .or_insert_with(|| k.to_string());
            }
        }
        map
    }

    /// Every keyword in use in the mailbox, lower-cased.
    pub fn keywords(&self) -> std::collections::HashSet<String> {
        if let Some(live) = &self.live {
            return live.read().keywords_lower();
        }
        let mut set = std::collections::HashSet::new();
        for e in &self.entries {
            set.extend(e.flags.keywords().map(|x| x.to_ascii_lowercase()));
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
        Some((self.seq_of(uid)?, e.response_flags(), e.modseq))
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
                    up.expunged.push((i as u32 + 1, self.entries[i].uid));
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

    /// Up to `limit` of the flag changes not reported yet, as (seq, uid,
    /// flags, modseq); the rest stay for the next time.
    pub fn take_unreported(&mut self, limit: usize) -> Vec<(u32, u32, Vec<String>, u64)> {
        let uids: Vec<u32> = if self.unreported.len() <= limit {
            std::mem::take(&mut self.unreported).into_iter().collect()
        } else {
            let keep = self
                .unreported
                .iter()
                .nth(limit)
                .copied()
                .map(|at| self.unreported.split_off(&at))
                .unwrap_or_default();
            std::mem::replace(&mut self.unreported, keep)
                .into_iter()
                .collect()
        };
        uids.into_iter()
            .filter_map(|uid| {
                let seq = self.seq_of(uid)?;
                let e = &self.entries[seq as usize - 1];
                (!e.gone).then(|| (seq, uid, e.response_flags(), e.modseq))
            })
            .collect()
    }

    /// Catches up with the live state: its logged changes since the cursor,
    /// or (fallen behind the log) the whole message list. `None` when the
    /// mailbox was deleted. New messages at or above the live state's
    /// \Recent mark are \Recent here, and taken (unless read-only).
    pub fn catch_up(&mut self, expunge_ok: bool) -> Option<Updates> {
        let live = self.live.clone()?;
        let mut st = live.write();
        if st.gone {
            return None;
        }
        let mut up = Updates::default();
        let mut changed: Vec<u32> = Vec::new();
        let mut added = 0usize;
        // The client knows the messages up to this UID.
        let known_last = self.entries.last().map_or(0, |e| e.uid);
        // (Reported flags go through `unreported`.)
        let recent_from = st.recent_from;
        match st.changes_since(self.cursor) {
            Some(changes) => {
                for c in changes {
                    match &c.kind {
                        ChangeKind::Added(m) => {
                            if self.entries.last().is_none_or(|e| e.uid < c.uid) {
                                self.entries.push(Entry::from_live(m, m.uid >= recent_from));
                                added += 1;
                            }
                        }
                        ChangeKind::Flags(f) => {
                            if let Some(e) = self.entry_mut(c.uid)
                                && !e.gone
                            {
                                if !e.flags.same(f) {
                                    e.flags = f.clone();
                                    changed.push(c.uid);
                                }
                                e.modseq = c.modseq;
                            }
                        }
                        ChangeKind::Expunged => {
                            if let Some(e) = self.entry_mut(c.uid) {
                                e.gone = true;
                            }
                        }
                    }
                }
            }
            None => {
                // Fallen behind the log: compare with the whole list.
                let mut j = 0;
                for e in self.entries.iter_mut() {
                    while j < st.messages.len() && st.messages[j].uid < e.uid {
                        j += 1;
                    }
                    match st.messages.get(j) {
                        Some(m) if m.uid == e.uid => {
                            if !e.gone && m.modseq != e.modseq {
                                if !e.flags.same(&m.flags) {
                                    e.flags = m.flags.clone();
                                    changed.push(e.uid);
                                }
                                e.modseq = m.modseq;
                            }
                        }
                        _ => e.gone = true,
                    }
                }
                let last = self.entries.last().map(|e| e.uid).unwrap_or(0);
                for m in st.messages.iter().filter(|m| m.uid > last) {
                    self.entries.push(Entry::from_live(m, m.uid >= recent_from));
                    added += 1;
                }
            }
        }
        for (lower, spelt) in st.keyword_names() {
            if !self.announced.contains_key(lower) {
                self.announced.insert(lower.to_string(), spelt.to_string());
                up.new_keywords = true;
            }
        }
        self.cursor = st.highestmodseq;
        self.highestmodseq = self.highestmodseq.max(st.highestmodseq);
        self.uidnext = self.uidnext.max(st.uidnext);
        if !self.read_only {
            st.recent_from = st.recent_from.max(st.uidnext);
        }
        drop(st);
        if expunge_ok {
            // A message that came and went since the last report was
            // never announced: it leaves without an EXPUNGE (whose number
            // the client could not know).
            let mut i = 0;
            while i < self.entries.len() {
                if !self.entries[i].gone {
                    i += 1;
                    continue;
                }
                if self.entries[i].uid <= known_last {
                    up.expunged.push((i as u32 + 1, self.entries[i].uid));
                } else {
                    added -= 1;
                }
                self.entries.remove(i);
            }
        }
        self.unreported.extend(changed);
        if added > 0 {
            up.exists = Some(self.len());
        }
        Some(up)
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
            digest: None,
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
        assert_eq!(up.expunged, vec![(2, 2), (3, 4)]);
        assert_eq!(
            v.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
            vec![1, 3, 5, 6]
        );
    }

    #[test]
    fn compact_entries() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
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
