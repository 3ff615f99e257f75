//! IMAP command handlers, one file per command family. Each is a method of
//! [`Ctx`] that gets the state it runs in as arguments (the logged-in user,
//! and the selected mailbox's view for the selected state), puts its
//! responses in the outbox, and says what becomes of the state ([`Next`]).
//! This file dispatches by state and holds what several families share.

pub mod append;
pub mod copy;
pub mod expunge;
pub mod fetch;
pub mod list;
pub mod mailbox;
pub mod resync;
pub mod search;
pub mod select;
pub mod sort;
pub mod status;
pub mod store;

use imap_types::command::CommandBody;
use imap_types::core::{QuotedChar, Tag};
use imap_types::extensions::enable::CapabilityEnable;
use imap_types::extensions::namespace::Namespace;
use imap_types::response::Data;

use super::code;
use super::core::{Authed, Ctx, Flow, Job, Next};
use super::names::BadName;
use super::view::View;
use crate::archive::registry;
use crate::store::{SEPARATOR, StoreError};

impl Ctx {
    /// Commands of the authenticated state (also valid when a mailbox is
    /// selected, which `sel` then is).
    pub async fn authenticated(
        &mut self,
        a: &mut Authed,
        tag: Tag<'static>,
        body: CommandBody<'static>,
    ) -> (Next, Flow) {
        self.logged_in(a, None, tag, body).await
    }

    /// Commands of the selected state; the others go to `logged_in`.
    pub async fn selected(
        &mut self,
        a: &mut Authed,
        v: &mut View,
        tag: Tag<'static>,
        body: CommandBody<'static>,
    ) -> (Next, Flow, Option<Job>) {
        let next = match body {
            CommandBody::Check => {
                self.ok(&tag, None, "CHECK completed");
                Next::Stay
            }
            CommandBody::Close => self.close(a, v, &tag, true).await,
            CommandBody::Unselect => self.close(a, v, &tag, false).await,
            CommandBody::Expunge => self.expunge(a, v, &tag, None).await,
            CommandBody::ExpungeUid { sequence_set } => {
                self.expunge(a, v, &tag, Some(sequence_set)).await
            }
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                self.search(a, v, &tag, charset, criteria, uid).await;
                Next::Stay
            }
            CommandBody::Sort {
                sort_criteria,
                charset,
                search_criteria,
                uid,
            } => {
                self.sort(a, v, &tag, sort_criteria, charset, search_criteria, uid)
                    .await;
                Next::Stay
            }
            CommandBody::Thread {
                algorithm,
                charset,
                search_criteria,
                uid,
            } => {
                self.thread(a, v, &tag, algorithm, charset, search_criteria, uid)
                    .await;
                Next::Stay
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                let job = self
                    .fetch(
                        a,
                        v,
                        tag,
                        &sequence_set,
                        macro_or_item_names,
                        uid,
                        modifiers,
                    )
                    .await;
                return (Next::Stay, Flow::Continue, job.map(Job::Fetch));
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                self.store(
                    a,
                    v,
                    &tag,
                    &sequence_set,
                    kind,
                    response,
                    flags,
                    uid,
                    modifiers,
                )
                .await;
                Next::Stay
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(a, v, &tag, &sequence_set, &mailbox, uid, false)
                    .await
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => {
                self.copy(a, v, &tag, &sequence_set, &mailbox, uid, true)
                    .await
            }
            other => {
                let (next, flow) = self.logged_in(a, Some(v), tag, other).await;
                return (next, flow, None);
            }
        };
        (next, Flow::Continue, None)
    }

    async fn logged_in(
        &mut self,
        a: &mut Authed,
        mut sel: Option<&mut View>,
        tag: Tag<'static>,
        body: CommandBody<'static>,
    ) -> (Next, Flow) {
        let next = match body {
            CommandBody::StartTLS
            | CommandBody::Login { .. }
            | CommandBody::Authenticate { .. } => {
                self.bad(Some(&tag), None, "Already authenticated");
                Next::Stay
            }
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.into_inner() {
                    let qresync = matches!(&c, CapabilityEnable::Other(_))
                        && c.to_string().eq_ignore_ascii_case("QRESYNC");
                    let c = if c == CapabilityEnable::CondStore {
                        self.condstore = true;
                        c
                    } else if qresync {
                        // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                        self.condstore = true;
                        self.qresync = true;
                        match super::atom("QRESYNC") {
                            Some(a) => CapabilityEnable::from(a),
                            None => continue,
                        }
                    } else {
                        continue;
                    };
                    if !enabled.contains(&c) {
                        enabled.push(c);
                    }
                }
                self.data(Data::Enabled {
                    capabilities: enabled,
                });
                self.ok(&tag, None, "ENABLE completed");
                Next::Stay
            }
            CommandBody::Namespace => {
                self.namespace(&tag);
                Next::Stay
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => {
                self.select(a, sel.is_some(), &tag, &mailbox, false, parameters)
                    .await
            }
            CommandBody::Examine {
                mailbox,
                parameters,
            } => {
                self.select(a, sel.is_some(), &tag, &mailbox, true, parameters)
                    .await
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(a, &tag, &reference, &mailbox_wildcard, false)
                    .await;
                Next::Stay
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(a, &tag, &reference, &mailbox_wildcard, true)
                    .await;
                Next::Stay
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => {
                self.status(a, &tag, &mailbox, &item_names).await;
                Next::Stay
            }
            CommandBody::Create { mailbox } => {
                self.create(a, &tag, &mailbox).await;
                Next::Stay
            }
            CommandBody::Delete { mailbox } => self.delete(a, sel.as_deref(), &tag, &mailbox).await,
            CommandBody::Rename { from, to } => {
                self.rename(a, sel.as_deref_mut(), &tag, &from, &to).await;
                Next::Stay
            }
            CommandBody::Subscribe { mailbox } => {
                self.subscribe(a, &tag, &mailbox, true).await;
                Next::Stay
            }
            CommandBody::Unsubscribe { mailbox } => {
                self.subscribe(a, &tag, &mailbox, false).await;
                Next::Stay
            }
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                self.append(a, sel.as_deref(), &tag, &mailbox, flags, date, message)
                    .await;
                Next::Stay
            }
            other if sel.is_none() => {
                let msg = format!("{} needs a selected mailbox", other.name());
                self.bad(Some(&tag), None, &msg);
                Next::Stay
            }
            other => {
                let msg = format!("{} is not supported", other.name());
                self.bad(Some(&tag), None, &msg);
                Next::Stay
            }
        };
        (next, Flow::Continue)
    }

    pub fn id(&mut self, tag: &Tag<'_>) {
        let params = vec![
            (super::istr("name"), super::nstr(Some("tiermail"))),
            (
                super::istr("version"),
                super::nstr(Some(env!("CARGO_PKG_VERSION"))),
            ),
        ];
        self.data(Data::Id {
            parameters: Some(params),
        });
        self.ok(tag, None, "ID completed");
    }

    pub fn namespace(&mut self, tag: &Tag<'_>) {
        let personal = vec![Namespace::new(
            super::istr(""),
            QuotedChar::try_from(SEPARATOR).ok(),
        )];
        self.data(Data::Namespace {
            personal,
            other: Vec::new(),
            shared: Vec::new(),
        });
        self.ok(tag, None, "NAMESPACE completed");
    }

    /// Answers a store error as a tagged NO with the matching response code.
    pub fn store_error(&mut self, tag: &Tag<'_>, e: StoreError) {
        let (c, msg) = match &e {
            StoreError::NoSuchMailbox(_) => (Some(code("NONEXISTENT")), e.to_string()),
            StoreError::MailboxExists(_) => (Some(code("ALREADYEXISTS")), e.to_string()),
            StoreError::HasChildren(_) => (Some(code("INUSE")), e.to_string()),
            StoreError::BadName(_) => (Some(code("CANNOT")), e.to_string()),
            StoreError::TooLarge(_) => (Some(code("TOOBIG")), e.to_string()),
            StoreError::UidsExhausted(_) | StoreError::Limit(_) => {
                (Some(code("LIMIT")), e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "store error");
                (
                    Some(code("UNAVAILABLE")),
                    "Mail store unavailable, try again later".to_string(),
                )
            }
        };
        self.no(tag, c, &msg);
    }

    /// Refuses changes to the archive folders' names that the archive does
    /// not support.
    pub fn refuse_archive_name(&mut self, tag: &Tag<'_>, name: &str) -> bool {
        if registry::archive_folder(name).is_some() {
            self.no(
                tag,
                Some(code("CANNOT")),
                "Archive folders are kept by the archive agent",
            );
            return true;
        }
        false
    }

    pub fn bad_name(&mut self, tag: &Tag<'_>, e: BadName) {
        self.no(tag, Some(code("CANNOT")), &e.0);
    }

    /// The configured length and depth limits for a new mailbox name.
    pub fn within_name_limits(&self, name: &str) -> Result<(), BadName> {
        let l = &self.app.config.limits;
        super::names::within_limits(name, l.max_mailbox_name, l.max_mailbox_depth)
    }
}
