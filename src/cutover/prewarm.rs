//! Opens one authenticated connection on new per session, before anything is held, so the
//! switch itself never waits for a connect or an authentication.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::backend::{self, Role};
use crate::proxy::Shared;
use crate::session::registry::{Command, SessionHandle};

/// Connections opened at once; enough to pre-warm 1,000 sessions quickly without a stampede.
const PARALLEL: usize = 32;

/// Returns the number of sessions pre-warmed, or the first failure.
pub async fn run(shared: &Arc<Shared>, sessions: &[Arc<SessionHandle>]) -> Result<usize, String> {
    let Some(new) = shared.server(Role::New) else { return Err("no new server".into()) };
    let results: Vec<Result<(), String>> = stream::iter(sessions.iter().cloned())
        .map(|handle| async move {
            let conn = backend::connect(new, &handle.startup, handle.backend_password.as_deref())
                .await
                .map_err(|e| format!("session {} (user {}, database {}): {e}", handle.id, handle.user, handle.database))?;
            // A session that ended meanwhile just drops the connection.
            let _ = handle.commands.send(Command::Attach(Box::new(conn)));
            Ok(())
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    match failures.first() {
        None => Ok(sessions.len()),
        Some(first) => Err(format!("{} of {} connections on new failed; first: {first}", failures.len(), sessions.len())),
    }
}
