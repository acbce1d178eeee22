//! The subscription at work: tables still copying or stuck, apply and sync errors, whether the
//! apply worker runs, and signs that something else writes to new's tables.

use super::{list, Database, Findings};
use crate::control::readiness::coverage;
use crate::cutover::CheckRow;

/// An apply worker that has run this long since its last start has applied past whatever
/// failed before (an error ends the worker; the failing change comes first when it restarts).
const SETTLED_SECONDS: f64 = 60.0;

pub(super) async fn rows(db: &Database<'_>, findings: &Findings) -> Vec<CheckRow> {
    let oid = db.subscription.oid;
    let subscribed = match &findings.subscribed {
        Some(s) => Ok(s.clone()),
        None => coverage::subscribed_tables(db.new, oid).await,
    };
    let loaded = tokio::try_join!(async { subscribed }, coverage::subscription_stats(db.new, oid), coverage::workers(db.new, oid));
    let (subscribed, stats, workers) = match loaded {
        Ok(x) => x,
        Err(e) => return vec![db.unknown("tables ready", "fail", &e), db.unknown("apply worker", "fail", &e)],
    };
    let stat = |key: &str| stats.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v);
    let (apply_errors, sync_errors) = (stat("apply_error_count"), stat("sync_error_count"));
    let conflicts: Vec<String> = stats.iter().filter(|(k, v)| k.starts_with("confl_") && *v > 0).map(|(k, v)| format!("{}={v}", k.trim_start_matches("confl_"))).collect();
    let reset = format!("SELECT pg_stat_reset_subscription_stats({oid}) on new clears the counts once fixed");
    let mut rows = Vec::new();

    // Tables not yet streaming: still copying, or stuck.
    let not_ready: Vec<String> = subscribed
        .iter()
        .filter(|(_, state)| state != "r")
        .map(|(table, state)| {
            let doing = if workers.syncing.contains(table) { "copy running" } else { "no sync worker running" };
            format!("{table}:{state} ({doing})")
        })
        .collect();
    if not_ready.is_empty() {
        rows.push(db.row("tables ready", "ok", "every table in state r"));
    } else {
        let mut detail = format!("not in state r (i init, d copying, f/s finishing the copy): {}", list(&not_ready, 20));
        if sync_errors > 0 {
            detail.push_str(&format!(
                "; {sync_errors} table copies failed (the message is in new's log: usually a duplicate key or a constraint on new that old's rows break); {reset}"
            ));
        }
        rows.push(db.row("tables ready", "fail", detail));
    }

    // The apply worker itself.
    let mut causes = findings.causes.clone();
    if conflicts.iter().any(|c| c.starts_with("insert_exists") || c.starts_with("update_exists") || c.starts_with("multiple_unique")) {
        causes.push("rows from old collide with rows already on new (duplicate key)".into());
    }
    let likely = if causes.is_empty() { "the message is in new's server log".to_string() } else { format!("likely cause: {}", list(&causes, 3)) };
    if db.subscription.enabled {
        match workers.apply_uptime {
            None => rows.push(db.row(
                "apply worker",
                "fail",
                format!("not running: nothing from old is applied (it restarts every wal_retrieve_retry_interval after an error); {apply_errors} apply errors counted; {likely}"),
            )),
            Some(up) if apply_errors > 0 && up < SETTLED_SECONDS => rows.push(db.row(
                "apply worker",
                "fail",
                format!("{apply_errors} apply errors, the last less than {}s ago: replication stops at a change new cannot apply; {likely}; {reset}", up.ceil()),
            )),
            Some(up) if apply_errors > 0 => rows.push(db.row(
                "apply worker",
                "warn",
                format!("{apply_errors} apply errors in the past; running without one for {}s since; {reset}", up.floor()),
            )),
            Some(up) => rows.push(db.row("apply worker", "ok", format!("running for {}s, no apply errors", up.floor()))),
        }
    }

    // Writes on new from elsewhere: conflicts the apply met (data already differs), and who
    // else could write there.
    let mut parts = Vec::new();
    if !conflicts.is_empty() {
        parts.push(format!(
            "the apply found rows on new that differ from old's ({}): something writes to these tables on new, or rows were lost there; VERIFY names the rows; repair them, then {reset}",
            conflicts.join(", ")
        ));
    }
    let mut unknown = None;
    match tokio::try_join!(coverage::overlapping_subscriptions(db.new, oid), coverage::other_connections(db.new)) {
        Ok((subs, connections)) => {
            if !subs.is_empty() {
                let described: Vec<String> = subs.iter().map(|(s, t)| format!("{s} ({t})")).collect();
                parts.push(format!("other subscriptions write into the same tables: {}", list(&described, 5)));
            }
            if !connections.is_empty() {
                parts.push(format!("clients connected to new directly (their writes conflict with replication; stop them before the cutover): {}", list(&connections, 10)));
            }
        }
        Err(e) => unknown = Some(e),
    }
    rows.push(match (conflicts.is_empty(), parts.is_empty(), unknown) {
        (false, _, _) => db.row("writes on new", "fail", parts.join("; ")),
        (true, false, _) => db.row("writes on new", "warn", parts.join("; ")),
        (true, true, Some(e)) => db.unknown("writes on new", "warn", &e),
        (true, true, None) => db.row("writes on new", "ok", "no conflicts recorded, no other subscription or client writes here"),
    });
    rows
}
