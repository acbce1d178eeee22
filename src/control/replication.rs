//! Subscription state on new, publication coverage and slot lag on old.

use tokio_postgres::Client;

use super::readiness::{NOT_PROXY_OWN, USER_SCHEMA};
use super::ControlError;

#[derive(Clone, Debug)]
pub struct Subscription {
    pub oid: u32,
    pub name: String,
    pub enabled: bool,
    pub slot: Option<String>,
    pub publications: Vec<String>,
}

/// The subscription of the current database on new: the named one, or the only one.
pub async fn find_subscription(new: &Client, name: Option<&str>) -> Result<Subscription, ControlError> {
    let rows = new
        .query(
            "SELECT s.oid, s.subname::text, s.subenabled, s.subslotname::text, s.subpublications::text[] \
             FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid \
             WHERE d.datname = current_database() AND ($1::text IS NULL OR s.subname = $1) ORDER BY 2",
            &[&name],
        )
        .await?;
    let subs: Vec<Subscription> = rows
        .iter()
        .map(|r| Subscription { oid: r.get(0), name: r.get(1), enabled: r.get(2), slot: r.get(3), publications: r.get(4) })
        .collect();
    match (subs.len(), name) {
        (1, _) => Ok(subs.into_iter().next().ok_or_else(|| ControlError::Query("no subscription".into()))?),
        (0, Some(n)) => Err(ControlError::Query(format!("subscription {n:?} not found on new"))),
        (0, None) => Err(ControlError::Query("no subscription on new for this database".into())),
        (_, _) => Err(ControlError::Query(format!(
            "several subscriptions ({}); name the one to use in [[cutover.subscriptions]]",
            subs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Count of subscription tables per state, e.g. "r=4".
pub async fn table_states(new: &Client, sub: &Subscription) -> Result<String, ControlError> {
    let rows = new
        .query("SELECT srsubstate::text, count(*) FROM pg_catalog.pg_subscription_rel WHERE srsubid = $1 GROUP BY 1 ORDER BY 1", &[&sub.oid])
        .await?;
    Ok(rows.iter().map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, i64>(1))).collect::<Vec<_>>().join(" "))
}

/// User tables on old that none of `publications` publishes. Unlogged tables cannot be
/// published at all (CHECK names them in their own row), nor are pgcutover's own tables but
/// the sentinel.
pub async fn unpublished_tables(old: &Client, publications: &[String]) -> Result<Vec<String>, ControlError> {
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence = 'p' AND {USER_SCHEMA} AND {NOT_PROXY_OWN} \
             AND NOT EXISTS (SELECT 1 FROM (SELECT c.oid AS relid UNION ALL SELECT relid FROM pg_catalog.pg_partition_ancestors(c.oid)) a \
                 JOIN pg_catalog.pg_class ac ON ac.oid = a.relid JOIN pg_catalog.pg_namespace an ON an.oid = ac.relnamespace \
                 JOIN pg_catalog.pg_publication_tables pt ON pt.schemaname = an.nspname AND pt.tablename = ac.relname \
                 WHERE pt.pubname = ANY($1)) ORDER BY 1"
    );
    let rows = old.query(&sql, &[&publications]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Published tables without a usable replica identity: (table, has had updates or deletes).
pub async fn tables_without_identity(old: &Client, publications: &[String]) -> Result<Vec<(String, bool)>, ControlError> {
    let rows = old
        .query(
            "SELECT DISTINCT format('%I.%I', pt.schemaname, pt.tablename), coalesce(s.n_tup_upd + s.n_tup_del, 0) > 0 \
             FROM pg_catalog.pg_publication_tables pt \
             JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid \
             WHERE pt.pubname = ANY($1) AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
                 (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) ORDER BY 1",
            &[&publications],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Bytes of WAL the slot has not confirmed yet; None if the slot does not exist.
pub async fn slot_lag(old: &Client, slot: &str) -> Result<Option<i64>, ControlError> {
    let row = old
        .query_opt(
            "SELECT (pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0)))
}

/// Whether subscription `name` of `database` is enabled (None: there is no such subscription).
/// `pg_subscription` is shared by all databases: any connection to the server can tell.
pub async fn subscription_enabled(client: &Client, database: &str, name: &str) -> Result<Option<bool>, ControlError> {
    let row = client
        .query_opt(
            "SELECT s.subenabled FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid \
             WHERE d.datname = $1 AND s.subname = $2",
            &[&database, &name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Enables or disables a subscription of the connection's database. In a read-write
/// transaction: the subscriber of the way back is old, fenced read-only by default.
pub async fn set_subscription_enabled(subscriber: &Client, subscription: &str, enabled: bool) -> Result<(), ControlError> {
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    super::read_write(subscriber, &format!("ALTER SUBSCRIPTION {} {verb}", super::quote_ident(subscription))).await
}
