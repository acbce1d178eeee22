//! What logical replication does not carry: large objects, materialized view contents, and
//! the sequences no table owns (the cutover copies those too; other tools often miss them).

use tokio_postgres::Client;

use super::USER_SCHEMA;
use crate::control::ControlError;

/// Large objects on a server: (count, sum of their OIDs) — equal pairs mean the same set.
pub async fn large_objects(client: &Client) -> Result<(i64, String), ControlError> {
    let row = client.query_one("SELECT count(*), coalesce(sum(oid::int8), 0)::text FROM pg_catalog.pg_largeobject_metadata", &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Materialized views: (name, populated).
pub async fn materialized_views(client: &Client) -> Result<Vec<(String, bool)>, ControlError> {
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname), c.relispopulated FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND {USER_SCHEMA} ORDER BY 1"
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sequences that no column owns (neither `OWNED BY` nor an identity column).
pub async fn unowned_sequences(old: &Client) -> Result<Vec<String>, ControlError> {
    let sql = format!(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'S' AND {USER_SCHEMA} AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
             WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass \
             AND d.deptype IN ('a', 'i')) ORDER BY 1"
    );
    let rows = old.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
