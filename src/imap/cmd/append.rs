//! APPEND.

use std::num::NonZeroU32;
use std::sync::Arc;

use imap_types::core::Tag;
use imap_types::datetime::DateTime;
use imap_types::extensions::binary::LiteralOrLiteral8;
use imap_types::flag::Flag;
use imap_types::mailbox::Mailbox;
use imap_types::response::Code;

use super::store::{flag_strings, keyword_set, names_recent};
use crate::archive::registry;
use crate::imap::code;
use crate::imap::core::{Authed, Ctx};
use crate::imap::names;
use crate::imap::view::View;
use crate::store::{Delivery, Op, Outcome, Summary};

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &mut self,
        a: &Authed,
        sel: Option<&View>,
        tag: &Tag<'_>,
        mailbox: &Mailbox<'_>,
        flags: Vec<Flag<'_>>,
        date: Option<DateTime>,
        message: LiteralOrLiteral8<'_>,
    ) {
        let name = match names::from_imap(mailbox) {
            Ok(n) => n,
            Err(e) => return self.bad_name(tag, e),
        };
        let archive = registry::archive_folder(&name).map(|f| f.unwrap_or("").to_string());
        if archive.is_some() && !self.archive_visible(&a.user) {
            return self.no(tag, Some(Code::TryCreate), "No such mailbox");
        }
        let raw = match message {
            LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
            LiteralOrLiteral8::Literal8(l) => {
                let raw = l.data.into_owned();
                // RFC 3516 4.4: what cannot be stored as sent is refused.
                // NUL bytes could not be sent back in a BODY[] literal.
                if raw.contains(&0) {
                    return self.no(
                        tag,
                        Some(code("UNKNOWN-CTE")),
                        "Binary content with NUL bytes cannot be stored: send it base64-encoded",
                    );
                }
                raw
            }
        };
        if names_recent(&flags) {
            return self.bad(Some(tag), None, "\\Recent cannot be set by APPEND");
        }
        let keywords = keyword_set(&flags);
        if !keywords.is_empty() && archive.is_none() {
            let in_use = match self.keywords_in(a, sel, &name).await {
                Ok(k) => k,
                Err(e) => return self.store_error(tag, e),
            };
            if let Err(msg) = self.keyword_room(in_use, keywords) {
                return self.no(tag, Some(code("LIMIT")), &msg);
            }
        }
        if raw.len() > self.app.config.limits.max_message_size {
            return self.no(tag, Some(code("TOOBIG")), "Message exceeds the size limit");
        }
        let user = a.user.clone();
        let internal_date = date
            .map(|d| d.as_ref().timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        if let Some(folder) = archive {
            return self
                .append_to_archive(
                    &user,
                    tag,
                    &folder,
                    flag_strings(&flags),
                    internal_date,
                    raw,
                )
                .await;
        }
        let summary = Summary::parse(&raw);
        let delivery = Delivery {
            user: user.clone(),
            mailbox: name,
            raw: Arc::new(raw),
            internal_date,
            flags: flag_strings(&flags),
            summary,
        };
        match self.app.store.submit(&user, Op::Deliver(delivery)).await {
            Ok(Outcome::Appended { uidvalidity, uid }) => {
                let c = match (NonZeroU32::new(uidvalidity), NonZeroU32::new(uid)) {
                    (Some(v), Some(u)) => Some(Code::AppendUid {
                        uid_validity: v,
                        uid: u,
                    }),
                    _ => None,
                };
                self.ok(tag, c, "APPEND completed");
            }
            Ok(_) => self.ok(tag, None, "APPEND completed"),
            Err(crate::store::StoreError::NoSuchMailbox(_)) => {
                self.no(tag, Some(Code::TryCreate), "No such mailbox")
            }
            Err(e) => self.store_error(tag, e),
        }
    }

    /// APPEND into `Archive` or a folder below it: archived at once (how
    /// sync clients such as mbsync archive: they upload the message into
    /// the archive folder and expunge their copy), `OK [APPENDUID]` once
    /// the archive file is fsynced.
    async fn append_to_archive(
        &mut self,
        user: &str,
        tag: &Tag<'_>,
        folder: &str,
        flags: Vec<String>,
        internal_date: i64,
        raw: Vec<u8>,
    ) {
        let child = (!folder.is_empty()).then_some(folder);
        match self.archive_folder_exists(user, child).await {
            Ok(true) => {}
            Ok(false) => return self.no(tag, Some(Code::TryCreate), "No such archive folder"),
            Err(why) => return self.archive_unavailable(user, tag, &why),
        }
        match self
            .archive_new_message(user, folder, flags, internal_date, raw)
            .await
        {
            Ok(auid) => {
                let c = match (
                    NonZeroU32::new(registry::uidvalidity(child)),
                    NonZeroU32::new(auid),
                ) {
                    (Some(v), Some(u)) => Some(Code::AppendUid {
                        uid_validity: v,
                        uid: u,
                    }),
                    _ => None,
                };
                self.ok(tag, c, "APPEND completed (archived)");
            }
            Err(why) => self.archive_unavailable(user, tag, &why),
        }
    }

    /// Keywords in use in the mailbox `name` of the user.
    async fn keywords_in(
        &self,
        a: &Authed,
        sel: Option<&View>,
        name: &str,
    ) -> Result<std::collections::HashSet<String>, crate::store::StoreError> {
        if let Some(v) = sel.filter(|v| v.name == name) {
            return Ok(v.keywords());
        }
        let user = a.user.clone();
        let Some(info) = self.app.store.mailbox(&user, name).await? else {
            // APPEND answers TRYCREATE itself.
            return Ok(Default::default());
        };
        Ok(match self.app.store.live(&user, info.id).await? {
            Some(live) => live.read().keywords_lower(),
            None => Default::default(),
        })
    }

    /// Whether `new` keywords fit beside those `in_use` in one mailbox
    /// (which bounds every message of it too).
    pub fn keyword_room(
        &self,
        mut in_use: std::collections::HashSet<String>,
        new: std::collections::HashSet<String>,
    ) -> Result<(), String> {
        let max = self.app.config.limits.max_keywords;
        in_use.extend(new);
        if in_use.len() > max {
            return Err(format!("At most {max} keywords may be used in one mailbox"));
        }
        Ok(())
    }
}
