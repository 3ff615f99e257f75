//! What every protocol session needs from the network layer: a client
//! connection that is plain TCP or TLS (so that a session can upgrade
//! itself in place on STARTTLS without changing its type), a clock for
//! the command being received (so that a client trickling bytes cannot
//! hold a session open), and the per-IP count of connections that have not
//! logged in (so that one address cannot take every slot).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// An in-process stream (fuzzing and tests drive sessions over it); it
    /// cannot upgrade to TLS.
    Memory(tokio::io::DuplexStream),
    /// Only while an upgrade is under way.
    Upgrading,
}

/// A TLS handshake (implicit TLS or STARTTLS) must be done within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server side of a TLS handshake, within [`TLS_HANDSHAKE_TIMEOUT`].
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Runs the TLS handshake on a plain connection (bounded in time).
    pub async fn start_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        match std::mem::replace(self, Conn::Upgrading) {
            Conn::Plain(tcp) => {
                let tls = accept_tls(acceptor, tcp).await?;
                *self = Conn::Tls(Box::new(tls));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::other("connection is already TLS"))
            }
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "connection lost during TLS upgrade",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Memory(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Memory(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Memory(s) => Pin::new(s).poll_flush(cx),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Memory(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

/// Times the command being received: it must be whole within a timeout of
/// its first byte, plus one second for every `per_second` bytes it has sent
/// (a big message on a slow link is not cut off; a client that trickles a
/// byte now and then is).
#[derive(Debug, Default, Clone)]
pub struct CommandClock {
    started: Option<Instant>,
    received: u64,
}

impl CommandClock {
    /// Bytes of a command arrived (the first ones start the clock).
    pub fn received(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.received = 0;
        }
        self.received = self.received.saturating_add(n as u64);
    }

    /// A command ended; `buffered` bytes of the next one are already here.
    pub fn done(&mut self, buffered: usize) {
        self.started = None;
        self.received = 0;
        self.received(buffered);
    }

    pub fn running(&self) -> bool {
        self.started.is_some()
    }

    /// `None` while no command is being received.
    pub fn deadline(&self, timeout: Duration, per_second: u64) -> Option<Instant> {
        let start = self.started?;
        let extra = self.received / per_second.max(1);
        Some(start + timeout + Duration::from_secs(extra))
    }
}

/// A command earns one more second for every this many bytes it sends.
pub const BYTES_PER_EXTRA_SECOND: u64 = 16 * 1024;

/// Connections per client IP that have not authenticated yet.
#[derive(Debug)]
pub struct PeerLimits {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerLimits {
    pub fn new(max: usize) -> Arc<PeerLimits> {
        Arc::new(PeerLimits {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when that address
    /// has `max` unauthenticated connections already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            limits: Some(self.clone()),
            ip,
        })
    }

    /// Unauthenticated connections from `ip` right now.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&ip);
            }
        }
    }
}

/// One unauthenticated connection counted against its IP, until it logs
/// in ([`PeerSlot::authenticated`]) or ends.
#[derive(Debug)]
pub struct PeerSlot {
    limits: Option<Arc<PeerLimits>>,
    ip: IpAddr,
}

impl PeerSlot {
    /// A slot that counts nowhere (listeners exempt from the limit).
    pub fn exempt(ip: IpAddr) -> PeerSlot {
        PeerSlot { limits: None, ip }
    }

    /// The connection logged in: it no longer counts.
    pub fn authenticated(&mut self) {
        if let Some(l) = self.limits.take() {
            l.release(self.ip);
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        self.authenticated();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_slots_count_until_login_or_close() {
        let limits = PeerLimits::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limits.admit(ip).unwrap();
        let mut b = limits.admit(ip).unwrap();
        assert!(limits.admit(ip).is_none(), "third from one address");
        let _c = limits.admit(other).expect("other addresses are served");
        b.authenticated();
        let _d = limits.admit(ip).expect("a login frees its slot");
        drop(a);
        assert_eq!(limits.count(ip), 1);
        drop(b);
        assert_eq!(limits.count(ip), 1, "an authenticated slot counted once");
    }

    #[test]
    fn command_clock() {
        let mut c = CommandClock::default();
        assert!(c.deadline(Duration::from_secs(5), 10).is_none());
        c.received(3);
        let d = c.deadline(Duration::from_secs(5), 10).unwrap();
        c.received(25);
        assert_eq!(
            c.deadline(Duration::from_secs(5), 10).unwrap(),
            d + Duration::from_secs(2)
        );
        c.done(0);
        assert!(!c.running());
        c.done(4);
        assert!(c.running());
    }
}
