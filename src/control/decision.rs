//! The durable cutover decision: the `pgcutover.epoch` table on both servers, and every
//! statement that reads or writes it.
//!
//! # The table
//! One row per cutover attempt ("epoch") on each server, in the control database (the database
//! of the `[old]` / `[new]` URL). A row says which server it is kept on (`kept_on`): when the
//! control database is itself replicated, the other server's rows arrive as copies, and every
//! read ignores them. Each row records both servers' `system_identifier`, so a configuration
//! pointed at other clusters is recognised instead of obeyed.
//!
//! Of the two rows of an epoch, the one kept on its *target* is the **decision row**: the
//! epoch's outcome is whatever that row says, and it changes from `pending` exactly once, by a
//! conditional UPDATE (`... WHERE state = 'pending'`). The row kept on the *source* is a
//! **marker** written first, and later a mirror of the outcome.
//!
//! # Order of writes for epoch E (a cutover: source old, target new)
//! 1. Before anything is held: `E = 1 + max(epoch)` over both servers. The coordinator takes the
//!    session advisory lock (`LOCK_CLASS`, E) on its control connection to the target and keeps
//!    it, on that one connection, until the epoch is settled: whoever later finds the lock free
//!    knows the coordinator is gone.
//! 2. INSERT the marker (E, pending, deadline) on the source.
//! 3. INSERT the decision row (E, pending, deadline) on the target. Since 2 precedes 3 and only
//!    the decision row can become committed, a reader that finds no newer epoch on the source
//!    than the last settled one knows that no commit exists that it has not seen.
//! 4. Hold, drain, fence the source (`fence_old`), prove catch-up, copy sequences.
//! 5. **The commit point**: `UPDATE ... SET state = 'committed' WHERE kept_on = target AND
//!    epoch = E AND state = 'pending' AND now() <= deadline` on the target, one round trip on the
//!    open connection of step 1. One row updated: committed. Zero rows: someone recorded the
//!    abort or the deadline passed; the cutover aborts.
//! 6. After the commit: the gate flips to the target (rebind), sessions bypassing the proxy are
//!    terminated if asked, then the epoch is *finished*: the source is fenced (again,
//!    idempotent), the subscriptions listed in the row are disabled, and last the outcome is
//!    mirrored into the marker. A marker still `pending` under a settled decision row means
//!    "not finished yet": whoever reads it next finishes it.
//!
//! An abort before step 5: `UPDATE ... SET state = 'aborted' WHERE ... AND state = 'pending'` on
//! the target, then the fence is lifted, sessions resume on the source, the marker is mirrored.
//! If the target cannot be reached, the coordinator — which never sent the commit — records
//! `aborted` in the marker instead ("renounced"): only the coordinator ever commits, so E can
//! no longer commit, and a reader that can only reach the source may trust that marker.
//!
//! # Failures
//! * The coordinator dies before step 5: its lock is released when its connection closes; the
//!   next reader (a restarted proxy) takes the lock, records `aborted` on the target (inserting
//!   the decision row as aborted if step 3 never happened), lifts the fence and routes to the
//!   source. If the lock stays taken (a connection the server has not yet seen die), the epoch
//!   is aborted once its deadline has passed.
//! * The coordinator dies after step 5: the decision row says committed; a restarted proxy routes
//!   to the target and finishes step 6.
//! * The commit's reply is lost (connection broken during step 5): its outcome is unknown; the
//!   coordinator reconnects and settles it with the conditional abort (which changes nothing if
//!   the commit went through), keeping every session held meanwhile.

use tokio_postgres::Client;

use super::ControlError;
use crate::backend::Role;

pub const TABLE: &str = "pgcutover.epoch";

/// First key of the advisory lock a coordinator holds on the target while an epoch is open
/// (the second is the epoch number). "pgcu" in ASCII.
pub const LOCK_CLASS: i32 = 0x7067_6375;

const CREATE: &str = "CREATE SCHEMA IF NOT EXISTS pgcutover; \
CREATE TABLE IF NOT EXISTS pgcutover.epoch ( \
    kept_on text NOT NULL CHECK (kept_on IN ('old', 'new')), \
    epoch bigint NOT NULL CHECK (epoch > 0), \
    action text NOT NULL CHECK (action IN ('cutover', 'switchback')), \
    source text NOT NULL CHECK (source IN ('old', 'new')), \
    target text NOT NULL CHECK (target IN ('old', 'new') AND target <> source), \
    state text NOT NULL CHECK (state IN ('pending', 'committed', 'aborted')), \
    deadline timestamptz NOT NULL, \
    fence_source boolean NOT NULL, \
    old_system_identifier bigint NOT NULL, \
    new_system_identifier bigint NOT NULL, \
    databases text[] NOT NULL DEFAULT '{}', \
    subscriptions text[] NOT NULL DEFAULT '{}', \
    started_by text NOT NULL, \
    started_at timestamptz NOT NULL DEFAULT now(), \
    proven_lsn text, \
    decided_by text, \
    decided_at timestamptz, \
    reason text, \
    PRIMARY KEY (kept_on, epoch))";

const COLUMNS: &str = "epoch, kept_on, action, source, target, state, deadline < now(), fence_source, old_system_identifier, \
    new_system_identifier, databases, subscriptions, started_by, decided_by, proven_lsn, reason";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Committed,
    Aborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Committed => "committed",
            Outcome::Aborted => "aborted",
        }
    }

    fn parse(text: &str) -> Result<Self, ControlError> {
        match text {
            "pending" => Ok(Outcome::Pending),
            "committed" => Ok(Outcome::Committed),
            "aborted" => Ok(Outcome::Aborted),
            other => Err(ControlError::Query(format!("{TABLE}: unknown state {other:?}"))),
        }
    }
}

fn parse_role(text: &str) -> Result<Role, ControlError> {
    match text {
        "old" => Ok(Role::Old),
        "new" => Ok(Role::New),
        other => Err(ControlError::Query(format!("{TABLE}: unknown server {other:?}"))),
    }
}

/// One row of `pgcutover.epoch`, as read from the server it is kept on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRow {
    pub epoch: i64,
    pub kept_on: Role,
    pub action: String,
    pub source: Role,
    pub target: Role,
    pub state: Outcome,
    /// The deadline has passed, by the clock of the server the row was read from.
    pub expired: bool,
    pub fence_source: bool,
    pub old_system_identifier: i64,
    pub new_system_identifier: i64,
    /// The subscriptions to disable after a commit: `databases[i]` holds `subscriptions[i]`.
    pub databases: Vec<String>,
    pub subscriptions: Vec<String>,
    pub started_by: String,
    pub decided_by: Option<String>,
    pub proven_lsn: Option<String>,
    pub reason: Option<String>,
}

impl EpochRow {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, ControlError> {
        Ok(EpochRow {
            epoch: r.try_get(0)?,
            kept_on: parse_role(r.try_get(1)?)?,
            action: r.try_get(2)?,
            source: parse_role(r.try_get(3)?)?,
            target: parse_role(r.try_get(4)?)?,
            state: Outcome::parse(r.try_get(5)?)?,
            expired: r.try_get(6)?,
            fence_source: r.try_get(7)?,
            old_system_identifier: r.try_get(8)?,
            new_system_identifier: r.try_get(9)?,
            databases: r.try_get(10)?,
            subscriptions: r.try_get(11)?,
            started_by: r.try_get(12)?,
            decided_by: r.try_get(13)?,
            proven_lsn: r.try_get(14)?,
            reason: r.try_get(15)?,
        })
    }

    /// The `system_identifier` this row records for `role`.
    pub fn system_identifier(&self, role: Role) -> i64 {
        match role {
            Role::Old => self.old_system_identifier,
            Role::New => self.new_system_identifier,
        }
    }
}

/// What one server says about the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub system_identifier: i64,
    /// The newest row kept on this server (none: no epoch was ever started here).
    pub latest: Option<EpochRow>,
    /// The highest epoch in the table, replicated copies included (0: none).
    pub max_epoch: i64,
    /// Every (old, new) `system_identifier` pair the table records, replicated copies included:
    /// a row of any other pair means the table was written for other clusters.
    pub pairs: Vec<(i64, i64)>,
}

/// Opens a control connection to the control database of `server` for decision reads and
/// writes. Read-write for the session: a fenced server refuses writes by default.
pub async fn connect(server: &crate::config::ServerConfig) -> Result<Client, ControlError> {
    let client = super::connect(server, &server.database).await?;
    client.batch_execute("SET default_transaction_read_only = off").await?;
    Ok(client)
}

/// Creates the table where missing (the first CUTOVER; reads never create anything).
pub async fn install(client: &Client) -> Result<(), ControlError> {
    client.batch_execute(CREATE).await?;
    Ok(())
}

/// This server's `system_identifier`.
pub async fn system_identifier(client: &Client) -> Result<i64, ControlError> {
    let row = client.query_one("SELECT system_identifier FROM pg_catalog.pg_control_system()", &[]).await.map_err(|e| {
        ControlError::Query(format!("cannot read the server's system_identifier (pg_control_system()): {}", ControlError::from(e)))
    })?;
    Ok(row.get(0))
}

/// Reads what the server `kept_on` (the one `client` is connected to) says.
pub async fn read(client: &Client, kept_on: Role) -> Result<ServerView, ControlError> {
    let system_identifier = system_identifier(client).await?;
    // Checked first: querying a missing table would log an error on the server at every poll.
    let exists: bool = client.query_one("SELECT pg_catalog.to_regclass('pgcutover.epoch') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(ServerView { system_identifier, latest: None, max_epoch: 0, pairs: Vec::new() });
    }
    let sql = format!(
        "SELECT {COLUMNS}, (SELECT coalesce(max(epoch), 0) FROM pgcutover.epoch) FROM pgcutover.epoch \
         WHERE kept_on = $1 ORDER BY epoch DESC LIMIT 1"
    );
    let rows = client.query(&sql, &[&kept_on.as_str()]).await?;
    let max_epoch = match rows.first() {
        Some(r) => r.try_get(16)?,
        None => client.query_one("SELECT coalesce(max(epoch), 0) FROM pgcutover.epoch", &[]).await?.get(0),
    };
    let latest = rows.first().map(EpochRow::from_row).transpose()?;
    let pairs = client.query("SELECT DISTINCT old_system_identifier, new_system_identifier FROM pgcutover.epoch", &[]).await?;
    let pairs = pairs.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(ServerView { system_identifier, latest, max_epoch, pairs })
}

/// Reads the row of `epoch` kept on this server.
pub async fn read_epoch(client: &Client, kept_on: Role, epoch: i64) -> Result<Option<EpochRow>, ControlError> {
    let sql = format!("SELECT {COLUMNS} FROM pgcutover.epoch WHERE kept_on = $1 AND epoch = $2");
    let row = client.query_opt(&sql, &[&kept_on.as_str(), &epoch]).await?;
    row.as_ref().map(EpochRow::from_row).transpose()
}

/// Takes the coordinator's lock for `epoch` on this connection (held until it closes or the
/// epoch is settled). False: someone else holds it.
pub async fn lock_epoch(client: &Client, epoch: i64) -> Result<bool, ControlError> {
    let key = lock_key(epoch);
    Ok(client.query_one("SELECT pg_catalog.pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key]).await?.get(0))
}

fn lock_key(epoch: i64) -> i32 {
    // Epochs count cutover attempts; the low 32 bits tell them apart.
    epoch as i32
}

/// A new epoch as inserted (marker and decision row carry the same values).
pub struct NewEpoch<'a> {
    pub epoch: i64,
    pub source: Role,
    pub target: Role,
    /// Seconds from now (by the inserting server's clock) until the epoch may no longer commit.
    pub deadline_secs: f64,
    pub fence_source: bool,
    pub old_system_identifier: i64,
    pub new_system_identifier: i64,
    pub databases: &'a [String],
    pub subscriptions: &'a [String],
    pub started_by: &'a str,
}

/// Inserts the epoch as pending, kept on `kept_on` (the marker on the source, then the decision
/// row on the target). Fails if a row of that epoch is there already.
pub async fn insert_pending(client: &Client, kept_on: Role, e: &NewEpoch<'_>) -> Result<(), ControlError> {
    let action = if e.target == Role::New { "cutover" } else { "switchback" };
    client
        .execute(
            "INSERT INTO pgcutover.epoch (kept_on, epoch, action, source, target, state, deadline, fence_source, \
             old_system_identifier, new_system_identifier, databases, subscriptions, started_by) \
             VALUES ($1, $2, $3, $4, $5, 'pending', now() + make_interval(secs => $6), $7, $8, $9, $10, $11, $12)",
            &[
                &kept_on.as_str(),
                &e.epoch,
                &action,
                &e.source.as_str(),
                &e.target.as_str(),
                &e.deadline_secs,
                &e.fence_source,
                &e.old_system_identifier,
                &e.new_system_identifier,
                &e.databases,
                &e.subscriptions,
                &e.started_by,
            ],
        )
        .await?;
    Ok(())
}

/// The statements of the commit point and of the abort, prepared before anything is held so
/// each costs one round trip during the hold.
pub struct Settle {
    commit: tokio_postgres::Statement,
    abort: tokio_postgres::Statement,
}

const SETTLE: &str = "UPDATE pgcutover.epoch SET state = $3, proven_lsn = coalesce($4, proven_lsn), decided_by = $5, decided_at = now(), \
     reason = $6 WHERE kept_on = $1 AND epoch = $2 AND state = 'pending'";

impl Settle {
    pub async fn prepare(target: &Client) -> Result<Self, ControlError> {
        let commit = target.prepare(&format!("{SETTLE} AND now() <= deadline RETURNING epoch")).await?;
        let abort = target.prepare(&format!("{SETTLE} RETURNING epoch")).await?;
        Ok(Settle { commit, abort })
    }
}

/// Why a commit did not happen.
#[derive(Debug)]
pub enum CommitError {
    /// The decision row was no longer pending, or its deadline had passed: not committed.
    Refused,
    /// The server answered with an error: not committed.
    Failed(ControlError),
    /// The connection failed while the commit was on its way: it may or may not have happened.
    Unknown(String),
}

/// THE COMMIT POINT: one conditional UPDATE of the decision row on the target.
pub async fn commit(target: &Client, settle: &Settle, kept_on: Role, epoch: i64, proven_lsn: &str, by: &str) -> Result<(), CommitError> {
    let reason: Option<&str> = None;
    match target.query(&settle.commit, &[&kept_on.as_str(), &epoch, &"committed", &Some(proven_lsn), &by, &reason]).await {
        Ok(rows) if rows.len() == 1 => Ok(()),
        Ok(_) => Err(CommitError::Refused),
        Err(e) if e.as_db_error().is_some() => Err(CommitError::Failed(e.into())),
        Err(e) => Err(CommitError::Unknown(ControlError::from(e).to_string())),
    }
}

/// Records the abort on the decision row (conditional, so it never overrides a commit), then
/// reads the row back: the outcome that holds, whoever settled it.
pub async fn abort(target: &Client, settle: Option<&Settle>, kept_on: Role, epoch: i64, by: &str, reason: &str) -> Result<Outcome, ControlError> {
    let lsn: Option<&str> = None;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [&kept_on.as_str(), &epoch, &"aborted", &lsn, &by, &Some(reason)];
    let updated = match settle {
        Some(s) => target.query(&s.abort, &params).await?,
        None => target.query(&format!("{SETTLE} RETURNING epoch"), &params).await?,
    };
    if updated.len() == 1 {
        return Ok(Outcome::Aborted);
    }
    match read_epoch(target, kept_on, epoch).await? {
        Some(row) => Ok(row.state),
        None => Err(ControlError::Query(format!("{TABLE}: no row for epoch {epoch} on the {} server", kept_on.as_str()))),
    }
}

/// Writes a settled outcome into the marker kept on the source (the mirror), or — by the
/// coordinator that never sent the commit and cannot reach the target — records there that
/// the epoch will never commit. Only a pending marker changes.
pub async fn mirror(source: &Client, kept_on: Role, epoch: i64, outcome: Outcome, proven_lsn: Option<&str>, by: &str, reason: Option<&str>) -> Result<(), ControlError> {
    source.execute(SETTLE, &[&kept_on.as_str(), &epoch, &outcome.as_str(), &proven_lsn, &by, &reason]).await?;
    Ok(())
}

/// Settles an epoch whose coordinator is gone: if the coordinator's lock on the target is free
/// (or the deadline has passed), records `aborted` in the decision row — inserting it, copied
/// from the marker, if the coordinator died before writing it. Returns the outcome that holds
/// afterwards; `Pending` if the coordinator is still there.
pub async fn abort_abandoned(target: &Client, marker: &EpochRow, by: &str) -> Result<Outcome, ControlError> {
    let key = lock_key(marker.epoch);
    let kept_on = marker.target.as_str();
    target.batch_execute("BEGIN").await?;
    let settled = async {
        let free: bool = target
            .query_one(
                "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2) OR coalesce((SELECT deadline < now() FROM pgcutover.epoch WHERE kept_on = $3 AND epoch = $4), $5)",
                &[&LOCK_CLASS, &key, &kept_on, &marker.epoch, &marker.expired],
            )
            .await?
            .get(0);
        if free {
            let reason = "the coordinator of this epoch went away before its commit point";
            target
                .execute(
                    "INSERT INTO pgcutover.epoch (kept_on, epoch, action, source, target, state, deadline, fence_source, \
                     old_system_identifier, new_system_identifier, databases, subscriptions, started_by, decided_by, decided_at, reason) \
                     VALUES ($1, $2, $3, $4, $5, 'aborted', now(), $6, $7, $8, $9, $10, $11, $12, now(), $13) ON CONFLICT DO NOTHING",
                    &[
                        &kept_on,
                        &marker.epoch,
                        &marker.action,
                        &marker.source.as_str(),
                        &marker.target.as_str(),
                        &marker.fence_source,
                        &marker.old_system_identifier,
                        &marker.new_system_identifier,
                        &marker.databases,
                        &marker.subscriptions,
                        &marker.started_by,
                        &by,
                        &reason,
                    ],
                )
                .await?;
            let lsn: Option<&str> = None;
            target.execute(SETTLE, &[&kept_on, &marker.epoch, &"aborted", &lsn, &by, &Some(reason)]).await?;
        }
        let state = read_epoch(target, marker.target, marker.epoch).await?.map(|r| r.state).unwrap_or(Outcome::Pending);
        Ok::<_, ControlError>(state)
    }
    .await;
    match settled {
        Ok(state) => {
            target.batch_execute("COMMIT").await?;
            Ok(state)
        }
        Err(e) => {
            let _ = target.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A client backend on a server that does not come through this proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignSession {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: String,
    pub state: String,
}

/// Client backends other than the proxy's own: not this connection, not the proxy's sessions
/// (`$1`: their backend pids), not the control connections of any pgcutover instance.
const FOREIGN: &str = "backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() AND NOT (pid = ANY($1)) \
    AND application_name IS DISTINCT FROM 'pgcutover'";

/// Every session on the server (all databases) that bypasses the proxy.
pub async fn foreign_sessions(client: &Client, proxy_pids: &[i32]) -> Result<Vec<ForeignSession>, ControlError> {
    let rows = client
        .query(
            &format!(
                "SELECT pid, coalesce(usename::text, ''), coalesce(datname::text, ''), coalesce(application_name, ''), \
                 coalesce(host(client_addr) || ':' || client_port, 'local'), coalesce(state, '') \
                 FROM pg_catalog.pg_stat_activity WHERE {FOREIGN} ORDER BY pid"
            ),
            &[&proxy_pids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ForeignSession { pid: r.get(0), user: r.get(1), database: r.get(2), application_name: r.get(3), client_addr: r.get(4), state: r.get(5) })
        .collect())
}

/// Terminates every session on the server that bypasses the proxy; returns how many.
pub async fn terminate_foreign(client: &Client, proxy_pids: &[i32]) -> Result<i64, ControlError> {
    let row = client
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity WHERE {FOREIGN}"),
            &[&proxy_pids],
        )
        .await?;
    Ok(row.get(0))
}

/// Client connections to this database that do not come through the proxy.
pub async fn foreign_count_here(client: &Client, proxy_pids: &[i32]) -> Result<i64, ControlError> {
    let row = client
        .query_one(&format!("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = current_database() AND {FOREIGN}"), &[&proxy_pids])
        .await?;
    Ok(row.get(0))
}
