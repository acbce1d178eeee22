//! Functions the apply worker runs on new for the subscribed tables, and what it needs to know
//! to tell whether they resolve names under its empty `search_path`.

use tokio_postgres::Client;

use super::USER_SCHEMA;
use crate::control::ControlError;

/// A function called while a row is applied: by a CHECK (of the table or of a column's
/// domain), an index expression or predicate, a trigger enabled for replica (ALWAYS or
/// REPLICA), or a stored generated column.
#[derive(Clone, Debug)]
pub struct Use {
    pub function_oid: u32,
    pub used_by: String,
}

/// A user-defined function (not in a system schema).
#[derive(Clone, Debug)]
pub struct Function {
    pub oid: u32,
    /// `schema.name(argtypes)`.
    pub signature: String,
    pub name: String,
    pub language: String,
    pub source: String,
    /// The body was parsed at CREATE time (`BEGIN ATOMIC` / SQL-standard body): its names are
    /// already resolved.
    pub parsed_body: bool,
    /// `SET search_path` is part of the function's definition.
    pub pinned: bool,
}

/// Names of user objects a function body may reach without a schema: functions, relations
/// and types. Only user schemas: `pg_catalog` is searched even under an empty search_path.
#[derive(Clone, Debug, Default)]
pub struct UserNames {
    pub functions: Vec<String>,
    pub relations: Vec<String>,
    pub types: Vec<String>,
}

pub async fn uses(new: &Client, subscription_oid: u32) -> Result<Vec<Use>, ControlError> {
    let rows = new
        .query(
            "WITH sub AS (SELECT srrelid AS relid FROM pg_catalog.pg_subscription_rel WHERE srsubid = $1), \
             dep AS (SELECT classid, objid, refobjid FROM pg_catalog.pg_depend WHERE refclassid = 'pg_catalog.pg_proc'::regclass) \
             SELECT dep.refobjid, format('CHECK %s on %s', con.conname, con.conrelid::regclass) \
               FROM pg_catalog.pg_constraint con JOIN sub ON sub.relid = con.conrelid \
               JOIN dep ON dep.classid = 'pg_catalog.pg_constraint'::regclass AND dep.objid = con.oid \
             UNION \
             SELECT dep.refobjid, format('CHECK %s of domain %s (column %s.%s)', con.conname, con.contypid::regtype, a.attrelid::regclass, a.attname) \
               FROM pg_catalog.pg_attribute a JOIN sub ON sub.relid = a.attrelid \
               JOIN pg_catalog.pg_constraint con ON con.contypid = a.atttypid \
               JOIN dep ON dep.classid = 'pg_catalog.pg_constraint'::regclass AND dep.objid = con.oid \
               WHERE a.attnum > 0 AND NOT a.attisdropped \
             UNION \
             SELECT dep.refobjid, format('index %s on %s', i.indexrelid::regclass, i.indrelid::regclass) \
               FROM pg_catalog.pg_index i JOIN sub ON sub.relid = i.indrelid \
               JOIN dep ON dep.classid = 'pg_catalog.pg_class'::regclass AND dep.objid = i.indexrelid \
             UNION \
             SELECT t.tgfoid, format('trigger %s on %s (enabled %s)', t.tgname, t.tgrelid::regclass, \
                    CASE t.tgenabled WHEN 'A' THEN 'ALWAYS' ELSE 'for REPLICA' END) \
               FROM pg_catalog.pg_trigger t JOIN sub ON sub.relid = t.tgrelid \
               WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R') \
             UNION \
             SELECT dep.refobjid, format('generated column %s.%s', ad.adrelid::regclass, a.attname) \
               FROM pg_catalog.pg_attrdef ad JOIN sub ON sub.relid = ad.adrelid \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum AND a.attgenerated <> '' \
               JOIN dep ON dep.classid = 'pg_catalog.pg_attrdef'::regclass AND dep.objid = ad.oid \
             ORDER BY 2",
            &[&subscription_oid],
        )
        .await?;
    Ok(rows.iter().map(|r| Use { function_oid: r.get(0), used_by: r.get(1) }).collect())
}

pub async fn user_functions(new: &Client) -> Result<Vec<Function>, ControlError> {
    let sql = format!(
        "SELECT p.oid, format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)), p.proname::text, l.lanname::text, coalesce(p.prosrc, ''), p.prosqlbody IS NOT NULL, \
         coalesce(EXISTS (SELECT 1 FROM unnest(p.proconfig) AS s WHERE s LIKE 'search\\_path=%'), false) \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang WHERE {USER_SCHEMA}"
    );
    let rows = new.query(&sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Function {
            oid: r.get(0),
            signature: r.get(1),
            name: r.get(2),
            language: r.get(3),
            source: r.get(4),
            parsed_body: r.get(5),
            pinned: r.get(6),
        })
        .collect())
}

pub async fn user_names(new: &Client) -> Result<UserNames, ControlError> {
    let functions = format!("SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMA}");
    let relations = format!(
        "SELECT DISTINCT c.relname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {USER_SCHEMA}"
    );
    let types = format!(
        "SELECT DISTINCT t.typname::text FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         WHERE t.typtype IN ('b', 'd', 'e', 'r', 'm') AND {USER_SCHEMA}"
    );
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let (f, r, t) = tokio::try_join!(new.query(&functions, &[]), new.query(&relations, &[]), new.query(&types, &[]))?;
    Ok(UserNames { functions: names(f), relations: names(r), types: names(t) })
}
