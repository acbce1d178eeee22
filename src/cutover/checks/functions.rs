//! Functions the apply worker calls on new (CHECKs, index expressions, replica-enabled
//! triggers, generated columns) that name other objects without a schema and have no
//! `SET search_path`: the apply worker runs with an empty search_path, so applying a row fails
//! ("function is_ok_inner(jsonb) does not exist") while the same statement works in psql.

use std::collections::{BTreeMap, BTreeSet};

use super::sql_names::{self, Known};
use super::{list_with, Database, Findings};
use crate::control::readiness::functions::{self, Function};
use crate::cutover::CheckRow;

const CHECK: &str = "functions the apply runs";

pub(super) async fn row(db: &Database<'_>, findings: &mut Findings) -> CheckRow {
    let loaded = tokio::try_join!(
        functions::uses(db.new, db.subscription.oid),
        functions::user_functions(db.new),
        functions::user_names(db.new)
    );
    let (uses, all, names) = match loaded {
        Ok(x) => x,
        Err(e) => return db.unknown(CHECK, "fail", &e),
    };
    let known_functions: BTreeSet<String> = names.functions.into_iter().collect();
    let relations: BTreeSet<String> = names.relations.into_iter().collect();
    let types: BTreeSet<String> = names.types.into_iter().collect();
    let known = Known { functions: &known_functions, relations: &relations, types: &types };
    let by_oid: BTreeMap<u32, &Function> = all.iter().map(|f| (f.oid, f)).collect();
    let mut by_name: BTreeMap<&str, Vec<&Function>> = BTreeMap::new();
    for f in &all {
        by_name.entry(f.name.as_str()).or_default().push(f);
    }
    let mut traps = Vec::new();
    let mut reported = BTreeSet::new();
    for u in &uses {
        let Some(root) = by_oid.get(&u.function_oid) else { continue };
        let mut seen = BTreeSet::new();
        let mut stack = vec![(*root, vec![root.signature.clone()])];
        while let Some((f, chain)) = stack.pop() {
            if !seen.insert(f.oid) || f.pinned || f.parsed_body || !["sql", "plpgsql"].contains(&f.language.as_str()) {
                // A pinned search_path also holds for the functions it calls.
                continue;
            }
            let found = sql_names::scan(&f.source, &known);
            if !found.unqualified.is_empty() && reported.insert((u.used_by.clone(), f.oid)) {
                let path = chain.join(" -> ");
                let refs = found.unqualified.iter().cloned().collect::<Vec<_>>().join(", ");
                let schema = f.signature.split('.').next().unwrap_or("public");
                traps.push(format!(
                    "{path} (used by {}) names {refs} without a schema and has no SET search_path; fix: ALTER FUNCTION {} SET search_path = {schema}, pg_catalog (or schema-qualify the names)",
                    u.used_by, f.signature
                ));
            }
            for callee in &found.calls {
                for g in by_name.get(callee.as_str()).into_iter().flatten() {
                    let mut next = chain.clone();
                    next.push(g.signature.clone());
                    stack.push((g, next));
                }
            }
        }
    }
    if traps.is_empty() {
        let distinct: BTreeSet<u32> = uses.iter().map(|u| u.function_oid).collect();
        return db.row(CHECK, "ok", format!("{} functions in constraints, indexes, replica triggers or generated columns resolve under an empty search_path", distinct.len()));
    }
    findings.causes.push(format!("a function the apply runs cannot resolve its names: {}", list_with(&traps, 1, "; ")));
    db.row(
        CHECK,
        "fail",
        format!("the apply worker runs with an empty search_path, so applying rows fails on new while psql works: {}", list_with(&traps, 10, "; ")),
    )
}
