//! The background task that keeps this instance's routing in line with the durable decision.
//! It reads both servers before the proxy accepts its first client, then every
//! `decision_poll` (faster while the route is unknown), on its own control connections
//! (reconnecting after any failure, so every reconnect is followed by a read).
//!
//! What it does with what it reads:
//! * a route different from the one in force (at start, or a decision this instance did not
//!   make): sessions move the way a cutover's rebind moves them — hold, let each reach a
//!   transaction boundary and switch, close those that cannot — then the gate opens there;
//! * an open epoch, or rows it must not act on: hold, and refuse new clients after
//!   `decision_wait` with 57P03; sessions held longer than that are closed with 57P03 too;
//! * servers it cannot read: the route in force stays (only a decision can change it, and in
//!   a single instance only this instance makes them); before the first successful read, hold;
//! * an epoch left open by a coordinator that is gone: settle it (abort); a settled epoch not
//!   yet finished: finish it (fence or lift the fence, disable subscriptions, mirror).
//!
//! It never acts while this instance runs a cutover (the cutover lock), and it reads again
//! under that lock before changing anything, so a cutover that ends between its read and its
//! action is never undone.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::resolve::{resolve, Duty, Read, Resolution, Route};
use crate::backend::Role;
use crate::control::decision::{self, EpochRow, Outcome};
use crate::cutover::drain;
use crate::cutover::gate::GateState;
use crate::proxy::Shared;
use crate::session::registry::{Command, Park};

/// A read of one server gives up after this long (the server counts as unreachable).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while the route is unknown.
const UNKNOWN_POLL: Duration = Duration::from_millis(250);

pub struct Watcher {
    shared: Arc<Shared>,
    old: Option<Client>,
    new: Option<Client>,
    last_error: Option<String>,
}

impl Watcher {
    pub fn new(shared: Arc<Shared>) -> Self {
        Watcher { shared, old: None, new: None, last_error: None }
    }

    pub async fn run(mut self) {
        loop {
            let poll = self.shared.live().cutover.decision_poll;
            let pause = if self.shared.routing.is_known() { poll } else { poll.min(UNKNOWN_POLL) };
            tokio::time::sleep(pause).await;
            self.poll().await;
            self.refuse_held_sessions();
        }
    }

    /// One read of both servers, and whatever it calls for.
    pub async fn poll(&mut self) {
        let resolution = self.read_and_resolve().await;
        if !self.must_act(&resolution) {
            return;
        }
        let shared = self.shared.clone();
        // This instance's own cutover settles its own epoch.
        let Ok(_no_cutover) = shared.cutover_lock.try_lock() else { return };
        let mut resolution = self.read_and_resolve().await;
        for _ in 0..3 {
            let Some(Duty::SettleAbandoned(row)) = &resolution.duty else { break };
            if !self.settle_abandoned(row).await {
                break;
            }
            resolution = self.read_and_resolve().await;
        }
        if let Some(Duty::Finish(row)) = &resolution.duty {
            self.finish(row).await;
        }
        self.apply(resolution.route).await;
    }

    async fn read_and_resolve(&mut self) -> Resolution {
        let (old, new) = tokio::join!(read(&self.shared, Role::Old, &mut self.old), read(&self.shared, Role::New, &mut self.new));
        let errors: Vec<String> = [(&old, "old"), (&new, "new")]
            .iter()
            .filter_map(|(r, name)| match r {
                Read::Unreachable(e) => Some(format!("{name}: {e}")),
                _ => None,
            })
            .collect();
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if error != self.last_error {
            match &error {
                Some(e) => tracing::warn!(error = %e, "cannot read the cutover decision"),
                None if self.last_error.is_some() => tracing::info!("the cutover decision can be read again"),
                None => {}
            }
            self.last_error = error.clone();
        }
        self.shared.routing.record_read(error);
        resolve(&old, &new)
    }

    /// Whether the resolution asks for a change (taken under the cutover lock).
    fn must_act(&self, resolution: &Resolution) -> bool {
        let routing = &self.shared.routing;
        if resolution.duty.is_some() {
            return true;
        }
        match &resolution.route {
            Route::Active { .. } => routing.route().as_ref() != Some(&resolution.route),
            Route::Wait { reason, .. } | Route::Refuse { reason } => routing.unknown_reason().as_ref() != Some(reason) || !routing.watcher_holds_gate(),
            // The route in force stays while the servers cannot be read.
            Route::Unknown { .. } => !routing.is_known() && !routing.watcher_holds_gate(),
        }
    }

    async fn apply(&mut self, route: Route) {
        match route {
            Route::Active { role, .. } => self.adopt(role, route).await,
            Route::Wait { reason, .. } | Route::Refuse { reason } => self.hold(reason),
            Route::Unknown { reason } => {
                if !self.shared.routing.is_known() {
                    self.hold(reason);
                }
            }
        }
    }

    /// Holds new work because the route is not known.
    fn hold(&self, reason: String) {
        let gate = self.shared.gate.state();
        let routing = &self.shared.routing;
        let holds = routing.watcher_holds_gate() || !gate.held;
        if routing.is_known() || routing.unknown_reason().as_ref() != Some(&reason) {
            tracing::warn!(%reason, "holding sessions: the route is not known");
        }
        if !gate.held {
            self.shared.set_held(true);
        }
        routing.set_unknown(reason, holds);
    }

    /// Routes to `role`: sessions elsewhere move there as in a cutover's rebind.
    async fn adopt(&self, role: Role, route: Route) {
        let shared = &self.shared;
        let gate = shared.gate.state();
        let watcher_held = shared.routing.watcher_holds_gate();
        if gate.active == role {
            if shared.routing.route().as_ref() != Some(&route) {
                tracing::info!(server = role.as_str(), ?route, "routing known");
            }
            shared.routing.set_known(route);
            if watcher_held {
                shared.set_held(false);
            }
            return;
        }
        tracing::warn!(server = role.as_str(), ?route, "the cutover decision routes sessions to another server: moving this instance's sessions there");
        shared.set_gate(GateState { held: true, active: role });
        let config = shared.live().cutover.clone();
        if let Err(reason) = drain::run(shared, config.drain_timeout, config.idle_in_transaction, &|| false).await {
            tracing::warn!(%reason, "some sessions did not reach a transaction boundary in time");
        }
        for handle in shared.registry.all() {
            let stuck = matches!(*handle.park.borrow(), Park::Running | Park::Unmovable(_));
            if stuck && handle.server_role() != Some(role) {
                let message = format!("terminating connection: the cutover decision moved sessions to the {} server and this one could not move", role.as_str());
                let _ = handle.commands.send(Command::Close { sqlstate: "57P01", message });
            }
        }
        shared.routing.set_known(route);
        // A PAUSE stays in force; a hold of the watcher's own ends.
        shared.set_gate(GateState { held: gate.held && !watcher_held, active: role });
    }

    /// Aborts an epoch whose coordinator is gone. True if it is settled now.
    async fn settle_abandoned(&mut self, row: &EpochRow) -> bool {
        let Some(target) = self.client(row.target) else { return false };
        match decision::abort_abandoned(target, row, &self.shared.routing.instance).await {
            Ok(Outcome::Pending) => false,
            Ok(outcome) => {
                tracing::warn!(epoch = row.epoch, outcome = outcome.as_str(), "settled a cutover epoch whose coordinator had gone");
                true
            }
            Err(e) => {
                tracing::warn!(epoch = row.epoch, error = %e, "could not settle an abandoned cutover epoch");
                self.forget(row.target);
                false
            }
        }
    }

    async fn finish(&mut self, row: &EpochRow) {
        let Some(source) = self.client(row.source) else { return };
        let facts = crate::cutover::epoch::finish(&self.shared, row, source, self.client(row.target)).await;
        let done: Vec<String> = facts.iter().map(|f| format!("{} {} {}", f.item, f.value, f.detail)).collect();
        tracing::info!(epoch = row.epoch, outcome = row.state.as_str(), done = %done.join("; "), "finished a settled cutover epoch");
    }

    fn client(&self, role: Role) -> Option<&Client> {
        match role {
            Role::Old => self.old.as_ref(),
            Role::New => self.new.as_ref(),
        }
    }

    fn forget(&mut self, role: Role) {
        match role {
            Role::Old => self.old = None,
            Role::New => self.new = None,
        }
    }

    /// Sessions held longer than `decision_wait` for want of a route are closed with 57P03.
    fn refuse_held_sessions(&self) {
        let Some((since, true)) = self.shared.routing.unknown_since() else { return };
        if since.elapsed() < self.shared.live().cutover.decision_wait {
            return;
        }
        let reason = self.shared.routing.unknown_reason().unwrap_or_default();
        for handle in self.shared.registry.all() {
            if matches!(*handle.park.borrow(), Park::Parked { .. } | Park::Unmovable(_)) {
                let message = format!("pgcutover cannot route this session now: {reason}");
                let _ = handle.commands.send(Command::Close { sqlstate: "57P03", message });
            }
        }
    }
}

/// Reads one server on its watcher connection, connecting first if there is none.
async fn read(shared: &Shared, role: Role, slot: &mut Option<Client>) -> Read {
    let Some(server) = shared.server(role) else { return Read::NotConfigured };
    if slot.as_ref().is_some_and(Client::is_closed) {
        *slot = None;
    }
    let attempt = tokio::time::timeout(READ_TIMEOUT, async {
        if slot.is_none() {
            *slot = Some(decision::connect(&server.config).await?);
        }
        match slot.as_ref() {
            Some(client) => decision::read(client, role).await,
            None => Err(crate::control::ControlError::Query("no connection".into())),
        }
    })
    .await;
    match attempt {
        Ok(Ok(view)) => Read::Seen(Box::new(view)),
        Ok(Err(e)) => {
            *slot = None;
            Read::Unreachable(e.to_string())
        }
        Err(_) => {
            *slot = None;
            Read::Unreachable(format!("no answer within {READ_TIMEOUT:?}"))
        }
    }
}
