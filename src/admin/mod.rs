//! The admin console: a psql-compatible endpoint (built on pgwire) for watching sessions and
//! driving the cutover.
//!
//! ```text
//! psql -h 127.0.0.1 -p 6433 -U admin pgcutover          # TCP (admin_listen)
//! psql -h /run/pgcutover -p 6433 -U admin pgcutover     # Unix socket (admin_socket)
//! pgcutover admin --addr 127.0.0.1:6433 SHOW SESSIONS    # one command, aligned output
//! ```
//!
//! Unix socket naming: the socket is created at exactly `admin_socket` (the proxy removes that
//! path at shutdown). libpq-based clients look for `<dir>/.s.PGSQL.<port>`, so name it that way,
//! e.g. `admin_socket = "/run/pgcutover/.s.PGSQL.6433"`, and connect with
//! `psql -h /run/pgcutover -p 6433`. Any database name is accepted.
//!
//! Authentication: the user must be `[admin] user`. With `[admin] password` set, every connection
//! (TCP or socket) does SCRAM-SHA-256; without one, only loopback and Unix-socket connections are
//! let in (trust) and the rest get FATAL 28000.
//!
//! Commands (simple query protocol, case-insensitive, `;` optional; see [`cmd`]): SHOW STATUS,
//! SHOW SESSIONS, SHOW REPLICATION, SHOW CUTOVER, CHECK, PAUSE [timeout], RESUME,
//! CUTOVER [option=value ...], ABORT, HELP.

mod auth;
pub mod client;
pub mod cmd;
pub mod connection;
mod frame_guard;
mod handler;
mod listen;
pub mod reply;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::proxy::Shared;

pub use auth::{trust_allowed, Peer};

/// Starts the console listeners; returns the TCP address it listens on.
pub async fn start(shared: &Arc<Shared>, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> anyhow::Result<Option<SocketAddr>> {
    let config = &shared.config;
    if config.admin_listen.is_none() && config.admin_socket.is_none() {
        return Ok(None);
    }
    // Bind everything before spawning anything, so a failure leaves no stray accept loop behind.
    let tcp = match config.admin_listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the admin console: {e}"))?;
            Some(listener)
        }
        None => None,
    };
    let unix = config.admin_socket.as_deref().map(listen::bind_unix).transpose()?;

    let credentials = auth::AdminCredentials::from_config(config);
    // One cap for TCP and the Unix socket together.
    let slots = Arc::new(tokio::sync::Semaphore::new(connection::MAX_CONNECTIONS));
    let mut tcp_addr = None;
    if let Some(listener) = tcp {
        let addr = listener.local_addr()?;
        if config.admin_password.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(%addr, "admin console without a password on a non-loopback address: remote logins are refused until [admin] password is set");
        }
        tracing::info!(%addr, user = %config.admin_user, "admin console listening");
        let console = handler::Console::new(
            auth::AdminAuth::new(credentials.clone(), auth::Transport::Tcp),
            handler::ConsoleQueries::new(shared.clone(), auth::Transport::Tcp),
        );
        let listener_state = Arc::new(connection::Listener { console, slots: slots.clone(), startup_timeout: config.startup_timeout });
        tasks.push(tokio::spawn(listen::serve_tcp(listener, listener_state)));
        tcp_addr = Some(addr);
    }
    if let (Some(listener), Some(path)) = (unix, config.admin_socket.as_deref()) {
        listen::log_socket_hint(path);
        let console = handler::Console::new(
            auth::AdminAuth::new(credentials, auth::Transport::UnixSocket),
            handler::ConsoleQueries::new(shared.clone(), auth::Transport::UnixSocket),
        );
        let listener_state = Arc::new(connection::Listener { console, slots, startup_timeout: config.startup_timeout });
        tasks.push(tokio::spawn(listen::serve_unix(listener, listener_state)));
    }
    Ok(tcp_addr)
}
