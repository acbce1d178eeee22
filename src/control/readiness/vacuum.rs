//! Old's slots, publications and vacuum horizon: consumers that will not follow the cutover,
//! what holds back vacuum, and the WAL the subscription's slot keeps.

use tokio_postgres::Client;

use crate::control::ControlError;

/// A replication slot (CHECK reads old's; the way back reads pgcutover's on both servers).
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    /// `logical (pgoutput)` or `physical`.
    pub kind: String,
    pub active: bool,
    /// WAL it keeps: current LSN - restart_lsn.
    pub retained_bytes: Option<i64>,
    /// Age of the oldest of `xmin` / `catalog_xmin` it holds.
    pub xmin_age: Option<i64>,
    /// `wal_status`: reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// `safe_wal_size`: bytes left before `max_slot_wal_keep_size` invalidates it.
    pub safe_wal_size: Option<i64>,
    /// The database of a logical slot.
    pub database: Option<String>,
    /// The process consuming it (a walsender), if one is.
    pub active_pid: Option<i32>,
}

const SLOT_SELECT: &str = "SELECT slot_name::text, CASE WHEN slot_type = 'logical' THEN format('logical (%s)', plugin) ELSE slot_type END, active, \
     (pg_catalog.pg_current_wal_lsn() - restart_lsn)::int8, \
     greatest(CASE WHEN xmin IS NULL THEN NULL ELSE age(xmin) END, CASE WHEN catalog_xmin IS NULL THEN NULL ELSE age(catalog_xmin) END)::int8, \
     wal_status, safe_wal_size, database::text, active_pid FROM pg_catalog.pg_replication_slots";

fn slot_from_row(r: &tokio_postgres::Row) -> Slot {
    Slot {
        name: r.get(0),
        kind: r.get(1),
        active: r.get(2),
        retained_bytes: r.get(3),
        xmin_age: r.get(4),
        wal_status: r.get(5),
        safe_wal_size: r.get(6),
        database: r.get(7),
        active_pid: r.get(8),
    }
}

/// Slots of this database and physical slots.
pub async fn slots(old: &Client) -> Result<Vec<Slot>, ControlError> {
    let rows = old.query(&format!("{SLOT_SELECT} WHERE database = current_database() OR database IS NULL ORDER BY 1"), &[]).await?;
    Ok(rows.iter().map(slot_from_row).collect())
}

/// Slots of any database whose name starts with `prefix` or is one of `names`.
pub async fn slots_named(client: &Client, prefix: &str, names: &[String]) -> Result<Vec<Slot>, ControlError> {
    let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%"));
    let rows = client.query(&format!("{SLOT_SELECT} WHERE slot_name LIKE $1 OR slot_name = ANY($2) ORDER BY 1"), &[&pattern, &names]).await?;
    Ok(rows.iter().map(slot_from_row).collect())
}

/// Publications in this database.
pub async fn publications(old: &Client) -> Result<Vec<String>, ControlError> {
    let rows = old.query("SELECT pubname::text FROM pg_catalog.pg_publication ORDER BY 1", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `age(datfrozenxid)` of this database.
pub async fn xid_age(old: &Client) -> Result<i64, ControlError> {
    let row = old.query_one("SELECT age(datfrozenxid)::int8 FROM pg_catalog.pg_database WHERE datname = current_database()", &[]).await?;
    Ok(row.get(0))
}

/// Sessions in this database whose transaction has been open longer than `minutes`, with the
/// age of the xmin they hold: `description`, age. Walsenders copying a table are among them.
pub async fn long_transactions(old: &Client, minutes: i32) -> Result<Vec<(String, i64)>, ControlError> {
    let rows = old
        .query(
            "SELECT format('pid %s %s (%s, open %s)', pid, usename, backend_type, date_trunc('second', now() - xact_start)), \
             coalesce(age(backend_xmin), 0)::int8 FROM pg_catalog.pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_catalog.pg_backend_pid() AND xact_start < now() - make_interval(mins => $1) ORDER BY xact_start",
            &[&minutes],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
