//! Who may use the console: the admin user, with SCRAM-SHA-256 when a password is configured,
//! or trusted from loopback / the Unix socket when none is.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, ScramSecret, SCRAM_ITERATIONS};
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
    StartupHandler,
};
use pgwire::api::{ClientInfo, METADATA_USER};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult, SEVERITY_FATAL};
use pgwire::messages::startup::{PasswordMessageFamily, Startup};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::config::Config;

/// Where a console connection comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    UnixSocket,
}

/// Whether a connection may log in without a password: only when none is configured, and only
/// from this machine (loopback TCP or the Unix socket, whose file mode is 0600).
pub fn trust_allowed(peer: Peer, password_configured: bool) -> bool {
    if password_configured {
        return false;
    }
    match peer {
        Peer::UnixSocket => true,
        // to_canonical: `::ffff:127.0.0.1` is loopback too.
        Peer::Tcp(addr) => addr.ip().to_canonical().is_loopback(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    Tcp,
    UnixSocket,
}

/// The admin user and, if a password is configured, its SCRAM verifier (derived once at start;
/// the password itself is not kept here).
#[derive(Clone)]
pub(super) struct AdminCredentials {
    user: String,
    verifier: Option<Arc<Verifier>>,
}

struct Verifier {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl AdminCredentials {
    pub(super) fn from_config(config: &Config) -> Self {
        let verifier = config.admin_password.as_deref().map(|password| {
            let salt = rand::random::<[u8; 16]>().to_vec();
            let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
            match ScramSecret::verifier_from_salted_password(salt.clone(), salted, SCRAM_ITERATIONS) {
                ScramSecret::Verifier { salt, iterations, stored_key, server_key } => Arc::new(Verifier { salt, iterations, stored_key, server_key }),
                // verifier_from_salted_password always builds a Verifier; keep a never-matching
                // one rather than panic if that ever changes.
                ScramSecret::SaltedPassword { .. } => Arc::new(Verifier::never_matching(salt, SCRAM_ITERATIONS)),
            }
        });
        Self { user: config.admin_user.clone(), verifier }
    }
}

impl Verifier {
    /// Same salt and iteration count as the real one, random keys: a wrong user name fails the
    /// same way (28P01, same salt) as a wrong password, so names cannot be probed.
    fn never_matching(salt: Vec<u8>, iterations: usize) -> Self {
        Self { salt, iterations, stored_key: rand::random::<[u8; 32]>().to_vec(), server_key: rand::random::<[u8; 32]>().to_vec() }
    }

    fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// pgwire's source of SCRAM secrets.
struct ScramSource {
    user: String,
    verifier: Arc<Verifier>,
}

impl Debug for ScramSource {
    // Hand-written so key material can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "admin SCRAM verifier for user {:?}", self.user)
    }
}

#[async_trait]
impl AuthSource for ScramSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only SCRAM is offered, and it uses get_scram_secret.
        Err(PgWireError::InvalidPassword(login.user().unwrap_or_default().to_owned()))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        if login.user() == Some(self.user.as_str()) {
            Ok((self.verifier.secret(), None))
        } else {
            Ok((Verifier::never_matching(self.verifier.salt.clone(), self.verifier.iterations).secret(), None))
        }
    }
}

/// How one connection is to be authenticated.
enum Method {
    Scram(Arc<dyn AuthMechanismFactory>),
    Trust,
    Reject(String),
}

/// The console's startup handler.
pub(super) struct AdminAuth {
    driver: AuthDriver<DefaultServerParameterProvider>,
    admin_user: String,
    scram: Option<Arc<dyn AuthMechanismFactory>>,
    transport: Transport,
}

impl AdminAuth {
    pub(super) fn new(credentials: AdminCredentials, transport: Transport) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = format!("16.0 (pgcutover {} admin console)", env!("CARGO_PKG_VERSION"));
        let scram = credentials.verifier.map(|verifier| {
            let source = ScramSource { user: credentials.user.clone(), verifier };
            Arc::new(ScramAuth::new(Arc::new(source))) as Arc<dyn AuthMechanismFactory>
        });
        Self { driver: AuthDriver::new(parameters), admin_user: credentials.user, scram, transport }
    }

    fn peer(&self, socket_addr: SocketAddr) -> Peer {
        match self.transport {
            Transport::Tcp => Peer::Tcp(socket_addr),
            Transport::UnixSocket => Peer::UnixSocket,
        }
    }

    fn method(&self, user: &str, peer: Peer) -> Method {
        if let Some(scram) = &self.scram {
            // The user name is checked inside SCRAM, so a wrong one looks like a wrong password.
            return Method::Scram(scram.clone());
        }
        if user != self.admin_user {
            return Method::Reject(format!("role \"{user}\" may not use the pgcutover admin console (its user is \"{}\")", self.admin_user));
        }
        if trust_allowed(peer, false) {
            return Method::Trust;
        }
        let from = match peer {
            Peer::Tcp(addr) => addr.ip().to_string(),
            Peer::UnixSocket => "the Unix socket".into(),
        };
        Method::Reject(format!(
            "the pgcutover admin console has no password configured, so it only accepts local connections (loopback or its Unix socket), not {from}: set [admin] password or password_env"
        ))
    }

    async fn on_startup_message<C>(&self, client: &mut C, startup: &Startup) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        protocol_negotiation(client, startup).await?;
        save_startup_parameters_to_metadata(client, startup);
        let user = client.metadata().get(METADATA_USER).cloned().ok_or(PgWireError::UserNameRequired)?;
        let peer = self.peer(client.socket_addr());
        match self.method(&user, peer) {
            Method::Scram(scram) => match self.driver.begin_authentication(client, scram.create()).await? {
                AuthOutcome::InProgress => Ok(()),
                AuthOutcome::Authenticated { final_message, .. } => self.driver.complete_authentication(client, final_message).await,
            },
            Method::Trust => {
                tracing::debug!(?peer, %user, "admin console login (trusted: no password configured, local connection)");
                self.driver.complete_authentication(client, None).await
            }
            Method::Reject(message) => {
                tracing::warn!(?peer, %user, "admin console login refused: {message}");
                Err(fatal("28000", message))
            }
        }
    }

    async fn on_password_message<C>(&self, client: &mut C, message: PasswordMessageFamily) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.driver.advance_authentication(client, message).await {
            Ok(AuthOutcome::InProgress) => Ok(()),
            Ok(AuthOutcome::Authenticated { final_message, .. }) => {
                tracing::debug!(peer = ?self.peer(client.socket_addr()), "admin console login");
                self.driver.complete_authentication(client, final_message).await
            }
            Err(e) => {
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                tracing::warn!(peer = ?self.peer(client.socket_addr()), %user, error = %e, "admin console login failed");
                match e {
                    // pgwire names the user from the SCRAM message, which libpq leaves empty.
                    PgWireError::InvalidPassword(_) => Err(fatal("28P01", format!("password authentication failed for user \"{user}\""))),
                    other => Err(other),
                }
            }
        }
    }
}

#[async_trait]
impl StartupHandler for AdminAuth {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => self.on_startup_message(client, startup).await,
            PgWireFrontendMessage::PasswordMessageFamily(message) => self.on_password_message(client, message).await,
            _ => Ok(()),
        }
    }
}

fn fatal(sqlstate: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(SEVERITY_FATAL.to_owned(), sqlstate.to_owned(), message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Peer {
        Peer::Tcp(addr.parse().expect("address"))
    }

    #[test]
    fn without_a_password_only_local_connections_are_trusted() {
        assert!(trust_allowed(tcp("127.0.0.1:5000"), false));
        assert!(trust_allowed(tcp("127.0.0.2:5000"), false));
        assert!(trust_allowed(tcp("[::1]:5000"), false));
        assert!(trust_allowed(tcp("[::ffff:127.0.0.1]:5000"), false));
        assert!(trust_allowed(Peer::UnixSocket, false));
        assert!(!trust_allowed(tcp("10.1.2.3:5000"), false));
        assert!(!trust_allowed(tcp("[2001:db8::1]:5000"), false));
        assert!(!trust_allowed(tcp("0.0.0.0:5000"), false));
    }

    #[test]
    fn with_a_password_nobody_is_trusted() {
        assert!(!trust_allowed(tcp("127.0.0.1:5000"), true));
        assert!(!trust_allowed(Peer::UnixSocket, true));
        assert!(!trust_allowed(tcp("10.1.2.3:5000"), true));
    }

    fn auth(password: Option<&str>, transport: Transport) -> AdminAuth {
        let credentials =
            AdminCredentials { user: "admin".into(), verifier: password.map(|_| Arc::new(Verifier::never_matching(vec![1; 16], SCRAM_ITERATIONS))) };
        AdminAuth::new(credentials, transport)
    }

    #[test]
    fn method_choice() {
        let remote: SocketAddr = "10.1.2.3:5000".parse().expect("address");
        let local: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        let open = auth(None, Transport::Tcp);
        assert!(matches!(open.method("admin", open.peer(local)), Method::Trust));
        match open.method("admin", open.peer(remote)) {
            Method::Reject(message) => assert!(message.contains("no password configured") && message.contains("10.1.2.3"), "{message}"),
            _ => panic!("remote without a password must be rejected"),
        }
        assert!(matches!(open.method("bob", open.peer(local)), Method::Reject(_)));
        let socket = auth(None, Transport::UnixSocket);
        assert!(matches!(socket.method("admin", socket.peer(remote)), Method::Trust));
        let locked = auth(Some("pw"), Transport::UnixSocket);
        assert!(matches!(locked.method("admin", locked.peer(local)), Method::Scram(_)));
        assert!(matches!(locked.method("bob", locked.peer(local)), Method::Scram(_)));
    }
}
