//! Wiring: opens the store and users directory, binds every listener, runs
//! accept loops under one cancellation token and task tracker, and shuts
//! down in order (stop accepting, let sessions finish within the grace
//! period, checkpoint every storage group).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Directory, Throttle};
use crate::config::{Config, parse_listen};
use crate::imap::driver::{Kind as ImapKind, Session as ImapSession};
use crate::net::Conn;
use crate::smtp::Mode;
use crate::smtp::session::Session;
use crate::store::Store;

/// What every session shares.
pub struct App {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub users: Arc<Directory>,
    pub throttle: Throttle,
    pub tls: Option<TlsAcceptor>,
    pub started: Instant,
    pub archive: crate::archive::agent::Activity,
    pub archives: Arc<crate::archive::registry::Archives>,
    pub backup: crate::backup::agent::BackupAgent,
    /// Unauthenticated connections per client IP.
    pub peers: Arc<crate::net::PeerLimits>,
    /// Memory for messages being received, over all sessions.
    pub inflight: crate::inflight::Budget,
    /// Turns for CPU-heavy session work (see `imap::heavy`).
    pub heavy: tokio::sync::Semaphore,
}

/// The addresses the listeners actually bound (port 0 resolved).
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub smtp: Option<SocketAddr>,
    pub submission: Option<SocketAddr>,
    pub submissions: Option<SocketAddr>,
    pub lmtp: Option<SocketAddr>,
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Smtp(Mode),
    Imap(ImapKind),
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Smtp(m) => m.name(),
            Service::Imap(ImapKind::Plain) => "imap",
            Service::Imap(ImapKind::Tls) => "imaps",
        }
    }

    fn implicit_tls(self) -> bool {
        matches!(
            self,
            Service::Smtp(Mode::Submissions) | Service::Imap(ImapKind::Tls)
        )
    }

    /// What a client over the connection limit is told before the close.
    fn busy_reply(self) -> &'static [u8] {
        match self {
            Service::Smtp(_) => b"421 4.3.2 Too many connections, try again later\r\n",
            Service::Imap(_) => b"* BYE Too many connections, try again later\r\n",
        }
    }

    /// ...and a client whose address has too many connections not logged in.
    fn busy_ip_reply(self) -> &'static [u8] {
        match self {
            Service::Smtp(_) => {
                b"421 4.7.0 Too many connections from your address, try again later\r\n"
            }
            Service::Imap(_) => {
                b"* BYE Too many connections from your address, try again later\r\n"
            }
        }
    }

    /// LMTP comes from a fronting MTA, which opens as many connections as
    /// it delivers in parallel: it is not limited per address.
    fn limited_per_ip(self) -> bool {
        !matches!(self, Service::Smtp(Mode::Lmtp))
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        write!(
            f,
            "smtp={} submission={} submissions={} lmtp={} imap={} imaps={}",
            show(self.smtp),
            show(self.submission),
            show(self.submissions),
            show(self.lmtp),
            show(self.imap),
            show(self.imaps)
        )
    }
}

pub struct Server {
    pub app: Arc<App>,
    pub bound: Bound,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    pub async fn start(mut config: Config) -> anyhow::Result<Server> {
        config.store.hold_wal_for_backup = !config.backup.targets.is_empty();
        let config = Arc::new(config);
        let tls = Some(crate::tls::acceptor(&config.tls)?);
        let users = Directory::open(&config.users.file)?;
        let data_dir = config.server.data_dir.clone();
        let store_cfg = config.store.clone();
        let store =
            tokio::task::spawn_blocking(move || Store::open(&data_dir, &store_cfg)).await??;
        // The default archive root lives in the data directory and is made
        // here; a root elsewhere (a NAS) must exist already.
        if config.archive.root.starts_with(&config.server.data_dir) {
            std::fs::create_dir_all(&config.archive.root).map_err(|e| {
                anyhow::anyhow!("cannot create {}: {e}", config.archive.root.display())
            })?;
        }
        // Likewise backup targets inside the data directory; a target
        // elsewhere that is missing (an unmounted share) is reported by
        // each backup, never created on the wrong disk.
        for t in &config.backup.targets {
            if t.starts_with(&config.server.data_dir) {
                std::fs::create_dir_all(t)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", t.display()))?;
            }
        }
        let app = Arc::new(App {
            throttle: Throttle::new(
                config.limits.max_auth_failures,
                Duration::from_secs(config.limits.auth_throttle_secs),
                config.limits.max_auth_checks_per_ip,
            ),
            config: config.clone(),
            store,
            users: users.clone(),
            tls,
            started: Instant::now(),
            peers: crate::net::PeerLimits::new(config.limits.max_unauthenticated_per_ip),
            inflight: crate::inflight::Budget::new(config.limits.max_inflight_mib),
            heavy: tokio::sync::Semaphore::new(
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1),
            ),
            archive: Default::default(),
            backup: Default::default(),
            archives: Arc::new(
                crate::archive::registry::Archives::new(&config.archive).with_overrides({
                    let users = users.clone();
                    Arc::new(move |u: &str| users.snapshot().get(u).and_then(|x| x.archive.clone()))
                }),
            ),
        });
        // Archive moves a crash interrupted are finished before anyone can
        // see a message in two places. An unavailable archive root only
        // delays that; it never stops the server.
        if let Err(e) =
            crate::archive::agent::reconcile(&app.store, &app.archives, &app.config.archive).await
        {
            tracing::warn!(error = %e, "could not finish interrupted archive moves; will retry on the next run");
        }
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(config.limits.max_connections));
        let mut bound = Bound::default();
        for (key, value, service) in [
            ("smtp.listen", &config.smtp.listen, Service::Smtp(Mode::Mx)),
            (
                "smtp.submission_listen",
                &config.smtp.submission_listen,
                Service::Smtp(Mode::Submission),
            ),
            (
                "smtp.submissions_listen",
                &config.smtp.submissions_listen,
                Service::Smtp(Mode::Submissions),
            ),
            (
                "smtp.lmtp_listen",
                &config.smtp.lmtp_listen,
                Service::Smtp(Mode::Lmtp),
            ),
            (
                "imap.listen",
                &config.imap.listen,
                Service::Imap(ImapKind::Plain),
            ),
            (
                "imap.tls_listen",
                &config.imap.tls_listen,
                Service::Imap(ImapKind::Tls),
            ),
        ] {
            let Some(addr) = parse_listen(key, value)? else {
                continue;
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))?;
            let local = listener.local_addr()?;
            let slot = match service {
                Service::Smtp(Mode::Mx) => &mut bound.smtp,
                Service::Smtp(Mode::Submission) => &mut bound.submission,
                Service::Smtp(Mode::Submissions) => &mut bound.submissions,
                Service::Smtp(Mode::Lmtp) => &mut bound.lmtp,
                Service::Imap(ImapKind::Plain) => &mut bound.imap,
                Service::Imap(ImapKind::Tls) => &mut bound.imaps,
            };
            *slot = Some(local);
            tracing::info!(listener = service.name(), addr = %local, "listening");
            tracker.spawn(accept_loop(
                app.clone(),
                listener,
                service,
                token.clone(),
                tracker.clone(),
                limit.clone(),
            ));
        }
        tracker.spawn(watch_users(app.clone(), token.clone()));
        spawn_activity(
            &tracker,
            &token,
            &app,
            "archive",
            app.config.archive.schedule(),
            None,
            |app, next| app.archive.set_next(next),
            archive_activity,
        );
        spawn_activity(
            &tracker,
            &token,
            &app,
            "backup",
            app.config.backup.schedule(),
            // An `every` schedule counts from the newest backup.
            crate::backup::drill::latest(&app.config.backup.targets)
                .and_then(|p| crate::backup::target::started_at(&p)),
            |app, next| app.backup.set_next(next),
            backup_activity,
        );
        spawn_activity(
            &tracker,
            &token,
            &app,
            "drill",
            app.config.backup.drill_schedule(),
            None,
            |app, next| app.backup.set_next_drill(next),
            drill_activity,
        );
        spawn_activity(
            &tracker,
            &token,
            &app,
            "reclaim",
            app.config.store.reclaim_schedule(),
            None,
            |_, _| {},
            reclaim_activity,
        );
        tracker.spawn(crate::control::serve(app.clone(), token.clone()));
        Ok(Server {
            app,
            bound,
            token,
            tracker,
        })
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Stops accepting, waits for sessions (up to the grace period), then
    /// checkpoints and closes the store.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.app.backup.cancel();
        self.token.cancel();
        self.tracker.close();
        let grace = Duration::from_secs(self.app.config.server.shutdown_grace_secs);
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "sessions still running after the grace period; closing the store anyway"
            );
        }
        let store = self.app.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        let _ = std::fs::remove_file(crate::control::socket_path(&self.app.config));
        tracing::info!("stopped");
    }
}

/// Runs one background activity on its schedule until shutdown.
#[allow(clippy::too_many_arguments)]
fn spawn_activity<Fut>(
    tracker: &TaskTracker,
    token: &CancellationToken,
    app: &Arc<App>,
    name: &'static str,
    schedule: crate::scheduler::Schedule,
    last_start: Option<chrono::DateTime<chrono::Utc>>,
    set_next: fn(&App, Option<chrono::DateTime<chrono::Utc>>),
    run: fn(Arc<App>) -> Fut,
) where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let app = app.clone();
    let stop = token.clone();
    tracker.spawn(async move {
        crate::scheduler::drive(
            name,
            schedule,
            stop,
            last_start,
            |next| set_next(&app, next),
            || run(app.clone()),
        )
        .await;
    });
}

async fn archive_activity(app: Arc<App>) {
    let cfg = Arc::new(app.config.archive.clone());
    if let Err(e) = app
        .archive
        .run_once(app.store.clone(), app.archives.clone(), cfg)
        .await
    {
        tracing::warn!(error = %e, "scheduled archive run did not run");
    }
}

async fn backup_activity(app: Arc<App>) {
    let cfg = Arc::new(app.config.backup.clone());
    let started = std::time::Instant::now();
    if let Err(e) = app
        .backup
        .run_once(
            app.store.clone(),
            cfg.clone(),
            crate::backup::session::Mode::Auto,
        )
        .await
    {
        tracing::warn!(error = %e, "scheduled backup did not complete");
    }
    // Continuous backups are incremental and cheap, but each is a file
    // a restore reads: no more than one per `continuous_interval`.
    if cfg.schedule() == crate::scheduler::Schedule::Continuous {
        let gap = cfg.continuous_interval();
        if let Some(rest) = gap.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

async fn reclaim_activity(app: Arc<App>) {
    if let Err(e) = app
        .store
        .reclaim(app.config.store.reclaim_dead_percent)
        .await
    {
        tracing::warn!(error = %e, "body segment reclaim failed");
    }
}

async fn drill_activity(app: Arc<App>) {
    // The outcome is logged and kept for status by the agent.
    let _ = app
        .backup
        .drill_once(&app.config.backup, &app.config.server.data_dir, None)
        .await;
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    service: Service,
    token: CancellationToken,
    tracker: TaskTracker,
    limit: Arc<Semaphore>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = token.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let slot = if service.limited_per_ip() {
            app.peers.admit(peer.ip())
        } else {
            Some(crate::net::PeerSlot::exempt(peer.ip()))
        };
        let (permit, slot) = match (limit.clone().try_acquire_owned(), slot) {
            (Ok(p), Some(s)) => (p, s),
            (permit, slot) => {
                let reply = if slot.is_none() {
                    tracing::info!(%peer, listener = service.name(), "too many unauthenticated connections from this address");
                    service.busy_ip_reply()
                } else {
                    service.busy_reply()
                };
                drop(permit);
                tracker.spawn(refuse(tcp, service, reply));
                continue;
            }
        };
        let app = app.clone();
        let token = token.child_token();
        tracker.spawn(async move {
            let _permit = permit;
            let conn = if service.implicit_tls() {
                let Some(acceptor) = app.tls.clone() else {
                    return;
                };
                match crate::net::accept_tls(&acceptor, tcp).await {
                    Ok(tls) => Conn::Tls(Box::new(tls)),
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake failed");
                        return;
                    }
                }
            } else {
                Conn::Plain(tcp)
            };
            // A panic in one session ends that session alone: tokio keeps it
            // inside the task, and the log says where it happened.
            let session = tokio::spawn(async move {
                match service {
                    Service::Smtp(mode) => {
                        Session::new(app, mode, peer, conn, slot, token).run().await
                    }
                    Service::Imap(kind) => {
                        ImapSession::new(app, kind, peer, conn, slot, token)
                            .run()
                            .await
                    }
                }
            });
            if let Err(e) = session.await
                && e.is_panic()
            {
                tracing::error!(%peer, listener = service.name(), "session panicked; other sessions are not affected");
            }
        });
    }
}

/// Tells a client over a limit so (except on implicit TLS, where nothing
/// can be said before a handshake) and closes.
async fn refuse(tcp: tokio::net::TcpStream, service: Service, reply: &'static [u8]) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tcp;
    if !service.implicit_tls() {
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(reply)).await;
    }
    let _ = tcp.shutdown().await;
}

/// Reloads the users file when it changes (polled each second) or on SIGHUP.
async fn watch_users(app: Arc<App>, token: CancellationToken) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = token.cancelled() => return,
        };
        let result = if forced {
            Some(app.users.reload())
        } else {
            app.users.reload_if_changed()
        };
        match result {
            Some(Ok(n)) => tracing::info!(users = n, "users file reloaded"),
            Some(Err(e)) => {
                tracing::error!(error = %e, "users file not reloaded; keeping the previous users")
            }
            None => {}
        }
    }
}
