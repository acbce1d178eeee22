//! Authentication: SCRAM-SHA-256 (server and client side, channel binding) and Postgres'
//! legacy MD5 scheme as pure message logic; the credential the proxy logs into servers
//! with; and `auth_query`, which looks roles' verifiers up on the server.
//!
//! Reading/writing the `AuthenticationSASL*` / `SASLResponse` / `PasswordMessage` frames is
//! done by `session::client_auth` (clients) and `backend::login` (servers).

pub mod channel_binding;
pub mod credential;
pub mod md5;
pub mod passthrough;
pub mod query;
pub mod scram;

use std::fmt;
use std::str::FromStr;

pub use self::credential::{ServerCredential, StoredSecret};
pub use self::md5::{md5_response_from_password, md5_response_from_stored, md5_stored, md5_verify};
pub use self::scram::{ClientKey, ScramClient, ScramError, ScramServer, ScramVerifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};

/// Postgres' message for every failed password login (wrong password, unknown role, role
/// without LOGIN, expired password): one shape, so the reason cannot be told apart.
pub fn password_failed(user: &str) -> String {
    format!("password authentication failed for user \"{user}\"")
}

/// How the proxy authenticates its own clients (the `pg_hba.conf` method names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Trust,
    ScramSha256,
    Md5,
}

impl AuthMethod {
    /// The canonical `pg_hba.conf` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown auth method `{0}` (valid values: trust, scram-sha-256, md5)")]
pub struct ParseAuthMethodError(pub String);

impl FromStr for AuthMethod {
    type Err = ParseAuthMethodError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case-insensitive so config files written as "SCRAM-SHA-256" (the
        // mechanism's own spelling) also work.
        let t = s.trim();
        if t.eq_ignore_ascii_case("trust") {
            Ok(AuthMethod::Trust)
        } else if t.eq_ignore_ascii_case("scram-sha-256") {
            Ok(AuthMethod::ScramSha256)
        } else if t.eq_ignore_ascii_case("md5") {
            Ok(AuthMethod::Md5)
        } else {
            Err(ParseAuthMethodError(s.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_method_parse_and_display() {
        for m in [AuthMethod::Trust, AuthMethod::ScramSha256, AuthMethod::Md5] {
            assert_eq!(m.to_string().parse::<AuthMethod>().unwrap(), m);
        }
        assert_eq!(
            "SCRAM-SHA-256".parse::<AuthMethod>().unwrap(),
            AuthMethod::ScramSha256
        );
        assert_eq!("md5".parse::<AuthMethod>().unwrap(), AuthMethod::Md5);
        let err = "password".parse::<AuthMethod>().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("password"), "{text}");
        assert!(
            text.contains("trust") && text.contains("scram-sha-256") && text.contains("md5"),
            "{text}"
        );
    }
}
