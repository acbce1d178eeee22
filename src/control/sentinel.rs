//! The catch-up proof. A row written on old, in a published table, and then seen on new proves
//! that new has applied every commit old made before it: the apply worker applies in commit
//! order. Written after every session through the proxy is idle, it covers every write the
//! proxy ever acknowledged.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::ControlError;

pub const SCHEMA: &str = "pgcutover";
pub const TABLE: &str = "pgcutover.sentinel";

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS pgcutover; \
CREATE TABLE IF NOT EXISTS pgcutover.sentinel (id int PRIMARY KEY, token text NOT NULL, written_at timestamptz NOT NULL DEFAULT now())";

pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether the sentinel table exists on this server.
pub async fn exists(client: &Client) -> Result<bool, ControlError> {
    let row = client.query_one("SELECT pg_catalog.to_regclass('pgcutover.sentinel') IS NOT NULL", &[]).await?;
    Ok(row.get(0))
}

/// Creates the sentinel table on both servers and makes the subscription pick it up.
/// Only in the preflight: nothing is held while it runs.
pub async fn install(old: &Client, new: &Client, subscription: &str, publications: &[String]) -> Result<(), ControlError> {
    old.batch_execute(CREATE).await?;
    new.batch_execute(CREATE).await?;
    // A FOR ALL TABLES publication has it already; a table list needs it added.
    let all_tables = old
        .query_one("SELECT coalesce(bool_or(puballtables), false) FROM pg_catalog.pg_publication WHERE pubname = ANY($1)", &[&publications])
        .await?
        .get::<_, bool>(0);
    if !all_tables {
        let Some(first) = publications.first() else { return Err(ControlError::Query("subscription has no publication".into())) };
        let published = old
            .query_one(
                "SELECT count(*) > 0 FROM pg_catalog.pg_publication_tables WHERE pubname = ANY($1) AND schemaname = 'pgcutover' AND tablename = 'sentinel'",
                &[&publications],
            )
            .await?
            .get::<_, bool>(0);
        if !published {
            old.batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {TABLE}", super::quote_ident(first))).await?;
        }
    }
    new.batch_execute(&format!("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = false)", super::quote_ident(subscription)))
        .await?;
    Ok(())
}

/// The sentinel row the cutover writes; VERIFY writes its own, so neither overwrites a token
/// the other waits for.
pub const CUTOVER_ROW: i32 = 1;
pub const VERIFY_ROW: i32 = 2;

/// Writes a fresh token on old (the cutover's row) and returns it with the LSN just after its
/// commit.
pub async fn write(old: &Client) -> Result<(String, String), ControlError> {
    write_row(old, CUTOVER_ROW).await
}

/// Writes a fresh token into sentinel row `id` on old. One round trip; `READ WRITE` because a
/// fenced old refuses writes by default.
pub async fn write_row(old: &Client, id: i32) -> Result<(String, String), ControlError> {
    let token = format!("{:032x}", rand::random::<u128>());
    let sql = format!(
        "BEGIN READ WRITE; \
         INSERT INTO pgcutover.sentinel (id, token) VALUES ({id}, '{token}') ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, written_at = now(); \
         COMMIT; SELECT pg_catalog.pg_current_wal_lsn()::text"
    );
    let lsn = old
        .simple_query(&sql)
        .await?
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| ControlError::Query("no LSN after the sentinel commit".into()))?;
    Ok((token, lsn))
}

/// Polls new until the token is visible or `timeout` passes. Returns the time it took.
pub async fn wait_applied(new: &Client, token: &str, timeout: Duration, abort: &(dyn Fn() -> bool + Sync)) -> Result<Duration, ControlError> {
    let started = Instant::now();
    let statement = new.prepare("SELECT EXISTS (SELECT 1 FROM pgcutover.sentinel WHERE token = $1)").await?;
    let mut pause = Duration::from_millis(1);
    loop {
        if new.query_one(&statement, &[&token]).await?.get::<_, bool>(0) {
            return Ok(started.elapsed());
        }
        if abort() {
            return Err(ControlError::Query("abort requested".into()));
        }
        if started.elapsed() >= timeout {
            return Err(ControlError::Query(format!("new did not apply the sentinel commit within {timeout:?}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Makes old refuse writes in new transactions (`fence_old`).
pub async fn fence(old: &Client) -> Result<(), ControlError> {
    set_and_reload(old, "ALTER SYSTEM SET default_transaction_read_only = on").await
}

/// Undoes [`fence`] (an aborted cutover).
pub async fn unfence(old: &Client) -> Result<(), ControlError> {
    set_and_reload(old, "ALTER SYSTEM RESET default_transaction_read_only").await
}

/// ALTER SYSTEM refuses to run inside a (multi-statement) transaction, so it and the reload
/// are two queries; sent together (tokio-postgres pipelines them, the server runs them in
/// order) they cost one round trip inside the hold.
async fn set_and_reload(client: &Client, alter_system: &str) -> Result<(), ControlError> {
    tokio::try_join!(client.batch_execute(alter_system), client.batch_execute("SELECT pg_catalog.pg_reload_conf()"))?;
    Ok(())
}
