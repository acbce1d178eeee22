//! One console connection: pgwire's message loop, run here rather than by
//! `pgwire::tokio::process_socket` so that the console keeps the proxy's limits: only small
//! messages until login, at most [`MAX_CONNECTIONS`] at once, and `startup_timeout` for login.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, DefaultClient, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, SEVERITY_FATAL};
use pgwire::messages::response::{GssEncResponse, SslResponse};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage, SslNegotiationMetaMessage};
use pgwire::tokio::server::{process_error, process_message, PgWireMessageServerCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;

use super::frame_guard::FrameGuard;
use super::handler::Console;

/// Console connections open at once; one more gets FATAL 53300.
pub const MAX_CONNECTIONS: usize = 64;

/// Largest message before login: a startup packet or a SCRAM message is far smaller.
pub const PRE_AUTH_MAX_MESSAGE: usize = 8 * 1024;

/// Largest message after login: console commands are short.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What every console connection shares: the handlers and the connection slots.
pub(super) struct Listener {
    pub console: Arc<Console>,
    pub slots: Arc<Semaphore>,
    pub startup_timeout: Duration,
}

type Socket<S, T> = Framed<FrameGuard<S>, PgWireMessageServerCodec<T>>;

/// Serves one connection until it ends. `peer` is what the console's authentication sees
/// (Unix-socket connections are told apart by the listener's transport, not by it).
pub(super) async fn serve<S>(stream: S, peer: SocketAddr, listener: Arc<Listener>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let permit = listener.slots.clone().try_acquire_owned().ok();
    let mut socket = Framed::new(FrameGuard::new(stream, PRE_AUTH_MAX_MESSAGE), PgWireMessageServerCodec::new(DefaultClient::new(peer, false)));
    let deadline = tokio::time::Instant::now() + listener.startup_timeout;
    let console = &listener.console;
    let handlers = Handlers {
        startup: console.startup_handler(),
        simple: console.simple_query_handler(),
        extended: console.extended_query_handler(),
        copy: console.copy_handler(),
        cancel: console.cancel_handler(),
    };
    if let Err(e) = run(&mut socket, &handlers, permit, deadline).await {
        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// The console's handlers, by their concrete types (pgwire's loop is generic over them).
struct Handlers<A, Q, EQ, C, CR> {
    startup: Arc<A>,
    simple: Arc<Q>,
    extended: Arc<EQ>,
    copy: Arc<C>,
    cancel: Arc<CR>,
}

async fn run<S, A, Q, EQ, C, CR>(
    socket: &mut Socket<S, EQ::Statement>,
    handlers: &Handlers<A, Q, EQ, C, CR>,
    permit: Option<OwnedSemaphorePermit>,
    deadline: tokio::time::Instant,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    A: StartupHandler,
    Q: SimpleQueryHandler,
    EQ: ExtendedQueryHandler,
    C: CopyHandler,
    CR: CancelHandler,
{
    let mut negotiations = 0;
    let mut logged_in = false;
    loop {
        let logging_in = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingSslRequest | PgWireConnectionState::AwaitingStartup | PgWireConnectionState::AuthenticationInProgress
        );
        if !logging_in && !logged_in {
            logged_in = true;
            socket.get_mut().set_limit(MAX_MESSAGE);
        }
        let next = if logging_in {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::info!(peer = %socket.socket_addr(), "admin connection: login did not complete in time; connection closed");
                    return Ok(());
                }
            }
        } else {
            socket.next().await
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                if let Some(oversized) = socket.get_ref().oversized() {
                    let when = if logged_in { "" } else { " before login" };
                    let text = format!("message length {} exceeds the limit of {} bytes{when}", oversized.declared, oversized.limit);
                    tracing::info!(peer = %socket.socket_addr(), "admin connection refused: {text}");
                    return refuse(socket, "08P01", text).await;
                }
                return Err(std::io::Error::other(e.to_string()));
            }
            None => return Ok(()),
        };
        match message {
            // No TLS on the console; the client goes on in plain text or gives up.
            PgWireFrontendMessage::SslNegotiation(negotiation) => {
                negotiations += 1;
                match negotiation {
                    _ if negotiations > 2 => return refuse(socket, "08P01", "encryption negotiated more than twice".into()).await,
                    SslNegotiationMetaMessage::PostgresSsl(_) => socket.send(PgWireBackendMessage::SslResponse(SslResponse::Refuse)).await?,
                    SslNegotiationMetaMessage::PostgresGss(_) => socket.send(PgWireBackendMessage::GssEncResponse(GssEncResponse::Refuse)).await?,
                    SslNegotiationMetaMessage::None => socket.set_state(PgWireConnectionState::AwaitingStartup),
                }
                continue;
            }
            PgWireFrontendMessage::Startup(_) if permit.is_none() => {
                tracing::warn!(peer = %socket.socket_addr(), "admin connection refused: {MAX_CONNECTIONS} console connections are open");
                return refuse(socket, "53300", format!("sorry, too many admin console connections already (at most {MAX_CONNECTIONS})")).await;
            }
            // The client is leaving: close (some clients wait for that).
            PgWireFrontendMessage::Terminate(_) => return Ok(()),
            _ => {}
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let is_cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        let handled = process_message(
            message,
            socket,
            handlers.startup.clone(),
            handlers.simple.clone(),
            handlers.extended.clone(),
            handlers.copy.clone(),
            handlers.cancel.clone(),
        )
        .await;
        if let Err(e) = handled {
            let is_fatal = e.is_fatal();
            process_error(socket, e, is_extended_query).await?;
            if is_fatal {
                return Ok(());
            }
        }
        if is_cancel_request {
            return Ok(());
        }
    }
}

/// Sends a FATAL error and closes.
async fn refuse<S, T>(socket: &mut Socket<S, T>, sqlstate: &str, message: String) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let error = ErrorInfo::new(SEVERITY_FATAL.to_owned(), sqlstate.to_owned(), message);
    socket.send(PgWireBackendMessage::ErrorResponse(error.into())).await?;
    SinkExt::<PgWireBackendMessage>::close(socket).await
}
