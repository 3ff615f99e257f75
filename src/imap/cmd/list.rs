//! LIST and LSUB, with the extended forms (RFC 5258 selection and return
//! options, LIST-STATUS, SPECIAL-USE) and the archive folders listed
//! beside the current ones.

use imap_types::core::{QuotedChar, Tag};
use imap_types::flag::FlagNameAttribute;
use imap_types::mailbox::{ListMailbox, Mailbox};
use imap_types::response::Data;

use crate::archive::registry;
use crate::imap::atom;
use crate::imap::core::{Authed, Ctx};
use crate::imap::list_extended::{ListExtended, Returns, Selection};
use crate::imap::names;
use crate::store::SEPARATOR;

impl Ctx {
    pub async fn list(
        &mut self,
        a: &Authed,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        wildcard: &ListMailbox<'_>,
        lsub: bool,
    ) {
        let patterns = [wildcard.clone()];
        let (sel, ret) = (Selection::default(), Returns::default());
        self.list_any(a, tag, reference, &patterns, &sel, &ret, lsub)
            .await
    }

    pub async fn list_extended(&mut self, a: &Authed, l: ListExtended) {
        let ListExtended {
            tag,
            selection,
            reference,
            patterns,
            returns,
        } = l;
        self.list_any(a, &tag, &reference, &patterns, &selection, &returns, false)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn list_any(
        &mut self,
        a: &Authed,
        tag: &Tag<'_>,
        reference: &Mailbox<'_>,
        wildcards: &[ListMailbox<'_>],
        sel: &Selection,
        ret: &Returns,
        lsub: bool,
    ) {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
        };
        let delimiter = QuotedChar::try_from(SEPARATOR).ok();
        let done = if lsub {
            "LSUB completed"
        } else {
            "LIST completed"
        };
        let patterns: Vec<String> = wildcards.iter().map(names::pattern).collect();
        if patterns.len() == 1 && patterns[0].is_empty() && !lsub {
            // The hierarchy delimiter and root (RFC 3501 6.3.8).
            self.data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
            });
            return self.ok(tag, None, done);
        }
        let user = a.user.clone();
        let mut boxes = match self.app.store.mailboxes(&user).await {
            Ok(b) => b,
            Err(e) => return self.store_error(tag, e),
        };
        // The archive folders are listed beside the current ones.
        for name in self.archive_folder_names(&user).await {
            let folder = registry::archive_folder(&name).flatten();
            boxes.push((
                name.clone(),
                crate::store::MailboxInfo {
                    id: 0,
                    uidvalidity: registry::uidvalidity(folder),
                    uidnext: 1,
                    highestmodseq: 1,
                    special_use: if folder.is_none() {
                        "\\Archive".into()
                    } else {
                        String::new()
                    },
                    digest: None,
                },
            ));
        }
        boxes.sort_by(|a, b| a.0.cmp(&b.0));
        let subs = match self.app.store.subscriptions(&user).await {
            Ok(s) => s,
            Err(e) => return self.store_error(tag, e),
        };
        let has_children = |name: &str| {
            let prefix = format!("{name}{SEPARATOR}");
            boxes.iter().any(|(n, _)| n.starts_with(&prefix))
        };
        // LSUB and LIST (SUBSCRIBED) walk the subscriptions, LIST the
        // mailboxes; RECURSIVEMATCH adds every parent of a subscription,
        // listed for the subscribed child it has (RFC 5258 3.5).
        let by_subscription = lsub || sel.subscribed;
        let recursive = sel.recursive && sel.subscribed && !lsub;
        let subscribed_below = |name: &str| {
            let prefix = format!("{name}{SEPARATOR}");
            subs.iter().any(|s| s.starts_with(&prefix))
        };
        let mut candidates: Vec<String> = if by_subscription {
            subs.clone()
        } else {
            boxes.iter().map(|(n, _)| n.clone()).collect()
        };
        if recursive {
            for s in &subs {
                let mut at = s.as_str();
                while let Some((parent, _)) = at.rsplit_once(SEPARATOR) {
                    candidates.push(parent.to_string());
                    at = parent;
                }
            }
            candidates.sort();
            candidates.dedup();
        }
        let mut listed = Vec::new();
        let full: Vec<names::ListPattern> = patterns
            .iter()
            .map(|p| names::ListPattern::new(&format!("{reference}{p}")))
            .collect();
        for name in candidates {
            if !full.iter().any(|p| p.matches(&name)) {
                continue;
            }
            let info = boxes.iter().find(|(n, _)| *n == name).map(|(_, i)| i);
            let special = info.map(|i| i.special_use.as_str()).unwrap_or("");
            if sel.special_use && special.is_empty() {
                continue;
            }
            let subscribed = subs.contains(&name);
            let mut attrs: Vec<&str> = Vec::new();
            match info {
                None if lsub => attrs.push("\\Noselect"),
                None => attrs.push("\\NonExistent"),
                Some(_) => attrs.push(if has_children(&name) {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                }),
            }
            if !special.is_empty() {
                attrs.push(special);
            }
            if (sel.subscribed || ret.subscribed) && subscribed {
                attrs.push("\\Subscribed");
            }
            let items = attrs
                .into_iter()
                .filter_map(|a| {
                    if a == "\\Noselect" {
                        return Some(FlagNameAttribute::Noselect);
                    }
                    a.strip_prefix('\\')
                        .and_then(atom)
                        .map(FlagNameAttribute::from)
                })
                .collect();
            let mailbox = names::to_imap(&name);
            if recursive && subscribed_below(&name) {
                self.data_extended(
                    Data::List {
                        items,
                        delimiter,
                        mailbox,
                    },
                    b"(\"CHILDINFO\" (\"SUBSCRIBED\"))",
                );
                if info.is_some() {
                    listed.push(name);
                }
                continue;
            }
            self.data(if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            });
            if info.is_some() {
                listed.push(name);
            }
        }
        // LIST-STATUS: one STATUS per listed, selectable mailbox.
        if !ret.status.is_empty() {
            for name in listed {
                let mb = names::to_imap(&name);
                // A mailbox deleted meanwhile simply gets no STATUS line.
                let _ = self.status_data(a, &mb, &ret.status).await;
            }
        }
        self.ok(tag, None, done);
    }
}
