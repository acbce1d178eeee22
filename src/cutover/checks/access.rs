//! Who can log in and what they may do once on new: login roles and their passwords,
//! privileges, extensions, and room on new for the pre-warmed connections.

use std::collections::{BTreeMap, BTreeSet};

use super::{list, row, Database};
use crate::auth::ScramVerifier;
use crate::control::readiness::access;
use crate::control;
use crate::cutover::CheckRow;
use crate::proxy::Shared;

pub(super) async fn database_rows(db: &Database<'_>) -> Vec<CheckRow> {
    vec![privileges(db).await, extensions(db).await]
}

async fn privileges(db: &Database<'_>) -> CheckRow {
    const CHECK: &str = "privileges on new";
    let loaded = tokio::try_join!(access::privileges(db.old), access::privileges(db.new), access::superusers(db.new), access::login_roles(db.new));
    let (old, new, superusers, (roles_on_new, _)) = match loaded {
        Ok(x) => x,
        Err(e) => return db.unknown(CHECK, "warn", &e),
    };
    let new: BTreeSet<String> = new.into_iter().collect();
    // Objects missing on new are the schema rows' business.
    let objects_on_new: BTreeSet<&str> = new.iter().filter_map(|e| e.splitn(3, '|').nth(2)).collect();
    let on_new: BTreeSet<String> = roles_on_new.into_iter().map(|r| r.name).chain(superusers.iter().cloned()).collect();
    // role -> what it lacks; roles missing on new are the "login roles" row's business.
    let mut lacking: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in old.iter().filter(|e| !new.contains(*e)) {
        let mut parts = entry.splitn(3, '|');
        let (Some(role), Some(privilege), Some(object)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if superusers.iter().any(|s| s == role) || (role != "PUBLIC" && !on_new.contains(role)) || !objects_on_new.contains(object) {
            continue;
        }
        lacking.entry(role.to_string()).or_default().push(format!("{privilege} on {object}"));
    }
    if lacking.is_empty() {
        return db.row(CHECK, "ok", format!("every privilege granted on old ({}) is granted on new", old.len()));
    }
    let text: Vec<String> = lacking.iter().map(|(role, what)| format!("{role} lacks {}", list(what, 8))).collect();
    db.row(
        CHECK,
        "warn",
        format!("after the cutover these roles get \"permission denied\": {}; grant them on new (pg_dump --schema-only carries grants and owners)", list(&text, 10)),
    )
}

async fn extensions(db: &Database<'_>) -> CheckRow {
    const CHECK: &str = "extensions";
    let (old, new) = match tokio::try_join!(access::extensions(db.old), access::extensions(db.new)) {
        Ok(x) => x,
        Err(e) => return db.unknown(CHECK, "warn", &e),
    };
    let on_new: BTreeMap<String, String> = new.into_iter().collect();
    let mut problems = Vec::new();
    for (name, version) in &old {
        match on_new.get(name) {
            None => problems.push(format!("{name} {version} missing on new (CREATE EXTENSION {name} there)")),
            Some(v) if older(v, version) => problems.push(format!("{name} is {version} on old but {v} on new (ALTER EXTENSION {name} UPDATE on new)")),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        db.row(CHECK, "ok", format!("{} extensions on new at old's version or later", old.len()))
    } else {
        db.row(CHECK, "warn", list(&problems, 10))
    }
}

/// Whether extension version `a` is older than `b` ("1.4" < "1.10"; text otherwise).
fn older(a: &str, b: &str) -> bool {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u64>().ok()).collect::<Option<Vec<u64>>>();
    match (parts(a), parts(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a < b,
    }
}

/// Rows about the servers rather than one database.
pub(super) async fn server_rows(shared: &Shared, databases: usize) -> Vec<CheckRow> {
    let Some(new_server) = shared.new.as_ref() else { return Vec::new() };
    let connected = tokio::try_join!(
        control::connect(&shared.old.config, &shared.old.config.database),
        control::connect(&new_server.config, &new_server.config.database)
    );
    let (old, new) = match connected {
        Ok(pair) => pair,
        Err(e) => return vec![row("login roles", "warn", format!("could not check: {e}"))],
    };
    vec![login_roles(shared, &old, &new).await, connections(shared, &new, databases).await]
}

async fn login_roles(shared: &Shared, old: &tokio_postgres::Client, new: &tokio_postgres::Client) -> CheckRow {
    const CHECK: &str = "login roles";
    let ((old_roles, readable_old), (new_roles, readable_new)) = match tokio::try_join!(access::login_roles(old), access::login_roles(new)) {
        Ok(x) => x,
        Err(e) => return row(CHECK, "warn", format!("could not check: {e}")),
    };
    let on_new: BTreeMap<&str, Option<&str>> = new_roles.iter().map(|r| (r.name.as_str(), r.verifier.as_deref())).collect();
    let mut missing = Vec::new();
    let mut differ = Vec::new();
    for role in &old_roles {
        match on_new.get(role.name.as_str()) {
            None => missing.push(role.name.clone()),
            Some(new_verifier) => {
                if let (Some(a), Some(b)) = (role.verifier.as_deref(), new_verifier) {
                    let live = shared.live();
                    let configured = live.user(&role.name).and_then(|u| u.password());
                    if a != *b && !configured.is_some_and(|p| password_matches(&role.name, p, b)) {
                        differ.push(role.name.clone());
                    }
                }
            }
        }
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing on new (their sessions cannot be pre-warmed, the cutover stops): {}", list(&missing, 15)));
    }
    if !differ.is_empty() {
        parts.push(format!(
            "a different password verifier on new (a different password, or the same one with another salt; clients whose password new refuses cannot log in after the cutover): {}",
            list(&differ, 15)
        ));
    }
    if !(readable_old && readable_new) {
        parts.push("password verifiers not compared: the control user may not read pg_authid".into());
    }
    if missing.is_empty() && differ.is_empty() {
        let status = if parts.is_empty() { "ok" } else { "warn" };
        let mut detail = format!("{} login roles on old exist on new with the same verifiers", old_roles.len());
        if !parts.is_empty() {
            detail = format!("{detail}; {}", parts.join("; "));
        }
        return row(CHECK, status, detail);
    }
    row(CHECK, "warn", format!("{}; copy them with pg_dumpall --roles-only from old (it keeps the verifiers)", parts.join("; ")))
}

/// Whether `password` is the one behind `verifier` (as stored in `pg_authid.rolpassword`).
fn password_matches(user: &str, password: &str, verifier: &str) -> bool {
    if verifier.starts_with("md5") {
        return crate::auth::md5::md5_stored(user, password) == verifier;
    }
    match ScramVerifier::parse(verifier) {
        Ok(v) => ScramVerifier::from_password(password, v.salt(), v.iterations()).is_ok_and(|p| p.stored_key() == v.stored_key()),
        Err(_) => false,
    }
}

async fn connections(shared: &Shared, new: &tokio_postgres::Client, databases: usize) -> CheckRow {
    const CHECK: &str = "connections on new";
    let slots = match access::connections(new).await {
        Ok(s) => s,
        Err(e) => return row(CHECK, "warn", format!("could not check: {e}")),
    };
    let sessions = shared.registry.len() as i64;
    // One pre-warmed connection per session, and the cutover's control connection per database.
    let needed = sessions + databases as i64;
    let free = slots.max - slots.reserved - slots.in_use;
    let detail = format!(
        "max_connections {} - {} reserved - {} in use = {free} free; the cutover needs {needed} ({sessions} sessions pre-warmed, {databases} control connections); logical replication workers use worker slots, not these",
        slots.max, slots.reserved, slots.in_use
    );
    if needed > free {
        row(CHECK, "fail", format!("{detail}: raise max_connections on new (a restart) or close sessions"))
    } else {
        row(CHECK, "ok", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_versions_compare_numerically() {
        assert!(older("1.4", "1.10"));
        assert!(!older("1.10", "1.4"));
        assert!(!older("1.6", "1.6"));
    }

    #[test]
    fn configured_passwords_match_their_verifiers() {
        let v = ScramVerifier::from_password("pw", b"0123456789abcdef", 4096).expect("verifier");
        let text = format!(
            "SCRAM-SHA-256$4096:{}${}:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.salt()),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.stored_key()),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v.server_key())
        );
        assert!(password_matches("u", "pw", &text));
        assert!(!password_matches("u", "other", &text));
        assert!(password_matches("u", "pw", &crate::auth::md5::md5_stored("u", "pw")));
    }
}
