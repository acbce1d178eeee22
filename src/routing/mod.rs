//! Where sessions go — and whether that is known at all. The answer comes from the durable
//! cutover decision on the servers (`control::decision`), read at start, after every epoch and
//! periodically by the watcher; sessions only ever read it from memory (the gate).
//!
//! While it is not known (before the first read, an epoch being settled elsewhere, rows of
//! other clusters) the gate is held: new clients wait up to `decision_wait`, then get 57P03
//! with the reason. A session routed by a committed decision to a server that is down gets
//! 57P03 too, never the server the decision retired.

pub mod resolve;
pub mod watcher;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use crate::backend::Role;
use crate::metrics::Metrics;
pub use resolve::Route;

#[derive(Clone, Debug)]
enum Knowledge {
    /// Always `Route::Active`.
    Known(Route),
    Unknown {
        reason: String,
        since: Instant,
        /// The watcher (not a PAUSE or a cutover) holds the gate because of it.
        holds_gate: bool,
    },
}

/// The outcome of the last read of the servers, for SHOW STATUS.
#[derive(Clone, Debug)]
struct LastRead {
    at: Instant,
    error: Option<String>,
}

pub struct Routing {
    /// This process, as named in the rows it writes: random id, pid, listen address.
    pub instance: String,
    knowledge: Mutex<Knowledge>,
    known: AtomicBool,
    last_read: Mutex<Option<LastRead>>,
    metrics: Arc<Metrics>,
}

impl Routing {
    pub fn new(listen: std::net::SocketAddr, metrics: Arc<Metrics>) -> Self {
        let instance = format!("{:08x} (pid {}, {listen})", rand::random::<u32>(), std::process::id());
        let knowledge = Knowledge::Unknown { reason: "the cutover decision has not been read yet".into(), since: Instant::now(), holds_gate: false };
        metrics.routing_known.set(0);
        Routing { instance, knowledge: Mutex::new(knowledge), known: AtomicBool::new(false), last_read: Mutex::new(None), metrics }
    }

    pub fn is_known(&self) -> bool {
        self.known.load(Ordering::SeqCst)
    }

    /// The route in force, if known.
    pub fn route(&self) -> Option<Route> {
        match self.knowledge.lock().map(|k| k.clone()) {
            Ok(Knowledge::Known(route)) => Some(route),
            _ => None,
        }
    }

    /// Why the route is not known (None: it is).
    pub fn unknown_reason(&self) -> Option<String> {
        match self.knowledge.lock().map(|k| k.clone()) {
            Ok(Knowledge::Unknown { reason, .. }) => Some(reason),
            Ok(Knowledge::Known(_)) => None,
            Err(_) => Some("routing state unavailable".into()),
        }
    }

    /// How long the route has been unknown, and whether the watcher holds the gate for it.
    pub fn unknown_since(&self) -> Option<(Instant, bool)> {
        match self.knowledge.lock().map(|k| k.clone()) {
            Ok(Knowledge::Unknown { since, holds_gate, .. }) => Some((since, holds_gate)),
            _ => None,
        }
    }

    /// Records the route (a `Route::Active`) as known.
    pub fn set_known(&self, route: Route) {
        if let Route::Active { epoch, .. } = &route {
            self.metrics.decision_epoch.set(epoch.unwrap_or(0));
        }
        self.metrics.routing_known.set(1);
        if let Ok(mut k) = self.knowledge.lock() {
            *k = Knowledge::Known(route);
        }
        self.known.store(true, Ordering::SeqCst);
    }

    /// Records that the route is not known. `holds_gate`: the gate is held for this reason
    /// (whoever learns the route opens it). An earlier start of the unknown period is kept.
    pub fn set_unknown(&self, reason: String, holds_gate: bool) {
        self.known.store(false, Ordering::SeqCst);
        self.metrics.routing_known.set(0);
        if let Ok(mut k) = self.knowledge.lock() {
            let since = match &*k {
                Knowledge::Unknown { since, .. } => *since,
                Knowledge::Known(_) => Instant::now(),
            };
            *k = Knowledge::Unknown { reason, since, holds_gate };
        }
    }

    /// Whether the watcher holds the gate because the route is unknown.
    pub fn watcher_holds_gate(&self) -> bool {
        self.unknown_since().is_some_and(|(_, holds)| holds)
    }

    pub fn record_read(&self, error: Option<String>) {
        let result = if error.is_some() { "failed" } else { "ok" };
        self.metrics.decision_reads.with_label_values(&[result]).inc();
        if let Ok(mut r) = self.last_read.lock() {
            *r = Some(LastRead { at: Instant::now(), error });
        }
    }

    /// The FATAL for a client that cannot be routed: 57P03 with the reason.
    pub fn refusal(&self) -> Bytes {
        let reason = self.unknown_reason().unwrap_or_else(|| "the cutover decision is not known".into());
        crate::protocol::messages::fatal("57P03", &format!("pgcutover cannot route this session now: {reason}"))
    }

    /// For a session that cannot reach `role` when a committed decision made `role` the only
    /// server sessions may use: 57P03 saying so (None: report the connection error as usual).
    pub fn unreachable_refusal(&self, role: Role, error: &str) -> Option<Bytes> {
        let Some(Route::Active { role: active, epoch: Some(epoch), committed: true }) = self.route() else { return None };
        (active == role).then(|| {
            let other = if role == Role::New { "old" } else { "new" };
            crate::protocol::messages::fatal(
                "57P03",
                &format!(
                    "{error}; since cutover epoch {epoch} committed, sessions go only to the {} server and never to the {other} server it retired",
                    role.as_str()
                ),
            )
        })
    }

    /// SHOW STATUS rows.
    pub fn status_rows(&self) -> Vec<(String, String)> {
        let routing = match self.knowledge.lock().map(|k| k.clone()) {
            Ok(Knowledge::Known(Route::Active { role, epoch: None, .. })) => format!("{} (no cutover started yet)", role.as_str()),
            Ok(Knowledge::Known(Route::Active { role, epoch: Some(e), committed })) => {
                format!("{} (cutover epoch {e} {})", role.as_str(), if committed { "committed" } else { "aborted" })
            }
            Ok(Knowledge::Known(other)) => format!("{other:?}"),
            Ok(Knowledge::Unknown { reason, since, .. }) => format!("unknown for {} s: {reason}", since.elapsed().as_secs()),
            Err(_) => "unknown".into(),
        };
        let last_read = match self.last_read.lock().map(|r| r.clone()) {
            Ok(Some(LastRead { at, error: None })) => format!("ok, {:.1} s ago", at.elapsed().as_secs_f64()),
            Ok(Some(LastRead { at, error: Some(e) })) => format!("failed {:.1} s ago: {e}", at.elapsed().as_secs_f64()),
            _ => "not yet".into(),
        };
        vec![("routing".into(), routing), ("decision_read".into(), last_read), ("instance".into(), self.instance.clone())]
    }
}
