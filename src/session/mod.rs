//! One task per client: startup and authentication, a server connection, then the relay loop.

pub mod budget;
pub mod client_auth;
pub mod handshake;
pub mod outbound;
pub mod prepared_sql;
pub mod registry;
pub mod relay;
pub mod slots;
pub mod snapshot;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend;
use crate::protocol::messages;
use crate::protocol::FrameReader;
use crate::proxy::Shared;
use handshake::{refuse, Handshake, HandshakeError};
use registry::{NewSession, Park};
use relay::{End, Relay};
use slots::Slot;

/// Serves one client connection; `startup_slot` counts it among the connections in startup
/// until it is authenticated, when it takes a slot of `max_clients` instead.
pub async fn serve_client(shared: Arc<Shared>, tcp: TcpStream, addr: SocketAddr, startup_slot: Slot) {
    let started = Instant::now();
    let setup = tokio::time::timeout(shared.config.startup_timeout, async {
        let Handshake::Startup(mut reader, startup) = tokio::time::timeout(shared.config.startup_packet_timeout, handshake::startup(&shared, tcp))
            .await
            .map_err(|_| HandshakeError::NoStartupPacket)??
        else {
            return Ok(None);
        };
        let auth = client_auth::authenticate(&shared, &mut reader, startup.user()).await?;
        let Some(client_slot) = shared.client_slots.try_take() else {
            shared.metrics.rejected_clients.with_label_values(&["too_many_clients"]).inc();
            return Err(refuse(&mut reader, "53300", "sorry, too many clients already").await);
        };
        drop(startup_slot);
        Ok::<_, HandshakeError>(Some((reader, startup, auth, client_slot)))
    })
    .await;
    let (mut reader, startup, auth, client_slot) = match setup {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) => return,
        Ok(Err(HandshakeError::NoStartupPacket)) => {
            tracing::info!(client = %addr, "no startup packet within startup_packet_timeout; connection closed");
            shared.metrics.rejected_clients.with_label_values(&["startup_packet_timeout"]).inc();
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(client = %addr, error = %e, "connection refused during startup");
            return;
        }
        Err(_) => {
            tracing::info!(client = %addr, "startup did not complete in time; connection closed");
            shared.metrics.rejected_clients.with_label_values(&["startup_timeout"]).inc();
            return;
        }
    };
    let user = startup.user().to_string();
    let database = startup.database().to_string();

    // During a hold, new clients are authenticated but wait here for the server to use; while
    // the route is unknown (routing::Routing), at most `decision_wait`, then 57P03.
    let mut refuse_at = None;
    let (role, connecting) = loop {
        let entered = shared.registry.enter();
        let gate = shared.gate.state();
        if !gate.held {
            break (gate.active, entered);
        }
        drop(entered);
        let now = tokio::time::Instant::now();
        let refuse_at = *refuse_at.get_or_insert_with(|| now + shared.live().cutover.decision_wait);
        if now >= refuse_at && !shared.routing.is_known() {
            let frame = shared.routing.refusal();
            shared.metrics.error("57P03");
            let _ = reader.get_mut().write_all(&frame).await;
            tracing::warn!(client = %addr, %user, %database, reason = ?shared.routing.unknown_reason(), "session refused: the route is not known");
            return;
        }
        // Woken to look at the route again: it may become unknown during a hold.
        let look_again = if now < refuse_at { refuse_at } else { now + std::time::Duration::from_millis(250) };
        tokio::select! {
            _ = shared.gate.wait_open() => {}
            _ = tokio::time::sleep_until(look_again) => {}
            _ = shared.close_sessions.cancelled() => return,
        }
    };
    let Some(server) = shared.server(role) else { return };
    let mut conn = match backend::connect(server, &startup, &auth.credential).await {
        Ok(conn) => conn,
        Err(e) => {
            if e.credential_refused() {
                if let Some(query) = &shared.auth_query {
                    query.forget(&user);
                }
            }
            if matches!(e, backend::BackendError::OutOfFiles { .. }) {
                shared.metrics.rejected_clients.with_label_values(&["out_of_files"]).inc();
            }
            // Never another server: one a committed decision retired is not a fallback.
            let refusal = match &e {
                backend::BackendError::Unreachable { .. } => shared.routing.unreachable_refusal(role, &e.to_string()),
                _ => None,
            };
            let frame = refusal.unwrap_or_else(|| e.client_frame());
            shared.metrics.error(&messages::parse_error_fields(&frame[5..]).code);
            let _ = reader.get_mut().write_all(&frame).await;
            tracing::warn!(client = %addr, %user, %database, error = %e, "could not open a server connection");
            return;
        }
    };
    shared.metrics.server_connections.with_label_values(&[conn.role.as_str()]).inc();

    let (handle, commands) = shared.registry.register(NewSession { client_addr: addr, backend_pid: conn.cancel.pid, startup, credential: auth.credential });
    drop(connecting);
    if let Ok(mut t) = handle.cancel_target.lock() {
        *t = Some(conn.cancel.clone());
    }
    handle.set_status(|s| {
        s.server = conn.role.as_str();
        s.state = "active";
    });
    let mut greeting = BytesMut::new();
    // Before the ParameterStatus messages, where Postgres sends them.
    for notice in conn.startup_notices.drain(..) {
        greeting.extend_from_slice(&notice);
    }
    for (k, v) in &conn.params {
        greeting.extend_from_slice(&messages::parameter_status(k, v));
    }
    greeting.extend_from_slice(&messages::backend_key_data(handle.key_pid, &handle.secret()));
    greeting.extend_from_slice(&messages::ready_for_query(b'I'));

    let (stream, buffered) = reader.into_parts();
    let (client_read, client_write) = stream.split();
    shared.metrics.clients.inc();
    tracing::info!(session = handle.id, client = %addr, %user, %database, server = conn.role.as_str(), "session opened");
    let mut relay = Relay {
        shared: shared.clone(),
        handle: handle.clone(),
        commands,
        client_rd: FrameReader::with_buffer(client_read, buffered, shared.config.max_message_size).keep_whole(b'P', state::PARSE_KEPT),
        client_wr: client_write,
        state: state::ProtocolState::new(&conn.params),
        backend: conn,
        standby: None,
        to_client: Default::default(),
        to_backend: Default::default(),
        upstream: budget::Allowance::new(shared.budget.clone()),
        downstream: budget::Allowance::new(shared.budget.clone()),
        swallowing: false,
        parked_since: None,
        prepared_move: false,
        standby_replayed: false,
        poisoned: false,
        probe_waiters: Vec::new(),
        bytes_in: 0,
        bytes_out: 0,
        server_fatal: None,
        client_terminated: false,
    };
    relay.to_client.push(greeting.freeze());
    let end = relay.run().await;
    shared.metrics.server_connections.with_label_values(&[relay.backend.role.as_str()]).dec();
    shared.metrics.clients.dec();
    shared.registry.remove(&handle);
    shared.metrics.collect(&handle.traffic);
    handle.park.send_replace(Park::Closed);
    let how = match &end {
        End::ClientClosed => "client closed".to_string(),
        End::ClientError(e) => format!("client error: {e}"),
        End::ServerClosed(e) | End::Closed(e) => e.clone(),
    };
    tracing::info!(
        session = handle.id,
        client = %addr,
        %user,
        %database,
        duration_ms = started.elapsed().as_millis() as u64,
        bytes_in = relay.bytes_in,
        bytes_out = relay.bytes_out,
        end = %how,
        "session closed"
    );
    drop(client_slot);
}
