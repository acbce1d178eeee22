//! The switch every session watches: whether new work is held, and which server is active.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::watch;

use crate::backend::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// New transactions wait in the proxy instead of being forwarded.
    pub held: bool,
    /// Where sessions belong. A parked session whose server differs moves to its standby.
    pub active: Role,
}

/// Sessions read the state on every pass of their loop: from an atomic, not the channel's lock.
/// They learn of changes through their own command queues (`Shared::set_gate`); the channel
/// serves clients waiting to connect.
pub struct Gate {
    tx: watch::Sender<GateState>,
    bits: AtomicU8,
}

const HELD: u8 = 1;
const ON_NEW: u8 = 2;

impl GateState {
    fn bits(self) -> u8 {
        (if self.held { HELD } else { 0 }) | (if self.active == Role::New { ON_NEW } else { 0 })
    }

    fn from_bits(bits: u8) -> Self {
        GateState { held: bits & HELD != 0, active: if bits & ON_NEW != 0 { Role::New } else { Role::Old } }
    }
}

impl Default for Gate {
    fn default() -> Self {
        let initial = GateState { held: false, active: Role::Old };
        let (tx, _) = watch::channel(initial);
        Self { tx, bits: AtomicU8::new(initial.bits()) }
    }
}

impl Gate {
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.tx.subscribe()
    }

    pub fn state(&self) -> GateState {
        GateState::from_bits(self.bits.load(Ordering::SeqCst))
    }

    /// Use `Shared::set_gate`, which also tells every session.
    pub(crate) fn set(&self, state: GateState) {
        self.tx.send_modify(|s| {
            *s = state;
            self.bits.store(state.bits(), Ordering::SeqCst);
        });
    }

    /// Waits until new work may flow; returns the server it should go to.
    pub async fn wait_open(&self) -> Role {
        let mut rx = self.tx.subscribe();
        let active = match rx.wait_for(|s| !s.held).await {
            Ok(state) => state.active,
            Err(_) => self.state().active,
        };
        active
    }
}
