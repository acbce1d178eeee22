//! `SHOW SESSIONS`: one row per client session, with whether it could move right now, then one
//! per session on the active server that bypasses the proxy (id `direct:<pid>`, server
//! `<name> (direct)`).

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;
use crate::session::registry::{SessionHandle, Status, PROBE_WAIT};

pub const COLUMNS: &[&str] = &["id", "client_addr", "user", "database", "state", "tx_status", "server", "age_s", "prepared", "can_move", "application_name"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowSessions;

impl ShowSessions {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("SHOW SESSIONS", args)?;
        Ok(ShowSessions)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let unanswered = shared.registry.probe_all().await;
        let mut set = ResultSet::new(COLUMNS);
        // Listed again after the wait: sessions that ended meanwhile drop out.
        for handle in shared.registry.all() {
            let mut row = row(&handle, &handle.status());
            if unanswered.contains(&handle.id) {
                row[9] = format!("unknown: busy, not checked within {}s", PROBE_WAIT.as_secs());
            }
            set.push(row);
        }
        if shared.new.is_some() {
            match crate::cutover::epoch::foreign_sessions(shared).await {
                Ok(foreign) => {
                    let server = format!("{} (direct)", shared.gate.state().active.as_str());
                    for f in foreign {
                        let can_move = "no: connected to the server directly, not through pgcutover".to_string();
                        set.push([format!("direct:{}", f.pid), f.client_addr, f.user, f.database, f.state, "-".into(), server.clone(), "-".into(), "-".into(), can_move, f.application_name]);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "SHOW SESSIONS: cannot list the sessions that bypass the proxy"),
            }
        }
        Ok(set)
    }
}

fn row(handle: &SessionHandle, status: &Status) -> [String; 11] {
    [
        handle.id.to_string(),
        handle.client_addr.to_string(),
        handle.user.clone(),
        handle.database.clone(),
        status.state.to_string(),
        status.tx_status.to_string(),
        status.server.to_string(),
        handle.started.elapsed().as_secs().to_string(),
        status.prepared.to_string(),
        can_move(status),
        handle.startup.setting("application_name").unwrap_or("").to_string(),
    ]
}

/// "yes", or "no: " and every reason it could not move now.
pub fn can_move(status: &Status) -> String {
    let mut reasons = Vec::new();
    if status.tx_status != 'I' {
        reasons.push("in transaction".to_string());
    }
    reasons.extend(status.blockers.iter().cloned());
    if reasons.is_empty() {
        "yes".into()
    } else {
        format!("no: {}", reasons.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn can_move_lists_every_reason() {
        let idle = Status { tx_status: 'I', ..Default::default() };
        assert_eq!(can_move(&idle), "yes");
        let busy = Status { tx_status: 'T', ..Default::default() };
        assert_eq!(can_move(&busy), "no: in transaction");
        let blocked = Status { tx_status: 'E', blockers: vec!["temp tables".into(), "advisory locks".into()], ..Default::default() };
        assert_eq!(can_move(&blocked), "no: in transaction, temp tables, advisory locks");
        let held = Status { tx_status: 'I', blockers: vec!["WITH HOLD cursors".into()], ..Default::default() };
        assert_eq!(can_move(&held), "no: WITH HOLD cursors");
    }
}
