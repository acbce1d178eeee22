//! Connections from the proxy to a Postgres server on behalf of a client: TCP, optional TLS,
//! StartupMessage with the client's parameters, and authentication as the server asks.

pub mod login;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::ServerCredential;
use crate::config::{ServerConfig, SslMode};
use crate::net::{Stream, StreamReader, StreamWriter};
use crate::protocol::messages::{self, fatal, parse_error_fields, parse_parameter_status, ErrorFields};
use crate::protocol::startup::{StartupMessage, SSL_REQUEST};
use crate::protocol::FrameReader;

/// Which of the two servers a connection goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Old,
    New,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Old => "old",
            Role::New => "new",
        }
    }
}

/// A server as the data path sees it: its config plus a ready TLS client config.
pub struct Server {
    pub role: Role,
    pub config: ServerConfig,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Server {
    pub fn new(role: Role, config: ServerConfig) -> anyhow::Result<Self> {
        let tls = crate::tls::client_config(config.sslmode, config.sslrootcert.as_deref())?;
        Ok(Self { role, config, tls })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not connect to the {role} server at {address}: {reason}")]
    Unreachable { role: &'static str, address: String, reason: String },
    /// The server refused: its own ErrorResponse, forwarded to the client as is.
    #[error("{} server refused the connection: {} ({})", .role, .fields.message, .fields.code)]
    Refused { role: &'static str, frame: Bytes, fields: ErrorFields },
    #[error("the {role} server asked for a password for user {user:?} but pgcutover has none configured for that user")]
    NoPassword { role: &'static str, user: String },
    /// The server asks for what the credential cannot answer (the reason says what to change).
    #[error("cannot log into the {role} server as role {user:?}: {reason}")]
    Unanswerable { role: &'static str, user: String, reason: String },
    /// SCRAM pass-through to a server that holds another verifier for the role.
    #[error(
        "the SCRAM verifier of role {user:?} on the {role} server differs from the one pgcutover authenticated the client with \
         (salt or iteration count): store old's verifier there (pg_dumpall --roles-only, or ALTER ROLE ... PASSWORD '<rolpassword from old>')"
    )]
    VerifierDiffers { role: &'static str, user: String },
    #[error("protocol error from the {role} server: {reason}")]
    Protocol { role: &'static str, reason: String },
    /// The proxy itself has no file descriptor left for the connection.
    #[error("could not connect to the {role} server: pgcutover is out of file descriptors")]
    OutOfFiles { role: &'static str },
}

impl BackendError {
    /// What the client is told: the server's own refusal as it is; a verifier that differs
    /// looks like the wrong password it effectively is (the log has the details).
    pub fn client_frame(&self) -> Bytes {
        match self {
            BackendError::Refused { frame, .. } => frame.clone(),
            BackendError::NoPassword { .. } | BackendError::Unanswerable { .. } => fatal("28000", &self.to_string()),
            BackendError::VerifierDiffers { user, .. } => fatal("28P01", &crate::auth::password_failed(user)),
            BackendError::Unreachable { .. } | BackendError::Protocol { .. } => fatal("08006", &self.to_string()),
            BackendError::OutOfFiles { .. } => fatal("53300", &self.to_string()),
        }
    }

    /// Whether the server refused the credential itself: a cached verifier may be stale.
    pub fn credential_refused(&self) -> bool {
        match self {
            BackendError::Refused { fields, .. } => fields.code == "28P01",
            BackendError::VerifierDiffers { .. } => true,
            _ => false,
        }
    }
}

/// Where to send a CancelRequest for this connection.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    pub address: String,
    pub pid: u32,
    pub secret: Bytes,
}

pub struct BackendConn {
    pub role: Role,
    pub reader: FrameReader<StreamReader>,
    pub writer: StreamWriter,
    /// ParameterStatus values the server reported during startup.
    pub params: Vec<(String, String)>,
    /// NoticeResponse frames the server sent during startup (e.g. a name it truncated), for
    /// the client at its login; a standby's are only logged (the client saw them once).
    pub startup_notices: Vec<Bytes>,
    pub cancel: CancelTarget,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take for each reply during login. Generous: a loaded server may
/// be slow to fork and authenticate, and giving up turns a stall into a failed connection.
const LOGIN_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest message accepted from a server. `max_message_size` guards against clients; a
/// server's rows are what the application asked for, and Postgres itself never sends a
/// message over 1 GiB (its allocation limit).
pub const SERVER_MAX_MESSAGE: usize = (1 << 30) + 1024;

/// Opens and authenticates a connection; returns after the server's first ReadyForQuery.
pub async fn connect(server: &Server, startup: &StartupMessage, credential: &ServerCredential) -> Result<BackendConn, BackendError> {
    let role = server.role.as_str();
    let address = server.config.address();
    let unreachable = |reason: String| BackendError::Unreachable { role, address: address.clone(), reason };
    let protocol = |reason: String| BackendError::Protocol { role, reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&address))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| if crate::listener::out_of_files(&e) { BackendError::OutOfFiles { role } } else { unreachable(e.to_string()) })?;
    let _ = tcp.set_nodelay(true);
    let stream = negotiate_tls(tcp, server).await.map_err(|e| unreachable(e.to_string()))?;
    let (read, mut writer) = stream.split();
    let mut reader = FrameReader::new(read, SERVER_MAX_MESSAGE);
    let io_err = |e: std::io::Error| unreachable(e.to_string());
    writer.write_all(&startup.encode_for_server()).await.map_err(io_err)?;

    let user = startup.user().to_string();
    let mut login = login::Login::new(startup.user(), credential);
    let mut params = Vec::new();
    let mut startup_notices = Vec::new();
    let mut cancel = CancelTarget { address: address.clone(), pid: 0, secret: Bytes::new() };
    loop {
        let (tag, body) = tokio::time::timeout(LOGIN_REPLY_TIMEOUT, reader.read_frame())
            .await
            .map_err(|_| unreachable("timed out during startup".into()))?
            .map_err(|e| protocol(e.to_string()))?
            .ok_or_else(|| unreachable("connection closed during startup".into()))?;
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(protocol("short authentication message".into()));
                }
                let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                let reply = login.answer(code, &body[4..]).map_err(|e| match e {
                    login::LoginError::NoPassword => BackendError::NoPassword { role, user: user.clone() },
                    login::LoginError::Unanswerable(reason) => BackendError::Unanswerable { role, user: user.clone(), reason },
                    login::LoginError::VerifierDiffers => BackendError::VerifierDiffers { role, user: user.clone() },
                    login::LoginError::Protocol(reason) => protocol(reason),
                })?;
                if let Some(reply) = reply {
                    writer.write_all(&reply).await.map_err(io_err)?;
                }
            }
            b'S' => {
                if let Some(p) = parse_parameter_status(&body) {
                    params.push(p);
                }
            }
            b'K' => {
                if body.len() < 8 {
                    return Err(protocol("short BackendKeyData".into()));
                }
                cancel.pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                cancel.secret = body.slice(4..);
            }
            b'E' => {
                let fields = parse_error_fields(&body);
                return Err(BackendError::Refused { role, frame: messages::frame(b'E', &body), fields });
            }
            b'N' => startup_notices.push(messages::frame(b'N', &body)),
            // Only an answer to options we never send.
            b'v' => {}
            b'Z' => return Ok(BackendConn { role: server.role, reader, writer, params, startup_notices, cancel }),
            other => return Err(protocol(format!("unexpected message {:?} during startup", other as char))),
        }
    }
}

async fn negotiate_tls(mut tcp: TcpStream, server: &Server) -> std::io::Result<Stream> {
    let Some(tls) = server.tls.clone() else { return Ok(Stream::Plain(tcp)) };
    tcp.write_all(&messages::untagged(&SSL_REQUEST.to_be_bytes())).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(server.config.host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
            Ok(Stream::TlsToServer(Box::new(stream)))
        }
        b'N' if server.config.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(std::io::Error::other("server does not support TLS but sslmode requires it")),
        _ => Err(std::io::Error::other("unexpected answer to SSLRequest")),
    }
}

/// Sends a CancelRequest for `target` on a fresh connection (plain TCP, as libpq does).
pub async fn send_cancel(target: &CancelTarget) -> std::io::Result<()> {
    let mut payload = BytesMut::with_capacity(8 + target.secret.len());
    payload.put_u32(crate::protocol::startup::CANCEL_REQUEST);
    payload.put_u32(target.pid);
    payload.put_slice(&target.secret);
    let mut tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.address))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel connect timed out"))??;
    tcp.write_all(&messages::untagged(&payload)).await?;
    // The server closes the connection when done; wait briefly so the request is not lost.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut sink)).await;
    Ok(())
}

/// Sends Terminate after `delay`, in the background (an old connection after a switch).
pub fn close_later(mut conn: BackendConn, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = conn.writer.write_all(&messages::terminate()).await;
    });
}
