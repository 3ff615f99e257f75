//! The IMAP server (RFC 3501 with LITERAL+, SASL-IR, ENABLE, IDLE,
//! NAMESPACE, ID, UNSELECT, UIDPLUS, MOVE, CONDSTORE, QRESYNC, BINARY,
//! STATUS=SIZE, SORT, SORT=DISPLAY, LIST-EXTENDED,
//! LIST-STATUS, SPECIAL-USE, CHILDREN).
//!
//! A connection is a protocol core (`core`: framing, the typed state,
//! dispatch to the handlers in `cmd/`, the outbox) driven by a thin tokio
//! loop (`driver`). Commands are framed by `framing` around imap-codec's
//! `Fragmentizer` and decoded and encoded by imap-codec; nothing here writes
//! IMAP syntax by hand. A session keeps its own view of the selected mailbox
//! (`view`) and reconciles it with the store whenever the store says the
//! user's mail changed (`updates`), sending EXISTS, EXPUNGE and FETCH FLAGS
//! only where RFC 3501 allows them.

pub mod archive_folder;
pub mod cmd;
pub mod core;
pub mod driver;
pub mod framing;
pub mod list_extended;
pub mod mime;
pub mod names;
pub mod outbox;
pub mod search;
pub mod sort;
pub mod uidset;
pub mod updates;
pub mod view;

use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder;
use imap_types::core::{Atom, IString, NString};
use imap_types::response::{Code, CodeOther, Response};

/// Runs CPU-heavy work (text search, parsing large messages) on the
/// blocking pool, at most one job per spare core at a time, so that a few
/// clients asking for expensive work never starve the async threads that
/// serve everyone else. `None` if the job panicked.
pub async fn heavy<T: Send + 'static>(
    app: &crate::server::App,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let _permit = app.heavy.acquire().await.ok()?;
    tokio::task::spawn_blocking(job).await.ok()
}

/// Encodes one response.
pub fn encode(out: &mut Vec<u8>, response: &Response<'_>) {
    out.extend_from_slice(&ResponseCodec::default().encode(response).dump());
}

/// A response code imap-types has no variant for (`NONEXISTENT`, `LIMIT`...).
pub fn code(name: &'static str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(name.as_bytes()))
}

/// An IMAP string for any bytes: quoted when possible, else a literal.
pub fn istr(s: impl Into<Vec<u8>>) -> IString<'static> {
    let v: Vec<u8> = s.into();
    IString::try_from(v).unwrap_or_else(|_| {
        // Only NUL bytes make a literal invalid; they cannot be expressed.
        IString::try_from("").expect("empty string")
    })
}

/// `NIL` for `None` or an empty value, else the string.
pub fn nstr(s: Option<&str>) -> NString<'static> {
    match s {
        Some(v) if !v.is_empty() => NString(Some(istr(v.as_bytes().to_vec()))),
        _ => NString(None),
    }
}

pub fn nbytes(b: &[u8]) -> NString<'static> {
    NString(Some(istr(b.to_vec())))
}

/// An atom, or `None` when `s` is not a valid atom.
pub fn atom(s: &str) -> Option<Atom<'static>> {
    Atom::try_from(s.to_string()).ok()
}

/// Text for a status line: never empty, no CR/LF.
pub fn text(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if t.trim().is_empty() {
        "done".to_string()
    } else {
        t
    }
}
