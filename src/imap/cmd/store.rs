//! STORE (with CONDSTORE's UNCHANGEDSINCE), in current and archive folders.

use imap_types::command::StoreModifier;
use imap_types::core::Tag;
use imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_types::response::Code;
use imap_types::sequence::SequenceSet;

use super::copy::seq_set;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx};
use crate::imap::names;
use crate::imap::view::View;
use crate::store::{FlagAction, Op, Outcome};

pub fn flag_strings(flags: &[Flag<'_>]) -> Vec<String> {
    flags.iter().map(names::flag_to_string).collect()
}

/// `\Recent` is the server's to set (RFC 3501 2.3.2): never in APPEND or
/// STORE.
pub fn names_recent(flags: &[Flag<'_>]) -> bool {
    flag_strings(flags)
        .iter()
        .any(|f| f.eq_ignore_ascii_case("\\Recent"))
}

/// The keywords (not system flags) among `flags`, lower-cased.
pub fn keyword_set(flags: &[Flag<'_>]) -> std::collections::HashSet<String> {
    flags
        .iter()
        .filter(|f| matches!(f, Flag::Keyword(_)))
        .map(|f| names::flag_to_string(f).to_ascii_lowercase())
        .collect()
}

/// The text of a STORE's tagged OK.
fn store_done(uid: bool) -> &'static str {
    if uid {
        "UID STORE completed"
    } else {
        "STORE completed"
    }
}

impl Ctx {
    /// Records in the view flag changes this session made itself.
    pub fn apply_flag_changes(v: &mut View, changed: &[(u32, Vec<String>, u64)]) {
        for (uid, flags, modseq) in changed {
            if let Some(e) = v.entry_mut(*uid) {
                e.set_flags(flags);
                e.modseq = *modseq;
            }
            v.highestmodseq = v.highestmodseq.max(*modseq);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &mut self,
        a: &Authed,
        v: &mut View,
        tag: &Tag<'_>,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'_>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) {
        if names_recent(&flags) {
            return self.bad(Some(tag), None, "\\Recent cannot be stored");
        }
        if v.read_only {
            return self.no(tag, Some(code("READ-ONLY")), "Mailbox is read-only");
        }
        let new = keyword_set(&flags);
        if !new.is_empty()
            && kind != StoreType::Remove
            && let Err(msg) = self.keyword_room(v.keywords(), new)
        {
            return self.no(tag, Some(code("LIMIT")), &msg);
        }
        let mut unchanged_since = None;
        for m in &modifiers {
            let StoreModifier::UnchangedSince(u) = m;
            unchanged_since = Some(*u);
            self.condstore = true;
        }
        self.take_in_changes(v);
        let uids: Vec<u32> = v
            .resolve(set, uid)
            .into_iter()
            .filter(|u| v.entry_ref(*u).is_some_and(|e| !e.gone))
            .collect();
        let mailbox_id = v.id;
        let action = match kind {
            StoreType::Add => FlagAction::Add,
            StoreType::Remove => FlagAction::Remove,
            StoreType::Replace => FlagAction::Replace,
        };
        if v.archive.is_some() {
            let silent = response == StoreResponse::Silent;
            return match self
                .archive_store(&a.user, v, &uids, action, &flag_strings(&flags))
                .await
            {
                Ok(changed) => {
                    if !silent {
                        for (u, f) in changed {
                            if let Some(seq) = v.seq_of(u) {
                                self.announce(v, &f);
                                self.fetch_flags_response(seq, u, &f, 1, uid, false);
                            }
                        }
                    }
                    self.ok(tag, None, store_done(uid))
                }
                Err(why) => self.archive_unavailable(&a.user, tag, &why),
            };
        }
        let user = a.user.clone();
        let op = Op::Store {
            mailbox_id,
            uids,
            action,
            flags: flag_strings(&flags),
            unchanged_since,
        };
        let (changed, modified, unchanged) = match self.app.store.submit(&user, op).await {
            Ok(Outcome::Flags {
                changed,
                modified,
                unchanged,
            }) => (changed, modified, unchanged),
            Ok(_) => (Vec::new(), Vec::new(), Vec::new()),
            Err(e) => return self.store_error(tag, e),
        };
        Self::apply_flag_changes(v, &changed);
        let condstore = self.condstore;
        let silent = response == StoreResponse::Silent;
        let mut shown: Vec<(u32, Vec<String>, u64)> = Vec::new();
        if !silent {
            shown.extend(changed.iter().cloned());
            shown.extend(unchanged);
        } else if condstore {
            // RFC 7162: a silent STORE still reports the new MODSEQ.
            shown.extend(changed.iter().cloned());
        }
        shown.sort_by_key(|(u, ..)| *u);
        for (u, f, m) in shown {
            let Some(seq) = v.seq_of(u) else {
                continue;
            };
            // With \Recent where it is, keywords announced first.
            let mut f = f;
            if v.entry_ref(u).is_some_and(|e| e.recent) {
                f.push("\\Recent".to_string());
            }
            self.announce(v, &f);
            v.unreported.remove(&u);
            self.fetch_flags_response(seq, u, &f, m, uid, condstore);
        }
        if modified.is_empty() {
            self.ok(tag, None, store_done(uid));
        } else {
            let ids: Vec<u32> = if uid {
                modified
            } else {
                let mut s: Vec<u32> = modified.iter().filter_map(|u| v.seq_of(*u)).collect();
                s.sort();
                s
            };
            let c = seq_set(&ids).map(Code::Modified);
            self.ok(tag, c, "Some messages were modified since UNCHANGEDSINCE");
        }
    }
}
