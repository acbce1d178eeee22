//! Configuration: a TOML file, overridden by command-line flags. Every validation error names
//! the key at fault; `main` turns it into exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{AuthMethod, ScramVerifier};

#[derive(Debug, thiserror::Error)]
#[error("invalid config: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), message: message.into() }
}

/// The file as written; every field optional so flags can supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub auth: Option<String>,
    pub max_clients: Option<usize>,
    pub max_startup_connections: Option<usize>,
    pub workers: Option<usize>,
    pub max_message_size: Option<usize>,
    pub max_buffered_bytes: Option<usize>,
    pub startup_packet_timeout: Option<String>,
    pub startup_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: Option<bool>,
    pub auth_query: Option<String>,
    pub auth_user: Option<String>,
    pub auth_password_env: Option<String>,
    pub auth_dbname: Option<String>,
    pub auth_query_cache_ttl: Option<String>,
    pub auth_query_negative_cache_ttl: Option<String>,
    pub auth_query_pool_size: Option<usize>,
    pub log_level: Option<String>,
    pub old: Option<FileServer>,
    pub new: Option<FileServer>,
    #[serde(default)]
    pub users: Vec<FileUser>,
    pub admin: Option<FileAdmin>,
    pub cutover: Option<FileCutover>,
    pub check: Option<FileCheck>,
    pub verify: Option<FileVerify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    pub xid_age_warn: Option<i64>,
    pub wal_retained_warn: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVerify {
    pub rows_per_second: Option<u64>,
    pub chunk_rows: Option<i64>,
    pub attempts: Option<u32>,
    pub catchup_timeout: Option<String>,
    pub hold_recheck_max_chunks: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub url: Option<String>,
    pub password_env: Option<String>,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    pub name: String,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub scram_verifier: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub user: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCutover {
    pub drain_timeout: Option<String>,
    pub catchup_timeout: Option<String>,
    pub max_lag_to_start: Option<u64>,
    pub idle_in_transaction: Option<String>,
    pub fence_old: Option<bool>,
    pub disable_subscription: Option<bool>,
    pub sequence_margin: Option<i64>,
    pub unmovable_sessions: Option<String>,
    pub recheck_changing: Option<bool>,
    pub terminate_foreign: Option<bool>,
    pub decision_poll: Option<String>,
    pub decision_wait: Option<String>,
    #[serde(default)]
    pub subscriptions: Vec<FileSubscription>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileSubscription {
    pub database: String,
    pub name: String,
}

/// Overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_socket: Option<PathBuf>,
    pub metrics_listen: Option<String>,
    pub auth: Option<String>,
    pub auth_query: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub max_clients: Option<usize>,
    pub workers: Option<usize>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(format!("unknown sslmode {other:?}; valid: disable, prefer, require, verify-full")),
        }
    }
}

/// One Postgres server: where it is, and the credentials of the proxy's control connection.
#[derive(Clone, PartialEq)]
pub struct ServerConfig {
    pub name: &'static str,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

impl std::fmt::Debug for ServerConfig {
    // Hand-written so the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} server {}:{} (user {}, database {})", self.name, self.host, self.port, self.user, self.database)
    }
}

impl ServerConfig {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// tokio-postgres config for control connections to `database`.
    pub fn control_config(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user).dbname(database).application_name("pgcutover");
        c.connect_timeout(Duration::from_secs(5));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }
}

/// `auth_query`: roles' verifiers looked up on the active server instead of `[[users]]`.
#[derive(Clone, PartialEq)]
pub struct AuthQueryConfig {
    /// SQL with `$1` = the role name, returning (name, verifier[, valid until]).
    pub query: String,
    /// The role that runs it; `None`: each server's control user (and password).
    pub user: Option<String>,
    pub password: Option<String>,
    /// Where it runs; `None`: each server's control database.
    pub database: Option<String>,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub pool_size: usize,
}

impl std::fmt::Debug for AuthQueryConfig {
    // Hand-written so the password can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "auth_query as {} (pool {}, cache {:?})", self.user.as_deref().unwrap_or("the control user"), self.pool_size, self.cache_ttl)
    }
}

impl AuthQueryConfig {
    /// Connection settings for the query on `server`: its host, port and TLS settings, with
    /// the auth user and database when configured.
    pub fn connection(&self, server: &ServerConfig) -> ServerConfig {
        let mut c = server.clone();
        if let Some(user) = &self.user {
            c.user = user.clone();
            c.password = self.password.clone();
        }
        if let Some(database) = &self.database {
            c.database = database.clone();
        }
        c
    }
}

/// TLS to clients, as loaded from `tls_cert` and `tls_key`.
#[derive(Clone)]
pub struct ClientTls {
    pub server: Arc<rustls::ServerConfig>,
    /// `tls-server-end-point` data of the certificate, for SCRAM-SHA-256-PLUS; `None` when its
    /// signature algorithm gives none.
    pub end_point: Option<Vec<u8>>,
}

/// A client user. A password (inline or from the environment) lets the proxy log into the
/// servers as that user too; a bare SCRAM verifier only lets clients log into the proxy.
#[derive(Clone)]
pub struct UserConfig {
    pub name: String,
    pub password: Option<String>,
    /// Derived once at load time from the password, or given as stored in `pg_authid`.
    pub verifier: ScramVerifier,
}

impl UserConfig {
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Whether both accept the same credential (a password's verifier is salted anew at
    /// each load, so passwords are compared as such).
    pub fn same_credential(&self, other: &UserConfig) -> bool {
        match (&self.password, &other.password) {
            (None, None) => self.verifier == other.verifier,
            (a, b) => a == b,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleInTransaction {
    /// Roll back on old; the client's next request gets SQLSTATE 40001 (retryable).
    Rollback,
    /// Roll back on old; the client gets FATAL 57P01 and the connection closes.
    Terminate,
    /// Give up the cutover instead.
    Abort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmovablePolicy {
    /// Close the session with a FATAL explaining why.
    Close,
    /// Abort the cutover.
    Abort,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CutoverConfig {
    pub drain_timeout: Duration,
    pub catchup_timeout: Duration,
    pub max_lag_to_start: u64,
    pub idle_in_transaction: IdleInTransaction,
    pub unmovable_sessions: UnmovablePolicy,
    pub fence_old: bool,
    /// Terminate sessions on old that bypass the proxy, right after the commit point.
    pub terminate_foreign: bool,
    pub disable_subscription: bool,
    pub sequence_margin: i64,
    /// Inside the hold, compare again the chunks the last VERIFY found still changing.
    pub recheck_changing: bool,
    pub subscriptions: Vec<FileSubscription>,
    /// How often the cutover decision is read from the servers.
    pub decision_poll: Duration,
    /// How long a new client waits for an unknown route before it gets 57P03.
    pub decision_wait: Duration,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(2),
            catchup_timeout: Duration::from_secs(5),
            max_lag_to_start: 16 * 1024 * 1024,
            idle_in_transaction: IdleInTransaction::Rollback,
            unmovable_sessions: UnmovablePolicy::Close,
            fence_old: true,
            terminate_foreign: false,
            disable_subscription: true,
            sequence_margin: 0,
            recheck_changing: false,
            subscriptions: Vec::new(),
            decision_poll: Duration::from_secs(1),
            decision_wait: Duration::from_secs(5),
        }
    }
}

/// Thresholds of CHECK's warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Warn when old's `age(datfrozenxid)` is above this.
    pub xid_age_warn: i64,
    /// Warn when the subscription's slot keeps more WAL than this, in bytes.
    pub wal_retained_warn: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        // Half of autovacuum_freeze_max_age's default, where anti-wraparound vacuums start.
        Self { xid_age_warn: 100_000_000, wal_retained_warn: 1 << 30 }
    }
}

/// VERIFY: how fast and in what pieces it compares old and new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyConfig {
    /// Rows read per second on each server; 0 = as fast as the servers answer.
    pub rows_per_second: u64,
    /// Rows per chunk of a table with a primary key.
    pub chunk_rows: i64,
    /// Comparisons of a chunk that differs, each after new caught up, before it is reported
    /// as still changing.
    pub attempts: u32,
    /// How long to wait for new to apply a test commit before a comparison.
    pub catchup_timeout: Duration,
    /// CUTOVER recheck_changing: compare at most this many still-changing chunks in the hold.
    pub hold_recheck_max_chunks: usize,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { rows_per_second: 0, chunk_rows: 5000, attempts: 8, catchup_timeout: Duration::from_secs(30), hold_recheck_max_chunks: 16 }
    }
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub admin_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    pub auth: AuthMethod,
    /// Authenticated client sessions at once.
    pub max_clients: usize,
    /// Connections still in startup (not yet authenticated) at once.
    pub max_startup_connections: usize,
    /// Runtime worker threads.
    pub workers: usize,
    pub max_message_size: usize,
    /// Bytes the proxy buffers for all sessions together beyond each one's small allowance.
    pub max_buffered_bytes: usize,
    /// From accept to the StartupMessage (TLS negotiation included).
    pub startup_packet_timeout: Duration,
    /// From accept to the end of authentication and the server login.
    pub startup_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS to clients, built from tls_cert and tls_key when the file was loaded.
    pub client_tls: Option<ClientTls>,
    pub require_tls: bool,
    /// The log filter from the file (`log_level`), checked; `PGCUTOVER_LOG` wins over it.
    pub log_level: Option<String>,
    pub old: ServerConfig,
    pub new: Option<ServerConfig>,
    pub users: Vec<UserConfig>,
    pub auth_query: Option<AuthQueryConfig>,
    pub admin_user: String,
    pub admin_password: Option<String>,
    pub cutover: CutoverConfig,
    pub check: CheckConfig,
    pub verify: VerifyConfig,
}

impl Config {
    pub fn load(path: Option<&std::path::Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| invalid("--config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    let key = e.span().map(|s| key_at(&text, s.start)).unwrap_or_else(|| "file".into());
                    // The parser's message may quote the value ("invalid type: integer `123`").
                    let message = if holds_secret(&key) { "invalid value (not shown: it may be a secret)".to_string() } else { e.message().to_string() };
                    invalid(&key, message)
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(file, overrides)
    }

    pub fn from_parts(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let listen = parse_addr("listen", o.listen.clone().or(file.listen).unwrap_or_else(|| "127.0.0.1:6432".into()))?;
        let admin_listen = o.admin_listen.clone().or(file.admin_listen).map(|a| parse_addr("admin_listen", a)).transpose()?;
        let metrics_listen = o.metrics_listen.clone().or(file.metrics_listen).map(|a| parse_addr("metrics_listen", a)).transpose()?;
        let auth_text = o.auth.clone().or(file.auth).unwrap_or_else(|| "scram-sha-256".into());
        let auth: AuthMethod = auth_text.parse().map_err(|e: crate::auth::ParseAuthMethodError| invalid("auth", e.to_string()))?;
        let file_old = file.old.unwrap_or_default();
        let old_url = o.old.clone().or(file_old.url.clone()).ok_or_else(|| invalid("old.url", "required (or --old)"))?;
        let old = parse_server("old", &old_url, &file_old)?;
        let file_new = file.new.unwrap_or_default();
        let new = match o.new.clone().or(file_new.url.clone()) {
            Some(url) => Some(parse_server("new", &url, &file_new)?),
            None => None,
        };
        let file_auth = FileAuthQuery {
            query: file.auth_query,
            user: file.auth_user,
            password_env: file.auth_password_env,
            database: file.auth_dbname,
            cache_ttl: file.auth_query_cache_ttl,
            negative_cache_ttl: file.auth_query_negative_cache_ttl,
            pool_size: file.auth_query_pool_size,
        };
        let mut users = Vec::new();
        for (i, u) in file.users.into_iter().enumerate() {
            let key = format!("users[{i}]");
            if u.name.is_empty() {
                return Err(invalid(&format!("{key}.name"), "must not be empty"));
            }
            let password = match (u.password, u.password_env, &u.scram_verifier) {
                (Some(p), None, None) => Some(p),
                (None, Some(var), None) => Some(
                    std::env::var(&var).map_err(|_| invalid(&format!("{key}.password_env"), format!("environment variable {var} is not set")))?,
                ),
                (None, None, Some(_)) => None,
                _ => return Err(invalid(&key, "give exactly one of password, password_env, scram_verifier")),
            };
            let verifier = match (&password, u.scram_verifier) {
                (Some(p), _) => ScramVerifier::generate(p).map_err(|e| invalid(&format!("{key}.password"), e.to_string()))?,
                (None, Some(v)) => ScramVerifier::parse(&v).map_err(|e| invalid(&format!("{key}.scram_verifier"), e.to_string()))?,
                (None, None) => return Err(invalid(&key, "no credential")),
            };
            users.push(UserConfig { name: u.name, password, verifier });
        }
        let auth_query = auth_query_config(&file_auth, o.auth_query.clone(), auth)?;
        check_users(auth, &users, auth_query.is_some())?;
        let admin = file.admin.unwrap_or_default();
        let admin_password = match (admin.password, admin.password_env) {
            (Some(p), None) => Some(p),
            (None, Some(var)) => Some(std::env::var(&var).map_err(|_| invalid("admin.password_env", format!("environment variable {var} is not set")))?),
            (None, None) => None,
            _ => return Err(invalid("admin", "give password or password_env, not both")),
        };
        let tls_cert = o.tls_cert.clone().or(file.tls_cert);
        let tls_key = o.tls_key.clone().or(file.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(invalid("tls_cert", "tls_cert and tls_key go together"));
        }
        let client_tls = match (&tls_cert, &tls_key) {
            (Some(cert), Some(key)) => {
                // Load them now: a bad file is a configuration error naming the key, not a
                // failure at start (or at a reload).
                for (name, path) in [("tls_cert", cert), ("tls_key", key)] {
                    std::fs::File::open(path).map_err(|e| invalid(name, format!("cannot read {}: {e}", path.display())))?;
                }
                let server = crate::tls::server_config(cert, key).map_err(|e| {
                    let text = format!("{e:#}");
                    invalid(if text.contains("private key") { "tls_key" } else { "tls_cert" }, text)
                })?;
                let end_point = crate::auth::channel_binding::end_point_of_pem(cert).map_err(|e| invalid("tls_cert", format!("{e:#}")))?;
                Some(ClientTls { server, end_point })
            }
            _ => None,
        };
        let require_tls = file.require_tls.unwrap_or(false);
        if require_tls && tls_cert.is_none() {
            return Err(invalid("require_tls", "needs tls_cert and tls_key"));
        }
        let max_clients = o.max_clients.or(file.max_clients).unwrap_or(10_000);
        if max_clients == 0 {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        let max_startup_connections = file.max_startup_connections.unwrap_or(1000);
        if max_startup_connections == 0 {
            return Err(invalid("max_startup_connections", "must be at least 1"));
        }
        if let Some(spec) = &file.log_level {
            crate::logging::parse(spec).map_err(|e| invalid("log_level", e))?;
        }
        let workers = o.workers.or(file.workers).unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1));
        if !(1..=1024).contains(&workers) {
            return Err(invalid("workers", "must be between 1 and 1024"));
        }
        let max_message_size = file.max_message_size.unwrap_or(1 << 30);
        if max_message_size < 1024 {
            return Err(invalid("max_message_size", "must be at least 1024 bytes"));
        }
        let max_buffered_bytes = file.max_buffered_bytes.unwrap_or(256 << 20);
        if max_buffered_bytes < 1 << 20 {
            return Err(invalid("max_buffered_bytes", "must be at least 1048576 bytes (1 MiB)"));
        }
        let c = file.cutover.unwrap_or_default();
        let defaults = CutoverConfig::default();
        let cutover = CutoverConfig {
            drain_timeout: opt_duration("cutover.drain_timeout", c.drain_timeout)?.unwrap_or(defaults.drain_timeout),
            catchup_timeout: opt_duration("cutover.catchup_timeout", c.catchup_timeout)?.unwrap_or(defaults.catchup_timeout),
            max_lag_to_start: c.max_lag_to_start.unwrap_or(defaults.max_lag_to_start),
            idle_in_transaction: match c.idle_in_transaction.as_deref() {
                None | Some("rollback") => IdleInTransaction::Rollback,
                Some("terminate") => IdleInTransaction::Terminate,
                Some("abort") => IdleInTransaction::Abort,
                Some(other) => return Err(invalid("cutover.idle_in_transaction", format!("{other:?}; valid: rollback, terminate, abort"))),
            },
            unmovable_sessions: match c.unmovable_sessions.as_deref() {
                None | Some("close") => UnmovablePolicy::Close,
                Some("abort") => UnmovablePolicy::Abort,
                Some(other) => return Err(invalid("cutover.unmovable_sessions", format!("{other:?}; valid: close, abort"))),
            },
            fence_old: c.fence_old.unwrap_or(defaults.fence_old),
            terminate_foreign: c.terminate_foreign.unwrap_or(defaults.terminate_foreign),
            disable_subscription: c.disable_subscription.unwrap_or(defaults.disable_subscription),
            sequence_margin: c.sequence_margin.unwrap_or(defaults.sequence_margin),
            recheck_changing: c.recheck_changing.unwrap_or(false),
            subscriptions: c.subscriptions,
            decision_poll: opt_duration("cutover.decision_poll", c.decision_poll)?.unwrap_or(defaults.decision_poll),
            decision_wait: opt_duration("cutover.decision_wait", c.decision_wait)?.unwrap_or(defaults.decision_wait),
        };
        if cutover.decision_poll < Duration::from_millis(10) {
            return Err(invalid("cutover.decision_poll", "must be at least 10ms"));
        }
        let file_check = file.check.unwrap_or_default();
        let check_defaults = CheckConfig::default();
        let check = CheckConfig {
            xid_age_warn: file_check.xid_age_warn.unwrap_or(check_defaults.xid_age_warn),
            wal_retained_warn: file_check.wal_retained_warn.unwrap_or(check_defaults.wal_retained_warn),
        };
        let v = file.verify.unwrap_or_default();
        let verify_defaults = VerifyConfig::default();
        let chunk_rows = v.chunk_rows.unwrap_or(verify_defaults.chunk_rows);
        if !(1..=1_000_000).contains(&chunk_rows) {
            return Err(invalid("verify.chunk_rows", "must be between 1 and 1000000"));
        }
        let attempts = v.attempts.unwrap_or(verify_defaults.attempts);
        if !(1..=100).contains(&attempts) {
            return Err(invalid("verify.attempts", "must be between 1 and 100"));
        }
        let verify = VerifyConfig {
            rows_per_second: v.rows_per_second.unwrap_or(verify_defaults.rows_per_second),
            chunk_rows,
            attempts,
            catchup_timeout: opt_duration("verify.catchup_timeout", v.catchup_timeout)?.unwrap_or(verify_defaults.catchup_timeout),
            hold_recheck_max_chunks: v.hold_recheck_max_chunks.unwrap_or(verify_defaults.hold_recheck_max_chunks),
        };
        Ok(Config {
            listen,
            admin_listen,
            admin_socket: o.admin_socket.clone().or(file.admin_socket),
            metrics_listen,
            auth,
            max_clients,
            max_startup_connections,
            workers,
            max_message_size,
            max_buffered_bytes,
            startup_packet_timeout: opt_duration("startup_packet_timeout", file.startup_packet_timeout)?.unwrap_or(Duration::from_secs(10)),
            startup_timeout: opt_duration("startup_timeout", file.startup_timeout)?.unwrap_or(Duration::from_secs(60)),
            shutdown_timeout: opt_duration("shutdown_timeout", file.shutdown_timeout)?.unwrap_or(Duration::from_secs(10)),
            tls_cert,
            tls_key,
            client_tls,
            require_tls,
            log_level: file.log_level,
            old,
            new,
            users,
            auth_query,
            admin_user: admin.user.unwrap_or_else(|| "admin".into()),
            admin_password,
            cutover,
            check,
            verify,
        })
    }
}

/// The `auth_*` keys of the file, taken together.
struct FileAuthQuery {
    query: Option<String>,
    user: Option<String>,
    password_env: Option<String>,
    database: Option<String>,
    cache_ttl: Option<String>,
    negative_cache_ttl: Option<String>,
    pool_size: Option<usize>,
}

fn auth_query_config(file: &FileAuthQuery, flag: Option<String>, auth: AuthMethod) -> Result<Option<AuthQueryConfig>, ConfigError> {
    let Some(query) = flag.or_else(|| file.query.clone()) else {
        let stray = [
            ("auth_user", file.user.is_some()),
            ("auth_password_env", file.password_env.is_some()),
            ("auth_dbname", file.database.is_some()),
            ("auth_query_cache_ttl", file.cache_ttl.is_some()),
            ("auth_query_negative_cache_ttl", file.negative_cache_ttl.is_some()),
            ("auth_query_pool_size", file.pool_size.is_some()),
        ];
        return match stray.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(invalid(key, "only used with auth_query")),
            None => Ok(None),
        };
    };
    if !query.contains("$1") {
        return Err(invalid("auth_query", "must take the role name as $1, e.g. SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin"));
    }
    if auth == AuthMethod::Trust {
        return Err(invalid("auth_query", "needs auth = scram-sha-256 or md5 (with trust no password is checked)"));
    }
    if file.password_env.is_some() && file.user.is_none() {
        return Err(invalid("auth_password_env", "needs auth_user (without it the control credentials of [old]/[new] are used)"));
    }
    let password = match &file.password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| invalid("auth_password_env", format!("environment variable {var} is not set")))?),
        None => None,
    };
    let pool_size = file.pool_size.unwrap_or(2);
    if !(1..=16).contains(&pool_size) {
        return Err(invalid("auth_query_pool_size", "must be between 1 and 16"));
    }
    Ok(Some(AuthQueryConfig {
        query,
        user: file.user.clone(),
        password,
        database: file.database.clone(),
        cache_ttl: opt_duration("auth_query_cache_ttl", file.cache_ttl.clone())?.unwrap_or(Duration::from_secs(60)),
        negative_cache_ttl: opt_duration("auth_query_negative_cache_ttl", file.negative_cache_ttl.clone())?.unwrap_or(Duration::from_secs(5)),
        pool_size,
    }))
}

/// Checks client users against the authentication method (at load, and at a reload, where the
/// method is the running one).
pub fn check_users(auth: AuthMethod, users: &[UserConfig], auth_query: bool) -> Result<(), ConfigError> {
    if auth != AuthMethod::Trust && users.is_empty() && !auth_query {
        return Err(invalid("users", format!("auth = {} needs auth_query or at least one [[users]] entry (or use --auth trust for local use)", auth.as_str())));
    }
    Ok(())
}

/// Keys whose values are secrets or may hold one (a URL's password): errors never quote them.
fn holds_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    matches!(last, "password" | "scram_verifier" | "url")
}

/// Best-effort name of the key at byte `offset` of a TOML text, for error messages, with the
/// table it sits in: `listen`, `old.url`, `users[1].password`, `cutover`.
fn key_at(text: &str, offset: usize) -> String {
    let Some(before) = text.get(..offset.min(text.len())) else { return "file".into() };
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some(header) = table_header(line) {
        return header.0.to_string();
    }
    // The table the line belongs to: the last [table] or [[array]] header above it.
    let mut table = String::new();
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in text[..line_start].lines() {
        match table_header(l.trim()) {
            Some((name, true)) => {
                let n = counts.entry(name).or_insert(0);
                table = format!("{name}[{n}]");
                *n += 1;
            }
            Some((name, false)) => table = name.to_string(),
            None => {}
        }
    }
    let key = line.split('=').next().map(str::trim).filter(|k| !k.is_empty());
    match (key, table.is_empty()) {
        (Some(k), true) => k.to_string(),
        (Some(k), false) => format!("{table}.{k}"),
        (None, false) => table,
        (None, true) => "file".into(),
    }
}

/// `[name]` → (name, false); `[[name]]` → (name, true).
fn table_header(line: &str) -> Option<(&str, bool)> {
    if let Some(name) = line.strip_prefix("[[").and_then(|r| r.split("]]").next()).filter(|_| line.contains("]]")) {
        return Some((name.trim(), true));
    }
    line.strip_prefix('[').and_then(|r| r.split(']').next()).filter(|_| line.contains(']')).map(|name| (name.trim(), false))
}

fn parse_addr(key: &str, text: String) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| invalid(key, format!("{text:?} is not an address like 127.0.0.1:6432")))
}

fn opt_duration(key: &str, text: Option<String>) -> Result<Option<Duration>, ConfigError> {
    text.map(|t| parse_duration(&t).ok_or_else(|| invalid(key, format!("{t:?} is not a duration like 500ms, 2s or 1m")))).transpose()
}

/// `250ms`, `2s`, `1.5s`, `1m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// The parts of `postgres://user:password@host:port/database?key=value`, percent-decoded.
/// Parsed as libpq does, with one leniency: the user part ends at the last `@` before the
/// path, so a password with an unencoded `@` still works. Errors never quote the URL: it may
/// hold a password.
#[derive(Debug, PartialEq)]
pub struct PgUrl {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub database: String,
    pub params: Vec<(String, String)>,
}

impl PgUrl {
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        let rest = text.strip_prefix("postgres://").or_else(|| text.strip_prefix("postgresql://")).ok_or("scheme must be postgres://")?;
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (decode(u, "user")?, Some(decode(p, "password")?)),
                None => (decode(info, "user")?, None),
            },
            None => (String::new(), None),
        };
        if hostport.contains(',') {
            return Err("several hosts are not supported: name one server".into());
        }
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or("IPv6 address lacks its closing ]")?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or("unexpected text after the IPv6 address")?)),
            }
        } else {
            hostport.rsplit_once(':').map_or((hostport, None), |(h, p)| (h, Some(p)))
        };
        let host = decode(host, "host")?;
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p > 0).ok_or("port is not a number from 1 to 65535")?),
        };
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or("URL parameter without =value")?;
            params.push((decode(k, "parameter")?, decode(v, "parameter")?));
        }
        Ok(PgUrl { user, password, host, port, database: decode(path, "database")?, params })
    }
}

/// Percent-decoding; `part` names what failed without showing it.
fn decode(text: &str, part: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("bad %-escape in the {part}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {part} is not UTF-8 after %-decoding"))
}

fn parse_server(name: &'static str, text: &str, file: &FileServer) -> Result<ServerConfig, ConfigError> {
    let key = format!("{name}.url");
    let url = PgUrl::parse(text).map_err(|e| invalid(&key, format!("not a usable postgres:// URL: {e}")))?;
    if url.host.is_empty() {
        return Err(invalid(&key, "needs a host"));
    }
    if url.user.is_empty() {
        return Err(invalid(&key, "needs a user (postgres://USER@HOST:PORT/DB)"));
    }
    let mut password = url.password;
    if let Some(var) = &file.password_env {
        password = Some(std::env::var(var).map_err(|_| invalid(&format!("{name}.password_env"), format!("environment variable {var} is not set")))?);
    }
    let mut sslmode = file.sslmode.clone();
    let mut sslrootcert = file.sslrootcert.clone();
    for (k, v) in url.params {
        match k.as_str() {
            "sslmode" => sslmode = Some(v),
            "sslrootcert" => sslrootcert = Some(PathBuf::from(v)),
            other => return Err(invalid(&key, format!("unsupported URL parameter {other:?} (supported: sslmode, sslrootcert)"))),
        }
    }
    let sslmode: SslMode = sslmode.as_deref().unwrap_or("prefer").parse().map_err(|e: String| invalid(&format!("{name}.sslmode"), e))?;
    if sslmode == SslMode::VerifyFull && sslrootcert.is_none() {
        return Err(invalid(&format!("{name}.sslrootcert"), "sslmode verify-full needs a CA file"));
    }
    if sslmode == SslMode::VerifyFull {
        crate::tls::client_config(sslmode, sslrootcert.as_deref()).map_err(|e| invalid(&format!("{name}.sslrootcert"), format!("{e:#}")))?;
    }
    Ok(ServerConfig {
        name,
        host: url.host,
        port: url.port.unwrap_or(5432),
        user: url.user,
        password,
        database: if url.database.is_empty() { "postgres".into() } else { url.database },
        sslmode,
        sslrootcert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn postgres_urls_parse_like_libpq() {
        let url = PgUrl::parse("postgresql://app:s3cr@t%2F@[::1]:6000/my%20db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!((url.user.as_str(), url.password.as_deref(), url.host.as_str(), url.port), ("app", Some("s3cr@t/"), "::1", Some(6000)));
        assert_eq!(url.database, "my db");
        assert_eq!(url.params, vec![("sslmode".into(), "require".into()), ("sslrootcert".into(), "/ca.pem".into())]);
        let url = PgUrl::parse("postgres://u@db.example").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.password, url.database.as_str()), ("db.example", None, None, ""));
        for bad in ["mysql://u@h/db", "postgres://u:pw@h:99999/db", "postgres://u:pw@h:x/db", "postgres://u:p%zz@h/db", "postgres://u@[::1/db", "postgres://u@a,b/db"] {
            let err = PgUrl::parse(bad).unwrap_err();
            assert!(!err.contains("pw") && !err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml"));
        let c = Config::load(Some(path), &Overrides::default()).expect("proxy.toml loads");
        assert_eq!((c.max_clients, c.max_startup_connections), (10_000, 1000));
        assert_eq!((c.startup_packet_timeout, c.startup_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
        assert_eq!(c.log_level.as_deref(), Some("info"));
        let (check, verify) = (CheckConfig::default(), VerifyConfig::default());
        assert_eq!((c.check.xid_age_warn, c.check.wal_retained_warn), (check.xid_age_warn, check.wal_retained_warn));
        assert_eq!((c.verify.rows_per_second, c.verify.chunk_rows, c.verify.attempts), (verify.rows_per_second, verify.chunk_rows, verify.attempts));
        assert_eq!((c.verify.catchup_timeout, c.verify.hold_recheck_max_chunks), (verify.catchup_timeout, verify.hold_recheck_max_chunks));
        assert!(!c.cutover.recheck_changing);
    }

    #[test]
    fn verify_settings_are_checked() {
        let bad = toml::from_str::<FileConfig>("[verify]\nchunk_rows = 0\n").expect("parses");
        let o = Overrides { old: Some("postgres://u@h/db".into()), auth: Some("trust".into()), ..Default::default() };
        assert_eq!(Config::from_parts(bad, &o).err().map(|e| e.key), Some("verify.chunk_rows".to_string()));
    }

    #[test]
    fn secret_values_are_not_quoted_in_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.toml");
        let text = "auth = \"trust\"\n[old]\nurl = \"postgres://u@h/d\"\n[[users]]\nname = \"x\"\npassword = 8675309\n";
        std::fs::write(&path, text).expect("write");
        let e = Config::load(Some(&path), &Overrides::default()).err().expect("a numeric password is refused");
        assert_eq!(e.key, "users[0].password");
        assert!(!e.to_string().contains("8675309"), "{e}");
    }

    #[test]
    fn key_at_names_the_table() {
        let text = "listen = 1\n[old]\nurl = 2\n[[users]]\nname = 3\n[[users]]\npassword = 4\n[cutover]\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("1"), "listen");
        assert_eq!(at("2"), "old.url");
        assert_eq!(at("3"), "users[0].name");
        assert_eq!(at("4"), "users[1].password");
        assert_eq!(at("[cutover]"), "cutover");
        assert_eq!(key_at("", 0), "file");
    }

    #[test]
    fn server_url_and_errors_name_the_key() {
        let o = Overrides { old: Some("postgres://u:p%40ss@db:5433/app?sslmode=require".into()), auth: Some("trust".into()), ..Default::default() };
        let c = Config::from_parts(FileConfig::default(), &o).unwrap();
        assert_eq!((c.old.host.as_str(), c.old.port, c.old.password.as_deref(), c.old.sslmode), ("db", 5433, Some("p@ss"), SslMode::Require));
        assert!(!format!("{:?}", c.old).contains("p@ss"));
        let bad = Overrides { old: Some("mysql://x".into()), ..o.clone() };
        assert_eq!(Config::from_parts(FileConfig::default(), &bad).err().unwrap().key, "old.url");
        let bad = Overrides { listen: Some("nowhere".into()), ..o };
        assert_eq!(Config::from_parts(FileConfig::default(), &bad).err().unwrap().key, "listen");
    }

    #[test]
    fn auth_query_keys() {
        let o = Overrides { old: Some("postgres://ctl:pw@db/app".into()), auth: Some("md5".into()), ..Default::default() };
        let file = |f: fn(&mut FileConfig)| {
            let mut file = FileConfig { auth_query: Some("SELECT rolname, rolpassword FROM pg_authid WHERE rolname = $1".into()), ..Default::default() };
            f(&mut file);
            file
        };
        // Enough on its own (no [[users]]); defaults: the control credentials, 60 s / 5 s, 2.
        let c = Config::from_parts(file(|_| {}), &o).unwrap();
        let q = c.auth_query.as_ref().unwrap();
        assert_eq!((q.cache_ttl, q.negative_cache_ttl, q.pool_size), (Duration::from_secs(60), Duration::from_secs(5), 2));
        let conn = q.connection(&c.old);
        assert_eq!((conn.user.as_str(), conn.password.as_deref(), conn.database.as_str(), conn.port), ("ctl", Some("pw"), "app", 5432));
        // An auth user and database: no control password goes with them.
        let c = Config::from_parts(
            file(|f| {
                f.auth_user = Some("pgcutover_auth".into());
                f.auth_dbname = Some("authdb".into());
                f.auth_query_cache_ttl = Some("2s".into());
            }),
            &o,
        )
        .unwrap();
        let q = c.auth_query.as_ref().unwrap();
        let conn = q.connection(&c.old);
        assert_eq!((conn.user.as_str(), conn.password.as_deref(), conn.database.as_str()), ("pgcutover_auth", None, "authdb"));
        assert_eq!(q.cache_ttl, Duration::from_secs(2));
        assert!(!format!("{q:?}").contains("pw"));
        // The flag works alone too.
        let flag = Overrides { auth_query: Some("SELECT * FROM auth($1)".into()), ..o.clone() };
        assert_eq!(Config::from_parts(FileConfig::default(), &flag).unwrap().auth_query.unwrap().query, "SELECT * FROM auth($1)");

        let key = |file: FileConfig, o: &Overrides| Config::from_parts(file, o).err().map(|e| e.key);
        assert_eq!(key(file(|f| f.auth_query = Some("SELECT 1".into())), &o).as_deref(), Some("auth_query"));
        assert_eq!(key(file(|_| {}), &Overrides { auth: Some("trust".into()), ..o.clone() }).as_deref(), Some("auth_query"));
        assert_eq!(key(file(|f| f.auth_query_pool_size = Some(0)), &o).as_deref(), Some("auth_query_pool_size"));
        assert_eq!(key(file(|f| f.auth_query_cache_ttl = Some("soon".into())), &o).as_deref(), Some("auth_query_cache_ttl"));
        assert_eq!(key(file(|f| f.auth_password_env = Some("X".into())), &o).as_deref(), Some("auth_password_env"));
        let stray = FileConfig { auth_user: Some("a".into()), ..Default::default() };
        assert_eq!(key(stray, &Overrides { auth: Some("trust".into()), ..o.clone() }).as_deref(), Some("auth_user"));
        assert_eq!(key(FileConfig::default(), &o).as_deref(), Some("users"));
    }
}
