//! The proxy's own catalog queries to the servers, over tokio-postgres.
//! Every function takes an open client so the cutover can open its connections during the
//! preflight and reuse them while sessions are held.

pub mod replication;
pub mod sequences;
pub mod sentinel;

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
    if matches!(server.sslmode, SslMode::Require | SslMode::VerifyFull) {
        return Err(fail("control connections over TLS are not supported yet; use sslmode=prefer or disable for the control URL".into()));
    }
    let config = server.control_config(database);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| fail(ControlError::from(e).to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    });
    Ok(client)
}

/// Databases clients can connect to on a server.
pub async fn databases(client: &Client) -> Result<Vec<String>, ControlError> {
    let rows = client.query("SELECT datname FROM pg_catalog.pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Quotes an identifier for SQL text.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
