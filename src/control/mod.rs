//! The proxy's own catalog queries to the servers, over tokio-postgres.
//! Every function takes an open client so the cutover can open its connections during the
//! preflight and reuse them while sessions are held.

pub mod conninfo;
pub mod decision;
pub mod readiness;
pub mod replication;
pub mod reverse;
pub mod sequences;
pub mod sentinel;
pub mod slots;
pub mod verify;

use tokio_postgres::{Client, NoTls};

use crate::config::{ServerConfig, SslMode};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{server}: cannot connect to database {database:?}: {reason}")]
    Connect { server: &'static str, database: String, reason: String },
    #[error("{0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for ControlError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is just "db error"; the message is in the source.
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
            None => e.to_string(),
        };
        ControlError::Query(text)
    }
}

/// Opens a control connection to `database` on `server`, as the configured control user.
pub async fn connect(server: &ServerConfig, database: &str) -> Result<Client, ControlError> {
    let fail = |reason: String| ControlError::Connect { server: server.name, database: database.to_string(), reason };
    let mut config = server.control_config(database);
    let tls = crate::tls::client_config(server.sslmode, server.sslrootcert.as_deref()).map_err(|e| fail(e.to_string()))?;
    let client = match tls {
        None => {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            let (client, connection) = config.connect(NoTls).await.map_err(|e| fail(ControlError::from(e).to_string()))?;
            tokio::spawn(log_end(connection));
            client
        }
        Some(tls) => {
            let mode = if server.sslmode == SslMode::Prefer { tokio_postgres::config::SslMode::Prefer } else { tokio_postgres::config::SslMode::Require };
            config.ssl_mode(mode);
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone());
            let (client, connection) = config.connect(connector).await.map_err(|e| fail(ControlError::from(e).to_string()))?;
            tokio::spawn(log_end(connection));
            client
        }
    };
    Ok(client)
}

async fn log_end<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "control connection ended");
    }
}

/// Databases clients can connect to on a server.
pub async fn databases(client: &Client) -> Result<Vec<String>, ControlError> {
    let rows = client.query("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs `statements` in one read-write transaction (one round trip), whatever the server's
/// `default_transaction_read_only` says: a fenced server refuses writes by default. On an
/// error the transaction is rolled back, so the connection stays usable.
pub async fn read_write(client: &Client, statements: &str) -> Result<(), ControlError> {
    match client.batch_execute(&format!("BEGIN READ WRITE; {statements}; COMMIT")).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// Quotes an identifier for SQL text.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
