//! Phase f, the commit point: every parked session moves to its prepared connection on new.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Role;
use crate::cutover::gate::GateState;
use crate::proxy::Shared;
use crate::session::registry::{Park, SessionHandle};

pub struct Rebound {
    pub moved: usize,
    pub closed: usize,
    pub longest_hold_ms: u64,
    pub not_confirmed: usize,
}

/// Flips the gate to new and released, then waits (briefly) for every session to confirm.
pub async fn run(shared: &Arc<Shared>, sessions: &[Arc<SessionHandle>]) -> Rebound {
    shared.set_gate(GateState { held: false, active: Role::New });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut out = Rebound { moved: 0, closed: 0, longest_hold_ms: 0, not_confirmed: 0 };
        for h in sessions {
            match &*h.park.borrow() {
                Park::Switched { held_ms } => {
                    out.moved += 1;
                    out.longest_hold_ms = out.longest_hold_ms.max(*held_ms);
                }
                Park::Closed => out.closed += 1,
                _ => out.not_confirmed += 1,
            }
        }
        if out.not_confirmed == 0 || Instant::now() >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
