//! tiermail: a mail server that keeps its live store small.
//!
//! Mail arrives over SMTP/LMTP (`smtp`), is committed to the current store
//! (`store`: storage groups of redb + write-ahead log) before it is
//! acknowledged, and is served to clients. `server` wires listeners, the
//! users directory (`auth`), TLS (`tls`) and shutdown together; `control`
//! answers the CLI on a local socket. See docs/ARCHITECTURE.md for the map.

// Input from the network or disk must never panic: no unwrap outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod archive;
pub mod auth;
pub mod background;
pub mod backup;
pub mod config;
pub mod control;
pub mod corpus;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod imap;
pub mod inflight;
pub mod net;
pub mod scheduler;
pub mod server;
pub mod smtp;
// The one module that may touch redb and body segments (clippy.toml).
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
pub mod store;
pub mod tls;
