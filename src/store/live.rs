//! The in-memory state of the mailboxes in use, kept current by the writers.
//!
//! Reading a mailbox's messages from redb costs O(messages): done on every
//! SELECT, STATUS and reconcile, that made a 100,000-message INBOX slow for
//! every session on it. Instead, the first use of a mailbox loads its
//! message list once ([`Registry::open`]); from then on the group's writer
//! applies every change it commits to that list and appends it to a short
//! change log, after the fsync and before it answers the writer's caller.
//! A session keeps a cursor (the highest modseq it has seen) and catches up
//! from the log in O(changes); one that fell behind the log resynchronises
//! from the list, still without touching redb. STATUS is answered from
//! counters kept with the list.
//!
//! Loading and writing race safely: a mailbox is registered before its
//! snapshot is read; changes committed meanwhile are kept aside and
//! applied afterwards if their modseq is above the snapshot's (every change
//! carries its mailbox's modseq, and modseqs only grow).
//!
//! Mailboxes no session holds stay cached (least recently used first out)
//! while their messages fit in `store.live_cache_messages`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use super::MessageState;

/// System flags in the order FETCH FLAGS lists them.
pub const SYSTEM: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];
const SEEN: u8 = 1 << 3;
const DELETED: u8 = 1 << 2;

/// A message's flags in 16 bytes: the system flags as bits, keywords (rare)
/// behind one thin pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagSet {
    system: u8,
    #[allow(clippy::box_collection)]
    keywords: Option<Box<Vec<Box<str>>>>,
}

impl FlagSet {
    pub fn new(flags: &[String]) -> FlagSet {
        let mut system = 0u8;
        let mut keywords: Vec<Box<str>> = Vec::new();
        for f in flags {
            match SYSTEM.iter().position(|s| s.eq_ignore_ascii_case(f)) {
                Some(i) => system |= 1 << i,
                None => {
                    if !keywords.iter().any(|k| k.eq_ignore_ascii_case(f)) {
                        keywords.push(f.as_str().into());
                    }
                }
            }
        }
        FlagSet {
            system,
            keywords: (!keywords.is_empty()).then(|| Box::new(keywords)),
        }
    }

    /// System flags first (in `SYSTEM` order), then keywords.
    pub fn to_vec(&self) -> Vec<String> {
        let mut out: Vec<String> = SYSTEM
            .iter()
            .enumerate()
            .filter(|(i, _)| self.system & (1 << i) != 0)
            .map(|(_, s)| s.to_string())
            .collect();
        out.extend(self.keywords().map(str::to_string));
        out
    }

    pub fn keywords(&self) -> impl Iterator<Item = &str> {
        self.keywords.iter().flat_map(|k| k.iter().map(|s| &**s))
    }

    pub fn has(&self, flag: &str) -> bool {
        match SYSTEM.iter().position(|s| s.eq_ignore_ascii_case(flag)) {
            Some(i) => self.system & (1 << i) != 0,
            None => self.keywords().any(|x| x.eq_ignore_ascii_case(flag)),
        }
    }

    pub fn seen(&self) -> bool {
        self.system & SEEN != 0
    }

    pub fn deleted(&self) -> bool {
        self.system & DELETED != 0
    }

    /// The same flags, whatever the order and case.
    pub fn same(&self, other: &FlagSet) -> bool {
        if self.system != other.system {
            return false;
        }
        let (a, b): (Vec<&str>, Vec<&str>) =
            (self.keywords().collect(), other.keywords().collect());
        a.len() == b.len()
            && a.iter()
                .all(|x| b.iter().any(|y| x.eq_ignore_ascii_case(y)))
    }
}

/// A message as the live state knows it.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    pub uid: u32,
    pub size: u32,
    pub modseq: u64,
    pub internal_date: i64,
    pub flags: FlagSet,
}

#[derive(Debug, Clone)]
pub enum ChangeKind {
    Added(LiveMessage),
    Flags(FlagSet),
    Expunged,
}

/// One committed change of one message.
#[derive(Debug, Clone)]
pub struct Change {
    pub modseq: u64,
    pub uid: u32,
    pub kind: ChangeKind,
}

/// What the writer tells the registry about one mailbox.
#[derive(Debug, Clone)]
pub enum Event {
    Change(Change),
    /// The mailbox was deleted.
    Deleted,
}

/// Changes kept for sessions to catch up from.
const LOG_CHANGES: usize = 4096;

#[derive(Debug, Default)]
pub struct MailboxState {
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub highestmodseq: u64,
    /// By UID.
    pub messages: Vec<LiveMessage>,
    pub unseen: u32,
    /// The messages' sizes added up (STATUS SIZE, RFC 8438).
    pub bytes: u64,
    pub deleted: u32,
    /// Messages carrying each keyword (lower-cased key; first spelling kept).
    keywords: HashMap<String, (String, u32)>,
    /// Every change with a modseq above `log_floor` is in `log`, in order.
    pub log: VecDeque<Change>,
    pub log_floor: u64,
    /// UIDs from here on have not been seen by any session (\Recent).
    pub recent_from: u32,
    /// The mailbox was deleted: sessions on it must leave.
    pub gone: bool,
    /// Loaded from a snapshot (until then, changes wait in `pending`).
    ready: bool,
    pending: Vec<Event>,
}

impl MailboxState {
    fn index(&self, uid: u32) -> Result<usize, usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid)
    }

    pub fn message(&self, uid: u32) -> Option<&LiveMessage> {
        self.index(uid).ok().map(|i| &self.messages[i])
    }

    /// Keywords in use, in their first spelling.
    pub fn keywords(&self) -> Vec<String> {
        let mut v: Vec<String> = self.keywords.values().map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }

    /// Keywords in use: (lower-cased, as first spelt).
    pub fn keyword_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keywords
            .iter()
            .map(|(l, (k, _))| (l.as_str(), k.as_str()))
    }

    /// Keywords in use, lower-cased.
    pub fn keywords_lower(&self) -> std::collections::HashSet<String> {
        self.keywords.keys().cloned().collect()
    }

    /// Messages at or above `recent_from`.
    pub fn recent(&self) -> u32 {
        let i = self.index(self.recent_from).unwrap_or_else(|i| i);
        (self.messages.len() - i) as u32
    }

    fn count(&mut self, flags: &FlagSet, add: bool) {
        let d = |n: &mut u32| {
            if add {
                *n += 1
            } else {
                *n = n.saturating_sub(1)
            }
        };
        if !flags.seen() {
            d(&mut self.unseen);
        }
        if flags.deleted() {
            d(&mut self.deleted);
        }
        for k in flags.keywords() {
            let key = k.to_ascii_lowercase();
            if add {
                self.keywords
                    .entry(key)
                    .or_insert_with(|| (k.to_string(), 0))
                    .1 += 1;
            } else if let Some(e) = self.keywords.get_mut(&key) {
                e.1 = e.1.saturating_sub(1);
                if e.1 == 0 {
                    self.keywords.remove(&key);
                }
            }
        }
    }

    fn apply(&mut self, e: Event) {
        let c = match e {
            Event::Deleted => {
                self.gone = true;
                return;
            }
            Event::Change(c) => c,
        };
        match &c.kind {
            ChangeKind::Added(m) => match self.index(c.uid) {
                Ok(_) => {}
                Err(i) => {
                    self.count(&m.flags, true);
                    self.bytes += u64::from(m.size);
                    self.messages.insert(i, m.clone());
                    self.uidnext = self.uidnext.max(c.uid.saturating_add(1));
                }
            },
            ChangeKind::Flags(f) => {
                if let Ok(i) = self.index(c.uid) {
                    let old = std::mem::replace(&mut self.messages[i].flags, f.clone());
                    self.messages[i].modseq = c.modseq;
                    self.count(&old, false);
                    self.count(f, true);
                }
            }
            ChangeKind::Expunged => {
                if let Ok(i) = self.index(c.uid) {
                    let m = self.messages.remove(i);
                    self.count(&m.flags, false);
                    self.bytes = self.bytes.saturating_sub(u64::from(m.size));
                }
            }
        }
        self.highestmodseq = self.highestmodseq.max(c.modseq);
        self.log.push_back(c);
        while self.log.len() > LOG_CHANGES {
            if let Some(old) = self.log.pop_front() {
                self.log_floor = self.log_floor.max(old.modseq);
            }
        }
    }

    /// The logged changes after `cursor`, or `None` if some of them are no
    /// longer in the log (the caller then resynchronises from `messages`).
    pub fn changes_since(&self, cursor: u64) -> Option<impl Iterator<Item = &Change>> {
        if cursor < self.log_floor {
            return None;
        }
        let start = self.log.partition_point(|c| c.modseq <= cursor);
        Some(self.log.range(start..))
    }
}

/// One mailbox's live state and the signal that it changed.
pub struct LiveMailbox {
    pub state: RwLock<MailboxState>,
    changed: watch::Sender<u64>,
    last_used: Mutex<Instant>,
}

impl LiveMailbox {
    fn new() -> LiveMailbox {
        LiveMailbox {
            state: RwLock::new(MailboxState::default()),
            changed: watch::channel(0).0,
            last_used: Mutex::new(Instant::now()),
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, MailboxState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, MailboxState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves whenever the mailbox changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn ready(&self) -> bool {
        self.read().ready
    }
}

/// The live mailboxes of a store, by (group, mailbox id).
pub struct Registry {
    open: Mutex<HashMap<(u32, u64), Arc<LiveMailbox>>>,
    /// Where \Recent starts per mailbox, kept when a state is evicted.
    recent: Mutex<HashMap<(u32, u64), u32>>,
    budget: usize,
}

impl Registry {
    pub fn new(cache_messages: usize) -> Arc<Registry> {
        Arc::new(Registry {
            open: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            budget: cache_messages,
        })
    }

    /// Applies what a writer committed (called after its fsync, before it
    /// answers), and wakes the mailboxes' sessions.
    pub fn publish(&self, group: u32, events: Vec<(u64, Event)>) {
        if events.is_empty() {
            return;
        }
        // One commit's events, grouped by mailbox in their order: each
        // mailbox takes them all under one lock, so a session catching up
        // sees all of a modseq's changes or none. (Taken one by one, a
        // session could set its cursor to a modseq between two of its
        // changes and never see the second.)
        let mut touched: Vec<(Arc<LiveMailbox>, Vec<Event>)> = Vec::new();
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let targets: Vec<(u64, Option<Arc<LiveMailbox>>, Event)> = events
            .into_iter()
            .map(|(mailbox, e)| (mailbox, open.get(&(group, mailbox)).cloned(), e))
            .collect();
        drop(open);
        for (mailbox, live, e) in targets {
            let Some(live) = live else {
                // Nobody has the mailbox open: what arrives now is \Recent
                // for the next session to select it.
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                match &e {
                    Event::Change(Change {
                        kind: ChangeKind::Added(m),
                        ..
                    }) => {
                        recent.entry((group, mailbox)).or_insert(m.uid);
                    }
                    Event::Deleted => {
                        recent.remove(&(group, mailbox));
                    }
                    _ => {}
                }
                continue;
            };
            match touched.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &live)) {
                Some((_, list)) => list.push(e),
                None => touched.push((live, vec![e])),
            }
        }
        for (live, list) in &mut touched {
            let mut st = live.write();
            for e in list.drain(..) {
                if st.ready {
                    st.apply(e);
                } else {
                    st.pending.push(e);
                }
            }
        }
        for (live, _) in touched {
            live.changed.send_modify(|v| *v += 1);
        }
    }

    /// The live state of a mailbox, loading it with `load` (a snapshot:
    /// info fields and messages by UID, or `None` if the mailbox is gone)
    /// on first use.
    pub async fn open<F>(
        self: &Arc<Self>,
        group: u32,
        mailbox: u64,
        load: F,
    ) -> Result<Option<Arc<LiveMailbox>>, super::StoreError>
    where
        F: FnOnce() -> Result<Option<(super::MailboxInfo, Vec<MessageState>)>, super::StoreError>
            + Send
            + 'static,
    {
        let key = (group, mailbox);
        let (live, mine) = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get(&key) {
                Some(l) => (l.clone(), false),
                None => {
                    let l = Arc::new(LiveMailbox::new());
                    open.insert(key, l.clone());
                    (l, true)
                }
            }
        };
        *live.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if !mine {
            // Someone else is loading it: wait until it is ready.
            let mut rx = live.watch();
            while !live.ready() {
                if live.read().gone {
                    return Ok(None);
                }
                if tokio::time::timeout(std::time::Duration::from_millis(50), rx.changed())
                    .await
                    .is_ok_and(|r| r.is_err())
                {
                    break;
                }
            }
            if live.read().gone {
                return Ok(None);
            }
            return Ok(Some(live));
        }
        let loaded = tokio::task::spawn_blocking(load)
            .await
            .map_err(|e| super::StoreError::Unavailable(e.to_string()));
        let snap = match loaded {
            Ok(Ok(s)) => s,
            Ok(Err(e)) | Err(e) => {
                self.forget(key, &live);
                return Err(e);
            }
        };
        let Some((info, msgs)) = snap else {
            live.write().gone = true;
            self.forget(key, &live);
            live.changed.send_modify(|v| *v += 1);
            return Ok(None);
        };
        let recent_from = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(info.uidnext);
        {
            let mut st = live.write();
            st.uidvalidity = info.uidvalidity;
            st.uidnext = info.uidnext;
            st.highestmodseq = info.highestmodseq;
            st.log_floor = info.highestmodseq;
            st.recent_from = recent_from;
            st.messages = msgs
                .into_iter()
                .map(|m| LiveMessage {
                    uid: m.uid,
                    size: m.size,
                    modseq: m.modseq,
                    internal_date: m.internal_date,
                    flags: FlagSet::new(&m.flags),
                })
                .collect();
            let all = std::mem::take(&mut st.messages);
            for m in &all {
                st.count(&m.flags, true);
                st.bytes += u64::from(m.size);
            }
            st.messages = all;
            st.ready = true;
            let floor = st.highestmodseq;
            for e in std::mem::take(&mut st.pending) {
                match &e {
                    Event::Change(c) if c.modseq <= floor => {}
                    _ => st.apply(e),
                }
            }
        }
        live.changed.send_modify(|v| *v += 1);
        self.evict();
        Ok(Some(live))
    }

    fn forget(&self, key: (u32, u64), live: &Arc<LiveMailbox>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(&key).is_some_and(|l| Arc::ptr_eq(l, live)) {
            open.remove(&key);
        }
    }

    /// Drops the least recently used states no session holds while they
    /// hold more messages than the budget (and deleted ones at once).
    fn evict(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, l| Arc::strong_count(l) > 1 || !l.read().gone);
        let mut idle: Vec<((u32, u64), Instant, usize)> = open
            .iter()
            .filter(|(_, l)| Arc::strong_count(l) == 1 && l.ready())
            .map(|(k, l)| {
                (
                    *k,
                    *l.last_used.lock().unwrap_or_else(|p| p.into_inner()),
                    l.read().messages.len(),
                )
            })
            .collect();
        let mut total: usize = idle.iter().map(|(_, _, n)| n).sum();
        idle.sort_by_key(|(_, t, _)| *t);
        for (k, _, n) in idle {
            if total <= self.budget {
                break;
            }
            if let Some(l) = open.remove(&k) {
                // Where \Recent starts outlives the cached state.
                let from = l.read().recent_from;
                self.recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(k, from);
            }
            total -= n;
        }
    }

    /// States held now (for tests and status).
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(uid: u32, flags: &[&str]) -> LiveMessage {
        LiveMessage {
            uid,
            size: 10,
            modseq: uid as u64,
            internal_date: 0,
            flags: FlagSet::new(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        }
    }

    fn ready(messages: Vec<LiveMessage>) -> MailboxState {
        let mut st = MailboxState {
            uidnext: 10,
            highestmodseq: 9,
            log_floor: 9,
            ready: true,
            ..Default::default()
        };
        for m in &messages {
            st.count(&m.flags, true);
            st.bytes += u64::from(m.size);
        }
        st.messages = messages;
        st
    }

    #[test]
    fn counters_keywords_and_log_follow_changes() {
        let mut st = ready(vec![msg(1, &["\\Seen"]), msg(2, &["$Work"])]);
        assert_eq!((st.unseen, st.deleted), (1, 0));
        assert_eq!(st.keywords(), ["$Work"]);
        st.apply(Event::Change(Change {
            modseq: 10,
            uid: 3,
            kind: ChangeKind::Added(msg(3, &["\\Deleted", "$work"])),
        }));
        st.apply(Event::Change(Change {
            modseq: 11,
            uid: 2,
            kind: ChangeKind::Flags(FlagSet::new(&["\\Seen".into()])),
        }));
        assert_eq!((st.unseen, st.deleted, st.uidnext), (1, 1, 10));
        assert_eq!(st.keywords(), ["$Work"], "still on message 3");
        st.apply(Event::Change(Change {
            modseq: 12,
            uid: 3,
            kind: ChangeKind::Expunged,
        }));
        assert!(st.keywords().is_empty());
        assert_eq!((st.unseen, st.deleted), (0, 0));
        let since: Vec<u32> = st.changes_since(10).unwrap().map(|c| c.uid).collect();
        assert_eq!(since, vec![2, 3]);
        assert!(st.changes_since(8).is_none(), "before the log");
        assert_eq!(st.highestmodseq, 12);
    }

    #[test]
    fn the_log_is_bounded() {
        let mut st = ready(vec![msg(1, &[])]);
        for i in 0..(LOG_CHANGES as u64 + 100) {
            st.apply(Event::Change(Change {
                modseq: 10 + i,
                uid: 1,
                kind: ChangeKind::Flags(FlagSet::default()),
            }));
        }
        assert_eq!(st.log.len(), LOG_CHANGES);
        assert!(st.changes_since(10).is_none());
        assert!(st.changes_since(st.highestmodseq - 5).is_some());
    }

    #[test]
    fn flag_sets() {
        let f = FlagSet::new(&["$Work".into(), "\\seen".into(), "\\Deleted".into()]);
        assert_eq!(f.to_vec(), ["\\Deleted", "\\Seen", "$Work"]);
        assert!(f.has("\\SEEN") && f.has("$work") && !f.has("\\Draft"));
        assert!(f.same(&FlagSet::new(&[
            "\\Deleted".into(),
            "$WORK".into(),
            "\\Seen".into()
        ])));
        assert_eq!(std::mem::size_of::<FlagSet>(), 16);
        assert_eq!(std::mem::size_of::<LiveMessage>(), 40);
    }

    #[tokio::test]
    async fn changes_during_a_load_are_not_lost() {
        let reg = Registry::new(1000);
        // The writer publishes while the snapshot is being read: modseq 12
        // is newer than the snapshot (highest 11), modseq 11 is in it.
        let reg2 = reg.clone();
        let live = reg
            .open(0, 7, move || {
                reg2.publish(
                    0,
                    vec![
                        (
                            7,
                            Event::Change(Change {
                                modseq: 11,
                                uid: 2,
                                kind: ChangeKind::Added(msg(2, &[])),
                            }),
                        ),
                        (
                            7,
                            Event::Change(Change {
                                modseq: 12,
                                uid: 3,
                                kind: ChangeKind::Added(msg(3, &[])),
                            }),
                        ),
                    ],
                );
                let info = super::super::MailboxInfo {
                    id: 7,
                    uidvalidity: 1,
                    uidnext: 3,
                    highestmodseq: 11,
                    special_use: String::new(),
                    digest: None,
                };
                Ok(Some((
                    info,
                    vec![MessageState {
                        uid: 2,
                        flags: vec![],
                        modseq: 11,
                        size: 1,
                        internal_date: 0,
                    }],
                )))
            })
            .await
            .unwrap()
            .unwrap();
        let st = live.read();
        let uids: Vec<u32> = st.messages.iter().map(|m| m.uid).collect();
        assert_eq!(uids, vec![2, 3]);
        assert_eq!(st.highestmodseq, 12);
        assert_eq!(st.uidnext, 4);
    }

    /// A session catches up while a commit is being published: it must
    /// see all of a modseq's changes or none, or its cursor passes the
    /// ones not applied yet and it never sees them (a message whose flags
    /// or expunge a session never learns).
    #[tokio::test]
    async fn a_commit_is_seen_whole_or_not_at_all() {
        const UIDS: u32 = 64;
        let reg = Registry::new(1_000_000);
        let live = reg
            .open(0, 7, move || {
                let info = super::super::MailboxInfo {
                    id: 7,
                    uidvalidity: 1,
                    uidnext: UIDS + 1,
                    highestmodseq: 1,
                    special_use: String::new(),
                    digest: None,
                };
                let msgs = (1..=UIDS)
                    .map(|uid| MessageState {
                        uid,
                        flags: vec![],
                        modseq: 1,
                        size: 1,
                        internal_date: 0,
                    })
                    .collect();
                Ok(Some((info, msgs)))
            })
            .await
            .unwrap()
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let live = live.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut partial = 0u32;
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    {
                        let st = live.read();
                        let top = st.highestmodseq;
                        let at_top = st.log.iter().rev().take_while(|c| c.modseq == top).count();
                        if top > 1 && at_top != UIDS as usize {
                            partial += 1;
                        }
                        reads += 1;
                    }
                    std::thread::yield_now();
                }
                (partial, reads)
            })
        };
        for modseq in 2..300u64 {
            let events = (1..=UIDS)
                .map(|uid| {
                    (
                        7,
                        Event::Change(Change {
                            modseq,
                            uid,
                            kind: ChangeKind::Flags(FlagSet::new(&[format!("$K{modseq}")])),
                        }),
                    )
                })
                .collect();
            reg.publish(0, events);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (partial, reads) = reader.join().unwrap();
        assert!(reads > 0);
        assert_eq!(
            partial, 0,
            "{partial} of {reads} reads saw part of a commit"
        );
    }
}
