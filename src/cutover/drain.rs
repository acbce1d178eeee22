//! Phases b and c: hold new work, wait for every session to reach a transaction boundary,
//! and past the deadline cancel running statements and resolve idle transactions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::IdleInTransaction;
use crate::proxy::Shared;
use crate::session::registry::{Command, Park, SessionHandle};

pub struct Drained {
    /// Every session, each now parked, unmovable or closed.
    pub sessions: Vec<Arc<SessionHandle>>,
    /// Sessions that got an Interrupt at the deadline.
    pub interrupted: usize,
}

fn settled(handle: &SessionHandle) -> bool {
    !matches!(*handle.park.borrow(), Park::Running)
}

/// Waits until every registered session is settled and no client is between the gate and
/// the registry, or until `deadline`. Returns the sessions seen (settled or not).
async fn wait_settled(shared: &Shared, deadline: Instant, aborted: &(dyn Fn() -> bool + Sync)) -> Vec<Arc<SessionHandle>> {
    loop {
        let sessions = shared.registry.all();
        let all_settled = shared.registry.connecting() == 0 && sessions.iter().all(|h| settled(h));
        if all_settled || Instant::now() >= deadline || aborted() {
            return sessions;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Holds the gate (the caller has set it) and drains. Err when sessions stay busy.
pub async fn run(shared: &Arc<Shared>, drain_timeout: Duration, idle_in_transaction: IdleInTransaction, aborted: &(dyn Fn() -> bool + Sync)) -> Result<Drained, String> {
    let sessions = wait_settled(shared, Instant::now() + drain_timeout, aborted).await;
    if aborted() {
        return Err("abort requested".into());
    }
    let busy: Vec<_> = sessions.iter().filter(|h| !settled(h)).cloned().collect();
    for handle in &busy {
        let _ = handle.commands.send(Command::Interrupt { idle_in_transaction });
    }
    let interrupted = busy.len();
    if interrupted > 0 {
        tracing::info!(sessions = interrupted, "drain deadline passed: cancelling running statements and idle transactions");
        // Cancelled statements return quickly; allow a short grace for their replies.
        let grace = Duration::from_secs(2).max(drain_timeout / 2);
        let sessions = wait_settled(shared, Instant::now() + grace, aborted).await;
        let still_busy: Vec<String> = sessions.iter().filter(|h| !settled(h)).map(|h| h.id.to_string()).collect();
        if !still_busy.is_empty() {
            return Err(format!("sessions still busy after cancelling: {}", still_busy.join(", ")));
        }
        return Ok(Drained { sessions, interrupted });
    }
    if shared.registry.connecting() > 0 {
        return Err("clients still connecting at the drain deadline".into());
    }
    Ok(Drained { sessions, interrupted })
}
