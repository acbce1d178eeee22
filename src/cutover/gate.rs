//! The switch every session watches: whether new work is held, and which server is active.

use tokio::sync::watch;

use crate::backend::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateState {
    /// New transactions wait in the proxy instead of being forwarded.
    pub held: bool,
    /// Where sessions belong. A parked session whose server differs moves to its standby.
    pub active: Role,
}

pub struct Gate {
    tx: watch::Sender<GateState>,
}

impl Default for Gate {
    fn default() -> Self {
        let (tx, _) = watch::channel(GateState { held: false, active: Role::Old });
        Self { tx }
    }
}

impl Gate {
    pub fn subscribe(&self) -> watch::Receiver<GateState> {
        self.tx.subscribe()
    }

    pub fn state(&self) -> GateState {
        *self.tx.borrow()
    }

    pub fn set(&self, state: GateState) {
        self.tx.send_replace(state);
    }

    pub fn set_held(&self, held: bool) {
        self.tx.send_modify(|s| s.held = held);
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
