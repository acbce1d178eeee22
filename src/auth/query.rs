//! `auth_query`: each role's stored verifier, looked up on the active server (old until the
//! cutover), so the proxy needs no password of its own for its clients' roles.
//!
//! A small bounded pool of control connections runs the query (a login storm waits for a
//! connection instead of opening one per login), and the answers are cached per role: found
//! roles for `auth_query_cache_ttl`, unknown ones for `auth_query_negative_cache_ttl`.
//! Concurrent logins of one role share one lookup. A failed login refreshes its role's entry
//! if it is older than [`REFRESH_INTERVAL`], so a password change takes effect without a
//! restart while a wrong-password storm costs at most one query per role and interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;
use tokio_postgres::{Client, Row, Statement};

use super::credential::StoredSecret;
use crate::backend::Role;
use crate::config::{AuthQueryConfig, ServerConfig};

/// How long the server may take to answer the query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed login re-reads an entry older than this, at most once per interval and role.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// After a failed connect, logins fail at once for this long instead of each waiting for its
/// own connect timeout (a server that is down or unreachable).
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(1);
/// Roles remembered at most (names sent by anyone included); beyond, expired entries go.
const MAX_CACHED: usize = 10_000;

/// What the query says about a role.
#[derive(Clone, Debug)]
pub enum Lookup {
    Found { secret: StoredSecret, valid_until: Option<SystemTime> },
    /// No such role (or one the query leaves out, e.g. without LOGIN), or one without a
    /// verifier the proxy can check; the reason is for the log only.
    Missing(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthQueryError {
    /// The server could not be reached, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// The query failed (permission denied, wrong columns, ...).
    #[error("{0}")]
    Failed(String),
}

impl AuthQueryError {
    /// What the client is told.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthQueryError::Unavailable(_) => "08006",
            AuthQueryError::Failed(_) => "28000",
        }
    }
}

struct Entry {
    fetched: Instant,
    server: Role,
    lookup: Lookup,
}

impl Entry {
    fn fresh(&self, config: &AuthQueryConfig) -> bool {
        let ttl = match self.lookup {
            Lookup::Found { .. } => config.cache_ttl,
            Lookup::Missing(_) => config.negative_cache_ttl,
        };
        self.fetched.elapsed() < ttl
    }
}

/// One role's cache slot; its async lock makes concurrent logins of the role share a lookup.
type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

pub struct AuthQuery {
    config: AuthQueryConfig,
    old: Pool,
    new: Option<Pool>,
    cache: Mutex<HashMap<String, Slot>>,
}

impl AuthQuery {
    pub fn new(config: &AuthQueryConfig, old: &ServerConfig, new: Option<&ServerConfig>) -> Self {
        AuthQuery {
            old: Pool::new(config, old),
            new: new.map(|n| Pool::new(config, n)),
            config: config.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The role's verifier as `server` has it, from the cache while fresh.
    pub async fn lookup(&self, user: &str, server: Role) -> Result<Lookup, AuthQueryError> {
        let slot = self.slot(user);
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref().filter(|e| e.server == server && e.fresh(&self.config)) {
            return Ok(e.lookup.clone());
        }
        let lookup = self.fetch(user, server).await?;
        *entry = Some(Entry { fetched: Instant::now(), server, lookup: lookup.clone() });
        Ok(lookup)
    }

    /// After a failed login: re-reads the role's entry unless it is younger than
    /// [`REFRESH_INTERVAL`]. `Ok(None)`: nothing newer to try.
    pub async fn refresh_after_failure(&self, user: &str, server: Role) -> Result<Option<Lookup>, AuthQueryError> {
        let slot = self.slot(user);
        let mut entry = slot.lock().await;
        if entry.as_ref().is_some_and(|e| e.server == server && e.fetched.elapsed() < REFRESH_INTERVAL) {
            return Ok(None);
        }
        let lookup = self.fetch(user, server).await?;
        *entry = Some(Entry { fetched: Instant::now(), server, lookup: lookup.clone() });
        Ok(Some(lookup))
    }

    /// Drops the role's entry (a server refused what it said): the next login looks it up.
    pub fn forget(&self, user: &str) {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).remove(user);
    }

    /// The query on `server` now, without the cache (CHECK compares new's verifiers).
    pub async fn lookup_uncached(&self, user: &str, server: Role) -> Result<Lookup, AuthQueryError> {
        self.fetch(user, server).await
    }

    async fn fetch(&self, user: &str, server: Role) -> Result<Lookup, AuthQueryError> {
        let pool = match server {
            Role::Old => &self.old,
            Role::New => self.new.as_ref().ok_or_else(|| AuthQueryError::Unavailable("no new server is configured".into()))?,
        };
        let lookup = decode(pool.query(user).await?, user)?;
        tracing::debug!(user, server = server.as_str(), ?lookup, "auth_query answered");
        Ok(lookup)
    }

    fn slot(&self, user: &str) -> Slot {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = cache.get(user) {
            return slot.clone();
        }
        if cache.len() >= MAX_CACHED {
            // Keep entries in use (locked) and fresh ones; if that is still too many, start over.
            cache.retain(|_, slot| slot.try_lock().map_or(true, |e| e.as_ref().is_some_and(|e| e.fresh(&self.config))));
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.entry(user.to_owned()).or_default().clone()
    }
}

fn decode(row: Option<Row>, user: &str) -> Result<Lookup, AuthQueryError> {
    let column = |n: usize, e: tokio_postgres::Error| AuthQueryError::Failed(format!("auth_query result column {}: {e}", n + 1));
    let Some(row) = row else { return Ok(Lookup::Missing("no such role, or the query leaves it out (e.g. it may not log in)")) };
    let name: String = row.try_get(0).map_err(|e| column(0, e))?;
    if name != user {
        return Err(AuthQueryError::Failed(format!("auth_query returned role {name:?} when asked for {user:?}")));
    }
    let secret: Option<zeroize::Zeroizing<String>> = row.try_get::<_, Option<String>>(1).map_err(|e| column(1, e))?.map(zeroize::Zeroizing::new);
    let valid_until: Option<SystemTime> = if row.len() > 2 { row.try_get(2).map_err(|e| column(2, e))? } else { None };
    let Some(secret) = secret else { return Ok(Lookup::Missing("the role has no password")) };
    Ok(match StoredSecret::parse(&secret) {
        Some(secret) => Lookup::Found { secret, valid_until },
        None => Lookup::Missing("the role's stored password is neither a SCRAM-SHA-256 nor an md5 verifier"),
    })
}

/// Control connections to one server for the query, at most `pool_size` at a time.
struct Pool {
    connection: ServerConfig,
    sql: String,
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
    /// When the last connect failed, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
}

struct Conn {
    client: Client,
    statement: Statement,
}

impl Pool {
    fn new(config: &AuthQueryConfig, server: &ServerConfig) -> Self {
        Pool {
            connection: config.connection(server),
            sql: config.query.clone(),
            permits: Semaphore::new(config.pool_size),
            idle: Mutex::new(Vec::new()),
            last_failure: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<Conn, AuthQueryError> {
        if let Some((_, reason)) = self.last_failure.lock().unwrap_or_else(PoisonError::into_inner).as_ref().filter(|(at, _)| at.elapsed() < RETRY_CONNECT_AFTER) {
            return Err(AuthQueryError::Unavailable(reason.clone()));
        }
        let client = match crate::control::connect(&self.connection, &self.connection.database).await {
            Ok(client) => client,
            Err(e) => {
                let reason = e.to_string();
                *self.last_failure.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), reason.clone()));
                return Err(AuthQueryError::Unavailable(reason));
            }
        };
        let statement = match tokio::time::timeout(QUERY_TIMEOUT, client.prepare(&self.sql)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(AuthQueryError::Failed(crate::control::ControlError::from(e).to_string())),
            Err(_) => return Err(AuthQueryError::Unavailable(format!("{}: no answer to the auth_query's Parse within {QUERY_TIMEOUT:?}", self.connection.name))),
        };
        let columns = statement.columns().len();
        if !(2..=3).contains(&columns) {
            return Err(AuthQueryError::Failed(format!(
                "auth_query returns {columns} columns; it must return the role name, its verifier (rolpassword) and optionally rolvaliduntil"
            )));
        }
        Ok(Conn { client, statement })
    }

    async fn query(&self, user: &str) -> Result<Option<Row>, AuthQueryError> {
        let _permit = self.permits.acquire().await.map_err(|_| AuthQueryError::Unavailable("shutting down".into()))?;
        let mut retried = false;
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let conn = match idle {
                Some(conn) if !conn.client.is_closed() => conn,
                _ => self.connect().await?,
            };
            match tokio::time::timeout(QUERY_TIMEOUT, conn.client.query_opt(&conn.statement, &[&user])).await {
                Ok(Ok(row)) => {
                    self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
                    return Ok(row);
                }
                // A pooled connection the server has closed since (a restart): once more on a
                // fresh one.
                Ok(Err(_)) if conn.client.is_closed() && !retried => {
                    tracing::debug!(server = self.connection.name, "auth_query connection was closed; reconnecting");
                    retried = true;
                }
                Ok(Err(e)) if conn.client.is_closed() => return Err(AuthQueryError::Unavailable(crate::control::ControlError::from(e).to_string())),
                Ok(Err(e)) => {
                    self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
                    return Err(AuthQueryError::Failed(crate::control::ControlError::from(e).to_string()));
                }
                // The connection is dropped with `conn`: its state is unknown.
                Err(_) => return Err(AuthQueryError::Unavailable(format!("{}: no answer to the auth_query within {QUERY_TIMEOUT:?}", self.connection.name))),
            }
        }
    }
}
