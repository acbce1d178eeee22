//! Opens one authenticated connection on new per session, before anything is held, so the
//! switch itself never waits for a connect or an authentication.

use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::backend::{self, Role};
use crate::proxy::Shared;
use crate::session::registry::{Command, Prepared, SessionHandle};
use tokio::sync::oneshot;

/// Connections opened at once; enough to pre-warm 1,000 sessions quickly without a stampede.
const PARALLEL: usize = 32;

/// What the pre-warm achieved.
#[derive(Debug, Default)]
pub struct Prewarmed {
    pub connections: usize,
    /// Idle sessions whose state is already on new: their switch is a pointer swap.
    pub ready: usize,
    /// Busy sessions: they replay their state when the hold catches them between transactions.
    pub busy: usize,
    /// Sessions that hold state that cannot move (they will be closed, or abort the cutover).
    pub unmovable: usize,
}

/// Opens the connections and waits for each session to prepare its move (idle sessions
/// replay their state on new now, while nothing is held). Fails on the first connection error.
pub async fn run(shared: &Arc<Shared>, sessions: &[Arc<SessionHandle>]) -> Result<Prewarmed, String> {
    let Some(new) = shared.server(Role::New) else { return Err("no new server".into()) };
    let results: Vec<Result<Option<Prepared>, String>> = stream::iter(sessions.iter().cloned())
        .map(|handle| async move {
            let conn = backend::connect(new, &handle.startup, &handle.credential)
                .await
                .map_err(|e| format!("session {} (user {}, database {}): {e}", handle.id, handle.user, handle.database))?;
            let (reply, prepared) = oneshot::channel();
            // A session that ended meanwhile just drops the connection (and the reply).
            let _ = handle.commands.send(Command::Attach { conn: Box::new(conn), reply });
            Ok(prepared.await.ok())
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut out = Prewarmed::default();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(prepared) => {
                out.connections += 1;
                match prepared {
                    Some(Prepared::Ready) => out.ready += 1,
                    Some(Prepared::Busy) => out.busy += 1,
                    Some(Prepared::Unmovable(_)) => out.unmovable += 1,
                    None => {}
                }
            }
            Err(e) => failures.push(e),
        }
    }
    match failures.first() {
        None => Ok(out),
        Some(first) => Err(format!("{} of {} connections on new failed; first: {first}", failures.len(), sessions.len())),
    }
}
