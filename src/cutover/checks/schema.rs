//! Schema drift old → new for the published tables that exist on both: what makes the apply
//! fail (missing columns, types that may not hold old's values, a NOT NULL column new alone
//! has, no key to find rows by) and what may (constraints only new has).

use std::collections::{BTreeMap, BTreeSet};

use super::{list, list_with, names, Database, Findings};
use crate::control::readiness::coverage::PublishedTable;
use crate::control::readiness::schema::{self, TableShape};
use crate::cutover::CheckRow;

const CHECK: &str = "schema on new";

pub(super) async fn row(db: &Database<'_>, published: &[PublishedTable], findings: &mut Findings) -> CheckRow {
    let tables: Vec<String> = names(published).into_iter().collect();
    let (old, new) = match tokio::try_join!(schema::shapes(db.old, &tables), schema::shapes(db.new, &tables)) {
        Ok(pair) => pair,
        Err(e) => return db.unknown(CHECK, "fail", &e),
    };
    let mut failures = Vec::new();
    let mut warnings = Vec::new();
    for table in published {
        let (Some(o), Some(n)) = (old.get(&table.name), new.get(&table.name)) else { continue };
        compare(&table.name, &table.columns, o, n, &mut failures, &mut warnings);
    }
    if !failures.is_empty() {
        findings.causes.push(format!("schema drift: {}", list(&failures, 3)));
        let mut detail = format!("the apply fails on rows of these tables: {}", list_with(&failures, 20, "; "));
        if !warnings.is_empty() {
            detail.push_str(&format!("; also: {}", list_with(&warnings, 20, "; ")));
        }
        return db.row(CHECK, "fail", format!("{detail}; make new's tables match old's (pg_dump --schema-only of old)"));
    }
    if !warnings.is_empty() {
        return db.row(
            CHECK,
            "warn",
            format!("rows old accepts may be refused on new, which stops the apply: {}; add the same rule on old or drop it on new", list_with(&warnings, 20, "; ")),
        );
    }
    db.row(CHECK, "ok", format!("{} published tables have old's columns, types and constraints on new", old.len().min(new.len())))
}

fn compare(table: &str, published: &[String], old: &TableShape, new: &TableShape, failures: &mut Vec<String>, warnings: &mut Vec<String>) {
    let old_columns: BTreeMap<&str, &schema::Column> = old.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_columns: BTreeMap<&str, &schema::Column> = new.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    for name in published {
        let Some(o) = old_columns.get(name.as_str()) else { continue };
        match new_columns.get(name.as_str()) {
            None => failures.push(format!("{table}.{name} missing on new")),
            Some(n) if n.type_name != o.type_name => {
                let change = format!("{table}.{name} is {} on old, {} on new", o.type_name, n.type_name);
                if widens(&o.type_name, &n.type_name) {
                    warnings.push(format!("{change} (wider: values fit, but VERIFY compares their text)"));
                } else {
                    failures.push(format!("{change} (old's values may not fit or may change)"));
                }
            }
            Some(n) if n.not_null && !o.not_null => warnings.push(format!("{table}.{name} is NOT NULL on new only")),
            Some(_) => {}
        }
    }
    let sent: BTreeSet<&str> = published.iter().map(String::as_str).collect();
    for n in &new.columns {
        if !sent.contains(n.name.as_str()) && n.not_null && !n.has_default && !n.generated {
            failures.push(format!("{table}.{} is NOT NULL without a default on new and old does not send it", n.name));
        }
    }
    let old_rules: BTreeSet<String> = old.constraints.iter().map(|(_, d)| normalize(d)).chain(old.unique_indexes.iter().map(|(_, d)| normalize(d))).collect();
    for (name, definition) in new.constraints.iter().chain(new.unique_indexes.iter()) {
        if !old_rules.contains(&normalize(definition)) {
            warnings.push(format!("{table}: {name} {definition} on new only"));
        }
    }
    if old.replica_identity != "f" && old.has_identity_key && !new.has_identity_key {
        failures.push(format!("{table} has no primary key or replica identity index on new (updates and deletes from old cannot find their rows)"));
    }
}

/// Constraint text without what does not change which rows it accepts later.
fn normalize(definition: &str) -> String {
    definition.trim().trim_end_matches(" NOT VALID").to_string()
}

/// Type changes under which every value of the old type is the same value in the new one.
fn widens(old: &str, new: &str) -> bool {
    const INTEGERS: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];
    let rank = |t: &str| INTEGERS.iter().position(|i| *i == t);
    if let (Some(o), Some(n)) = (rank(old), rank(new)) {
        return n > o;
    }
    if old == "real" && new == "double precision" {
        return true;
    }
    let varchar_len = |t: &str| t.strip_prefix("character varying(").and_then(|r| r.strip_suffix(')')).and_then(|n| n.parse::<u32>().ok());
    let unbounded_text = |t: &str| t == "text" || t == "character varying";
    match (varchar_len(old), varchar_len(new)) {
        (Some(o), Some(n)) => return n >= o,
        (Some(_), None) => return unbounded_text(new),
        _ => {}
    }
    if unbounded_text(old) && unbounded_text(new) {
        return true;
    }
    // numeric(p,s) -> numeric, or the same scale with more precision.
    let numeric = |t: &str| -> Option<(u32, u32)> {
        let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match (numeric(old), numeric(new)) {
        (Some(_), None) => new == "numeric",
        (Some((op, os)), Some((np, ns))) => os == ns && np >= op,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_types() {
        assert!(widens("integer", "bigint"));
        assert!(!widens("bigint", "integer"));
        assert!(widens("character varying(5)", "character varying(10)"));
        assert!(!widens("character varying(10)", "character varying(5)"));
        assert!(widens("character varying(10)", "text"));
        assert!(!widens("text", "character varying(10)"));
        assert!(widens("numeric(10,2)", "numeric"));
        assert!(widens("numeric(10,2)", "numeric(12,2)"));
        assert!(!widens("numeric(10,4)", "numeric(10,2)"));
        assert!(!widens("timestamp without time zone", "timestamp with time zone"));
        assert!(!widens("json", "jsonb"));
    }

    #[test]
    fn missing_column_and_narrowed_type_fail_extra_check_warns() {
        let col = |name: &str, t: &str| schema::Column { name: name.into(), type_name: t.into(), ..Default::default() };
        let old = TableShape { columns: vec![col("id", "integer"), col("b", "text"), col("c", "integer")], has_identity_key: true, replica_identity: "d".into(), ..Default::default() };
        let new = TableShape {
            columns: vec![col("id", "bigint"), col("b", "character varying(5)")],
            constraints: vec![("b_short".into(), "CHECK ((length(b) < 3))".into())],
            has_identity_key: false,
            replica_identity: "d".into(),
            ..Default::default()
        };
        let (mut failures, mut warnings) = (Vec::new(), Vec::new());
        let published = vec!["id".to_string(), "b".to_string(), "c".to_string()];
        compare("public.t", &published, &old, &new, &mut failures, &mut warnings);
        assert_eq!(failures.len(), 3, "{failures:?}");
        assert!(failures.iter().any(|f| f.contains("public.t.c missing on new")));
        assert!(failures.iter().any(|f| f.contains("character varying(5)")));
        assert!(failures.iter().any(|f| f.contains("no primary key")));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("b_short")));
    }
}
