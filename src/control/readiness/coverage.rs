//! Which tables the subscription covers, and how its workers fare.

use tokio_postgres::Client;

use super::{NOT_PROXY_OWN, USER_SCHEMA};
use crate::control::ControlError;

/// A table old publishes to the subscription, with the columns it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    pub name: String,
    pub columns: Vec<String>,
}

/// Tables `publications` publish on old (leaf partitions as the publication sends them).
pub async fn published_tables(old: &Client, publications: &[String]) -> Result<Vec<PublishedTable>, ControlError> {
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname), array_agg(DISTINCT col ORDER BY col)::text[] \
         FROM pg_catalog.pg_publication_tables pt \
         JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
         CROSS JOIN LATERAL unnest(pt.attnames) AS col \
         WHERE pt.pubname = ANY($1) AND {NOT_PROXY_OWN} GROUP BY 1 ORDER BY 1"
    );
    let rows = old.query(&sql, &[&publications]).await?;
    Ok(rows.iter().map(|r| PublishedTable { name: r.get(0), columns: r.get(1) }).collect())
}

/// Tables the subscription knows (`pg_subscription_rel`), with their state letter.
pub async fn subscribed_tables(new: &Client, subscription_oid: u32) -> Result<Vec<(String, String)>, ControlError> {
    let rows = new
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), r.srsubstate::text FROM pg_catalog.pg_subscription_rel r \
             JOIN pg_catalog.pg_class c ON c.oid = r.srrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE r.srsubid = $1 ORDER BY 1",
            &[&subscription_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Which of `names` exist as tables on this server.
pub async fn existing_tables(client: &Client, names: &[String]) -> Result<Vec<String>, ControlError> {
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND format('%I.%I', n.nspname, c.relname) = ANY($1)",
            &[&names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The subscription's counters in `pg_stat_subscription_stats`: `apply_error_count`,
/// `sync_error_count` and, from Postgres 18 on, the `confl_*` conflict counts. Read by name
/// so an older new server simply has fewer of them.
pub async fn subscription_stats(new: &Client, subscription_oid: u32) -> Result<Vec<(String, i64)>, ControlError> {
    let rows = new
        .query(
            "SELECT e.key, e.value::int8 FROM pg_catalog.pg_stat_subscription_stats s \
             CROSS JOIN LATERAL jsonb_each_text(to_jsonb(s)) AS e \
             WHERE s.subid = $1 AND (e.key LIKE '%\\_error\\_count' OR e.key LIKE 'confl\\_%') AND e.value IS NOT NULL ORDER BY 1",
            &[&subscription_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The subscription's running workers.
#[derive(Clone, Debug, Default)]
pub struct Workers {
    /// Seconds the apply worker has run, if it runs. An error ends the worker, so this is
    /// also the time since the last apply error.
    pub apply_uptime: Option<f64>,
    /// Tables a table-synchronization worker is copying now.
    pub syncing: Vec<String>,
}

pub async fn workers(new: &Client, subscription_oid: u32) -> Result<Workers, ControlError> {
    let rows = new
        .query(
            "SELECT w.relid IS NULL, CASE WHEN c.oid IS NULL THEN '' ELSE format('%I.%I', n.nspname, c.relname) END, \
             extract(epoch FROM now() - a.backend_start)::float8 FROM pg_catalog.pg_stat_subscription w \
             LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = w.pid \
             LEFT JOIN pg_catalog.pg_class c ON c.oid = w.relid LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE w.subid = $1 AND w.pid IS NOT NULL",
            &[&subscription_oid],
        )
        .await?;
    let mut workers = Workers::default();
    for r in &rows {
        if r.get::<_, bool>(0) {
            let uptime = r.get::<_, Option<f64>>(2).unwrap_or(0.0);
            workers.apply_uptime = Some(workers.apply_uptime.map_or(uptime, |u: f64| u.min(uptime)));
        } else {
            workers.syncing.push(r.get(1));
        }
    }
    Ok(workers)
}

/// Other subscriptions on new that write into the same tables: (subscription, tables).
pub async fn overlapping_subscriptions(new: &Client, subscription_oid: u32) -> Result<Vec<(String, String)>, ControlError> {
    let rows = new
        .query(
            "SELECT s.subname::text, string_agg(format('%I.%I', n.nspname, c.relname), ', ' ORDER BY 1) \
             FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_subscription_rel r ON r.srsubid = s.oid \
             JOIN pg_catalog.pg_class c ON c.oid = r.srrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE s.oid <> $1 AND r.srrelid IN (SELECT srrelid FROM pg_catalog.pg_subscription_rel WHERE srsubid = $1) \
             GROUP BY 1 ORDER BY 1",
            &[&subscription_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Client connections to this database on new that are not pgcutover's own: `user@address
/// (application)`.
pub async fn other_connections(new: &Client) -> Result<Vec<String>, ControlError> {
    let rows = new
        .query(
            "SELECT format('%s@%s%s', usename, coalesce(host(client_addr), 'local socket'), \
                 CASE WHEN coalesce(application_name, '') = '' THEN '' ELSE format(' (%s)', application_name) END) \
             FROM pg_catalog.pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' \
             AND pid <> pg_catalog.pg_backend_pid() AND coalesce(application_name, '') <> 'pgcutover' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Unlogged tables on old: logical replication never carries them. (table, estimated rows,
/// -1 if never analyzed)
pub async fn unlogged_tables(old: &Client) -> Result<Vec<(String, i64)>, ControlError> {
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname), c.reltuples::int8 FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND c.relpersistence = 'u' AND {USER_SCHEMA} ORDER BY 1"
    );
    let rows = old.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
