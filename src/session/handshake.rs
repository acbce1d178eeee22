//! The client's startup phase: TLS negotiation, CancelRequest, StartupMessage checks.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::net::Stream;
use crate::protocol::messages::{self, fatal};
use crate::protocol::startup::{parse_startup, Replication, StartupError, StartupMessage, StartupPacket};
use crate::protocol::FrameReader;
use crate::proxy::Shared;

pub enum Handshake {
    /// A client ready to authenticate (the reader boxed: it is most of the enum's size).
    Startup(Box<FrameReader<Stream>>, StartupMessage),
    /// Handled entirely (cancel request, refused client); nothing more to do.
    Done,
}

/// Why a connection ended before a session began (logged; the client got an error already).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("invalid startup packet ({0}); closed without a reply, as Postgres does")]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("{0}")]
    Startup(#[from] StartupError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("no startup packet within startup_packet_timeout")]
    NoStartupPacket,
}

/// Sends a FATAL and returns the matching error for the log.
pub async fn refuse(reader: &mut FrameReader<Stream>, sqlstate: &str, message: &str) -> HandshakeError {
    let _ = reader.get_mut().write_all(&fatal(sqlstate, message)).await;
    let _ = reader.get_mut().shutdown().await;
    HandshakeError::Refused(format!("{sqlstate}: {message}"))
}

/// Largest message accepted before authentication completes (the password / SASL messages):
/// Postgres' own limit (PG_MAX_AUTH_TOKEN_LENGTH, 65535 bytes of body). `max_message_size`
/// applies only once the client is authenticated, so an anonymous client cannot make the
/// proxy buffer a huge frame.
pub const PRE_AUTH_MAX_MESSAGE: usize = 65_535 + 4;

fn pre_auth_limit(shared: &Shared) -> usize {
    shared.config.max_message_size.min(PRE_AUTH_MAX_MESSAGE)
}

pub async fn startup(shared: &Arc<Shared>, tcp: TcpStream) -> Result<Handshake, HandshakeError> {
    let mut reader = FrameReader::new(Stream::Plain(tcp), pre_auth_limit(shared));
    let mut tls_done = false;
    let mut gss_done = false;
    loop {
        let packet = match reader.read_startup().await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(Handshake::Done),
            // Not a startup packet (a Terminate sent first, an HTTP request, noise): Postgres
            // logs it and closes without a reply, and clients such as node-postgres, which
            // send Terminate when closing a connection that never started, expect that.
            Err(e) => return Err(HandshakeError::Protocol(e)),
        };
        let packet = match parse_startup(&packet) {
            Ok(p) => p,
            Err(e) => {
                if let Some(reply) = e.reply() {
                    let _ = reader.get_mut().write_all(&reply).await;
                }
                let _ = reader.get_mut().shutdown().await;
                return Err(e.into());
            }
        };
        match packet {
            StartupPacket::Ssl if !tls_done && !reader.get_mut().is_tls() => {
                tls_done = true;
                if reader.buffered() > 0 {
                    return Err(refuse(&mut reader, "08P01", "received unencrypted data after SSL request").await);
                }
                let Some(acceptor) = shared.live().client_tls.clone() else {
                    reader.get_mut().write_all(b"N").await.map_err(HandshakeError::Tls)?;
                    continue;
                };
                let (stream, _) = reader.into_parts();
                let Stream::Plain(mut tcp) = stream else { return Err(HandshakeError::Refused("TLS twice".into())) };
                tcp.write_all(b"S").await.map_err(HandshakeError::Tls)?;
                let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
                reader = FrameReader::with_buffer(Stream::TlsFromClient(Box::new(tls)), BytesMut::new(), pre_auth_limit(shared));
            }
            StartupPacket::GssEnc if !gss_done && !reader.get_mut().is_tls() => {
                gss_done = true;
                reader.get_mut().write_all(b"N").await.map_err(HandshakeError::Tls)?;
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                return Err(refuse(&mut reader, "08P01", "encryption negotiated twice").await);
            }
            StartupPacket::Cancel { pid, secret } => {
                forward_cancel(shared, pid, &secret).await;
                return Ok(Handshake::Done);
            }
            StartupPacket::Startup(message) => {
                if shared.config.require_tls && !reader.get_mut().is_tls() {
                    shared.metrics.rejected_clients.with_label_values(&["tls_required"]).inc();
                    return Err(refuse(&mut reader, "28000", "pgcutover requires an encrypted connection (sslmode=require)").await);
                }
                if message.replication() != Replication::Off {
                    shared.metrics.rejected_clients.with_label_values(&["replication"]).inc();
                    return Err(refuse(
                        &mut reader,
                        "0A000",
                        "replication connections are not supported through pgcutover; connect to the server directly",
                    )
                    .await);
                }
                if shared.gate.state().held && shared.stop_accepting.is_cancelled() {
                    return Err(refuse(&mut reader, "57P03", "pgcutover is shutting down").await);
                }
                let options = message.protocol_options();
                if message.minor > 0 || !options.is_empty() {
                    // We speak 3.0: tell the client, which then carries on with 3.0.
                    let nego = messages::negotiate_protocol_version(0, options);
                    reader.get_mut().write_all(&nego).await.map_err(HandshakeError::Tls)?;
                }
                return Ok(Handshake::Startup(Box::new(reader), message));
            }
        }
    }
}

/// A CancelRequest names the proxy's key; forward it with the real key of the server the
/// session is on now. Unknown keys are ignored silently, as Postgres does.
async fn forward_cancel(shared: &Shared, pid: u32, secret: &[u8]) {
    let Some(session) = shared.registry.find_for_cancel(pid, secret) else {
        tracing::debug!("cancel request with an unknown key ignored");
        return;
    };
    let target = session.cancel_target.lock().ok().and_then(|t| t.clone());
    if let Some(target) = target {
        if let Err(e) = crate::backend::send_cancel(&target).await {
            tracing::warn!(session = session.id, error = %e, "could not forward cancel request");
        }
    }
}

pub fn client_label(addr: &SocketAddr) -> String {
    addr.to_string()
}
