//! The running proxy: shared state, the client listener, and orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Role, Server};
use crate::config::Config;
use crate::cutover::gate::Gate;
use crate::metrics::Metrics;
use crate::session::registry::{Command, Registry};

/// Everything sessions, the console and the cutover share.
pub struct Shared {
    pub config: Config,
    pub old: Server,
    pub new: Option<Server>,
    pub gate: Gate,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` data of the proxy's certificate, for SCRAM-SHA-256-PLUS.
    pub client_end_point: Option<Vec<u8>>,
    /// Roles' verifiers from the server, when `auth_query` is configured.
    pub auth_query: Option<Arc<crate::auth::query::AuthQuery>>,
    pub client_slots: Arc<Semaphore>,
    /// Held while a cutover runs: only one at a time.
    pub cutover_lock: tokio::sync::Mutex<()>,
    pub cutover: crate::cutover::Tracker,
    /// Stop accepting new clients.
    pub stop_accepting: CancellationToken,
    /// Close the sessions still open (the shutdown deadline passed).
    pub close_sessions: CancellationToken,
}

impl Shared {
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
    let client_tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key)?)),
        _ => None,
    };
    if config.auth == crate::auth::AuthMethod::Trust && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "auth = trust on a non-loopback address: anyone who can reach it can log in");
    }
    let client_end_point = match &config.tls_cert {
        Some(cert) => crate::auth::channel_binding::end_point_of_pem(cert)?,
        None => None,
    };
    if config.tls_cert.is_some() && client_end_point.is_none() {
        tracing::warn!("the TLS certificate's signature algorithm gives no tls-server-end-point hash: SCRAM-SHA-256-PLUS is not offered");
    }
    let auth_query = config.auth_query.as_ref().map(|q| Arc::new(crate::auth::query::AuthQuery::new(q, &config.old, config.new.as_ref())));
    let old = Server::new(Role::Old, config.old.clone())?;
    let new = config.new.clone().map(|c| Server::new(Role::New, c)).transpose()?;
    let listener = TcpListener::bind(config.listen).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let listen_addr = listener.local_addr()?;
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        client_slots: Arc::new(Semaphore::new(config.max_clients)),
        config,
        old,
        new,
        gate: Gate::default(),
        registry: Registry::default(),
        metrics: metrics.clone(),
        client_tls,
        client_end_point,
        auth_query,
        cutover_lock: tokio::sync::Mutex::new(()),
        cutover: crate::cutover::Tracker::default(),
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
    let admin_addr = crate::admin::start(&shared, &mut background).await?;
    let sessions = TaskTracker::new();
    background.push(tokio::spawn(accept_loop(listener, shared.clone(), sessions.clone())));
    tracing::info!(listen = %listen_addr, old = ?shared.config.old, new = ?shared.config.new, "pgcutover ready");
    Ok(Running { listen_addr, admin_addr, metrics_addr, shared, sessions, background })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, sessions: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                let permit = shared.client_slots.clone().try_acquire_owned().ok();
                sessions.spawn(crate::session::serve_client(shared.clone(), tcp, addr, permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
