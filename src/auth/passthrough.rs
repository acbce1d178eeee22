//! A pass-through credential (a SCRAM ClientKey, an md5 verifier) logs in only where the
//! server holds the same verifier for the role. Before a cutover, compare: for every role a
//! session logs in with by pass-through, new's verifier against the one the session answers
//! for. A role whose verifier differs on new has sessions that cannot move.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::credential::{ServerCredential, StoredSecret};
use super::query::Lookup;
use crate::backend::Role;
use crate::proxy::Shared;

/// The CHECK row's name.
pub const CHECK: &str = "role verifiers on new";

/// (status, detail) of the check, or `None` when nothing logs in by pass-through and no
/// auth_query is configured.
pub async fn check_verifiers_on_new(shared: &Shared) -> Option<(&'static str, String)> {
    let mut roles: BTreeMap<String, Vec<Arc<ServerCredential>>> = BTreeMap::new();
    for handle in shared.registry.all() {
        if handle.credential.is_pass_through() {
            roles.entry(handle.user.clone()).or_default().push(handle.credential.clone());
        }
    }
    if roles.is_empty() {
        return shared.auth_query.is_some().then(|| ("ok", "no session logs in by pass-through".to_string()));
    }
    let names: Vec<String> = roles.keys().cloned().collect();
    let on_new = match verifiers_on_new(shared, &names).await {
        Ok(v) => v,
        Err(e) => return Some(("warn", format!("cannot read the verifiers on new: {e}"))),
    };
    let mut differ = Vec::new();
    for (role, credentials) in &roles {
        let stored = on_new.get(role).and_then(Option::as_ref);
        if credentials.iter().any(|c| c.matches(stored) == Some(false)) {
            let what = match stored {
                None => "has no usable verifier there",
                Some(_) => "has another verifier there",
            };
            differ.push(format!("{role} ({what})"));
        }
    }
    Some(if differ.is_empty() {
        ("ok", format!("the same verifier on new for {}", names.join(", ")))
    } else {
        (
            "warn",
            format!(
                "sessions of these roles could not log into new: {}; copy old's verifiers (pg_dumpall --roles-only, or ALTER ROLE ... PASSWORD '<rolpassword from old>')",
                differ.join(", ")
            ),
        )
    })
}

/// Each role's verifier on new: through the auth_query when configured (as logins will look
/// it up after the cutover), else from `pg_authid` over the control connection.
async fn verifiers_on_new(shared: &Shared, roles: &[String]) -> Result<BTreeMap<String, Option<StoredSecret>>, String> {
    let mut out = BTreeMap::new();
    if let Some(query) = &shared.auth_query {
        for role in roles {
            let stored = match query.lookup_uncached(role, Role::New).await.map_err(|e| e.to_string())? {
                Lookup::Found { secret, .. } => Some(secret),
                Lookup::Missing(_) => None,
            };
            out.insert(role.clone(), stored);
        }
        return Ok(out);
    }
    let new = shared.new.as_ref().ok_or("no new server is configured")?;
    let client = crate::control::connect(&new.config, &new.config.database).await.map_err(|e| e.to_string())?;
    let rows = client
        .query("SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid WHERE rolname = ANY($1)", &[&roles])
        .await
        .map_err(|e| crate::control::ControlError::from(e).to_string())?;
    for row in rows {
        let text: Option<zeroize::Zeroizing<String>> = row.get::<_, Option<String>>(1).map(zeroize::Zeroizing::new);
        out.insert(row.get(0), text.and_then(|t| StoredSecret::parse(&t)));
    }
    Ok(out)
}
