//! Phase a: everything that can be checked before anything is held. Produces the CHECK rows
//! and, when all pass, the open control connections the later phases use.

use std::sync::Arc;

use futures::future::join_all;
use tokio_postgres::Client;

use super::checks::{self, row};
use super::CheckRow;
use crate::control::{self, replication, replication::Subscription, sentinel, sequences};
use crate::proxy::Shared;

/// One database in the cutover: control connections to both servers and its subscription.
pub struct DatabaseLink {
    pub name: String,
    pub old: Client,
    pub new: Client,
    pub subscription: Subscription,
}

/// The databases the cutover must cover: every one a session has used, plus configured ones.
pub fn databases_in_scope(shared: &Shared) -> Vec<String> {
    let mut dbs = shared.registry.databases_seen();
    for s in &shared.live().cutover.subscriptions {
        if !dbs.contains(&s.database) {
            dbs.push(s.database.clone());
        }
    }
    dbs.sort();
    dbs
}

/// Runs every check. `install_sentinel` creates the sentinel table where missing (CUTOVER
/// does; CHECK only reports).
pub async fn run(shared: &Arc<Shared>, install_sentinel: bool) -> (Vec<CheckRow>, Vec<DatabaseLink>) {
    let mut rows = Vec::new();
    let Some(new) = shared.new.as_ref() else {
        rows.push(row("new server configured", "fail", "no --new server in the configuration"));
        return (rows, Vec::new());
    };
    match control::connect(&new.config, &new.config.database).await {
        Ok(_) => rows.push(row("new server reachable", "ok", new.config.address())),
        Err(e) => {
            rows.push(row("new server reachable", "fail", e.to_string()));
            return (rows, Vec::new());
        }
    }
    let databases = databases_in_scope(shared);
    if databases.is_empty() {
        rows.push(row("databases", "ok", "no database has been used through the proxy yet; nothing to prove"));
    }
    let checks = join_all(databases.iter().map(|db| check_database(shared, db, install_sentinel))).await;
    let mut links = Vec::new();
    for (db_rows, link) in checks {
        rows.extend(db_rows);
        links.extend(link);
    }
    if let Some((status, detail)) = crate::auth::passthrough::check_verifiers_on_new(shared).await {
        rows.push(row(crate::auth::passthrough::CHECK, status, detail));
    }
    rows.extend(checks::server_rows(shared, databases.len()).await);
    if !install_sentinel {
        // CHECK: fresh answers on what each session holds (CUTOVER reads them at pre-warm).
        let unanswered = shared.registry.probe_all().await;
        if !unanswered.is_empty() {
            let ids: Vec<String> = unanswered.iter().map(u64::to_string).collect();
            let detail = format!("busy, not checked within {}s: sessions {}", crate::session::registry::PROBE_WAIT.as_secs(), ids.join(", "));
            rows.push(row("sessions movable", "warn", detail));
        }
    }
    let blocked: Vec<String> = shared
        .registry
        .all()
        .iter()
        .filter_map(|h| {
            let st = h.status();
            (!st.blockers.is_empty()).then(|| format!("session {} ({})", h.id, st.blockers.join(", ")))
        })
        .collect();
    if blocked.is_empty() {
        rows.push(row("sessions movable", "ok", format!("{} sessions", shared.registry.len())));
    } else {
        rows.push(row("sessions movable", "warn", format!("cannot move, will be closed or abort the cutover: {}", blocked.join("; "))));
    }
    (rows, links)
}

async fn check_database(shared: &Arc<Shared>, db: &str, install_sentinel: bool) -> (Vec<CheckRow>, Option<DatabaseLink>) {
    let mut rows = Vec::new();
    let prefix = |what: &str| format!("{db}: {what}");
    let Some(new_server) = shared.new.as_ref() else { return (rows, None) };
    let (old, new) = match tokio::try_join!(control::connect(&shared.old.config, db), control::connect(&new_server.config, db)) {
        Ok(pair) => pair,
        Err(e) => {
            rows.push(row(prefix("control connections"), "fail", e.to_string()));
            return (rows, None);
        }
    };
    let live = shared.live();
    let configured = live.cutover.subscriptions.iter().find(|s| s.database == db).map(|s| s.name.as_str());
    let subscription = match replication::find_subscription(&new, configured).await {
        Ok(s) => s,
        Err(e) => {
            rows.push(row(prefix("subscription"), "fail", e.to_string()));
            return (rows, None);
        }
    };
    let push = |rows: &mut Vec<CheckRow>, check: &str, status: &'static str, detail: String| {
        rows.push(row(prefix(check), status, detail));
    };
    let any_failed = |rows: &[CheckRow]| rows.iter().any(|r| r.status == "fail");
    push(
        &mut rows,
        "subscription enabled",
        if subscription.enabled { "ok" } else { "fail" },
        format!("{} ({})", subscription.name, if subscription.enabled { "enabled" } else { "disabled" }),
    );
    match replication::unpublished_tables(&old, &subscription.publications).await {
        Ok(t) if t.is_empty() => push(&mut rows, "all tables published", "ok", format!("publications {}", subscription.publications.join(", "))),
        Ok(t) => push(&mut rows, "all tables published", "fail", format!("not published (their writes would be lost): {}", t.join(", "))),
        Err(e) => push(&mut rows, "all tables published", "fail", e.to_string()),
    }
    match replication::tables_without_identity(&old, &subscription.publications).await {
        Ok(t) if t.is_empty() => push(&mut rows, "replica identity", "ok", "every published table has one".into()),
        Ok(t) => {
            let updated: Vec<&str> = t.iter().filter(|(_, u)| *u).map(|(n, _)| n.as_str()).collect();
            let insert_only: Vec<&str> = t.iter().filter(|(_, u)| !*u).map(|(n, _)| n.as_str()).collect();
            if updated.is_empty() {
                push(&mut rows, "replica identity", "warn", format!("insert-only so far, no replica identity: {}", insert_only.join(", ")));
            } else {
                push(&mut rows, "replica identity", "fail", format!("updated or deleted without a replica identity: {}", updated.join(", ")));
            }
        }
        Err(e) => push(&mut rows, "replica identity", "fail", e.to_string()),
    }
    match tokio::try_join!(sequences::list(&old), sequences::list(&new)) {
        Ok((on_old, on_new)) => {
            let missing: Vec<&String> = on_old.iter().filter(|s| !on_new.contains(s)).collect();
            if missing.is_empty() {
                push(&mut rows, "sequences on new", "ok", format!("{} sequences", on_old.len()));
            } else {
                push(&mut rows, "sequences on new", "fail", format!("missing on new: {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
            }
        }
        Err(e) => push(&mut rows, "sequences on new", "fail", e.to_string()),
    }
    match subscription.slot.as_deref() {
        Some(slot) => match replication::slot_lag(&old, slot).await {
            Ok(Some(lag)) if lag as u64 <= live.cutover.max_lag_to_start => {
                push(&mut rows, "replication lag", "ok", format!("{lag} bytes (slot {slot})"))
            }
            Ok(Some(lag)) => push(
                &mut rows,
                "replication lag",
                "fail",
                format!("{lag} bytes behind, above max_lag_to_start {}", live.cutover.max_lag_to_start),
            ),
            Ok(None) => push(&mut rows, "replication lag", "fail", format!("slot {slot} not found on old")),
            Err(e) => push(&mut rows, "replication lag", "fail", e.to_string()),
        },
        None => push(&mut rows, "replication lag", "fail", "the subscription has no slot".into()),
    }
    let readiness = checks::Database { name: db, old: &old, new: &new, subscription: &subscription, check: &live.check };
    rows.extend(checks::database_rows(&readiness).await);
    let sentinel_ready = match tokio::try_join!(sentinel::exists(&old), sentinel::exists(&new)) {
        Ok((true, true)) => Ok(()),
        Ok(_) if install_sentinel && !any_failed(&rows) => sentinel::install(&old, &new, &subscription.name, &subscription.publications).await.map_err(|e| e.to_string()),
        Ok(_) => Err(format!("{} will be created on both servers by CUTOVER", sentinel::TABLE)),
        Err(e) => Err(e.to_string()),
    };
    match sentinel_ready {
        Ok(()) => push(&mut rows, "sentinel table", "ok", sentinel::TABLE.to_string()),
        Err(e) if !install_sentinel => push(&mut rows, "sentinel table", "warn", e),
        Err(e) => push(&mut rows, "sentinel table", "fail", e),
    }
    let link = (!any_failed(&rows)).then(|| DatabaseLink { name: db.to_string(), old, new, subscription });
    (rows, link)
}
