//! CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE.

use imap_types::core::Tag;
use imap_types::mailbox::Mailbox;

use crate::archive::registry;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx, Next};
use crate::imap::names;
use crate::imap::view::View;
use crate::store::{Op, SEPARATOR};

impl Ctx {
    /// CREATE below `Archive` (Thunderbird's yearly archive folders do
    /// `CREATE Archive/2024`, then `UID MOVE` into it): an empty archive
    /// folder, kept in the user's archive files.
    async fn create_archive_folder(&mut self, a: &Authed, tag: &Tag<'_>, folder: Option<&str>) {
        let user = a.user.clone();
        if !self.archive_visible(&user) {
            return self.no(
                tag,
                Some(code("CANNOT")),
                "The archive is not shown to this user",
            );
        }
        let Some(f) = folder else {
            return self.no(tag, Some(code("ALREADYEXISTS")), "Archive always exists");
        };
        match self.archive_folder_exists(&user, Some(f)).await {
            Ok(true) => return self.no(tag, Some(code("ALREADYEXISTS")), "Mailbox exists"),
            Ok(false) => {}
            Err(why) => return self.archive_unavailable(&user, tag, &why),
        }
        match self.archive_make_folder(&user, f, true).await {
            Ok(_) => self.ok(tag, None, "CREATE completed"),
            Err(why) => self.archive_unavailable(&user, tag, &why),
        }
    }

    /// DELETE of a folder below `Archive`: only once it is empty (archived
    /// mail goes by EXPUNGE, which legal hold and access rules govern).
    async fn delete_archive_folder(&mut self, a: &Authed, tag: &Tag<'_>, folder: Option<&str>) {
        let user = a.user.clone();
        let Some(f) = folder else {
            return self.no(tag, Some(code("CANNOT")), "Archive cannot be deleted");
        };
        if !self.archive_writable(&user) {
            return self.no(tag, Some(code("READ-ONLY")), "The archive is read-only");
        }
        match self.archive_folder_exists(&user, Some(f)).await {
            Ok(true) => {}
            Ok(false) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
            Err(why) => return self.archive_unavailable(&user, tag, &why),
        }
        match self.archive_make_folder(&user, f, false).await {
            Ok(true) => self.ok(tag, None, "DELETE completed"),
            Ok(false) => self.no(
                tag,
                Some(code("INUSE")),
                "The archive folder still holds mail: expunge it first",
            ),
            Err(why) => self.archive_unavailable(&user, tag, &why),
        }
    }

    pub async fn create(&mut self, a: &Authed, tag: &Tag<'_>, mailbox: &Mailbox<'_>) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n.trim_end_matches(SEPARATOR).to_string(),
            Err(e) => return self.bad_name(tag, e),
        };
        if name == "INBOX" {
            return self.no(tag, Some(code("ALREADYEXISTS")), "INBOX always exists");
        }
        if let Err(e) = names::check_new(&name) {
            return self.bad_name(tag, e);
        }
        if let Err(e) = self.within_name_limits(&name) {
            return self.no(tag, Some(code("LIMIT")), &e.0);
        }
        if let Some(folder) = registry::archive_folder(&name) {
            return self.create_archive_folder(a, tag, folder).await;
        }
        let user = a.user.clone();
        let op = Op::CreateMailbox {
            user: user.clone(),
            name,
            max_mailboxes: self.app.config.limits.max_mailboxes,
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => self.ok(tag, None, "CREATE completed"),
            Err(e) => self.store_error(tag, e),
        }
    }

    /// DELETE; deleting the selected mailbox ends the selection.
    pub async fn delete(
        &mut self,
        a: &Authed,
        sel: Option<&View>,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
    ) -> Next {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => {
                self.bad_name(tag, e);
                return Next::Stay;
            }
        };
        if let Some(folder) = registry::archive_folder(&name) {
            self.delete_archive_folder(a, tag, folder).await;
            return match sel {
                Some(v) if v.name == name => Next::Unselect,
                _ => Next::Stay,
            };
        }
        let user = a.user.clone();
        let op = Op::DeleteMailbox {
            user: user.clone(),
            name: name.clone(),
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => {
                self.ok(tag, None, "DELETE completed");
                // RFC 3501 leaves the selected state undefined here:
                // tiermail ends it, as the mailbox is gone.
                if sel.is_some_and(|v| v.name == name) {
                    return Next::Unselect;
                }
                Next::Stay
            }
            Err(e) => {
                self.store_error(tag, e);
                Next::Stay
            }
        }
    }

    pub async fn rename(
        &mut self,
        a: &Authed,
        sel: Option<&mut View>,
        tag: &Tag<'_>,
        from: &Mailbox<'_>,
        to: &Mailbox<'_>,
    ) {
        let (from, to) = match (names::from_imap(from), names::from_imap(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return self.bad_name(tag, e),
        };
        if let Err(e) = names::check_new(&to) {
            return self.bad_name(tag, e);
        }
        if self.refuse_archive_name(tag, &from) || self.refuse_archive_name(tag, &to) {
            return;
        }
        let user = a.user.clone();
        // The children move along: their new names must fit too.
        match self.app.store.mailboxes(&user).await {
            Ok(boxes) => {
                let prefix = format!("{from}{SEPARATOR}");
                let renamed = std::iter::once(to.clone()).chain(
                    boxes
                        .iter()
                        .filter_map(|(n, _)| n.strip_prefix(&prefix))
                        .map(|rest| format!("{to}{SEPARATOR}{rest}")),
                );
                for n in renamed {
                    if let Err(e) = self.within_name_limits(&n) {
                        return self.no(tag, Some(code("LIMIT")), &e.0);
                    }
                }
                if from == "INBOX" && boxes.len() >= self.app.config.limits.max_mailboxes {
                    return self.no(
                        tag,
                        Some(code("LIMIT")),
                        "Renaming INBOX creates a mailbox: the mailbox limit is reached",
                    );
                }
            }
            Err(e) => return self.store_error(tag, e),
        }
        let op = Op::RenameMailbox {
            user: user.clone(),
            from: from.clone(),
            to: to.clone(),
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => {
                if let Some(v) = sel
                    && v.name == from
                    && from != "INBOX"
                {
                    v.name = to;
                }
                self.ok(tag, None, "RENAME completed")
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    pub async fn subscribe(&mut self, a: &Authed, tag: &Tag<'_>, mailbox: &Mailbox<'_>, on: bool) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        let user = a.user.clone();
        if on && let Some(folder) = registry::archive_folder(&name) {
            // The archive folders LIST shows can be subscribed to.
            let shown = self.archive_visible(&user);
            match self.archive_folder_exists(&user, folder).await {
                Ok(true) if shown => {}
                Ok(_) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
                Err(why) => return self.archive_unavailable(&user, tag, &why),
            }
        } else if on {
            match self.app.store.mailbox(&user, &name).await {
                Ok(Some(_)) => {}
                Ok(None) => return self.no(tag, Some(code("NONEXISTENT")), "No such mailbox"),
                Err(e) => return self.store_error(tag, e),
            }
        }
        let op = Op::Subscribe {
            user: user.clone(),
            name,
            subscribed: on,
        };
        match self.app.store.submit(&user, op).await {
            Ok(_) => self.ok(
                tag,
                None,
                if on {
                    "SUBSCRIBE completed"
                } else {
                    "UNSUBSCRIBE completed"
                },
            ),
            Err(e) => self.store_error(tag, e),
        }
    }
}
