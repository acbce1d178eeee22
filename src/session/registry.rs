//! All live sessions, by id and by the cancel key the proxy gave each client.
//!
//! A cancel key is the pid of the session's first server backend (so the client's idea of its
//! backend pid agrees with the server's) and a secret the proxy draws. Two live sessions can
//! share a pid only when one started on old and the other on new; the secret tells them apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};

use crate::backend::{BackendConn, CancelTarget, Role};
use crate::protocol::startup::StartupMessage;

/// Requests from the cutover coordinator to one session.
pub enum Command {
    /// A connection on the new server, authenticated with this session's startup parameters.
    /// The session answers once it has replayed its state there (or why it has not yet).
    Attach { conn: Box<BackendConn>, reply: tokio::sync::oneshot::Sender<Prepared> },
    /// The drain deadline passed: cancel what runs, resolve an idle transaction as told.
    Interrupt { idle_in_transaction: crate::config::IdleInTransaction },
    /// The session cannot move: end it with this FATAL.
    Close { sqlstate: &'static str, message: String },
    /// The gate changed: read it again.
    GateChanged,
    /// The proxy's shutdown deadline passed: end the session.
    Shutdown,
    /// The cutover stopped before holding anything: close the standby connection.
    DropStandby,
    /// Look for state that cannot move (temp tables, advisory locks, WITH HOLD cursors); the
    /// session answers once it has looked (a busy one at its next transaction boundary).
    Probe(tokio::sync::oneshot::Sender<()>),
}

/// How a session took its standby connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Its state is on the standby: if it stays idle, the switch is a pointer swap.
    Ready,
    /// It is busy; it prepares when it is held at its next transaction boundary.
    Busy,
    /// It holds state that cannot move (the reason says which).
    Unmovable(String),
}

/// Where a session stands with respect to a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Park {
    Running,
    /// Held at a transaction boundary; its state is ready on the standby if one was attached.
    Parked { since: Instant },
    /// Held, but it cannot move (the reason says why).
    Unmovable(String),
    /// Moved to the new server.
    Switched { held_ms: u64 },
    /// The session ended.
    Closed,
}

/// How long SHOW SESSIONS and CHECK wait for sessions to re-check what pins them.
pub const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What SHOW SESSIONS reports; written by the session task, read by the console.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub tx_status: char,
    pub server: &'static str,
    pub prepared: usize,
    pub state: &'static str,
    pub blockers: Vec<String>,
}

pub struct SessionHandle {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub user: String,
    pub database: String,
    pub started: Instant,
    /// The pid the client was given in BackendKeyData: its first server backend's.
    pub key_pid: u32,
    key_secret: [u8; 4],
    pub startup: StartupMessage,
    /// What the proxy logs into servers with as this user (pre-warm on new included); never
    /// displayed, dropped (and zeroed) with the session.
    pub credential: Arc<crate::auth::ServerCredential>,
    pub cancel_target: Mutex<Option<CancelTarget>>,
    pub status: Mutex<Status>,
    /// Updated at every ReadyForQuery, so kept out of the mutex: (status byte, prepared count).
    tx_status: std::sync::atomic::AtomicU8,
    prepared: std::sync::atomic::AtomicUsize,
    pub commands: mpsc::UnboundedSender<Command>,
    pub park: watch::Sender<Park>,
    pub traffic: crate::metrics::Traffic,
}

impl SessionHandle {
    pub fn secret(&self) -> [u8; 4] {
        self.key_secret
    }

    pub fn set_status(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    pub fn status(&self) -> Status {
        let mut status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        status.tx_status = self.tx_status.load(Ordering::Relaxed) as char;
        status.prepared = self.prepared.load(Ordering::Relaxed);
        status
    }

    /// Called at every ReadyForQuery.
    pub fn set_ready(&self, tx_status: u8, prepared: usize) {
        self.tx_status.store(tx_status, Ordering::Relaxed);
        self.prepared.store(prepared, Ordering::Relaxed);
    }

    pub fn server_role(&self) -> Option<Role> {
        match self.status().server {
            "old" => Some(Role::Old),
            "new" => Some(Role::New),
            _ => None,
        }
    }
}

/// A cancel key as given to a client. Compared in constant time, and hashed whole (with the
/// map's random keys), so a lookup's timing does not tell whether a pid is in use.
#[derive(Clone, Copy)]
struct CancelKey {
    pid: u32,
    secret: [u8; 4],
}

impl CancelKey {
    fn bytes(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&self.pid.to_be_bytes());
        out[4..].copy_from_slice(&self.secret);
        out
    }
}

impl PartialEq for CancelKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.bytes().ct_eq(&other.bytes()))
    }
}

impl Eq for CancelKey {}

impl std::hash::Hash for CancelKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

#[derive(Default)]
pub struct Registry {
    by_id: DashMap<u64, Arc<SessionHandle>>,
    by_key: DashMap<CancelKey, Arc<SessionHandle>>,
    next_id: AtomicU64,
    /// Every database a session has used since the proxy started: the cutover must prove
    /// catch-up for each, even if its sessions have closed since.
    databases_seen: DashMap<String, ()>,
    /// Clients between the gate check and registration (see `Registry::enter`).
    connecting: std::sync::atomic::AtomicUsize,
}

/// Counts a client on its way from the gate to the registry; dropping it uncounts.
pub struct Connecting<'a>(&'a Registry);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct NewSession {
    pub client_addr: SocketAddr,
    /// The pid of the session's first server backend (from its BackendKeyData).
    pub backend_pid: u32,
    pub startup: StartupMessage,
    pub credential: Arc<crate::auth::ServerCredential>,
}

impl Registry {
    /// Announces a client about to connect to a server. The caller checks the gate *after*
    /// this, and the cutover waits for `connecting() == 0` *after* holding the gate, so no
    /// client can slip past a hold unseen.
    pub fn enter(&self) -> Connecting<'_> {
        self.connecting.fetch_add(1, Ordering::SeqCst);
        Connecting(self)
    }

    pub fn connecting(&self) -> usize {
        self.connecting.load(Ordering::SeqCst)
    }

    pub fn databases_seen(&self) -> Vec<String> {
        let mut v: Vec<String> = self.databases_seen.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    pub fn register(&self, new: NewSession) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<Command>) {
        self.register_with_secrets(new, rand::random)
    }

    /// `register`, drawing secrets from `draw` until the key is unused.
    fn register_with_secrets(&self, new: NewSession, mut draw: impl FnMut() -> [u8; 4]) -> (Arc<SessionHandle>, mpsc::UnboundedReceiver<Command>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (commands, rx) = mpsc::unbounded_channel();
        self.databases_seen.insert(new.startup.database().to_string(), ());
        loop {
            let key = CancelKey { pid: new.backend_pid, secret: draw() };
            let entry = match self.by_key.entry(key) {
                // Same pid on the other server and the same secret: one key, two sessions.
                dashmap::Entry::Occupied(_) => continue,
                dashmap::Entry::Vacant(v) => v,
            };
            let handle = Arc::new(SessionHandle {
                id,
                client_addr: new.client_addr,
                user: new.startup.user().to_string(),
                database: new.startup.database().to_string(),
                started: Instant::now(),
                key_pid: key.pid,
                key_secret: key.secret,
                startup: new.startup,
                credential: new.credential,
                cancel_target: Mutex::new(None),
                status: Mutex::new(Status { server: "-", state: "connecting", ..Default::default() }),
                tx_status: std::sync::atomic::AtomicU8::new(b'I'),
                prepared: std::sync::atomic::AtomicUsize::new(0),
                commands,
                park: watch::channel(Park::Running).0,
                traffic: Default::default(),
            });
            entry.insert(handle.clone());
            self.by_id.insert(id, handle.clone());
            return (handle, rx);
        }
    }

    pub fn remove(&self, handle: &SessionHandle) {
        self.by_id.remove(&handle.id);
        self.by_key.remove(&CancelKey { pid: handle.key_pid, secret: handle.key_secret });
        handle.park.send_replace(Park::Closed);
    }

    /// The session a CancelRequest names: pid and secret must both match.
    pub fn find_for_cancel(&self, pid: u32, secret: &[u8]) -> Option<Arc<SessionHandle>> {
        // The proxy hands out 4-byte secrets (protocol 3.0); any other length names nothing.
        let secret: [u8; 4] = secret.try_into().ok()?;
        self.by_key.get(&CancelKey { pid, secret }).map(|entry| entry.value().clone())
    }

    /// Sends a command to every registered session.
    pub fn tell_all(&self, command: impl Fn() -> Command) {
        for entry in self.by_id.iter() {
            let _ = entry.value().commands.send(command());
        }
    }

    /// Asks every session to look for state that cannot move, and waits up to [`PROBE_WAIT`]
    /// for the answers of those outside a transaction (they answer within a round trip to their
    /// server, or when the statement they run ends; one inside a transaction answers when it
    /// ends, and cannot move before anyway). Returns the ids that did not answer in time:
    /// what they hold is unknown.
    pub async fn probe_all(&self) -> Vec<u64> {
        let answers: Vec<_> = self
            .by_id
            .iter()
            .filter_map(|entry| {
                let handle = entry.value();
                let (reply, answer) = tokio::sync::oneshot::channel();
                handle.commands.send(Command::Probe(reply)).ok()?;
                (handle.status().tx_status == 'I').then_some((handle.id, answer))
            })
            .collect();
        let deadline = tokio::time::Instant::now() + PROBE_WAIT;
        let late = answers.into_iter().map(|(id, answer)| async move { tokio::time::timeout_at(deadline, answer).await.is_err().then_some(id) });
        futures::future::join_all(late).await.into_iter().flatten().collect()
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let mut v: Vec<_> = self.by_id.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|h| h.id);
        v
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::startup::StartupMessage;

    fn session(pid: u32) -> NewSession {
        let startup = StartupMessage::for_user("u");
        NewSession { client_addr: SocketAddr::from(([127, 0, 0, 1], 5000)), backend_pid: pid, startup, credential: std::sync::Arc::new(crate::auth::ServerCredential::None) }
    }

    #[test]
    fn sessions_sharing_a_pid_are_told_apart_by_their_secret() {
        let registry = Registry::default();
        let (a, _ra) = registry.register_with_secrets(session(4242), || [1, 2, 3, 4]);
        // The same pid on the other server, and a first draw equal to the first session's secret.
        let mut draws = [[1, 2, 3, 4], [1, 2, 3, 4], [9, 9, 9, 9]].into_iter();
        let (b, _rb) = registry.register_with_secrets(session(4242), || draws.next().unwrap_or([7; 4]));
        assert_eq!((a.key_pid, b.key_pid), (4242, 4242));
        assert_eq!(b.secret(), [9, 9, 9, 9], "a colliding secret is drawn again");
        assert_eq!(registry.find_for_cancel(4242, &[1, 2, 3, 4]).map(|h| h.id), Some(a.id));
        assert_eq!(registry.find_for_cancel(4242, &[9, 9, 9, 9]).map(|h| h.id), Some(b.id));
        assert!(registry.find_for_cancel(4242, &[9, 9, 9, 8]).is_none());
        assert!(registry.find_for_cancel(4243, &[1, 2, 3, 4]).is_none());
        assert!(registry.find_for_cancel(4242, &[1, 2, 3, 4, 0]).is_none(), "only 4-byte secrets");
        registry.remove(&a);
        assert!(registry.find_for_cancel(4242, &[1, 2, 3, 4]).is_none());
        assert_eq!(registry.find_for_cancel(4242, &[9, 9, 9, 9]).map(|h| h.id), Some(b.id));
    }
}
