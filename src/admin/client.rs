//! `pgcutover admin [--addr A] [-u USER] [--password P] COMMAND...`: runs one console command
//! and prints the result as an aligned table.
//!
//! `--addr` is `host:port`, `[v6]:port`, or the path of the console's Unix socket
//! (`<dir>/.s.PGSQL.<port>`).

use std::process::ExitCode;
use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Runs one console command; 0 on success, 1 on any error (printed to stderr).
pub async fn run(addr: &str, user: &str, password: Option<&str>, command: &str) -> ExitCode {
    match execute(addr, user, password, command).await {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The printed output, or the error message (without the `error: ` prefix).
async fn execute(addr: &str, user: &str, password: Option<&str>, command: &str) -> Result<String, String> {
    let mut config = connection_config(addr)?;
    config.user(user).dbname("pgcutover").application_name("pgcutover admin").connect_timeout(Duration::from_secs(5));
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        let hint = if password.is_none() && describe(&e).contains("password missing") {
            " (the console wants a password: pass --password or set PGCUTOVER_ADMIN_PASSWORD)"
        } else {
            ""
        };
        format!("cannot connect to the admin console at {addr}: {}{hint}", describe(&e))
    })?;
    let connection = tokio::spawn(connection);
    let messages = client.simple_query(command).await.map_err(|e| describe(&e));
    drop(client);
    let _ = connection.await;
    Ok(render(&messages?))
}

/// `host:port`, `[v6]:port` or a socket path.
fn connection_config(addr: &str) -> Result<tokio_postgres::Config, String> {
    let mut config = tokio_postgres::Config::new();
    if addr.starts_with('/') {
        let path = std::path::Path::new(addr);
        let port = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(".s.PGSQL.")).and_then(|p| p.parse::<u16>().ok());
        let (Some(dir), Some(port)) = (path.parent(), port) else {
            return Err(format!("{addr}: a Unix socket address must be the socket's path, named <dir>/.s.PGSQL.<port>"));
        };
        config.host_path(dir).port(port);
        return Ok(config);
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr}: expected host:port, e.g. 127.0.0.1:6433"))?;
    let port: u16 = port.parse().map_err(|_| format!("{addr}: \"{port}\" is not a port number"))?;
    config.host(host.trim_start_matches('[').trim_end_matches(']')).port(port);
    Ok(config)
}

/// A server error with its SQLSTATE, or the client-side error with its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // tokio-postgres often repeats the cause in its own message.
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Every result set of the reply, as aligned tables separated by blank lines.
fn render(messages: &[SimpleQueryMessage]) -> String {
    let mut tables = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(described) => {
                columns = described.iter().map(|c| c.name().to_string()).collect();
                rows.clear();
            }
            SimpleQueryMessage::Row(row) => rows.push((0..row.len()).map(|i| row.get(i).unwrap_or("").to_string()).collect()),
            SimpleQueryMessage::CommandComplete(_) => {
                if !columns.is_empty() {
                    tables.push(table(&columns, &rows));
                }
                columns.clear();
                rows.clear();
            }
            _ => {}
        }
    }
    tables.join("\n")
}

/// Header and rows, columns padded to their widest cell and separated by two spaces.
fn table(columns: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns);
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let columns = vec!["field".to_string(), "value".to_string()];
        let rows = vec![vec!["phase".to_string(), "idle".to_string()], vec!["sessions_on_old".to_string(), "3".to_string()]];
        assert_eq!(table(&columns, &rows), "field            value\nphase            idle\nsessions_on_old  3\n");
        assert_eq!(table(&columns, &[]), "field  value\n");
    }

    #[test]
    fn addresses() {
        assert!(connection_config("127.0.0.1:6433").is_ok());
        assert!(connection_config("[::1]:6433").is_ok());
        assert!(connection_config("/run/pgcutover/.s.PGSQL.6433").is_ok());
        assert!(connection_config("/run/pgcutover/admin.sock").is_err());
        assert!(connection_config("localhost").is_err());
        assert!(connection_config("localhost:http").is_err());
    }
}
