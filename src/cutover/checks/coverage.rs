//! Tables old publishes that the subscription does not cover: their writes never reach new.

use super::{list, names, Database, Findings};
use crate::control::quote_ident;
use crate::control::readiness::coverage::{self, PublishedTable};
use crate::cutover::CheckRow;

const CHECK: &str = "tables subscribed";

/// A table created on old after the subscription is published at once by FOR ALL TABLES but
/// absent from `pg_subscription_rel` until REFRESH PUBLICATION: "tables ready" and "all tables
/// published" both pass while its writes are dropped.
pub(super) async fn row(db: &Database<'_>, published: &[PublishedTable], findings: &mut Findings) -> CheckRow {
    let subscribed = match coverage::subscribed_tables(db.new, db.subscription.oid).await {
        Ok(s) => s,
        Err(e) => return db.unknown(CHECK, "fail", &e),
    };
    let known: std::collections::BTreeSet<&str> = subscribed.iter().map(|(t, _)| t.as_str()).collect();
    let uncovered: Vec<String> = names(published).into_iter().filter(|t| !known.contains(t.as_str())).collect();
    findings.subscribed = Some(subscribed);
    if uncovered.is_empty() {
        return db.row(CHECK, "ok", format!("every one of the {} published tables is subscribed", published.len()));
    }
    let existing = match coverage::existing_tables(db.new, &uncovered).await {
        Ok(e) => e,
        Err(e) => return db.unknown(CHECK, "fail", &e),
    };
    let (on_new, missing): (Vec<String>, Vec<String>) = uncovered.into_iter().partition(|t| existing.contains(t));
    let refresh = format!("ALTER SUBSCRIPTION {} REFRESH PUBLICATION", quote_ident(&db.subscription.name));
    let mut parts = Vec::new();
    if !on_new.is_empty() {
        parts.push(format!("published on old but not subscribed, so every write to them is lost at the cutover: {}; run on new: {refresh} (copies their rows, then streams them)", list(&on_new, 20)));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "published on old but missing on new (the first write to them stops the apply: \"relation does not exist\"): {}; create them on new from old's schema (pg_dump --schema-only --table=...), then {refresh}",
            list(&missing, 20)
        ));
        findings.causes.push(format!("tables missing on new: {}", list(&missing, 5)));
    }
    db.row(CHECK, "fail", parts.join("; "))
}
