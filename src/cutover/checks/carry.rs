//! What logical replication does not carry from old to new.

use std::collections::BTreeMap;

use super::{list, Database};
use crate::control::readiness::{carry, coverage};
use crate::cutover::CheckRow;

pub(super) async fn rows(db: &Database<'_>) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    rows.push(match tokio::try_join!(carry::large_objects(db.old), carry::large_objects(db.new)) {
        Err(e) => db.unknown("large objects", "fail", &e),
        Ok(((0, _), _)) => db.row("large objects", "ok", "none on old"),
        Ok((old, new)) if old == new => db.row(
            "large objects",
            "warn",
            format!("the same {} large objects on both, but logical replication does not carry their contents: re-copy the ones written since they were copied", old.0),
        ),
        Ok((old, new)) => db.row(
            "large objects",
            "fail",
            format!(
                "{} large objects on old, {} on new: logical replication does not carry them, so they are lost at the cutover; copy them to new (lo_export/lo_import, or pg_dump's large objects restored into new) while nothing writes them",
                old.0, new.0
            ),
        ),
    });
    rows.push(match tokio::try_join!(carry::materialized_views(db.old), carry::materialized_views(db.new)) {
        Err(e) => db.unknown("materialized views", "warn", &e),
        Ok((old, _)) if old.is_empty() => db.row("materialized views", "ok", "none on old"),
        Ok((old, new)) => {
            let on_new: BTreeMap<String, bool> = new.into_iter().collect();
            let missing: Vec<&str> = old.iter().filter(|(v, _)| !on_new.contains_key(v)).map(|(v, _)| v.as_str()).collect();
            let empty: Vec<&str> = old.iter().filter(|(v, _)| on_new.get(v) == Some(&false)).map(|(v, _)| v.as_str()).collect();
            if missing.is_empty() && empty.is_empty() {
                db.row("materialized views", "ok", format!("{} populated on new (as of their last refresh there): {}", old.len(), list(&old.iter().map(|(v, _)| v).collect::<Vec<_>>(), 10)))
            } else {
                let mut parts = Vec::new();
                if !empty.is_empty() {
                    parts.push(format!("not populated on new (their contents are not replicated; queries fail until then): {}; run REFRESH MATERIALIZED VIEW on new before the cutover", list(&empty, 10)));
                }
                if !missing.is_empty() {
                    parts.push(format!("missing on new: {}", list(&missing, 10)));
                }
                db.row("materialized views", "warn", parts.join("; "))
            }
        }
    });
    rows.push(match coverage::unlogged_tables(db.old).await {
        Err(e) => db.unknown("unlogged tables", "warn", &e),
        Ok(t) if t.is_empty() => db.row("unlogged tables", "ok", "none on old"),
        Ok(t) => db.row(
            "unlogged tables",
            "warn",
            format!(
                "logical replication does not carry unlogged tables; their rows stay behind on old: {}; if they must move, ALTER TABLE ... SET LOGGED on old (then REFRESH PUBLICATION on new), or refill them on new",
                list(&t.iter().map(|(name, n)| if *n >= 0 { format!("{name} (~{n} rows)") } else { name.clone() }).collect::<Vec<_>>(), 10)
            ),
        ),
    });
    rows.push(match carry::unowned_sequences(db.old).await {
        Err(e) => db.unknown("unowned sequences", "warn", &e),
        Ok(s) if s.is_empty() => db.row("unowned sequences", "ok", "every sequence belongs to a column"),
        Ok(s) => db.row(
            "unowned sequences",
            "warn",
            format!(
                "no column owns these sequences: {}; the cutover copies their values with the others, but a copy by other means that follows pg_get_serial_sequence() or OWNED BY misses them",
                list(&s, 10)
            ),
        ),
    });
    rows
}
