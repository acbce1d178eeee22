//! Who can log in and what they may do, on each server: login roles and their password
//! verifiers, privileges, extensions, and the connection room on new.

use tokio_postgres::Client;

use super::USER_SCHEMA;
use crate::control::ControlError;

/// A login role and its stored verifier; `None` when the control user may not read
/// `pg_authid` (not a superuser).
#[derive(Clone, Debug)]
pub struct LoginRole {
    pub name: String,
    pub verifier: Option<String>,
}

/// Login roles, and whether their verifiers could be read.
pub async fn login_roles(client: &Client) -> Result<(Vec<LoginRole>, bool), ControlError> {
    match client.query("SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid WHERE rolcanlogin ORDER BY 1", &[]).await {
        Ok(rows) => Ok((rows.iter().map(|r| LoginRole { name: r.get(0), verifier: r.get(1) }).collect(), true)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            let rows = client.query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolcanlogin ORDER BY 1", &[]).await?;
            Ok((rows.iter().map(|r| LoginRole { name: r.get(0), verifier: None }).collect(), false))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every privilege held on this database, its schemas, tables, views and sequences, as
/// `role|privilege|object` (owners' implicit privileges included, PUBLIC as `PUBLIC`).
pub async fn privileges(client: &Client) -> Result<Vec<String>, ControlError> {
    let sql = format!(
        "SELECT format('%s|%s|%s', coalesce(r.rolname, 'PUBLIC'), a.privilege_type, o.object) FROM ( \
             SELECT format('%s %I.%I', CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' ELSE 'table' END, n.nspname, c.relname) AS object, \
                    coalesce(c.relacl, pg_catalog.acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner)) AS acl \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMA} AND n.nspname <> 'pgcutover' \
             UNION ALL \
             SELECT format('schema %I', n.nspname), coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)) \
             FROM pg_catalog.pg_namespace n WHERE {USER_SCHEMA} AND n.nspname <> 'pgcutover' \
             UNION ALL \
             SELECT format('database %I', d.datname), coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba)) \
             FROM pg_catalog.pg_database d WHERE d.datname = current_database() \
         ) o CROSS JOIN LATERAL pg_catalog.aclexplode(o.acl) a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
         ORDER BY 1"
    );
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Superusers (their privileges need no grants).
pub async fn superusers(client: &Client) -> Result<Vec<String>, ControlError> {
    let rows = client.query("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolsuper", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Installed extensions: (name, version).
pub async fn extensions(client: &Client) -> Result<Vec<(String, String)>, ControlError> {
    let rows = client.query("SELECT extname::text, extversion FROM pg_catalog.pg_extension ORDER BY 1", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Connection slots on a server.
#[derive(Clone, Copy, Debug)]
pub struct Connections {
    pub max: i64,
    /// `superuser_reserved_connections` + `reserved_connections` (Postgres 16+).
    pub reserved: i64,
    /// Client backends connected now.
    pub in_use: i64,
}

pub async fn connections(client: &Client) -> Result<Connections, ControlError> {
    let row = client
        .query_one(
            "SELECT current_setting('max_connections')::int8, current_setting('superuser_reserved_connections')::int8 \
                 + coalesce(current_setting('reserved_connections', true), '0')::int8, \
             (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend')",
            &[],
        )
        .await?;
    Ok(Connections { max: row.get(0), reserved: row.get(1), in_use: row.get(2) })
}
