//! Local delivery of one accepted message: add the trace headers, parse the
//! header summary once, and store one copy per distinct recipient user (an
//! alias and its owner in the same transaction get one copy). Users in
//! different storage groups are written in parallel.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::server::App;
use crate::store::{Delivery, StoreError, Summary};

#[derive(Debug, Clone)]
pub struct Recipient {
    /// The address as given in RCPT (lower-cased).
    pub address: String,
    /// The account it resolved to.
    pub user: String,
}

pub struct Envelope {
    pub from: String,
    pub rcpts: Vec<Recipient>,
    pub helo: String,
    pub peer: SocketAddr,
    pub protocol: String,
}

/// `Return-Path:` and `Received:` for this envelope (RFC 5321 §4.4).
pub fn trace_headers(env: &Envelope, hostname: &str, id: &str) -> String {
    let helo: String = env
        .helo
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    let from: String = env.from.chars().filter(|c| !c.is_control()).collect();
    let mut s = format!(
        "Return-Path: <{from}>\r\nReceived: from {helo} ([{}])\r\n\tby {hostname} (tiermail) with {} id {id}",
        env.peer.ip(),
        env.protocol
    );
    if let [only] = env.rcpts.as_slice() {
        s.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    s.push_str(&format!("; {}\r\n", chrono::Utc::now().to_rfc2822()));
    s
}

fn message_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let now = chrono::Utc::now().timestamp_micros();
    format!("{now:x}.{:x}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Stores the message for every recipient; one result per recipient, in order.
/// What names an SMTP transaction across resends: its envelope sender, its
/// recipients and the message as the client sent it.
fn transaction_key(env: &Envelope, users: &[String], body: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(env.from.as_bytes());
    h.update(&[0]);
    for u in users {
        h.update(u.as_bytes());
        h.update(&[0]);
    }
    h.update(body);
    h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
}

pub async fn deliver(app: &Arc<App>, env: &Envelope, body: &[u8]) -> Vec<Result<(), String>> {
    let id = message_id();
    let mut raw = trace_headers(env, &app.config.server.hostname, &id).into_bytes();
    raw.extend_from_slice(body);
    let summary = Summary::parse(&raw);
    let raw = Arc::new(raw);
    let now = chrono::Utc::now().timestamp();

    let mut users: Vec<String> = env.rcpts.iter().map(|r| r.user.clone()).collect();
    users.sort();
    users.dedup();
    // Several recipients are stored one by one (in their own groups), so a
    // failure or a crash can leave some stored when the client hears no
    // 250 and sends the whole transaction again: its key makes that resend
    // reach only the recipients that lack it.
    let key = (users.len() > 1).then(|| transaction_key(env, &users, body));
    let mut set = tokio::task::JoinSet::new();
    for user in users {
        let store = app.store.clone();
        let d = Delivery {
            user: user.clone(),
            mailbox: "INBOX".into(),
            raw: raw.clone(),
            internal_date: now,
            flags: Vec::new(),
            summary: summary.clone(),
        };
        set.spawn(async move {
            let r = match key {
                Some(k) => store.deliver_once(d, k).await,
                None => store.deliver(d).await,
            };
            (user, r)
        });
    }
    let mut outcome: std::collections::HashMap<String, Result<(), String>> = Default::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((user, r)) => {
                if let Err(e) = &r {
                    tracing::error!(%user, error = %e, "storing message failed");
                }
                outcome.insert(user, r.map(|_| ()).map_err(|e: StoreError| e.to_string()));
            }
            Err(e) => tracing::error!(error = %e, "delivery task failed"),
        }
    }
    tracing::info!(id = %id, from = %env.from, rcpts = env.rcpts.len(), size = raw.len(), "message delivered");
    env.rcpts
        .iter()
        .map(|r| {
            outcome
                .get(&r.user)
                .cloned()
                .unwrap_or_else(|| Err("delivery task failed".into()))
        })
        .collect()
}
