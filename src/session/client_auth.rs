//! Authenticating the client to the proxy — trust, SCRAM-SHA-256 (SCRAM-SHA-256-PLUS over TLS)
//! or md5, against `[[users]]` or the role's verifier from `auth_query` — and the credential
//! the proxy then logs into the servers with: the `[[users]]` password, or without one the
//! role's ClientKey recovered from the client's SCRAM proof, or its md5 verifier.
//!
//! `auth = md5` follows pg_hba.conf's `md5`: SCRAM for roles whose verifier is SCRAM, md5 for
//! the others (roles without a usable verifier: SCRAM with auth_query, as Postgres with its
//! default password_encryption; md5 when only `[[users]]` passwords exist). Every failure (wrong password, unknown role, role without LOGIN or usable
//! password, expired password) runs the same exchange and ends with the same 28P01 at the
//! same step; the reason goes to the log only.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::handshake::{refuse, HandshakeError};
use crate::auth::query::{AuthQuery, Lookup};
use crate::auth::{md5_stored, md5_verify, password_failed, AuthMethod, ScramError, ScramServer, ScramVerifier, ServerCredential, StoredSecret};
use crate::net::Stream;
use crate::protocol::messages::{self, take_cstr};
use crate::protocol::FrameReader;
use crate::proxy::Shared;

/// What authentication proved: the credential for the server logins of this session.
pub struct Authenticated {
    pub credential: Arc<ServerCredential>,
}

/// What the client is checked against.
enum Expected {
    /// A `[[users]]` password: md5 from it, or SCRAM with the verifier derived at load.
    Password { password: Zeroizing<String>, verifier: ScramVerifier },
    /// A stored verifier: a `[[users]]` scram_verifier, or the auth_query's answer.
    Stored(StoredSecret),
    /// Nothing to check against: the exchange runs with a decoy and fails (the reason is
    /// logged).
    Nothing(&'static str),
}

impl Expected {
    fn from_lookup(lookup: Lookup) -> Self {
        match lookup {
            Lookup::Found { valid_until: Some(t), .. } if t <= SystemTime::now() => Expected::Nothing("its password has expired (rolvaliduntil)"),
            Lookup::Found { secret, .. } => Expected::Stored(secret),
            Lookup::Missing(reason) => Expected::Nothing(reason),
        }
    }
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
    let credential = match shared.config.auth {
        AuthMethod::Trust => trusted_credential(shared, user),
        method => {
            let (expected, from_query) = match expected(shared, user).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(%user, error = %e, "auth_query failed: the client's password cannot be checked");
                    shared.metrics.auth_failures.inc();
                    let message = format!("could not check the password of user \"{user}\": pgcutover's auth_query failed");
                    return Err(refuse(reader, e.sqlstate(), &message).await);
                }
            };
            let md5 = method == AuthMethod::Md5
                && match expected {
                    Expected::Password { .. } | Expected::Stored(StoredSecret::Md5(_)) => true,
                    Expected::Stored(StoredSecret::Scram(_)) => false,
                    // Like Postgres with its default password_encryption: a role without a
                    // usable verifier fails a SCRAM exchange, unless every role the proxy
                    // knows has a password (then md5 for all).
                    Expected::Nothing(_) => shared.auth_query.is_none(),
                };
            let exchange = Exchange { shared, user, from_query };
            if md5 {
                exchange.md5(reader, expected).await?
            } else {
                exchange.scram(reader, expected).await?
            }
        }
    };
    write(reader, &messages::authentication(messages::AUTH_OK, &[])).await?;
    tracing::debug!(%user, server_login = ?credential, "client authenticated");
    Ok(Authenticated { credential: Arc::new(credential) })
}

/// With trust, the proxy logs in with the `[[users]]` password, or the control password for
/// the control user, or nothing.
fn trusted_credential(shared: &Shared, user: &str) -> ServerCredential {
    let live = shared.live();
    let configured = live.user(user).and_then(|u| u.password());
    let control = (shared.config.old.user == user).then_some(shared.config.old.password.as_deref()).flatten();
    configured.or(control).map_or(ServerCredential::None, ServerCredential::password)
}

/// `[[users]]` first, then the auth_query (on the server sessions run on now).
async fn expected(shared: &Shared, user: &str) -> Result<(Expected, bool), crate::auth::query::AuthQueryError> {
    if let Some(u) = shared.live().user(user) {
        let expected = match u.password() {
            Some(p) => Expected::Password { password: Zeroizing::new(p.to_owned()), verifier: u.verifier.clone() },
            None => Expected::Stored(StoredSecret::Scram(u.verifier.clone())),
        };
        return Ok((expected, false));
    }
    let Some(query) = &shared.auth_query else { return Ok((Expected::Nothing("no [[users]] entry and no auth_query"), false)) };
    let lookup = query.lookup(user, shared.gate.state().active).await?;
    Ok((Expected::from_lookup(lookup), true))
}

struct Exchange<'a> {
    shared: &'a Shared,
    user: &'a str,
    /// The secret came from auth_query: a failure may mean it is stale.
    from_query: bool,
}

impl Exchange<'_> {
    async fn md5(&self, reader: &mut FrameReader<Stream>, expected: Expected) -> Result<ServerCredential, HandshakeError> {
        let salt: [u8; 4] = rand::random();
        write(reader, &messages::authentication(messages::AUTH_MD5, &salt)).await?;
        let body = read_password_message(reader).await?;
        let response = take_cstr(&body).map(|(r, _)| r).unwrap_or(&[]);
        if let Some(credential) = md5_check(&expected, self.user, salt, response) {
            return Ok(credential);
        }
        // The password may have changed since the verifier was cached. An md5 verifier has no
        // salt of its own, so the same response can be checked against a fresh one.
        let mut reason = match &expected {
            Expected::Nothing(reason) => *reason,
            _ => "wrong password",
        };
        if let Some(query) = self.query() {
            match query.refresh_after_failure(self.user, self.shared.gate.state().active).await {
                Ok(Some(lookup)) => {
                    let fresh = Expected::from_lookup(lookup);
                    if let Some(credential) = md5_check(&fresh, self.user, salt, response) {
                        return Ok(credential);
                    }
                    if let Expected::Nothing(r) = fresh {
                        reason = r;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!(user = self.user, error = %e, "auth_query failed while refreshing a role after a failed login"),
            }
        }
        Err(self.fail(reader, reason).await)
    }

    async fn scram(&self, reader: &mut FrameReader<Stream>, expected: Expected) -> Result<ServerCredential, HandshakeError> {
        let (verifier, password, failure) = match expected {
            Expected::Password { password, verifier } => (verifier, Some(password), None),
            Expected::Stored(StoredSecret::Scram(verifier)) => (verifier, None, None),
            Expected::Stored(StoredSecret::Md5(_)) => (
                ScramVerifier::decoy(self.user),
                None,
                Some(
                    "its verifier is md5, which auth = scram-sha-256 cannot check: use auth = md5 (SCRAM for roles with SCRAM \
                     verifiers, md5 for the others), or set its password again with password_encryption = 'scram-sha-256'",
                ),
            ),
            Expected::Nothing(reason) => (ScramVerifier::decoy(self.user), None, Some(reason)),
        };
        // Over TLS, offer channel binding to the certificate the client saw.
        let end_point = if reader.get_mut().is_tls() { self.shared.live().client_end_point.clone() } else { None };
        let mut server = ScramServer::with_channel_binding(verifier, end_point);
        write(reader, &messages::auth_sasl(server.mechanisms())).await?;
        let initial = read_password_message(reader).await?;
        let Some((mechanism, rest)) = take_cstr(&initial) else {
            return Err(refuse(reader, "08P01", "malformed SASLInitialResponse").await);
        };
        if !server.mechanisms().iter().any(|m| m.as_bytes() == mechanism) {
            return Err(refuse(reader, "28000", "client selected an invalid SASL authentication mechanism").await);
        }
        let data = rest.get(4..).unwrap_or(&[]);
        let server_first = match server.client_first_for(mechanism, data) {
            Ok(m) => m,
            Err(e) => return Err(refuse(reader, "08P01", &e.to_string()).await),
        };
        write(reader, &messages::authentication(messages::AUTH_SASL_CONTINUE, &server_first)).await?;
        let final_message = read_password_message(reader).await?;
        match (server.client_final(&final_message), failure) {
            (Ok(server_final), None) => {
                let credential = match (password, server.client_key()) {
                    (Some(password), _) => ServerCredential::Password(password),
                    (None, Some(client_key)) => ServerCredential::ScramClientKey { client_key, verifier: server.verifier().clone() },
                    (None, None) => return Err(self.fail(reader, "no ClientKey after a successful exchange").await),
                };
                write(reader, &messages::authentication(messages::AUTH_SASL_FINAL, &server_final)).await?;
                Ok(credential)
            }
            (Ok(_), failure) | (Err(ScramError::InvalidProof), failure) => {
                // The next login of the role sees a changed password or a new role (a SCRAM
                // proof is bound to the salt, so this one cannot be checked again).
                self.refresh_later();
                Err(self.fail(reader, failure.unwrap_or("wrong password")).await)
            }
            (Err(e), _) => Err(refuse(reader, "08P01", &e.to_string()).await),
        }
    }

    fn refresh_later(&self) {
        if let Some(query) = self.query() {
            let (user, server) = (self.user.to_owned(), self.shared.gate.state().active);
            tokio::spawn(async move {
                if let Err(e) = query.refresh_after_failure(&user, server).await {
                    tracing::error!(%user, error = %e, "auth_query failed while refreshing a role after a failed login");
                }
            });
        }
    }

    fn query(&self) -> Option<Arc<AuthQuery>> {
        self.from_query.then(|| self.shared.auth_query.clone()).flatten()
    }

    /// The 28P01 every password failure gets; the log says why.
    async fn fail(&self, reader: &mut FrameReader<Stream>, reason: &str) -> HandshakeError {
        self.shared.metrics.auth_failures.inc();
        let message = password_failed(self.user);
        refuse(reader, "28P01", &message).await;
        HandshakeError::Refused(format!("28P01: {message} ({reason})"))
    }
}

fn md5_check(expected: &Expected, user: &str, salt: [u8; 4], response: &[u8]) -> Option<ServerCredential> {
    match expected {
        Expected::Password { password, .. } if md5_verify(&md5_stored(user, password), salt, response) => Some(ServerCredential::password(password)),
        Expected::Stored(StoredSecret::Md5(hash)) if md5_verify(hash, salt, response) => Some(ServerCredential::Md5Verifier(hash.clone())),
        _ => None,
    }
}

async fn write(reader: &mut FrameReader<Stream>, bytes: &[u8]) -> Result<(), HandshakeError> {
    reader.get_mut().write_all(bytes).await.map_err(HandshakeError::Tls)
}
