//! The shape of the subscribed tables on one server, for the drift comparison old ↔ new.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::control::ControlError;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type()`: `integer`, `character varying(20)`, ...
    pub type_name: String,
    pub not_null: bool,
    pub generated: bool,
    pub has_default: bool,
}

/// One table as the apply worker meets it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableShape {
    pub columns: Vec<Column>,
    /// CHECK, UNIQUE, PRIMARY KEY and EXCLUDE constraints: (name, definition).
    pub constraints: Vec<(String, String)>,
    /// Unique indexes that back no constraint: (name, definition from `USING` on).
    pub unique_indexes: Vec<(String, String)>,
    /// `relreplident`: d, n, f or i.
    pub replica_identity: String,
    /// A primary key, or the index REPLICA IDENTITY USING INDEX names.
    pub has_identity_key: bool,
}

/// Shapes of the tables among `names` that exist on this server, by name.
pub async fn shapes(client: &Client, names: &[String]) -> Result<BTreeMap<String, TableShape>, ControlError> {
    const TABLES: &str = "SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relreplident::text AS replident, \
        EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)) AS keyed \
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.relkind IN ('r', 'p') AND format('%I.%I', n.nspname, c.relname) = ANY($1)";
    let mut out = BTreeMap::new();
    for r in client.query(TABLES, &[&names]).await? {
        out.insert(r.get::<_, String>(1), TableShape { replica_identity: r.get(2), has_identity_key: r.get(3), ..Default::default() });
    }
    let columns = client
        .query(
            &format!(
                "WITH t AS ({TABLES}) SELECT t.name, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                 a.attgenerated <> '', a.atthasdef FROM t JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid \
                 WHERE a.attnum > 0 AND NOT a.attisdropped ORDER BY t.name, a.attnum"
            ),
            &[&names],
        )
        .await?;
    for r in columns {
        if let Some(shape) = out.get_mut(&r.get::<_, String>(0)) {
            shape.columns.push(Column { name: r.get(1), type_name: r.get(2), not_null: r.get(3), generated: r.get(4), has_default: r.get(5) });
        }
    }
    // Postgres 18 keeps NOT NULL as constraints too (contype 'n'): those compare as columns.
    let constraints = client
        .query(
            &format!(
                "WITH t AS ({TABLES}) SELECT t.name, con.conname::text, pg_catalog.pg_get_constraintdef(con.oid) \
                 FROM t JOIN pg_catalog.pg_constraint con ON con.conrelid = t.oid WHERE con.contype IN ('c', 'u', 'p', 'x') ORDER BY 1, 2"
            ),
            &[&names],
        )
        .await?;
    for r in constraints {
        if let Some(shape) = out.get_mut(&r.get::<_, String>(0)) {
            shape.constraints.push((r.get(1), r.get(2)));
        }
    }
    let indexes = client
        .query(
            &format!(
                "WITH t AS ({TABLES}) SELECT t.name, ic.relname::text, \
                 substring(pg_catalog.pg_get_indexdef(i.indexrelid) FROM ' USING .*$') \
                 FROM t JOIN pg_catalog.pg_index i ON i.indrelid = t.oid JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                 WHERE i.indisunique AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint con WHERE con.conindid = i.indexrelid AND con.conrelid = t.oid) \
                 ORDER BY 1, 2"
            ),
            &[&names],
        )
        .await?;
    for r in indexes {
        if let Some(shape) = out.get_mut(&r.get::<_, String>(0)) {
            shape.unique_indexes.push((r.get(1), r.get::<_, Option<String>>(2).unwrap_or_default()));
        }
    }
    Ok(out)
}
