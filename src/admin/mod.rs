//! The admin console (psql-compatible, built on pgwire).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::proxy::Shared;

/// Starts the console listeners; returns the TCP address it listens on.
pub async fn start(shared: &Arc<Shared>, _tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> anyhow::Result<Option<SocketAddr>> {
    let _ = shared;
    Ok(None)
}

pub mod client {
    use std::process::ExitCode;

    /// `pgcutover admin COMMAND`: runs one console command.
    pub async fn run(_addr: &str, _user: &str, _password: Option<&str>, command: &str) -> ExitCode {
        eprintln!("error: the admin console is not available yet (command {command:?})");
        ExitCode::from(1)
    }
}
