//! The tokio side of an IMAP connection: moves bytes between the socket and
//! the protocol core (`imap::core`) and waits — for input (with the core's
//! deadline), for the user's mail to change while in IDLE, or for shutdown.
//! It holds no lock and no store operation while it writes, and a client
//! that stops reading is given `WRITE_TIMEOUT` before the connection is
//! dropped, so unread output cannot pile up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use super::core::Kind;
use super::core::{Core, Flow};
use crate::net::Conn;
use crate::server::App;

const READ_CHUNK: usize = 16 * 1024;
/// Output is written once this much is ready (large FETCHes stream).
pub const FLUSH_AT: usize = 256 * 1024;
/// A client must take what is written within this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Session {
    core: Core,
    conn: Conn,
    token: CancellationToken,
}

impl Session {
    pub fn new(
        app: Arc<App>,
        kind: Kind,
        peer: SocketAddr,
        conn: Conn,
        slot: crate::net::PeerSlot,
        token: CancellationToken,
    ) -> Session {
        let tls = conn.is_tls();
        Session {
            core: Core::new(app, kind, peer, tls, slot),
            conn,
            token,
        }
    }

    pub async fn run(mut self) {
        if let Err(e) = self.serve().await {
            tracing::debug!(peer = %self.core.ctx.peer, error = %e, "imap session ended");
        }
        let _ = self.conn.shutdown().await;
    }

    async fn write(&mut self) -> std::io::Result<()> {
        let out = self.core.take_output();
        if out.is_empty() {
            return Ok(());
        }
        let written = async {
            self.conn.write_all(&out).await?;
            self.conn.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, written).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client does not read its responses",
            )),
        }
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        self.core.greeting();
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            // Work through everything already received.
            while let Some(flow) = self.core.step().await {
                match flow {
                    Flow::Continue => {
                        if self.core.output_len() >= FLUSH_AT {
                            self.write().await?;
                        }
                        if self.core.too_many_errors() {
                            self.core.bye("Too many invalid commands");
                            return self.write().await;
                        }
                    }
                    Flow::Close => return self.write().await,
                    Flow::StartTls => {
                        self.write().await?;
                        // Anything pipelined in the clear after STARTTLS is dropped.
                        self.core.discard_input();
                        let Some(acceptor) = self.core.ctx.app.tls.clone() else {
                            return Ok(());
                        };
                        self.conn.start_tls(&acceptor).await?;
                        self.core.tls_started();
                    }
                }
            }
            self.write().await?;
            let idle = self.core.idling();
            let (deadline, why) = self.core.deadline();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.conn.read(&mut chunk)) => match r {
                    Ok(r) => Some(r?),
                    Err(_) => {
                        self.core.bye(why);
                        return self.write().await;
                    }
                },
                _ = changed(self.core.changes()), if idle => None,
                _ = self.token.cancelled() => {
                    self.core.bye("Server shutting down");
                    return self.write().await;
                }
            };
            match read {
                // The user's mail changed during IDLE (the change is marked
                // seen by `changed`): report it now.
                None => {
                    self.core.idle_update().await;
                    // A large change goes out in rounds, each written
                    // before the next is made.
                    while self.core.idling() && self.core.has_unreported() {
                        self.write().await?;
                        self.core.idle_update().await;
                    }
                }
                Some(0) => return Ok(()),
                Some(n) => self.core.feed(&chunk[..n]),
            }
        }
    }
}

async fn changed(rx: Option<&mut watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
