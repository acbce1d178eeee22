//! The credential the proxy logs into the servers with on behalf of one client session.
//!
//! Held by the session (and its pre-warm on new) for as long as the session lives, then
//! dropped: secrets are zeroed on drop and never printed.

use std::fmt;

use zeroize::Zeroizing;

use super::scram::{ClientKey, ScramVerifier};

/// A role's verifier as a server stores it (`pg_authid.rolpassword`), in a form the proxy can
/// check a client against.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredSecret {
    Scram(ScramVerifier),
    /// `md5` + 32 hex digits.
    Md5(Zeroizing<String>),
}

impl StoredSecret {
    /// `None` for anything else (no password, plaintext, another mechanism).
    pub fn parse(rolpassword: &str) -> Option<Self> {
        if rolpassword.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(rolpassword).ok().map(StoredSecret::Scram);
        }
        let hex = rolpassword.strip_prefix("md5")?;
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| StoredSecret::Md5(Zeroizing::new(rolpassword.to_owned())))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoredSecret::Scram(_) => "SCRAM-SHA-256",
            StoredSecret::Md5(_) => "md5",
        }
    }
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} verifier", self.kind())
    }
}

pub enum ServerCredential {
    /// No secret: only a server that asks for none (trust) lets the session in.
    None,
    /// A password: from `[[users]]`, or the control password for the control user.
    Password(Zeroizing<String>),
    /// SCRAM pass-through: the ClientKey recovered from the client's proof and the verifier
    /// it belongs to. Answers any server that holds this verifier for the role.
    ScramClientKey { client_key: ClientKey, verifier: ScramVerifier },
    /// md5 pass-through: the stored `md5…` hash answers an md5 challenge as it is.
    Md5Verifier(Zeroizing<String>),
}

impl ServerCredential {
    pub fn password(password: &str) -> Self {
        ServerCredential::Password(Zeroizing::new(password.to_owned()))
    }

    /// For messages: what the proxy holds, never the secret.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerCredential::None => "no password",
            ServerCredential::Password(_) => "a password",
            ServerCredential::ScramClientKey { .. } => "the role's SCRAM-SHA-256 verifier",
            ServerCredential::Md5Verifier(_) => "the role's md5 verifier",
        }
    }

    /// Whether this is a pass-through credential, which only works where the server holds the
    /// same verifier for the role.
    pub fn is_pass_through(&self) -> bool {
        matches!(self, ServerCredential::ScramClientKey { .. } | ServerCredential::Md5Verifier(_))
    }

    /// Whether a server's stored verifier for the role is the one this pass-through
    /// credential answers for. `None` for other credentials.
    pub fn matches(&self, stored: Option<&StoredSecret>) -> Option<bool> {
        match (self, stored) {
            (ServerCredential::ScramClientKey { verifier, .. }, Some(StoredSecret::Scram(v))) => Some(v == verifier),
            (ServerCredential::Md5Verifier(hash), Some(StoredSecret::Md5(h))) => Some(h.as_str() == hash.as_str()),
            (ServerCredential::ScramClientKey { .. } | ServerCredential::Md5Verifier(_), _) => Some(false),
            _ => None,
        }
    }
}

impl fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ScramServer;

    fn client_key_for(password: &str, verifier: &ScramVerifier) -> ClientKey {
        let mut server = ScramServer::new(verifier.clone());
        let mut client = crate::auth::ScramClient::new(password).unwrap();
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        server.client_final(&cf).unwrap();
        server.client_key().unwrap()
    }

    #[test]
    fn debug_shows_no_secret_and_verifiers_compare() {
        let v = ScramVerifier::generate("pw").unwrap();
        let key = client_key_for("pw", &v);
        let scram = ServerCredential::ScramClientKey { client_key: key.clone(), verifier: v.clone() };
        let md5 = ServerCredential::Md5Verifier(Zeroizing::new(crate::auth::md5_stored("u", "pw")));
        let text = format!("{scram:?} {md5:?} {:?}", ServerCredential::password("pw"));
        assert!(!text.contains("pw") && !text.contains(&v.to_string()), "{text}");
        assert!(!text.contains(&crate::auth::md5_stored("u", "pw")));

        let parsed = |text: &str| StoredSecret::parse(text).unwrap();
        assert_eq!(scram.matches(Some(&parsed(&v.to_string()))), Some(true));
        let other = ScramVerifier::generate("pw").unwrap();
        assert_eq!(scram.matches(Some(&parsed(&other.to_string()))), Some(false));
        assert_eq!(scram.matches(None), Some(false));
        assert_eq!(md5.matches(Some(&parsed(&crate::auth::md5_stored("u", "pw")))), Some(true));
        assert_eq!(md5.matches(Some(&parsed(&crate::auth::md5_stored("u", "other")))), Some(false));
        assert_eq!(md5.matches(Some(&parsed(&v.to_string()))), Some(false));
        assert_eq!(ServerCredential::None.matches(None), None);
        assert!(format!("{:?}", parsed(&v.to_string())).starts_with("SCRAM"));
        for bad in ["", "secret", "md5abc", "SCRAM-SHA-256$garbage", "md5zz3f48b7c4b76a86ce72276c5755f217d"] {
            assert!(StoredSecret::parse(bad).is_none(), "{bad}");
        }
        assert!(scram.is_pass_through() && md5.is_pass_through() && !ServerCredential::None.is_pass_through());
    }
}
