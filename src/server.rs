//! Wiring: opens the stores, bootstraps the first admin, starts the audit
//! writer, binds the gateway and admin listeners, and shuts all of it down
//! in the right order (stop accepting → finish requests → commit events).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::audit::AuditPipeline;
use crate::config::Config;
use crate::control::{ControlPlane, FirstAdmin};
use crate::settings::retention::RetentionPolicy;
use crate::gateway::{self, Gateway};
use crate::store::control::ControlStore;

/// Name of the file the generated first admin token is written to.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-admin-token";

/// How the first admin came to be, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Admins already existed; nothing was created.
    Existing,
    /// The owner's token is the operator's `KEYTRAIL_BOOTSTRAP_TOKEN`.
    FromEnvironment,
    /// A token was generated and written to this file (mode 0600).
    Generated(PathBuf),
}

/// How long requests under way at shutdown may take to finish, on either
/// listener, before their connections are cut off.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// How often keys' last uses are written to the control store.
const KEY_USAGE_FLUSH: Duration = Duration::from_secs(5);

/// Writes keys' last uses to the control store (SQLite: off the async threads).
async fn flush_key_usage(control: Arc<ControlPlane>) {
    match tokio::task::spawn_blocking(move || control.flush_key_usage()).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "could not record keys' last use"),
        Err(error) => tracing::warn!(%error, "key usage flush failed"),
    }
}

/// The retention task's wiring: archives, deletes expired archives and
/// drops archived day files ([`crate::store::audit::retention`]) with the
/// clock, and records what it did in each tenant's trail.
struct Retention {
    audit_dir: PathBuf,
    archive_dir: PathBuf,
    control: Arc<ControlPlane>,
    audit: Arc<AuditPipeline>,
    signer: Arc<crate::signing::Signer>,
    zstd_level: i32,
}

/// How soon retention tries again when another process (a `keytrail
/// archive restore`, a verify, another server's erasure) held the audit
/// directory past [`crate::store::audit::retention::RETENTION_WAIT`],
/// rather than at the next interval.
const RETENTION_RETRY: Duration = Duration::from_secs(30);

impl Retention {
    /// One run; `false` when the audit directory was held by another
    /// process throughout the wait, so nothing was done and the run is
    /// worth trying again soon.
    async fn run(&self) -> bool {
        // What a run before left unrecorded (the process stopped first),
        // before this run archives the days those events are in.
        self.record_journal().await;
        let done = self.run_once().await;
        self.record_journal().await;
        done
    }

    /// Records retention's events the journal in `meta.db` holds
    /// ([`crate::store::audit::retention::unrecorded`]), and takes them out
    /// of it once they are committed; those not committed (the pipeline
    /// stopping) stay for the next start.
    async fn record_journal(&self) {
        use crate::store::audit::retention;
        let dir = self.audit_dir.clone();
        let pending = match tokio::task::spawn_blocking(move || retention::unrecorded(&dir)).await.map_err(|e| e.to_string()) {
            Ok(Ok(pending)) => pending,
            Ok(Err(error)) => {
                tracing::error!(%error, "retention: cannot read the events it has not recorded yet");
                return;
            }
            Err(error) => {
                tracing::error!(%error, "retention: cannot read the events it has not recorded yet");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let mut waiting = Vec::new();
        for (key, event) in pending {
            match self.audit.record_committed(event) {
                Some(committed) => waiting.push((key, committed)),
                None => break,
            }
        }
        let mut recorded = Vec::new();
        for (key, committed) in waiting {
            if committed.await.is_ok() {
                recorded.push(key);
            }
        }
        let dir = self.audit_dir.clone();
        match tokio::task::spawn_blocking(move || retention::forget_recorded(&dir, &recorded)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "retention: cannot take recorded events out of its journal"),
            Err(error) => tracing::error!(%error, "retention: cannot take recorded events out of its journal"),
        }
    }

    /// One run of retention itself.
    async fn run_once(&self) -> bool {
        let policy = match self.control.retention_policy() {
            Ok(policy) => RetentionPolicy { zstd_level: self.zstd_level, ..policy },
            Err(error) => {
                tracing::error!(%error, "retention: cannot read the retention settings");
                return true;
            }
        };
        let (audit_dir, archive_dir, signer) = (self.audit_dir.clone(), self.archive_dir.clone(), self.signer.clone());
        let now = crate::event::now_ms();
        let done = tokio::task::spawn_blocking(move || crate::store::audit::retention::run(&audit_dir, &archive_dir, &policy, now, &signer)).await;
        match done {
            Ok(Ok(report)) => {
                if let Some(waited) = &report.waited {
                    tracing::info!(waited_ms = waited.ms, holder = %waited.holder, "retention waited for the audit directory");
                }
                // Its events are in the journal, recorded by the caller.
                for problem in &report.problems {
                    tracing::error!(problem = %problem, "retention");
                }
                if !report.actions.is_empty() || !report.problems.is_empty() {
                    tracing::info!(summary = %report.summary(), "retention ran");
                }
            }
            Ok(Err(crate::store::StoreError::Busy(why))) => {
                tracing::warn!(%why, "retention did not run; it tries again in {} s", RETENTION_RETRY.as_secs());
                return false;
            }
            Ok(Err(error)) => tracing::error!(%error, "retention failed; it runs again at the next interval"),
            Err(error) => tracing::error!(%error, "retention task failed"),
        }
        true
    }
}

/// Writes `lines` to stdout, for whoever reads it, and flushes: what
/// `keytrail serve` and `keytrail demo` say as they start and stop. A
/// stdout nobody reads any more (`keytrail demo | head -1`) must not stop
/// a process that is serving, as `println!`'s panic would: the failure is
/// logged once, as a warning with `instead` (never with `lines`, which may
/// hold a key), and the caller goes on.
pub fn announce(lines: &str, instead: &str) {
    use std::io::Write;
    static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(lines.as_bytes()).and_then(|()| stdout.flush()) {
        if !FAILED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!("cannot print to stdout ({error}); {instead}");
        }
    }
}

/// A running keytrail: both listeners, the control plane and the audit pipeline.
pub struct Server {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub control: Arc<ControlPlane>,
    pub audit: Arc<AuditPipeline>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The data directory's lock, held while the server lives.
    _lock: std::fs::File,
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a secret to a file only its owner can read.
fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    Ok(())
}

/// The file a running keytrail holds locked in its data directory.
const LOCK_FILE: &str = "keytrail.lock";

/// Holds the data directory for this process (an exclusive lock, let go
/// when the process ends however it ends): a second keytrail on it would
/// number events the first already numbered, and its commits would fail
/// for ever.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the data directory {} is in use by another keytrail; stop that one first, or give this one another --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => Err(error).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Serves the admin API until shutdown. Each connection is hyper's HTTP/1.1
/// server with the caller's address (`ConnectInfo`, which the sign-in
/// throttle counts by and the admin log records: the socket's peer, or,
/// when that is one of `proxies`, the nearest untrusted hop of its
/// `X-Forwarded-For`) and a head timeout: a connection that has not sent a
/// whole request head within `head_timeout` — a new one, one trickling its
/// head a byte at a time, or a kept one idle after its call — is closed
/// unanswered, so a client with no token cannot hold sockets and tasks for
/// ever.
///
/// At shutdown idle connections close at once and calls under way get
/// [`SHUTDOWN_DRAIN`] to finish; the connections still open after it
/// (requests under way, or heads still coming) are cut off, as the
/// gateway's are. Then the changes still running are waited for: each runs
/// to its end on a task of its own, and its events go in before the audit
/// writer stops.
async fn serve_admin(
    listener: TcpListener,
    app: axum::Router,
    head_timeout: Duration,
    proxies: crate::protection::TrustedProxies,
    mut shutdown: watch::Receiver<bool>,
    state: AdminState,
) {
    let proxies = Arc::new(proxies);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let app = hyper_util::service::TowerToHyperService::new(app);
    loop {
        tokio::select! {
            (stream, peer) = crate::listen::accept(&listener, "admin API") => {
                let (app, proxies) = (app.clone(), proxies.clone());
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let mut req = req.map(|body| IdleBody { inner: body, idle: head_timeout, timer: None, stalled: stalled.clone() });
                    let caller = proxies.client_ip(peer.ip(), || {
                        req.headers().get_all(proxies.header_name()).iter().filter_map(|v| v.to_str().ok())
                    });
                    req.extensions_mut().insert(axum::extract::ConnectInfo(SocketAddr::new(caller, peer.port())));
                    let call = hyper::service::Service::call(&app, req);
                    async move {
                        let response = match call.await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        };
                        // A body that stopped coming: the connection is closed
                        // unanswered, as for a head that did.
                        if stalled.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(BodyStalled);
                        }
                        Ok(response)
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    crate::listen::drain(graceful, &mut connections, SHUTDOWN_DRAIN, "admin API").await;
    state.changes_finished().await;
}

/// An admin request's body stopped coming within the head timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped coming")]
struct BodyStalled;

/// An admin request's body, with `idle` as the most it may wait for more
/// of it (the head timeout: a client cannot hold a connection by sending a
/// whole head and then its body a byte at a time, or not at all). The timer
/// is made only when a read finds nothing ready; a read that finds data
/// starts the wait afresh.
struct IdleBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Set when the wait ran out, for the connection to be closed unanswered.
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for IdleBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.stalled.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A listener that cannot be bound, saying which setting picks another
/// address when the address is taken or not this machine's.
fn cannot_listen(error: std::io::Error, addr: std::net::SocketAddr, what: &str, setting: &str) -> anyhow::Error {
    let hint = match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(" (another program, or another keytrail, listens there: pick another address with {setting}; port 0 picks a free one)"),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::PermissionDenied => format!(" (pick another address with {setting})"),
        _ => String::new(),
    };
    anyhow::Error::new(error).context(format!("cannot listen on {addr} for {what}{hint}"))
}

/// Starts keytrail with `config`; returns once both listeners are bound.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    // The listeners and the country data first: a start that cannot have
    // them creates nothing (no first admin whose token file would then go
    // unannounced on the next start).
    let gateway_listener = TcpListener::bind(config.gateway.listen).await.map_err(|e| {
        cannot_listen(e, config.gateway.listen, "the gateway", "--gateway-listen, KEYTRAIL_GATEWAY_LISTEN or gateway.listen")
    })?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| cannot_listen(e, config.admin_listen, "the admin API", "--admin-listen, KEYTRAIL_ADMIN_LISTEN or admin.listen"))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let geo = crate::protection::Countries::load(config.gateway.geo_table.as_deref(), config.gateway.geo_database.as_deref())
        .map_err(crate::config::ConfigError::Invalid)?;
    // A directory setting naming a file is a bad setting, said before
    // anything is created (create_dir_all says only "File exists").
    for (setting, dir) in [("data_dir (--data-dir, KEYTRAIL_DATA_DIR)", &config.data_dir), ("retention.archive_dir", &config.retention.archive_dir)] {
        if dir.exists() && !dir.is_dir() {
            return Err(crate::config::ConfigError::Invalid(format!("{setting}: {} is not a directory; give a directory (it is created if missing)", dir.display())).into());
        }
    }

    create_private_dir(&config.data_dir)?;
    let lock = lock_data_dir(&config.data_dir)?;
    if let Some(token) = &config.bootstrap_token {
        crate::redact::register_secret(token);
    }
    let key_path = config.data_dir.join(crate::signing::KEY_FILE);
    let signer = crate::signing::Signer::load_or_create(&key_path)
        .with_context(|| format!("cannot read or create the signing key {}", key_path.display()))?;
    let public_key = signer.public_key();
    let audit = Arc::new(
        AuditPipeline::start_signed(config.data_dir.join("audit"), &config.audit, Some(signer))
            .context("cannot open the audit store")?,
    );
    // Retention and erasure rewrite signed archives.
    let retention_signer = Arc::new(
        crate::signing::Signer::load_or_create(&key_path).with_context(|| format!("cannot read the signing key {}", key_path.display()))?,
    );
    audit.commit_when_runtime_idle();
    let store = ControlStore::open(&config.data_dir.join("control.db")).context("cannot open the control store")?;
    let control = Arc::new(
        ControlPlane::open(store, audit.clone())
            .context("cannot load the control store")?
            .with_key_hasher(config.key_hasher.clone())
            .context("cannot load the control store")?
            .with_upstream_guard(crate::protection::UpstreamGuard::new(config.gateway.upstream_deny.clone(), vec![gateway_addr, admin_addr]))
            .with_retention_defaults(config.retention.defaults)
            .with_login_limits(&config.login)
            .with_erasure(crate::control::ErasureSettings {
                archive_dir: config.retention.archive_dir.clone(),
                archive_level: config.retention.archive_zstd_level,
                signer: retention_signer.clone(),
            })
            .with_alert_signer(retention_signer.clone()),
    );

    let token_path = config.data_dir.join(BOOTSTRAP_TOKEN_FILE);
    let bootstrap = match control.bootstrap_admin(config.bootstrap_token.as_deref(), |token| write_secret_file(&token_path, token))? {
        FirstAdmin::CreatedWithGeneratedToken => Bootstrap::Generated(token_path),
        FirstAdmin::CreatedWithOperatorToken => Bootstrap::FromEnvironment,
        FirstAdmin::AlreadyPresent => {
            if config.bootstrap_token.is_some() {
                // Not an error (a deployment may keep the variable set), but
                // not silent either: it makes no admin and changes no token.
                tracing::warn!("KEYTRAIL_BOOTSTRAP_TOKEN is set but the store already has admins: it is ignored (it only makes the first admin)");
            }
            Bootstrap::Existing
        }
    };

    let (shutdown, _) = watch::channel(false);
    if geo.is_configured() {
        tracing::info!(sources = %geo.describe(), "country lookup loaded");
    }
    let gateway = Arc::new(Gateway::new(&config.gateway, control.clone(), audit.clone(), geo));
    let shield = gateway.shield();
    let gateway_task = tokio::spawn(gateway::serve(gateway_listener, gateway, shutdown.subscribe(), SHUTDOWN_DRAIN));

    // The admin API's keyed application events share the gateway's
    // blocklist checks, threat history and brute-force counter.
    let admin_state = AdminState::new(control.clone(), audit.clone(), Some(public_key), shield);
    let app = admin::router(admin_state.clone());
    let admin_task = tokio::spawn(serve_admin(
        admin_listener,
        app,
        config.admin_head_timeout,
        config.admin_trusted_proxies.clone(),
        shutdown.subscribe(),
        admin_state,
    ));

    // Keys' last uses, written in batches rather than once per request
    // (the last batch by `Server::shutdown`, once the gateway has drained).
    let usage_control = control.clone();
    let mut usage_shutdown = shutdown.subscribe();
    let usage_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEY_USAGE_FLUSH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => flush_key_usage(usage_control.clone()).await,
                _ = usage_shutdown.changed() => break,
            }
        }
    });

    // Retention: at start, then every `retention.interval_s`.
    let retention = Retention {
        audit_dir: config.data_dir.join("audit"),
        archive_dir: config.retention.archive_dir.clone(),
        control: control.clone(),
        audit: audit.clone(),
        signer: retention_signer,
        zstd_level: config.retention.archive_zstd_level,
    };
    let mut retention_shutdown = shutdown.subscribe();
    let retention_interval = config.retention.interval;
    let retention_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(retention_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Kept out by another process: again soon, not an
                    // interval later (a long restore could keep it out of
                    // run after run).
                    while !retention.run().await {
                        tokio::select! {
                            _ = tokio::time::sleep(RETENTION_RETRY) => {}
                            _ = retention_shutdown.changed() => return,
                        }
                    }
                }
                _ = retention_shutdown.changed() => break,
            }
        }
    });

    // Alerts: the committed trail read every `alerts.poll_interval_ms`.
    let alerts = crate::alerts::engine::AlertEngine::new(control.clone(), audit.clone(), config.alerts.clone());
    let alerts_task = tokio::spawn(alerts.run(shutdown.subscribe()));

    Ok(Server {
        gateway_addr,
        admin_addr,
        data_dir: config.data_dir,
        bootstrap,
        control,
        audit,
        shutdown,
        tasks: vec![gateway_task, admin_task, usage_task, retention_task, alerts_task],
        _lock: lock,
    })
}

impl Server {
    /// Stops accepting, lets in-flight requests finish, then commits every
    /// event still queued and stops the writer.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // Including the uses of requests that finished while the gateway drained.
        flush_key_usage(self.control.clone()).await;
        self.audit.shutdown().await;
    }
}
