//! Authenticating the client to the proxy: trust, SCRAM-SHA-256 or md5, as configured.

use std::sync::OnceLock;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::handshake::{refuse, HandshakeError};
use crate::auth::{md5_stored, md5_verify, AuthMethod, ScramServer, ScramVerifier};
use crate::net::Stream;
use crate::protocol::messages::{self, take_cstr};
use crate::protocol::FrameReader;
use crate::proxy::Shared;

/// What authentication proved: nothing more than the user name, plus the password if the
/// client revealed it (never, with SCRAM or md5).
pub struct Authenticated {
    pub client_password: Option<String>,
}

/// A verifier for users that do not exist, so their exchange looks like a wrong password.
fn decoy_verifier() -> Option<&'static ScramVerifier> {
    static DECOY: OnceLock<Option<ScramVerifier>> = OnceLock::new();
    DECOY
        .get_or_init(|| {
            let salt: [u8; 16] = rand::random();
            ScramVerifier::from_password(&hex(&salt), &salt, 4096).ok()
        })
        .as_ref()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read_password_message(reader: &mut FrameReader<Stream>) -> Result<Bytes, HandshakeError> {
    match reader.read_frame().await {
        Ok(Some((b'p', body))) => Ok(body),
        Ok(Some(_)) => Err(refuse(reader, "08P01", "expected a password message").await),
        Ok(None) => Err(HandshakeError::Refused("client closed the connection during authentication".into())),
        // Too long, bad length, truncated: tell the client, as Postgres does.
        Err(e) => Err(refuse(reader, "08P01", &format!("invalid message during authentication: {e}")).await),
    }
}

pub async fn authenticate(shared: &Shared, reader: &mut FrameReader<Stream>, user: &str) -> Result<Authenticated, HandshakeError> {
    let configured = shared.config.user(user);
    let failed = format!("password authentication failed for user \"{user}\"");
    match shared.config.auth {
        AuthMethod::Trust => {}
        AuthMethod::Md5 => {
            let salt: [u8; 4] = rand::random();
            write(reader, &messages::authentication(messages::AUTH_MD5, &salt)).await?;
            let body = read_password_message(reader).await?;
            let response = take_cstr(&body).map(|(r, _)| r).unwrap_or(&[]);
            let ok = configured.and_then(|u| u.password()).is_some_and(|p| md5_verify(&md5_stored(user, p), salt, response));
            if !ok {
                shared.metrics.auth_failures.inc();
                return Err(refuse(reader, "28P01", &failed).await);
            }
        }
        AuthMethod::ScramSha256 => {
            let Some(verifier) = configured.map(|u| u.verifier.clone()).or_else(|| decoy_verifier().cloned()) else {
                shared.metrics.auth_failures.inc();
                return Err(refuse(reader, "28P01", &failed).await);
            };
            let mut server = ScramServer::new(verifier);
            write(reader, &messages::auth_sasl("SCRAM-SHA-256")).await?;
            let initial = read_password_message(reader).await?;
            let Some((mechanism, rest)) = take_cstr(&initial) else {
                return Err(refuse(reader, "08P01", "malformed SASLInitialResponse").await);
            };
            if mechanism != b"SCRAM-SHA-256" {
                return Err(refuse(reader, "28000", "client selected an invalid SASL authentication mechanism").await);
            }
            let data = rest.get(4..).unwrap_or(&[]);
            let server_first = match server.client_first(data) {
                Ok(m) => m,
                Err(e) => return Err(refuse(reader, "08P01", &format!("malformed SCRAM message: {e}")).await),
            };
            write(reader, &messages::authentication(messages::AUTH_SASL_CONTINUE, &server_first)).await?;
            let final_message = read_password_message(reader).await?;
            match server.client_final(&final_message) {
                Ok(server_final) if configured.is_some() => {
                    write(reader, &messages::authentication(messages::AUTH_SASL_FINAL, &server_final)).await?;
                }
                _ => {
                    shared.metrics.auth_failures.inc();
                    return Err(refuse(reader, "28P01", &failed).await);
                }
            }
        }
    }
    write(reader, &messages::authentication(messages::AUTH_OK, &[])).await?;
    Ok(Authenticated { client_password: None })
}

async fn write(reader: &mut FrameReader<Stream>, bytes: &[u8]) -> Result<(), HandshakeError> {
    reader.get_mut().write_all(bytes).await.map_err(HandshakeError::Tls)
}
