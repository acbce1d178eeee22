//! Reading a session's state from its server, and replaying it onto a connection on another.
//! Both run on an idle session (ReadyForQuery `I`, nothing in flight): the proxy sends its
//! own simple Query and consumes the replies; the client never sees them.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::outbound::Outbound;
use super::prepared_sql;
use crate::backend::BackendConn;
use crate::protocol::messages::{self, parse_data_row, parse_error_fields, parse_parameter_status, ErrorFields};

/// Everything about a session that lives on the server and must follow it. The replay
/// executes values, never the client's SQL: text is kept as the server sent it (in the
/// client's encoding), byte for byte.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Settings changed with SET (not startup parameters, which the new connection got
    /// already): name and value.
    pub settings: Vec<(Bytes, Bytes)>,
    /// SQL-level prepared statements: each `PREPARE` statement alone, cut out of the query
    /// string it came in (see [`prepared_sql`](super::prepared_sql)).
    pub sql_prepared: Vec<Bytes>,
    /// Names of protocol-level prepared statements the server knows.
    pub protocol_prepared: Vec<Bytes>,
    pub listen_channels: Vec<Bytes>,
    /// What cannot move: temp tables, session advisory locks, WITH HOLD cursors, SQL prepared
    /// statements whose PREPARE cannot be isolated.
    pub blockers: Vec<String>,
}

const CAPTURE_SQL: &str = "SELECT 'set', name::text, setting::text FROM pg_catalog.pg_settings WHERE source = 'session' \
UNION ALL SELECT 'sqlprep', name::text, statement::text FROM pg_catalog.pg_prepared_statements WHERE from_sql \
UNION ALL SELECT 'protoprep', name::text, NULL FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql \
UNION ALL SELECT 'listen', c::text, NULL FROM pg_catalog.pg_listening_channels() c \
UNION ALL SELECT 'blocker', 'temporary tables', NULL WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relpersistence = 't' AND relnamespace = pg_catalog.pg_my_temp_schema()) \
UNION ALL SELECT 'blocker', 'session advisory locks', NULL WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
UNION ALL SELECT 'blocker', 'WITH HOLD cursors', NULL WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable)";

/// Settings that describe the connection, not the session, and must not be copied.
const NOT_REPLAYED: &[&str] = &["session_authorization", "transaction_isolation", "transaction_read_only", "transaction_deferrable"];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("the server closed the connection")]
    Closed,
    #[error("{0}")]
    Server(String),
}

/// Runs `sql` (one or more simple Queries, back to back) and returns the DataRows and the
/// errors. Notifications, notices and ParameterStatus go on to the client as usual.
pub async fn run_internal(
    conn: &mut BackendConn,
    queries: &[Bytes],
    to_client: Option<&mut Outbound>,
    params: &mut Vec<(String, String)>,
) -> Result<(Vec<Vec<Option<Bytes>>>, Vec<ErrorFields>), SnapshotError> {
    if queries.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut batch = BytesMut::new();
    for q in queries {
        batch.put_slice(q);
    }
    conn.writer.write_all(&batch).await?;
    conn.writer.flush().await?;
    let expected = queries.iter().filter(|q| matches!(q.first(), Some(b'Q') | Some(b'S'))).count();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut seen = 0;
    let mut to_client = to_client;
    while seen < expected {
        let (tag, body) = conn.reader.read_frame().await?.ok_or(SnapshotError::Closed)?;
        match tag {
            b'D' => rows.push(parse_data_row(&body).unwrap_or_default()),
            b'E' => errors.push(parse_error_fields(&body)),
            b'Z' => seen += 1,
            b'S' => {
                if let Some(p) = parse_parameter_status(&body) {
                    params.push(p);
                }
            }
            b'A' | b'N' => {
                if let Some(out) = to_client.as_deref_mut() {
                    out.push(messages::frame(tag, &body));
                }
            }
            _ => {}
        }
    }
    Ok((rows, errors))
}

/// How often a query the proxy runs for itself is tried when a cancel hits it.
const CANCELLED_TRIES: usize = 4;

/// [`run_internal`] for queries that may simply run again (reads, ROLLBACK): re-run while they
/// fail with 57014. A cancel the drain sent for the client's statement before can land late,
/// on the proxy's own query instead (Postgres cannot tell them apart). Returns the last try.
pub async fn run_idempotent(
    conn: &mut BackendConn,
    queries: &[Bytes],
    mut to_client: Option<&mut Outbound>,
    params: &mut Vec<(String, String)>,
) -> Result<(Vec<Vec<Option<Bytes>>>, Vec<ErrorFields>), SnapshotError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (rows, errors) = run_internal(conn, queries, to_client.as_deref_mut(), params).await?;
        if tries >= CANCELLED_TRIES || !errors.iter().any(|e| e.code == "57014") {
            return Ok((rows, errors));
        }
    }
}

/// `client_encoding`: the session's current one, in which the server sends the captured text.
pub async fn capture(
    conn: &mut BackendConn,
    to_client: &mut Outbound,
    params: &mut Vec<(String, String)>,
    client_encoding: &str,
) -> Result<Snapshot, SnapshotError> {
    let (rows, errors) = run_idempotent(conn, &[messages::query(CAPTURE_SQL)], Some(to_client), params).await?;
    if let Some(e) = errors.into_iter().next() {
        return Err(SnapshotError::Server(format!("could not read the session's state: {}", e.message)));
    }
    let mut snap = Snapshot::default();
    for row in rows {
        let [kind, name, value] = [0, 1, 2].map(|i| row.get(i).cloned().flatten().unwrap_or_default());
        match &kind[..] {
            b"set" if !NOT_REPLAYED.iter().any(|n| n.as_bytes() == &name[..]) => snap.settings.push((name, value)),
            b"sqlprep" => match prepared_sql::isolate_prepare(&value, &name, client_encoding) {
                Ok(statement) => snap.sql_prepared.push(value.slice_ref(statement)),
                Err(reason) => snap.blockers.push(format!("SQL prepared statement \"{}\" ({reason})", String::from_utf8_lossy(&name))),
            },
            b"protoprep" => snap.protocol_prepared.push(name),
            b"listen" => snap.listen_channels.push(name),
            b"blocker" => snap.blockers.push(String::from_utf8_lossy(&name).into_owned()),
            _ => {}
        }
    }
    // The values are in the session's client encoding: set that first, so the server reads
    // every later value (and the PREPARE texts) in it.
    snap.settings.sort_by_key(|(name, _)| &name[..] != b"client_encoding");
    Ok(snap)
}

/// A quoted identifier. Safe in every client encoding: no multibyte character contains the
/// byte `"`.
fn identifier(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    out.push(b'"');
    for &b in name {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

/// Sets one setting per Bind: name and value travel as parameters, never inside SQL text.
const SET_CONFIG_SQL: &str = "SELECT pg_catalog.set_config($1, $2, false)";
const TEXT_OID: u32 = 25;

/// Recreates the snapshot on `conn`. Returns the ParameterStatus values the server reported
/// while doing so; fails if any statement failed (the session would not behave the same).
/// `reset_first` clears an earlier replay on the same connection (DISCARD ALL) so a
/// replay can be redone after the client changed its state again.
pub async fn replay(
    conn: &mut BackendConn,
    snap: &Snapshot,
    parse_messages: &HashMap<Bytes, Bytes>,
    reset_first: bool,
) -> Result<Vec<(String, String)>, SnapshotError> {
    let mut queries = Vec::new();
    if reset_first {
        queries.push(messages::query("DISCARD ALL"));
    }
    if !snap.settings.is_empty() {
        queries.push(messages::parse_unnamed(SET_CONFIG_SQL, &[TEXT_OID, TEXT_OID]));
        for (name, value) in &snap.settings {
            queries.push(messages::bind_text(&[name, value]));
            queries.push(messages::execute_unnamed());
        }
        queries.push(messages::sync());
    }
    for statement in &snap.sql_prepared {
        queries.push(messages::query_bytes(statement));
    }
    for channel in &snap.listen_channels {
        queries.push(messages::query_bytes(&[&b"LISTEN "[..], &identifier(channel)].concat()));
    }
    let mut parses = 0;
    for name in &snap.protocol_prepared {
        if let Some(body) = parse_messages.get(name) {
            queries.push(messages::frame(b'P', body));
            parses += 1;
        }
    }
    if parses > 0 {
        queries.push(messages::sync());
    }
    let mut params = Vec::new();
    let (_, errors) = run_internal(conn, &queries, None, &mut params).await?;
    if !errors.is_empty() {
        let messages: Vec<String> = errors.into_iter().map(|e| e.message).collect();
        return Err(SnapshotError::Server(format!("replaying the session on the new server failed: {}", messages.join("; "))));
    }
    Ok(params)
}
