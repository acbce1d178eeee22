//! VERIFY: proof that new holds the same rows as old, taken live — without stopping writes and
//! without long locks. Every subscribed table (or the ones named) is read in primary-key
//! chunks on both servers and compared by digest (`control::verify`); a chunk that differs is
//! compared again once new has applied what old had when the chunk was read (`cut`), so rows
//! written meanwhile show up as "still changing", not as a mismatch. Tables without a primary
//! key are compared whole (count and digest): exact when equal, approximate under writes.
//!
//! One VERIFY runs at a time; SHOW VERIFY reads its progress; the chunks still changing at
//! the end are kept for CUTOVER recheck_changing.

mod cut;
pub mod recheck;
mod table;
mod throttle;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::backend::Role;
use crate::control::readiness::coverage;
use crate::control::verify::{self as sql, Range, TableSpec};
use crate::control::{self, replication, sentinel, ControlError};
use crate::proxy::Shared;
use cut::Sides;
use table::{Compared, Limits, Table};
use throttle::Throttle;

/// One row of VERIFY / SHOW VERIFY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReport {
    pub database: String,
    pub table: String,
    pub rows: i64,
    pub chunks: i64,
    /// pending, running, equal, differ, still changing, stopped, error.
    pub result: String,
    pub detail: String,
}

/// A chunk that was still changing when the last VERIFY ended.
#[derive(Clone, Debug)]
pub struct ChangingChunk {
    pub database: String,
    pub spec: TableSpec,
    pub range: Range,
}

/// VERIFY's shared state: progress of the running (or last) one, and its changing chunks.
#[derive(Default)]
pub struct Tracker {
    running: tokio::sync::Mutex<()>,
    pub tables: Mutex<Vec<TableReport>>,
    pub changing: Mutex<Vec<ChangingChunk>>,
}

impl Tracker {
    pub fn report(&self) -> Vec<TableReport> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut TableReport)) {
        if let Ok(mut tables) = self.tables.lock() {
            if let Some(t) = tables.get_mut(index) {
                f(t);
            }
        }
    }
}

/// What VERIFY was asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `table` or `schema.table`; empty: every subscribed table.
    pub tables: Vec<String>,
    pub rows_per_second: Option<u64>,
    pub chunk_rows: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("a VERIFY is already running (SHOW VERIFY shows its progress)")]
    AlreadyRunning,
    #[error("a cutover is running")]
    CutoverRunning,
    #[error("no new server is configured (--new)")]
    NoNewServer,
    #[error("the proxy already runs on the new server: replication to it has ended, there is nothing to compare")]
    AlreadyCutOver,
    #[error("no subscribed table named {0} in the databases in scope ({1})")]
    NoSuchTable(String, String),
    #[error("no database to compare: none has been used through the proxy yet, and none is named in [[cutover.subscriptions]]")]
    NoDatabases,
}

impl VerifyError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            VerifyError::AlreadyRunning | VerifyError::CutoverRunning => "55006",
            VerifyError::NoNewServer | VerifyError::AlreadyCutOver | VerifyError::NoDatabases => "55000",
            VerifyError::NoSuchTable(..) => "42P01",
        }
    }
}

/// A database ready to compare: its connections and tables.
struct Prepared {
    database: String,
    sides: Sides,
    specs: Vec<TableSpec>,
}

pub async fn run(shared: &Arc<Shared>, request: Request) -> Result<Vec<TableReport>, VerifyError> {
    let tracker = &shared.verify;
    let Ok(_only_one) = tracker.running.try_lock() else { return Err(VerifyError::AlreadyRunning) };
    // Read from the phase, not by trying the cutover's lock: a try that succeeded would hold it
    // for an instant, and a CUTOVER arriving then would be refused as already running.
    let cutover_running = || !matches!(shared.cutover.phase().as_str(), "" | "idle" | "done");
    if cutover_running() {
        return Err(VerifyError::CutoverRunning);
    }
    if shared.new.is_none() {
        return Err(VerifyError::NoNewServer);
    }
    if shared.gate.state().active == Role::New {
        return Err(VerifyError::AlreadyCutOver);
    }
    let databases = crate::cutover::preflight::databases_in_scope(shared);
    if databases.is_empty() {
        return Err(VerifyError::NoDatabases);
    }
    let mut prepared = Vec::new();
    let mut failed = Vec::new();
    for db in &databases {
        match prepare(shared, db, &request).await {
            Ok(p) => prepared.push(p),
            Err(e) => failed.push(TableReport { database: db.clone(), table: "*".into(), rows: 0, chunks: 0, result: "error".into(), detail: e.to_string() }),
        }
    }
    let found: BTreeSet<&str> = prepared.iter().flat_map(|p| p.specs.iter().map(|s| s.name.as_str())).collect();
    if let Some(missing) = request.tables.iter().find(|name| !found.iter().any(|t| matches_name(t, name))) {
        if failed.is_empty() {
            return Err(VerifyError::NoSuchTable(missing.clone(), databases.join(", ")));
        }
    }
    let mut reports = failed;
    for p in &prepared {
        for spec in &p.specs {
            let estimate = if spec.estimated_rows >= 0 { format!("about {} rows", spec.estimated_rows) } else { "size unknown".into() };
            reports.push(TableReport { database: p.database.clone(), table: spec.name.clone(), rows: 0, chunks: 0, result: "pending".into(), detail: estimate });
        }
    }
    if let Ok(mut t) = tracker.tables.lock() {
        *t = reports;
    }
    let mut changing = Vec::new();
    shared.metrics.verify_running.set(1);
    let settings = shared.live().verify.clone();
    let limits = Limits { chunk_rows: request.chunk_rows.unwrap_or(settings.chunk_rows), attempts: settings.attempts };
    let mut throttle = Throttle::new(request.rows_per_second.unwrap_or(settings.rows_per_second));
    for p in &prepared {
        for spec in &p.specs {
            let index = tracker.report().iter().position(|r| r.database == p.database && r.table == spec.name).unwrap_or(usize::MAX);
            if cutover_running() {
                tracker.update(index, |r| {
                    r.result = "stopped".into();
                    r.detail = "not compared: a cutover started".into();
                });
                continue;
            }
            tracker.update(index, |r| {
                r.result = "running".into();
                r.detail = progress_detail(spec, 0);
            });
            let table = Table { sides: &p.sides, spec, limits: &limits, metrics: &shared.metrics };
            let progress = |rows: i64, chunks: i64| {
                tracker.update(index, |r| {
                    r.rows = rows;
                    r.chunks = chunks;
                    r.detail = progress_detail(spec, rows);
                })
            };
            let outcome = table.compare(&mut throttle, &progress, &cutover_running).await;
            let (result, detail) = match &outcome {
                Ok(c) => describe(spec, c, cutover_running()),
                Err(e) => ("error".to_string(), e.to_string()),
            };
            shared.metrics.verify_tables.with_label_values(&[result.as_str()]).inc();
            tracker.update(index, |r| {
                r.result = result;
                r.detail = detail;
            });
            if let Ok(c) = outcome {
                changing.extend(c.changing.into_iter().map(|range| ChangingChunk { database: p.database.clone(), spec: spec.clone(), range }));
            }
        }
    }
    shared.metrics.verify_running.set(0);
    if let Ok(mut c) = tracker.changing.lock() {
        *c = changing;
    }
    Ok(tracker.report())
}

/// Connections, settings, the sentinel and the tables to compare in one database.
async fn prepare(shared: &Shared, db: &str, request: &Request) -> Result<Prepared, ControlError> {
    let new_server = shared.new.as_ref().ok_or_else(|| ControlError::Query("no new server".into()))?;
    let (old, writer, new) = tokio::try_join!(
        control::connect(&shared.old.config, db),
        control::connect(&shared.old.config, db),
        control::connect(&new_server.config, db)
    )?;
    tokio::try_join!(old.batch_execute(sql::COMPARE_SETTINGS), new.batch_execute(sql::COMPARE_SETTINGS))?;
    let live = shared.live();
    let configured = live.cutover.subscriptions.iter().find(|s| s.database == db).map(|s| s.name.as_str());
    let subscription = replication::find_subscription(&new, configured).await?;
    let published = coverage::published_tables(&old, &subscription.publications).await?;
    let subscribed = coverage::subscribed_tables(&new, subscription.oid).await?;
    let ready: BTreeSet<&str> = subscribed.iter().filter(|(_, state)| state == "r").map(|(t, _)| t.as_str()).collect();
    let known: BTreeSet<&str> = subscribed.iter().map(|(t, _)| t.as_str()).collect();
    if !tokio::try_join!(sentinel::exists(&old), sentinel::exists(&new)).map(|(a, b)| a && b)? {
        // Installing refreshes the subscription (copy_data = false): done only when it covers
        // every published table, or a table it missed would be subscribed without its rows.
        let uncovered: Vec<&str> = published.iter().filter(|t| !known.contains(t.name.as_str())).map(|t| t.name.as_str()).collect();
        if !uncovered.is_empty() {
            return Err(ControlError::Query(format!(
                "{} is missing, and creating it would subscribe tables that are published but not subscribed without their rows ({}): fix what CHECK's \"tables subscribed\" row says first",
                sentinel::TABLE,
                uncovered.join(", ")
            )));
        }
        sentinel::install(&old, &new, &subscription.name, &subscription.publications).await?;
    }
    let hash = sql::row_hash(&old, &new).await?;
    let mut specs = Vec::new();
    // Tables still copying (not in state r) are not comparable yet; CHECK names them.
    for table in published.iter().filter(|t| ready.contains(t.name.as_str()) && !t.name.starts_with("pgcutover.")) {
        if request.tables.is_empty() || request.tables.iter().any(|n| matches_name(&table.name, n)) {
            specs.push(sql::describe(&old, &table.name, &table.columns, hash).await?);
        }
    }
    let catchup_timeout = live.verify.catchup_timeout;
    Ok(Prepared { database: db.to_string(), sides: Sides { old, writer, new, catchup_timeout }, specs })
}

/// Whether `table` (`schema.table`) is what the operator named: `schema.table` or `table`.
fn matches_name(table: &str, name: &str) -> bool {
    table == name || table.split_once('.').is_some_and(|(_, t)| t == name)
}

fn progress_detail(spec: &TableSpec, rows: i64) -> String {
    if spec.estimated_rows > 0 {
        format!("about {}% ({rows} of about {} rows)", (rows * 100 / spec.estimated_rows).min(100), spec.estimated_rows)
    } else {
        format!("{rows} rows so far")
    }
}

/// The result and detail of a compared table.
fn describe(spec: &TableSpec, c: &Compared, stopped: bool) -> (String, String) {
    let whole = spec.key.is_empty();
    let how = if whole { "no primary key: compared whole (count and digest), approximate while it is written; " } else { "" };
    let ranges = |ranges: &[Range]| ranges.iter().take(5).map(|r| describe_range(spec, r)).collect::<Vec<_>>().join("; ");
    if c.differing_rows > 0 {
        let mut detail = format!("{how}{} rows differ in {} chunks: {}", c.differing_rows, c.differing_chunks, c.named.join(", "));
        if !c.changing.is_empty() {
            detail.push_str(&format!("; {} chunks still changing: {}", c.changing.len(), ranges(&c.changing)));
        }
        return ("differ".into(), detail);
    }
    if !c.changing.is_empty() {
        return (
            "still changing".into(),
            format!(
                "{how}{} of {} chunks kept changing while compared: {}; run VERIFY again, or CUTOVER recheck_changing=true compares them inside the hold",
                c.changing.len(),
                c.chunks,
                ranges(&c.changing)
            ),
        );
    }
    if stopped {
        return ("stopped".into(), format!("a cutover started: {} rows in {} chunks compared, all equal", c.rows, c.chunks));
    }
    let again = if c.rechecked > 0 { format!(", {} of them equal once new caught up", c.rechecked) } else { String::new() };
    ("equal".into(), format!("{how}{} rows in {} chunks{again}", c.rows, c.chunks))
}

fn describe_range(spec: &TableSpec, range: &Range) -> String {
    match (&range.after, &range.upto) {
        (None, None) if spec.key.is_empty() => "the whole table".into(),
        (None, None) => "all keys".into(),
        (Some(a), None) => format!("keys after {}", spec.describe_key(a)),
        (None, Some(b)) => format!("keys up to {}", spec.describe_key(b)),
        (Some(a), Some(b)) => format!("keys after {} up to {}", spec.describe_key(a), spec.describe_key(b)),
    }
}
