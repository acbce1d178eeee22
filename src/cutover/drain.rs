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

/// How often a session that is still busy after its interrupt gets it again.
const INTERRUPT_REPEAT: Duration = Duration::from_millis(400);

/// How long cancelled statements get to end after the drain deadline.
pub fn grace(drain_timeout: Duration) -> Duration {
    Duration::from_secs(2).max(drain_timeout / 2)
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

/// Sends an interrupt to every session not yet settled; returns how many got one.
fn interrupt_busy(sessions: &[Arc<SessionHandle>], idle_in_transaction: IdleInTransaction) -> usize {
    let mut sent = 0;
    for handle in sessions.iter().filter(|h| !settled(h)) {
        let _ = handle.commands.send(Command::Interrupt { idle_in_transaction });
        sent += 1;
    }
    sent
}

/// Holds the gate (the caller has set it) and drains. Err when sessions stay busy.
pub async fn run(shared: &Arc<Shared>, drain_timeout: Duration, idle_in_transaction: IdleInTransaction, aborted: &(dyn Fn() -> bool + Sync)) -> Result<Drained, String> {
    let sessions = wait_settled(shared, Instant::now() + drain_timeout, aborted).await;
    if aborted() {
        return Err("abort requested".into());
    }
    let interrupted = interrupt_busy(&sessions, idle_in_transaction);
    if interrupted > 0 {
        tracing::info!(sessions = interrupted, "drain deadline passed: cancelling running statements and idle transactions");
        // Cancelled statements return quickly; allow a short grace for their replies. Postgres
        // ignores a cancel that arrives before the statement starts (the request may still be
        // on its way to the server), so the interrupt is repeated until the session settles.
        let grace_end = Instant::now() + grace(drain_timeout);
        loop {
            let next = (Instant::now() + INTERRUPT_REPEAT).min(grace_end);
            let sessions = wait_settled(shared, next, aborted).await;
            let still_busy: Vec<String> = sessions.iter().filter(|h| !settled(h)).map(|h| h.id.to_string()).collect();
            if aborted() {
                return Err("abort requested".into());
            }
            if still_busy.is_empty() {
                return Ok(Drained { sessions, interrupted });
            }
            if Instant::now() >= grace_end {
                return Err(format!("sessions still busy after cancelling: {}", still_busy.join(", ")));
            }
            interrupt_busy(&sessions, idle_in_transaction);
        }
    }
    if shared.registry.connecting() > 0 {
        return Err("clients still connecting at the drain deadline".into());
    }
    Ok(Drained { sessions, interrupted })
}
