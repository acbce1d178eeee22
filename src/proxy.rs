//! The running proxy: shared state, the client listener, and orderly shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Role, Server};
use crate::config::{CheckConfig, Config, CutoverConfig, UserConfig, VerifyConfig};
use crate::cutover::gate::Gate;
use crate::listener::{connection_waiting, out_of_files, refuse_unread, AcceptBackoff, SpareFd};
use crate::metrics::Metrics;
use crate::session::registry::{Command, Registry};
use crate::session::slots::Slots;

/// The part of the configuration a reload (SIGHUP) replaces while sessions run. Read where it
/// is used (a login, a TLS handshake, a cutover's start), never on the relay's hot path.
pub struct Live {
    pub users: Vec<UserConfig>,
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` data of the certificate in `client_tls`, for SCRAM-SHA-256-PLUS.
    pub client_end_point: Option<Vec<u8>>,
    pub cutover: CutoverConfig,
    pub check: CheckConfig,
    pub verify: VerifyConfig,
}

impl Live {
    pub fn from_config(config: &Config) -> Live {
        Live {
            users: config.users.clone(),
            client_tls: config.client_tls.as_ref().map(|tls| tokio_rustls::TlsAcceptor::from(tls.server.clone())),
            client_end_point: config.client_tls.as_ref().and_then(|tls| tls.end_point.clone()),
            cutover: config.cutover.clone(),
            check: config.check.clone(),
            verify: config.verify.clone(),
        }
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Everything sessions, the console and the cutover share.
pub struct Shared {
    /// The configuration the proxy started with. Its users, TLS, cutover defaults and limits
    /// may have been reloaded since: read those through [`Shared::live`] and the slots.
    pub config: Config,
    live: RwLock<Arc<Live>>,
    pub old: Server,
    pub new: Option<Server>,
    pub gate: Gate,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Roles' verifiers from the server, when `auth_query` is configured.
    pub auth_query: Option<Arc<crate::auth::query::AuthQuery>>,
    /// Authenticated sessions, against `max_clients`.
    pub client_slots: Arc<Slots>,
    /// Connections accepted and not yet authenticated, against `max_startup_connections`.
    pub startup_slots: Arc<Slots>,
    /// Bytes buffered for sessions beyond their own small allowance (`max_buffered_bytes`).
    pub budget: Arc<crate::session::budget::Budget>,
    /// Held while a cutover runs: only one at a time.
    pub cutover_lock: tokio::sync::Mutex<()>,
    pub cutover: crate::cutover::Tracker,
    /// VERIFY's progress and the chunks it left still changing.
    pub verify: crate::verify::Tracker,
    /// Where sessions go according to the durable cutover decision, and whether that is known.
    pub routing: crate::routing::Routing,
    /// Stop accepting new clients.
    pub stop_accepting: CancellationToken,
    /// Close the sessions still open (the shutdown deadline passed).
    pub close_sessions: CancellationToken,
}

impl Shared {
    /// The reloadable configuration in force now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts a reloaded configuration in force; sessions already running keep what they read.
    pub fn replace_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    pub fn server(&self, role: Role) -> Option<&Server> {
        match role {
            Role::Old => Some(&self.old),
            Role::New => self.new.as_ref(),
        }
    }

    /// Changes the gate and tells every session (each re-reads it on its next pass). A session
    /// that registers later reads the new state when its loop starts.
    pub fn set_gate(&self, state: crate::cutover::gate::GateState) {
        self.gate.set(state);
        self.registry.tell_all(|| Command::GateChanged);
    }

    pub fn set_held(&self, held: bool) {
        let mut state = self.gate.state();
        state.held = held;
        self.set_gate(state);
    }

}

/// SCRAM-SHA-256-PLUS needs the certificate's `tls-server-end-point` hash (at start and after a
/// reload read the certificate again).
pub fn warn_if_no_end_point(config: &Config) {
    if config.client_tls.as_ref().is_some_and(|tls| tls.end_point.is_none()) {
        tracing::warn!("the TLS certificate's signature algorithm gives no tls-server-end-point hash: SCRAM-SHA-256-PLUS is not offered");
    }
}

/// A started proxy: where it listens, and how to stop it.
pub struct Running {
    pub listen_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    sessions: TaskTracker,
    background: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn start(config: Config) -> anyhow::Result<Running> {
    if config.auth == crate::auth::AuthMethod::Trust && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "auth = trust on a non-loopback address: anyone who can reach it can log in");
    }
    warn_if_no_end_point(&config);
    let auth_query = config.auth_query.as_ref().map(|q| Arc::new(crate::auth::query::AuthQuery::new(q, &config.old, config.new.as_ref())));
    let old = Server::new(Role::Old, config.old.clone())?;
    let new = config.new.clone().map(|c| Server::new(Role::New, c)).transpose()?;
    let listener = TcpListener::bind(config.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let listen_addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        live: RwLock::new(Arc::new(Live::from_config(&config))),
        client_slots: Slots::new(config.max_clients),
        startup_slots: Slots::new(config.max_startup_connections),
        budget: crate::session::budget::Budget::new(config.max_buffered_bytes),
        config,
        old,
        new,
        gate: Gate::default(),
        registry: Registry::default(),
        metrics: metrics.clone(),
        auth_query,
        cutover_lock: tokio::sync::Mutex::new(()),
        cutover: crate::cutover::Tracker::default(),
        verify: crate::verify::Tracker::default(),
        routing: crate::routing::Routing::new(listen_addr, metrics.clone()),
        stop_accepting: CancellationToken::new(),
        close_sessions: CancellationToken::new(),
    });
    let mut background = Vec::new();
    let metrics_addr = match shared.config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
            let bound = l.local_addr()?;
            background.push(tokio::spawn(crate::metrics::serve(l, shared.clone())));
            Some(bound)
        }
        None => None,
    };
    // The route comes from the servers before the first client or console command is served.
    let mut watcher = crate::routing::watcher::Watcher::new(shared.clone());
    watcher.poll().await;
    background.push(tokio::spawn(watcher.run()));
    let admin_addr = crate::admin::start(&shared, &mut background).await?;
    let sessions = TaskTracker::new();
    background.push(tokio::spawn(accept_loop(listener, shared.clone(), sessions.clone())));
    tracing::info!(listen = %listen_addr, old = ?shared.config.old, new = ?shared.config.new, "pgcutover ready");
    Ok(Running { listen_addr, admin_addr, metrics_addr, shared, sessions, background })
}

/// How long a refused client may take to send its startup packet before the proxy closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// The same while out of descriptors: the spare one is needed back soon.
const REFUSAL_LINGER_OUT_OF_FILES: Duration = Duration::from_millis(100);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sessions: TaskTracker) {
    let mut backoff = AcceptBackoff::new("clients");
    let mut spare = SpareFd::reserve();
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, addr)) => {
                backoff.succeeded();
                let _ = tcp.set_nodelay(true);
                // Only connections in startup count here; a session counts against max_clients
                // once authenticated, so silent connections cannot lock clients out.
                let Some(slot) = shared.startup_slots.try_take() else {
                    shared.metrics.rejected_clients.with_label_values(&["too_many_startup"]).inc();
                    tracing::info!(client = %addr, limit = shared.startup_slots.limit(), "too many connections in startup: connection refused");
                    sessions.spawn(refuse_unread(tcp, "53300", "sorry, too many connections in startup; try again", REFUSAL_LINGER));
                    continue;
                };
                sessions.spawn(crate::session::serve_client(shared.clone(), tcp, addr, slot));
            }
            Err(e) if out_of_files(&e) && connection_waiting(&listener) && spare.release() => {
                // Out of descriptors: the spare one lets the waiting client in to be told so.
                // (Only when one waits: accept fails for lack of a descriptor even with an
                // empty backlog, and a spare given up then goes to whoever opens a file next.)
                // The client may have given up meanwhile: do not wait for the next one here.
                if let Ok(Ok((tcp, addr))) = tokio::time::timeout(REFUSAL_LINGER_OUT_OF_FILES, listener.accept()).await {
                    shared.metrics.rejected_clients.with_label_values(&["out_of_files"]).inc();
                    tracing::warn!(client = %addr, "out of file descriptors: connection refused (raise the open-file limit or lower max_clients)");
                    refuse_unread(tcp, "53300", "sorry, too many clients already: pgcutover is out of file descriptors", REFUSAL_LINGER_OUT_OF_FILES).await;
                }
                spare.restore();
            }
            Err(e) => {
                backoff.failed(&e).await;
                spare.restore();
            }
        }
    }
}

impl Running {
    /// Stops accepting, lets sessions finish until the shutdown deadline, then closes them.
    pub async fn shutdown(self) {
        let deadline = self.shared.config.shutdown_timeout;
        self.shared.stop_accepting.cancel();
        self.sessions.close();
        tracing::info!(sessions = self.shared.registry.len(), ?deadline, "shutting down: waiting for sessions to finish");
        if tokio::time::timeout(deadline, self.sessions.wait()).await.is_err() {
            tracing::info!(sessions = self.shared.registry.len(), "shutdown deadline passed: closing the remaining sessions");
            self.shared.close_sessions.cancel();
            self.shared.registry.tell_all(|| Command::Shutdown);
            let _ = tokio::time::timeout(crate::session::relay::CLOSE_TIME, self.sessions.wait()).await;
        }
        for task in self.background {
            task.abort();
        }
        if let Some(path) = &self.shared.config.admin_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}
