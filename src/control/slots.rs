//! Logical replication slots the way back creates and moves: create one early, move it past
//! everything at a switch, drop it when its direction retires, and report the WAL each keeps.
//!
//! A slot decodes a transaction only if its commit record starts at or after the slot's
//! `confirmed_flush_lsn` (the start point). [`advance_past_everything`] sets that start point
//! to a position no earlier than the end of every commit made so far, so a slot advanced
//! after the opposite direction's apply worker has stopped can never send back what that
//! worker applied: this is what prevents a loop, since a Postgres 15 subscriber cannot ask an
//! 18 publisher for `origin = none`.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::readiness::vacuum::{self, Slot};
use super::sentinel::literal;
use super::ControlError;
use crate::backend::Role;

/// Prefix of every slot pgcutover creates.
pub const PREFIX: &str = "pgcutover_";

/// Creates logical slot `name` (plugin pgoutput) in this database, or reuses the one there:
/// it must be logical, pgoutput, of this database and not in use. A reused slot is moved to
/// the current position (it would otherwise keep the WAL written since it was made); one
/// whose WAL was removed (`wal_status` lost) is made again. True: created.
///
/// The caller makes sure nothing is meant to consume the slot yet (the subscription that
/// will read it is disabled): moving it skips what it holds. Also checks, so that it fails
/// here rather than at the commit point, that the role may run what
/// [`advance_past_everything`] runs.
pub async fn ensure(client: &Client, name: &str) -> Result<bool, ControlError> {
    let allowed: bool = client
        // Postgres 17 added a fourth argument (with a default): whichever this server has.
        .query_one(
            "SELECT coalesce(bool_or(pg_catalog.has_function_privilege(p.oid, 'EXECUTE')), false) FROM pg_catalog.pg_proc p \
             WHERE p.proname = 'pg_logical_emit_message' AND p.pronamespace = 'pg_catalog'::regnamespace AND p.proargtypes[2] = 'text'::regtype",
            &[],
        )
        .await?
        .get(0);
    if !allowed {
        return Err(ControlError::Query(
            "the control role may not run pg_logical_emit_message(boolean, text, text ...), which the switch needs to flush WAL: grant EXECUTE on it".into(),
        ));
    }
    let row = client
        .query_opt(
            "SELECT slot_type, coalesce(plugin::text, ''), coalesce(database::text, ''), current_database()::text, active, active_pid, \
             coalesce(wal_status, '') FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    if let Some(r) = row {
        let (kind, plugin, database, here): (String, String, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if kind != "logical" || plugin != "pgoutput" || database != here {
            return Err(ControlError::Query(format!(
                "replication slot {name} exists but is a {kind} slot ({plugin}) of database {database:?}, not pgcutover's: drop or rename it"
            )));
        }
        if r.get::<_, bool>(4) {
            let pid: Option<i32> = r.get(5);
            return Err(ControlError::Query(format!("replication slot {name} is in use (pid {}): its direction is armed", pid.unwrap_or(0))));
        }
        if r.get::<_, String>(6) != "lost" {
            client.query_one("SELECT end_lsn FROM pg_catalog.pg_replication_slot_advance($1, pg_catalog.pg_current_wal_flush_lsn())", &[&name]).await?;
            return Ok(false);
        }
        client.query_one("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&name]).await?;
    }
    client.query_one("SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')", &[&name]).await?;
    Ok(true)
}

/// Moves slot `name` to where every commit made so far on this server ends, and returns that
/// position. Refused, with nothing moved, while subscription `stopped` of this database (the
/// opposite direction, whose apply must not be sent back) is enabled or has a worker.
///
/// `pg_replication_slot_advance` stops at the WAL flushed to disk, and a commit made with
/// `synchronous_commit = off` (as apply workers make them) may not be flushed yet: so a
/// transactional logical message (which pgoutput sends only to subscribers that ask for
/// messages) is committed with a local flush first, and the slot is moved to the flushed
/// position after it. One round trip.
pub async fn advance_past_everything(client: &Client, name: &str, stopped: Option<&str>) -> Result<String, ControlError> {
    let guard = match stopped {
        Some(sub) => format!(
            "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_subscription s WHERE s.subname = {} \
             AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND (s.subenabled OR EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL)))",
            literal(sub)
        ),
        None => "true".to_string(),
    };
    let sql = format!(
        "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; \
         SELECT pg_catalog.pg_logical_emit_message(true, 'pgcutover', 'switch'); COMMIT; \
         WITH t AS MATERIALIZED (SELECT pg_catalog.pg_current_wal_flush_lsn() AS lsn WHERE {guard}) \
         SELECT t.lsn::text, (a.end_lsn >= t.lsn)::text FROM t CROSS JOIN LATERAL pg_catalog.pg_replication_slot_advance({}, t.lsn) a",
        literal(name)
    );
    let rows: Vec<(String, String)> = client
        .simple_query(&sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            // The rows of the last statement: the message's SELECT returns one column.
            SimpleQueryMessage::Row(r) if r.len() == 2 => Some((text(&r, 0), text(&r, 1))),
            _ => None,
        })
        .collect();
    match rows.as_slice() {
        [(lsn, reached)] if reached == "true" => Ok(lsn.clone()),
        [(lsn, _)] => Err(ControlError::Query(format!("replication slot {name} stopped short of {lsn}"))),
        _ => Err(ControlError::Query(format!(
            "refusing to move replication slot {name}: subscription {} on this server is still enabled or running, and what it applies would be sent back",
            stopped.unwrap_or("?")
        ))),
    }
}

fn text(row: &tokio_postgres::SimpleQueryRow, i: usize) -> String {
    row.try_get(i).ok().flatten().unwrap_or("").to_string()
}

/// Waits until no process uses slot `name` (a walsender ends a moment after its subscriber's
/// worker). Ok also when the slot does not exist.
pub async fn wait_inactive(client: &Client, name: &str, timeout: Duration) -> Result<(), ControlError> {
    let started = Instant::now();
    loop {
        let pid: Option<i32> = client
            .query_opt("SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND active", &[&name])
            .await?
            .map(|r| r.get(0));
        let Some(pid) = pid else { return Ok(()) };
        if started.elapsed() >= timeout {
            return Err(ControlError::Query(format!("replication slot {name} is still in use by pid {pid} after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops slot `name` once nothing uses it (waiting up to `timeout`). False: there was none.
pub async fn drop_slot(client: &Client, name: &str, timeout: Duration) -> Result<bool, ControlError> {
    wait_inactive(client, name, timeout).await?;
    let dropped = client
        .query_opt(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(dropped.is_some())
}

/// A slot of the way back as [`status`] reports it.
#[derive(Clone, Debug)]
pub struct SlotStatus {
    pub server: Role,
    pub slot: Slot,
    /// Why it needs attention: WAL kept over the threshold, WAL at risk or lost.
    pub warning: Option<String>,
}

/// Every slot on this server that pgcutover made (named `pgcutover_...`) or moves (`extra`:
/// the forward subscriptions' slots), in every database, with the WAL each keeps
/// (`pg_current_wal_lsn() - restart_lsn`), its `wal_status` and who consumes it. A slot
/// keeping more than `warn_bytes`, or whose `wal_status` is `unreserved` or `lost`, carries a
/// warning: nothing frees that WAL but a consumer, a move or a drop.
pub async fn status(client: &Client, server: Role, extra: &[String], warn_bytes: i64) -> Result<Vec<SlotStatus>, ControlError> {
    let slots = vacuum::slots_named(client, PREFIX, extra).await?;
    Ok(slots
        .into_iter()
        .map(|slot| {
            let consumer = if slot.active { format!("read by pid {}", slot.active_pid.unwrap_or(0)) } else { "nothing reads it".to_string() };
            let warning = match (slot.wal_status.as_deref(), slot.retained_bytes) {
                (Some("lost"), _) => Some("its WAL is gone (wal_status lost): it cannot be used again; drop it".to_string()),
                (Some("unreserved"), _) => Some(format!("about to lose its WAL (wal_status unreserved); {consumer}")),
                (_, Some(kept)) if kept > warn_bytes => Some(format!("keeps {kept} bytes of WAL, above {warn_bytes}; {consumer}")),
                _ => None,
            };
            SlotStatus { server, slot, warning }
        })
        .collect())
}
