//! The connection string one server uses to subscribe to the other (`CREATE SUBSCRIPTION ...
//! CONNECTION`), built from the proxy's `[old]`/`[new]` server config.
//!
//! Where the password goes: with [`Password::InConninfo`] it is written into the string and
//! so stored in `pg_subscription.subconninfo` on the subscriber, a column only superusers can
//! read (Postgres revokes it from PUBLIC). It also passes through the subscriber while the
//! statement runs, so the statement is sent with statement logging turned off for it (see
//! `reverse`). With [`Password::ServerPassfile`] the string carries none: the subscriber's
//! server process finds it in a passfile on *its* host (`~/.pgpass` of the OS user running
//! Postgres, or the `passfile` given), which keeps it out of the catalog altogether.
//! Postgres 15, the subscriber of the way back, lets only superusers create subscriptions
//! and has no `password_required` option (16 added it for non-superuser owners), so both
//! work there.
//!
//! A [`Conninfo`] never shows the password: Debug and Display print `password=***`, and
//! [`Conninfo::scrub`] removes it from any error text that might quote the string.

use std::fmt;

use super::ControlError;
use crate::config::{ServerConfig, SslMode};

/// Where the subscriber finds the password of the server it subscribes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Password {
    /// The configured password is written into the connection string (when one is configured).
    InConninfo,
    /// None in the string: the subscriber's server reads it from a passfile on its own host,
    /// the default `~/.pgpass` (None) or the path given.
    ServerPassfile(Option<String>),
}

/// A libpq keyword/value connection string holding, perhaps, a password.
#[derive(Clone)]
pub struct Conninfo {
    text: String,
    password: Option<String>,
}

impl Conninfo {
    /// How the subscriber reaches `server`'s `database`: the host, port, user and TLS settings
    /// the proxy itself uses. The host must resolve the same way on the subscriber's host.
    /// `sslrootcert` is a path the subscriber's server reads on its own host.
    pub fn to_server(server: &ServerConfig, database: &str, password: &Password) -> Result<Self, ControlError> {
        let mut pairs: Vec<(&str, String)> = vec![
            ("host", server.host.clone()),
            ("port", server.port.to_string()),
            ("user", server.user.clone()),
            ("dbname", database.to_string()),
            ("sslmode", sslmode(server.sslmode).to_string()),
        ];
        if let Some(root) = &server.sslrootcert {
            pairs.push(("sslrootcert", root.display().to_string()));
        }
        let mut secret = None;
        match password {
            Password::InConninfo => {
                if let Some(p) = &server.password {
                    pairs.push(("password", p.clone()));
                    secret = Some(p.clone());
                }
            }
            Password::ServerPassfile(Some(path)) => pairs.push(("passfile", path.clone())),
            Password::ServerPassfile(None) => {}
        }
        if pairs.iter().any(|(_, v)| v.contains('\0')) {
            return Err(ControlError::Query(format!("the {} server's settings hold a NUL byte: no connection string can carry it", server.name)));
        }
        let text = pairs.iter().map(|(k, v)| format!("{k}={}", quote_value(v))).collect::<Vec<_>>().join(" ");
        Ok(Conninfo { text, password: secret.filter(|p| !p.is_empty()) })
    }

    /// The string as an SQL literal (an `E''` string, so the server's
    /// `standard_conforming_strings` does not matter). The only way to get at the password:
    /// for the statement text, never for a log.
    pub fn sql_literal(&self) -> String {
        escape_literal(&self.text)
    }

    /// `text` with every occurrence of the password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text.to_string(),
        }
    }

    /// Whether the string carries a password.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
}

impl fmt::Display for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.password {
            Some(p) => f.write_str(&self.text.replace(&format!("password={}", quote_value(p)), "password=***")),
            None => f.write_str(&self.text),
        }
    }
}

impl fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conninfo({self})")
    }
}

fn sslmode(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyFull => "verify-full",
    }
}

/// A libpq conninfo value: single quotes, with `\` and `'` backslash-escaped.
fn quote_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An SQL `E'...'` literal: backslashes and quotes escaped, read alike whatever
/// `standard_conforming_strings` says.
pub fn escape_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(password: Option<&str>) -> ServerConfig {
        ServerConfig {
            name: "new",
            host: "db.internal".into(),
            port: 5433,
            user: "repl o'user".into(),
            password: password.map(str::to_string),
            database: "postgres".into(),
            sslmode: SslMode::Require,
            sslrootcert: None,
        }
    }

    #[test]
    fn values_are_quoted_for_libpq_and_the_string_for_sql() {
        let c = Conninfo::to_server(&server(Some(r"p'w\x y")), "app db", &Password::InConninfo).unwrap();
        assert_eq!(c.text, r"host='db.internal' port='5433' user='repl o\'user' dbname='app db' sslmode='require' password='p\'w\\x y'");
        // In the E'' literal every backslash doubles and every quote gets one: the server
        // reads back exactly `text`.
        assert_eq!(c.sql_literal(), r"E'host=\'db.internal\' port=\'5433\' user=\'repl o\\\'user\' dbname=\'app db\' sslmode=\'require\' password=\'p\\\'w\\\\x y\''");
        assert!(c.has_password());
    }

    #[test]
    fn the_password_never_shows() {
        let c = Conninfo::to_server(&server(Some("s3cret pw")), "app", &Password::InConninfo).unwrap();
        for shown in [c.to_string(), format!("{c:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("password=***") && shown.contains("host='db.internal'"), "{shown}");
        }
        assert_eq!(c.scrub("failed: missing \"=\" after \"s3cret pw\""), "failed: missing \"=\" after \"***\"");
    }

    #[test]
    fn a_passfile_keeps_the_password_out_of_the_string() {
        let c = Conninfo::to_server(&server(Some("s3cret")), "app", &Password::ServerPassfile(None)).unwrap();
        assert!(!c.sql_literal().contains("s3cret") && !c.has_password());
        let c = Conninfo::to_server(&server(Some("s3cret")), "app", &Password::ServerPassfile(Some("/etc/pg/pass".into()))).unwrap();
        assert!(c.text.ends_with("passfile='/etc/pg/pass'") && !c.text.contains("s3cret"), "{}", c.text);
        let c = Conninfo::to_server(&server(None), "app", &Password::InConninfo).unwrap();
        assert!(!c.text.contains("password") && !c.has_password());
    }

    #[test]
    fn a_nul_byte_is_refused() {
        assert!(Conninfo::to_server(&server(Some("a\0b")), "app", &Password::InConninfo).is_err());
    }
}
