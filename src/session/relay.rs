//! The session's event loop: forwards frames both ways, tracks protocol state, and obeys the
//! gate (hold, switch, resume) and the coordinator's commands.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::budget::Allowance;
use super::outbound::Outbound;
use super::registry::{Command, Park, Prepared, SessionHandle};
use super::snapshot::{self, Snapshot};
use super::state::{ClientEvent, ProtocolState};
use crate::backend::{self, BackendConn};
use crate::config::IdleInTransaction;
use crate::cutover::gate::GateState;
use crate::metrics::Traffic;
use crate::net::{StreamReader, StreamWriter};
use crate::protocol::messages::{self, error_response, fatal, parse_error_fields, Severity};
use crate::protocol::frame::{FrameIter, HEADER_LEN, READ_CHUNK};
use crate::protocol::{Batch, FrameReader, ProtocolError};
use crate::proxy::Shared;

pub struct Relay {
    pub shared: Arc<Shared>,
    pub handle: Arc<SessionHandle>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub client_rd: FrameReader<StreamReader>,
    pub client_wr: StreamWriter,
    pub backend: BackendConn,
    pub standby: Option<BackendConn>,
    pub state: ProtocolState,
    pub to_client: Outbound,
    pub to_backend: Outbound,
    /// Memory drawn from the shared budget: client to server, server to client.
    pub upstream: Allowance,
    pub downstream: Allowance,
    /// The rest of the client's frame being streamed is dropped (it was answered with 40001).
    pub swallowing: bool,
    pub parked_since: Option<Instant>,
    /// The standby holds the session's current state: nothing changed since the replay.
    pub prepared_move: bool,
    /// The standby received a replay before; a new one must clear it first.
    pub standby_replayed: bool,
    /// The proxy rolled back this client's transaction: answer its next request with 40001.
    pub poisoned: bool,
    /// Probe requests waiting for the next quiet moment.
    pub probe_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The server sent a FATAL (its code and message): the client has its reason, and the
    /// close that follows is no news to report.
    pub server_fatal: Option<String>,
    /// The client sent Terminate while the server still owed it answers: those are relayed,
    /// then the server's close ends the session (Postgres reads the Terminate in order), or
    /// the client's own close does.
    pub client_terminated: bool,
}

/// When old connections are closed after a switch: after the cutover, spread over half a second.
const RETIRE_AFTER: Duration = Duration::from_secs(1);
const RETIRE_SPREAD_MS: u64 = 500;

/// How long closing a session waits for the server to end its running statement.
pub const STATEMENT_END_WAIT: Duration = Duration::from_secs(5);
/// How often that cancel is re-sent meanwhile.
const CANCEL_REPEAT: Duration = Duration::from_millis(500);
/// How long the proxy's shutdown waits for sessions it told to close (they end running
/// statements first).
pub const CLOSE_TIME: Duration = Duration::from_secs(8);

/// What a read from the client asks of the session loop.
enum ClientRead {
    /// Forwarded or queued (or dropped after a Terminate): carry on.
    Taken,
    /// The client sent Terminate.
    Terminate,
    /// The client closed the connection.
    Gone,
    Violation(ProtocolError),
}

/// How a session ended, for the log line.
pub enum End {
    ClientClosed,
    ClientError(String),
    ServerClosed(String),
    Closed(String),
}

impl Relay {
    pub async fn run(&mut self) -> End {
        // Gate changes and the shutdown arrive as commands, so each pass waits on nothing that
        // all sessions share. Registered before this check: a shutdown is never missed.
        if self.shared.close_sessions.is_cancelled() {
            return self.shutdown().await;
        }
        loop {
            let gate = self.shared.gate.state();
            if let Some(end) = self.apply_gate(gate).await {
                return end;
            }
            if !self.probe_waiters.is_empty() && !self.client_terminated && self.at_boundary() && self.to_backend.is_empty() && self.parked_since.is_none() {
                self.probe().await;
            }
            // After a Terminate the client is read only to notice that it has gone (what it
            // sends is dropped, so it holds no memory).
            let may_read_client =
                self.client_terminated || (self.parked_since.is_none() && !(gate.held && self.at_boundary()) && self.to_backend.has_room());
            let client_room = match may_read_client {
                false => 0,
                true if self.client_terminated => READ_CHUNK,
                true => self.upstream.grant(self.client_rd.buffered() + self.to_backend.len()),
            };
            if may_read_client && client_room == 0 {
                // No memory left to gather the client's large message whole: stream it on.
                let partial = self.client_rd.stream_partial();
                if !matches!(partial, Ok(None)) {
                    let read = self.on_client_read(partial);
                    if let Some(end) = self.after_client_read(read).await {
                        return end;
                    }
                    continue;
                }
            }
            let backend_room = if self.to_client.has_room() { self.downstream.grant(self.backend.reader.buffered() + self.to_client.len()) } else { 0 };
            let write_backend = self.to_backend.pending();
            let write_client = self.to_client.pending();
            tokio::select! {
                biased;
                command = self.commands.recv() => {
                    if let Some(end) = self.on_command(command).await {
                        return end;
                    }
                }
                batch = self.backend.reader.read_batch(backend_room), if backend_room > 0 => match batch {
                    Ok(Some(batch)) => {
                        if !batch.is_empty() {
                            self.on_backend_batch(batch);
                            self.to_client.write_now(&self.client_wr);
                        }
                    }
                    Ok(None) => return self.server_lost("the server closed the connection").await,
                    Err(e) => return self.server_lost(&e.to_string()).await,
                },
                written = self.to_backend.write_some(&mut self.backend.writer), if write_backend => {
                    if let Err(e) = written {
                        return self.server_lost(&e.to_string()).await;
                    }
                }
                written = self.to_client.write_some(&mut self.client_wr), if write_client => {
                    if let Err(e) = written {
                        self.terminate_backends().await;
                        return End::ClientError(e.to_string());
                    }
                }
                batch = self.client_rd.read_batch(client_room), if client_room > 0 => {
                    let read = self.on_client_read(batch);
                    if !matches!(read, ClientRead::Taken) {
                        if let Some(end) = self.after_client_read(read).await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Idle at a transaction boundary, with no message half-way through the proxy.
    fn at_boundary(&self) -> bool {
        self.state.is_quiescent() && self.between_frames()
    }

    /// Neither peer is in the middle of a message streamed through the proxy.
    fn between_frames(&self) -> bool {
        !self.client_rd.in_frame() && !self.backend.reader.in_frame()
    }

    /// Takes what the client sent; the rare outcomes that end or change the session are left to
    /// [`after_client_read`](Self::after_client_read).
    fn on_client_read(&mut self, batch: Result<Option<Batch>, ProtocolError>) -> ClientRead {
        match batch {
            // Postgres reads nothing after a Terminate.
            Ok(Some(_)) if self.client_terminated => ClientRead::Taken,
            Ok(Some(batch)) => {
                if batch.is_empty() {
                    return ClientRead::Taken;
                }
                if self.on_client_batch(batch) {
                    return ClientRead::Terminate;
                }
                // Held work stays queued: only a session that may forward writes now.
                if self.parked_since.is_none() {
                    self.to_backend.write_now(&self.backend.writer);
                }
                ClientRead::Taken
            }
            Ok(None) => ClientRead::Gone,
            Err(_) if self.client_terminated => ClientRead::Gone,
            Err(e) => ClientRead::Violation(e),
        }
    }

    async fn after_client_read(&mut self, read: ClientRead) -> Option<End> {
        match read {
            ClientRead::Taken => None,
            ClientRead::Terminate => {
                self.terminate_standby().await;
                if !self.state.owes_answers() {
                    let _ = self.to_backend.drain(&mut self.backend.writer).await;
                    return Some(End::ClientClosed);
                }
                self.client_terminated = true;
                if self.parked_since.is_none() {
                    self.to_backend.write_now(&self.backend.writer);
                }
                None
            }
            ClientRead::Gone => {
                self.terminate_backends().await;
                Some(End::ClientClosed)
            }
            ClientRead::Violation(e) => {
                let message = format!("protocol violation: {e}");
                Some(self.close_with(fatal("08P01", &message), &message).await)
            }
        }
    }

    /// Returns true when the client sent Terminate.
    fn on_client_batch(&mut self, batch: Batch) -> bool {
        // Whatever the client does may change session state: the standby must be prepared again.
        self.prepared_move = false;
        self.bytes_in += batch.bytes.len() as u64;
        Traffic::add(&self.handle.traffic.bytes_from_client, batch.bytes.len() as u64);
        let open = batch.open;
        let ends_stream = batch.ends_stream();
        let mut frames = batch.bytes;
        if batch.continued > 0 {
            // The rest of a frame whose head went on (or was swallowed) before.
            let rest = frames.split_to(batch.continued);
            if !self.swallowing {
                self.to_backend.push(rest);
            }
            if !ends_stream {
                return false;
            }
            self.swallowing = false;
        }
        if self.poisoned {
            // Swallow the client's next request, then answer it with a retryable error.
            let mut skip = 0;
            for (tag, body, _) in FrameIter::new(&frames) {
                skip += HEADER_LEN + body.len();
                if tag == b'X' {
                    return true;
                }
                if matches!(tag, b'Q' | b'S' | b'F') {
                    self.poisoned = false;
                    self.state.tx_status = b'E';
                    self.to_client.push(error_response(
                        Severity::Error,
                        "40001",
                        "pgcutover rolled back this transaction to move the session to the new server",
                        None,
                        Some("Retry the transaction."),
                    ));
                    self.to_client.push(messages::ready_for_query(b'E'));
                    self.shared.metrics.error("40001");
                    break;
                }
            }
            // A swallowed frame still streaming: drop its rest too.
            self.swallowing = open && skip == frames.len();
            frames.advance(skip);
            if frames.is_empty() {
                return false;
            }
        }
        let mut terminate = false;
        for (tag, body, whole) in FrameIter::new(&frames) {
            let event = if whole { self.state.on_client_frame(tag, body) } else { self.state.on_client_head(tag, body) };
            if let ClientEvent::Terminate = event {
                terminate = true;
            }
            if matches!(tag, b'Q' | b'E' | b'F') {
                Traffic::add(&self.handle.traffic.queries, 1);
            }
        }
        self.to_backend.push(frames);
        terminate
    }

    fn on_backend_batch(&mut self, batch: Batch) {
        let mut ready = false;
        // After a move the server names the session's new backend in the session's own
        // notifications; the client knows its session by the pid it was given at startup.
        let moved_from = (self.backend.cancel.pid != self.handle.key_pid).then(|| self.backend.cancel.pid.to_be_bytes());
        let mut own_notifications = Vec::new();
        for (tag, body, whole) in batch.frames() {
            if tag == b'A' && moved_from.is_some_and(|pid| body.starts_with(&pid)) {
                own_notifications.push(body.as_ptr() as usize - batch.bytes.as_ptr() as usize);
            }
            // The head of a frame too large to hold whole is no ReadyForQuery or ParameterStatus
            // from a real server; only an error's leading fields are read from it.
            if whole && self.state.on_server_frame(tag, body) {
                ready = true;
                if body.first() == Some(&b'I') {
                    Traffic::add(&self.handle.traffic.transactions, 1);
                }
            } else if tag == b'E' {
                let fields = parse_error_fields(body);
                self.shared.metrics.error(&fields.code);
                if fields.ends_session() {
                    self.server_fatal = Some(format!("{}: {}", fields.code, fields.message));
                }
            }
        }
        let batch = if own_notifications.is_empty() { batch.bytes } else { with_pid_at(&batch.bytes, &own_notifications, self.handle.key_pid) };
        self.bytes_out += batch.len() as u64;
        Traffic::add(&self.handle.traffic.bytes_to_client, batch.len() as u64);
        self.to_client.push(batch);
        if ready {
            self.handle.set_ready(self.state.tx_status, self.state.prepared.len());
        }
    }

    async fn on_command(&mut self, command: Option<Command>) -> Option<End> {
        match command? {
            Command::Attach { mut conn, reply } => {
                self.shared.metrics.server_connections.with_label_values(&[conn.role.as_str()]).inc();
                if self.client_terminated {
                    // Ending: it closes when its server does, and never moves.
                    self.drop_connection(*conn).await;
                    let _ = reply.send(Prepared::Busy);
                    return None;
                }
                self.log_standby_notices(&mut conn);
                if let Some(old) = self.standby.replace(*conn) {
                    self.drop_connection(old).await;
                }
                self.prepared_move = false;
                self.standby_replayed = false;
                // An idle session prepares its move now, before any hold: if it stays idle,
                // the hold costs it nothing but the pointer swap. A busy one would only have
                // to do it again at its next boundary.
                let idle = self.at_boundary() && self.to_backend.is_empty() && self.parked_since.is_none();
                let prepared = if !idle {
                    Prepared::Busy
                } else {
                    match self.prepare_move().await {
                        Park::Unmovable(reason) => {
                            tracing::debug!(session = self.handle.id, %reason, "not movable yet");
                            Prepared::Unmovable(reason)
                        }
                        _ if self.prepared_move => Prepared::Ready,
                        _ => Prepared::Busy,
                    }
                };
                let _ = reply.send(prepared);
                None
            }
            Command::GateChanged => None,
            Command::Shutdown => Some(self.shutdown().await),
            Command::DropStandby => {
                if self.parked_since.is_none() {
                    self.terminate_standby().await;
                    self.prepared_move = false;
                    self.standby_replayed = false;
                }
                None
            }
            Command::Probe(reply) => {
                if self.parked_since.is_some() || self.client_terminated {
                    // Held: its blockers were read when it parked. Ending: nothing to read.
                    let _ = reply.send(());
                } else {
                    self.probe_waiters.push(reply);
                }
                None
            }
            Command::Close { sqlstate, message } => Some(self.close_with(fatal(sqlstate, &message), &message).await),
            Command::Interrupt { idle_in_transaction } => self.interrupt(idle_in_transaction).await,
        }
    }

    /// The drain deadline passed and this session is still busy.
    async fn interrupt(&mut self, idle_in_transaction: IdleInTransaction) -> Option<End> {
        if self.parked_since.is_some() {
            return None;
        }
        if self.state.outstanding() > 0 {
            let target = self.backend.cancel.clone();
            tokio::spawn(async move {
                let _ = backend::send_cancel(&target).await;
            });
            return None;
        }
        if self.client_terminated || !self.state.is_idle_in_transaction() || !self.to_backend.is_empty() || !self.between_frames() {
            return None;
        }
        match idle_in_transaction {
            IdleInTransaction::Abort => {
                self.handle.park.send_replace(Park::Unmovable("idle in transaction at the drain deadline".into()));
                None
            }
            policy => {
                let mut params = Vec::new();
                let rolled_back = snapshot::run_idempotent(&mut self.backend, &[messages::query("ROLLBACK")], Some(&mut self.to_client), &mut params).await;
                if let Err(e) = rolled_back {
                    return Some(self.server_lost(&e.to_string()).await);
                }
                self.state.tx_status = b'I';
                if policy == IdleInTransaction::Terminate {
                    let message = "terminating connection: pgcutover rolled back this idle transaction to move to the new server";
                    return Some(self.close_with(fatal("57P01", message), message).await);
                }
                self.poisoned = true;
                None
            }
        }
    }

    async fn apply_gate(&mut self, gate: GateState) -> Option<End> {
        let ready_to_park = !self.client_terminated && gate.held && self.parked_since.is_none() && self.at_boundary() && self.to_backend.is_empty();
        if ready_to_park {
            self.park().await;
        }
        if self.parked_since.is_some() {
            if gate.active != self.backend.role {
                if let Some(end) = self.switch().await {
                    return Some(end);
                }
            } else if !gate.held {
                self.unpark();
            }
        }
        None
    }

    async fn park(&mut self) {
        let since = Instant::now();
        self.parked_since = Some(since);
        self.handle.set_status(|s| s.state = "held");
        let verdict = if self.standby.is_some() && !self.prepared_move { self.prepare_move().await } else { Park::Parked { since } };
        self.handle.park.send_replace(verdict);
    }

    /// Reads the session's state on old and replays it on the standby, so the switch itself
    /// is only a pointer swap.
    async fn prepare_move(&mut self) -> Park {
        let since = self.parked_since.unwrap_or_else(Instant::now);
        let snap = match self.capture().await {
            Ok(snap) => snap,
            Err(reason) => return Park::Unmovable(reason),
        };
        if !snap.blockers.is_empty() {
            return Park::Unmovable(format!("holds state that cannot move: {}", snap.blockers.join(", ")));
        }
        let Some(standby) = self.standby.as_mut() else { return Park::Parked { since } };
        let reset_first = std::mem::replace(&mut self.standby_replayed, true);
        match snapshot::replay(standby, &snap, &self.state.prepared, reset_first).await {
            Ok(params) => {
                standby.params.extend(params);
                self.prepared_move = true;
                Park::Parked { since }
            }
            Err(e) => Park::Unmovable(e.to_string()),
        }
    }

    async fn capture(&mut self) -> Result<Snapshot, String> {
        let mut params = Vec::new();
        let encoding = self.state.params.get("client_encoding").cloned().unwrap_or_default();
        let snap = snapshot::capture(&mut self.backend, &mut self.to_client, &mut params, &encoding).await.map_err(|e| e.to_string());
        for (k, v) in params {
            self.state.params.insert(k, v);
        }
        let mut snap = snap?;
        if let Some(blocker) = self.unkept_statements(&snap) {
            snap.blockers.push(blocker);
        }
        let blockers = snap.blockers.clone();
        self.handle.set_status(|s| s.blockers = blockers);
        Ok(snap)
    }

    /// Prepared statements the server holds whose Parse the proxy did not keep (it was streamed
    /// through: larger than `PARSE_KEPT`, or no memory was left): they cannot be replayed.
    fn unkept_statements(&self, snap: &Snapshot) -> Option<String> {
        let unkept: Vec<String> =
            snap.protocol_prepared.iter().filter(|name| !self.state.prepared.contains_key(*name)).map(|name| String::from_utf8_lossy(name).into_owned()).collect();
        let first = unkept.first()?;
        let more = match unkept.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        Some(format!("prepared statement {first:?}{more} too large for pgcutover to keep for replay"))
    }

    async fn probe(&mut self) {
        let waiters = std::mem::take(&mut self.probe_waiters);
        if let Err(reason) = self.capture().await {
            self.handle.set_status(|s| s.blockers = vec![reason]);
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }

    fn unpark(&mut self) {
        if let Some(since) = self.parked_since.take() {
            self.shared.metrics.held_seconds.observe(since.elapsed().as_secs_f64());
        }
        if let Some(standby) = self.standby.take() {
            // Aborted cutover: the pre-warmed connection is not needed.
            self.shared.metrics.server_connections.with_label_values(&[standby.role.as_str()]).dec();
            tokio::spawn(async move {
                let mut standby = standby;
                let _ = standby.writer.write_all(&messages::terminate()).await;
            });
        }
        self.prepared_move = false;
        self.standby_replayed = false;
        self.handle.set_status(|s| s.state = "active");
        self.handle.park.send_replace(Park::Running);
    }

    /// The commit point for this session: continue on the standby.
    async fn switch(&mut self) -> Option<End> {
        let target = self.shared.gate.state().active;
        if self.standby.is_none() || !self.prepared_move {
            // Not prepared (the session arrived after the pre-warm, or its standby came late):
            // connect if needed and replay now.
            if let Err(e) = self.connect_standby_now(target).await {
                let message = format!("terminating connection: could not move the session to the new server: {e}");
                return Some(self.close_with(fatal("57P01", &message), &message).await);
            }
        }
        let standby = self.standby.take()?;
        let held_ms = self.parked_since.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0);
        let mut values: HashMap<&str, &str> = HashMap::new();
        for (k, v) in &standby.params {
            values.insert(k, v);
        }
        let mut changed: Vec<(String, String)> = values
            .into_iter()
            .filter(|(k, v)| self.state.params.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        changed.sort();
        for (k, v) in changed {
            self.to_client.push(messages::parameter_status(&k, &v));
            self.state.params.insert(k, v);
        }
        let old = std::mem::replace(&mut self.backend, standby);
        if let Ok(mut t) = self.handle.cancel_target.lock() {
            *t = Some(self.backend.cancel.clone());
        }
        let role = self.backend.role.as_str();
        self.handle.set_status(|s| {
            s.server = role;
            s.state = "active";
        });
        if let Some(since) = self.parked_since.take() {
            self.shared.metrics.held_seconds.observe(since.elapsed().as_secs_f64());
        }
        self.prepared_move = false;
        self.standby_replayed = false;
        self.handle.park.send_replace(Park::Switched { held_ms });
        // Ending the old backend is not part of the move: it is done later, spread out, so a
        // thousand backends exiting at once do not take the CPU the move needs.
        self.shared.metrics.server_connections.with_label_values(&[old.role.as_str()]).dec();
        backend::close_later(old, RETIRE_AFTER + Duration::from_millis(self.handle.id % RETIRE_SPREAD_MS));
        None
    }

    async fn connect_standby_now(&mut self, role: backend::Role) -> Result<(), String> {
        if self.standby.is_none() {
            let server = self.shared.server(role).ok_or("no such server configured")?;
            let mut conn = backend::connect(server, &self.handle.startup, &self.handle.credential)
                .await
                .map_err(|e| e.to_string())?;
            self.shared.metrics.server_connections.with_label_values(&[role.as_str()]).inc();
            self.log_standby_notices(&mut conn);
            self.standby = Some(conn);
        }
        match self.prepare_move().await {
            Park::Parked { .. } => Ok(()),
            Park::Unmovable(reason) => Err(reason),
            other => Err(format!("unexpected state {other:?}")),
        }
    }

    /// A standby's startup notices answer the same startup parameters the client's own login
    /// did: the client saw those once, and gets no copy in the middle of its session.
    fn log_standby_notices(&self, conn: &mut BackendConn) {
        for notice in conn.startup_notices.drain(..) {
            let fields = parse_error_fields(&notice[5..]);
            tracing::debug!(session = self.handle.id, server = conn.role.as_str(), code = %fields.code, "standby login notice not passed on: {}", fields.message);
        }
    }

    async fn drop_connection(&mut self, mut conn: BackendConn) {
        self.shared.metrics.server_connections.with_label_values(&[conn.role.as_str()]).dec();
        let _ = conn.writer.write_all(&messages::terminate()).await;
    }

    async fn terminate_standby(&mut self) {
        if let Some(standby) = self.standby.take() {
            self.drop_connection(standby).await;
        }
    }

    async fn terminate_backends(&mut self) {
        let _ = self.backend.writer.write_all(&messages::terminate()).await;
        self.terminate_standby().await;
    }

    /// Ends what the server still runs for this session, then sends `error` (after whatever
    /// is queued) to the client and ends the session.
    async fn close_with(&mut self, error: Bytes, reason: &str) -> End {
        let error = if self.end_running_statements().await {
            error
        } else {
            // "Terminating" would tell the client its statement did not happen; it may yet.
            fatal("08006", "connection closed while the server was still running a statement: its outcome is unknown")
        };
        let code = parse_error_fields(&error[5..]).code;
        self.shared.metrics.error(&code);
        self.to_client.push(error);
        self.flush_and_close_client().await;
        self.terminate_backends().await;
        End::Closed(reason.to_string())
    }

    /// Sends the client what is queued (waiting a little at most), then closes its connection.
    async fn flush_and_close_client(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.to_client.drain(&mut self.client_wr)).await;
        let _ = self.client_wr.shutdown().await;
    }

    /// The server reads Terminate only after the running statement ends, which could then
    /// still commit after the client was told the session is gone. So: cancel, and wait for
    /// the server's answers, which go to the client before the FATAL: a statement that
    /// finished before the cancel took effect shows as done. Postgres ignores a cancel that
    /// arrives before the statement starts, so the cancel is repeated.
    /// Returns false if the server still runs something of this session after the wait.
    async fn end_running_statements(&mut self) -> bool {
        if self.parked_since.is_some() {
            // Parked only when quiescent; what the client sent since waits unsent in the proxy.
            return true;
        }
        let deadline = tokio::time::Instant::now() + STATEMENT_END_WAIT;
        // The replies go to the client as it reads them: one that does not read holds up the
        // server (and the proxy's memory) as in the relay; one that is gone gets nothing.
        let mut client_gone = false;
        while self.state.outstanding() > 0 && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout_at(deadline, backend::send_cancel(&self.backend.cancel)).await;
            let next_cancel = (tokio::time::Instant::now() + CANCEL_REPEAT).min(deadline);
            while self.state.outstanding() > 0 {
                let room = if client_gone || self.to_client.has_room() {
                    self.downstream.grant(self.backend.reader.buffered() + self.to_client.len())
                } else {
                    0
                };
                let write = !client_gone && self.to_client.pending();
                tokio::select! {
                    batch = self.backend.reader.read_batch(room), if room > 0 => match batch {
                        Ok(Some(batch)) => {
                            self.on_backend_batch(batch);
                            if client_gone {
                                self.to_client.clear();
                            }
                        }
                        // The server is gone: nothing of this session runs any more.
                        Ok(None) | Err(_) => return true,
                    },
                    written = self.to_client.write_some(&mut self.client_wr), if write => {
                        if written.is_err() {
                            client_gone = true;
                            self.to_client.clear();
                        }
                    }
                    _ = tokio::time::sleep_until(next_cancel) => break,
                }
            }
        }
        if self.state.outstanding() > 0 {
            tracing::warn!(session = self.handle.id, "the server did not end the running statement within {STATEMENT_END_WAIT:?}; closing anyway");
            return false;
        }
        true
    }

    async fn shutdown(&mut self) -> End {
        self.close_with(fatal("57P01", "terminating connection: pgcutover is shutting down"), "proxy shutdown").await
    }

    async fn server_lost(&mut self, reason: &str) -> End {
        let role = self.backend.role.as_str();
        // Nothing runs for this session on a server whose connection is gone.
        self.state.server_gone();
        if self.client_terminated {
            // The close the client asked for, after the answers it was owed.
            self.flush_and_close_client().await;
            return End::ClientClosed;
        }
        if let Some(fatal) = self.server_fatal.take() {
            // As from Postgres: its FATAL (already queued for the client), then the close.
            // A FATAL of the proxy's own after it would be a second error for one event.
            self.flush_and_close_client().await;
            self.terminate_standby().await;
            return End::ServerClosed(format!("the {role} server ended the session: {fatal}"));
        }
        let message = format!("server connection lost ({role} server): {reason}");
        let _ = self.close_with(fatal("08006", &message), &message).await;
        End::ServerClosed(message)
    }
}

/// A copy of `batch` with `pid` written at each offset (the pid field of a NotificationResponse).
fn with_pid_at(batch: &[u8], offsets: &[usize], pid: u32) -> Bytes {
    let mut out = bytes::BytesMut::from(batch);
    for &at in offsets {
        if let Some(field) = out.get_mut(at..at + 4) {
            field.copy_from_slice(&pid.to_be_bytes());
        }
    }
    out.freeze()
}
