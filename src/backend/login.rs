//! The authentication part of a server login: answers the server's requests with the
//! session's credential — a password, or without one the role's SCRAM ClientKey or md5
//! verifier (pass-through) — or says why it cannot and what to change.

use bytes::{BufMut, Bytes, BytesMut};

use crate::auth::{md5_response_from_password, md5_response_from_stored, ScramClient, ScramError, ServerCredential, SCRAM_SHA_256};
use crate::protocol::messages;

#[derive(Debug)]
pub enum LoginError {
    /// The server asks for a password and the proxy has no credential at all.
    NoPassword,
    /// The server asks for something this credential cannot answer; the text says what to
    /// change.
    Unanswerable(String),
    /// SCRAM pass-through: the server's salt or iteration count is not the verifier's, so it
    /// holds another verifier for the role.
    VerifierDiffers,
    Protocol(String),
}

/// One login's authentication exchange.
pub struct Login<'a> {
    user: &'a str,
    credential: &'a ServerCredential,
    scram: Option<ScramClient>,
}

impl<'a> Login<'a> {
    pub fn new(user: &'a str, credential: &'a ServerCredential) -> Self {
        Login { user, credential, scram: None }
    }

    /// The reply to an authentication request (`code` and the data after it), if any.
    pub fn answer(&mut self, code: u32, data: &[u8]) -> Result<Option<Bytes>, LoginError> {
        use ServerCredential as C;
        let reply = match code {
            messages::AUTH_OK => None,
            messages::AUTH_CLEARTEXT => match self.credential {
                C::Password(p) => Some(password_message(p.as_bytes())),
                C::None => return Err(LoginError::NoPassword),
                other => {
                    return Err(LoginError::Unanswerable(format!(
                        "the server asks for a cleartext password (pg_hba.conf method \"password\") and pgcutover holds only {}: \
                         use scram-sha-256 or md5 for this role in pg_hba.conf, or give its password in [[users]]",
                        other.kind()
                    )))
                }
            },
            messages::AUTH_MD5 => {
                let salt: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| LoginError::Protocol("short md5 salt".into()))?;
                let response = match self.credential {
                    C::Password(p) => md5_response_from_password(self.user, p, salt),
                    C::Md5Verifier(hash) => md5_response_from_stored(hash, salt).ok_or_else(|| LoginError::Unanswerable("the role's md5 verifier is malformed".into()))?,
                    C::ScramClientKey { .. } => {
                        return Err(LoginError::Unanswerable(
                            "the server asks for md5 (so its verifier for the role is md5), but pgcutover authenticated the client with the \
                             role's SCRAM-SHA-256 verifier: store the same verifier for the role on both servers (copy rolpassword from old: \
                             pg_dumpall --roles-only, or ALTER ROLE ... PASSWORD '<verifier>')"
                                .into(),
                        ))
                    }
                    C::None => return Err(LoginError::NoPassword),
                };
                Some(password_message(response.as_bytes()))
            }
            messages::AUTH_SASL => {
                if !data.split(|&b| b == 0).any(|m| m == SCRAM_SHA_256.as_bytes()) {
                    return Err(LoginError::Protocol("server offers no SASL mechanism we support".into()));
                }
                let client = match self.credential {
                    C::Password(p) => ScramClient::new(p).map_err(|e| LoginError::Protocol(format!("SCRAM: {e}")))?,
                    C::ScramClientKey { client_key, verifier } => ScramClient::with_client_key(client_key.clone(), verifier.clone()),
                    C::Md5Verifier(_) => {
                        return Err(LoginError::Unanswerable(
                            "the server asks for SCRAM-SHA-256, but the role's stored verifier is md5, which cannot answer it: set the \
                             role's password again with password_encryption = 'scram-sha-256' (on old, then copy the verifier to new), \
                             or use md5 for this role in pg_hba.conf"
                                .into(),
                        ))
                    }
                    C::None => return Err(LoginError::NoPassword),
                };
                let first = self.scram.insert(client).client_first();
                let mut payload = BytesMut::with_capacity(SCRAM_SHA_256.len() + 5 + first.len());
                payload.put_slice(SCRAM_SHA_256.as_bytes());
                payload.put_u8(0);
                payload.put_i32(first.len() as i32);
                payload.put_slice(&first);
                Some(messages::frame(b'p', &payload))
            }
            messages::AUTH_SASL_CONTINUE => {
                let client = self.scram.as_mut().ok_or_else(|| LoginError::Protocol("SASL continue without SASL start".into()))?;
                let reply = client.server_first(data).map_err(|e| match e {
                    ScramError::VerifierMismatch => LoginError::VerifierDiffers,
                    e => LoginError::Protocol(format!("SCRAM: {e}")),
                })?;
                Some(messages::frame(b'p', &reply))
            }
            messages::AUTH_SASL_FINAL => {
                let client = self.scram.as_ref().ok_or_else(|| LoginError::Protocol("SASL final without SASL start".into()))?;
                client.server_final(data).map_err(|e| LoginError::Protocol(format!("SCRAM server signature: {e}")))?;
                None
            }
            other => return Err(LoginError::Protocol(format!("unsupported authentication request {other}"))),
        };
        Ok(reply)
    }
}

fn password_message(password: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(password.len() + 1);
    body.put_slice(password);
    body.put_u8(0);
    messages::frame(b'p', &body)
}
