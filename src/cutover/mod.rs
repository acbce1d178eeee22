//! The cutover: preflight, hold, drain, catch-up proof, sequences, rebind — or a clean abort.
//! Each phase lives in its own module; `run` strings them together and times them.

pub mod checks;
pub mod drain;
pub mod epoch;
pub mod gate;
pub mod preflight;
pub mod prewarm;
pub mod rebind;
pub mod timeline;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;

use crate::backend::Role;
use crate::config::{IdleInTransaction, UnmovablePolicy};
use crate::control::decision::{self, CommitError, Outcome};
use crate::control::{replication, sentinel, sequences};
use crate::routing::Route;
use crate::proxy::Shared;
use crate::session::registry::{Command, Park};
use gate::GateState;
use timeline::Timeline;

/// Options a CUTOVER command may override (the rest come from the config).
#[derive(Clone, Debug, Default)]
pub struct CutoverOptions {
    pub drain_timeout: Option<Duration>,
    pub catchup_timeout: Option<Duration>,
    pub idle_in_transaction: Option<IdleInTransaction>,
    pub fence_old: Option<bool>,
    /// Compare inside the hold the chunks the last VERIFY left still changing.
    pub recheck_changing: Option<bool>,
    pub terminate_foreign: Option<bool>,
}

/// One row of CHECK: a preflight check and its outcome.
#[derive(Clone, Debug)]
pub struct CheckRow {
    pub check: String,
    /// "ok", "warn" or "fail".
    pub status: &'static str,
    pub detail: String,
}

/// One row of a cutover report / SHOW CUTOVER: a phase or a figure.
#[derive(Clone, Debug)]
pub struct ReportRow {
    pub item: String,
    pub value: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error("a cutover is already running")]
    AlreadyRunning,
    #[error("no new server is configured (--new)")]
    NoNewServer,
    #[error("the proxy already runs on the new server")]
    AlreadyDone,
    #[error("preflight failed: {0}")]
    Preflight(String),
    /// Aborted after holding: every session resumed on old.
    #[error("cutover aborted in phase {phase}: {reason}; every session continues on the old server")]
    Aborted { phase: String, reason: String },
    /// The commit was sent but its reply lost, and new could not be asked since.
    #[error("the outcome of cutover epoch {epoch} is unknown: {reason}; sessions stay held until it is known (SHOW STATUS)")]
    OutcomeUnknown { epoch: i64, reason: String },
    #[error("the route is not known: {0}")]
    RoutingUnknown(String),
}

impl CutoverError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CutoverError::AlreadyRunning => "55006",
            CutoverError::NoNewServer | CutoverError::AlreadyDone => "55000",
            CutoverError::Preflight(_) => "55000",
            CutoverError::Aborted { .. } => "57014",
            CutoverError::OutcomeUnknown { .. } => "40003",
            CutoverError::RoutingUnknown(_) => "55000",
        }
    }
}

/// The last cutover's report and the one running now, for SHOW CUTOVER and ABORT.
#[derive(Default)]
pub struct Tracker {
    pub last: Mutex<Vec<ReportRow>>,
    pub abort_requested: std::sync::atomic::AtomicBool,
    pub phase: Mutex<String>,
}

impl Tracker {
    pub fn phase(&self) -> String {
        self.phase.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Runs a whole cutover; returns its report rows (also kept for SHOW CUTOVER).
pub async fn run(shared: &Arc<Shared>, options: CutoverOptions) -> Result<Vec<ReportRow>, CutoverError> {
    let Ok(_only_one) = shared.cutover_lock.try_lock() else { return Err(CutoverError::AlreadyRunning) };
    if shared.new.is_none() {
        return Err(CutoverError::NoNewServer);
    }
    if let Some(reason) = shared.routing.unknown_reason() {
        return Err(CutoverError::RoutingUnknown(reason));
    }
    if shared.gate.state().active == Role::New {
        return Err(CutoverError::AlreadyDone);
    }
    shared.cutover.abort_requested.store(false, Ordering::SeqCst);
    let mut timeline = Timeline::new();
    if let Ok(mut p) = shared.cutover.phase.lock() {
        *p = "preflight".into();
    }
    let result = run_phases(shared, &options, &mut timeline).await;
    let outcome = if result.is_ok() { "completed" } else { "aborted" };
    shared.metrics.cutovers.with_label_values(&[outcome]).inc();
    if let Err(e) = &result {
        timeline.fact("outcome", "aborted", e.to_string());
        tracing::warn!(error = %e, "cutover did not complete");
    } else {
        timeline.fact("outcome", "completed", "every session continues on new");
        tracing::info!(total_ms = %timeline::ms(timeline.total()), "cutover completed");
    }
    timeline.fact("total", format!("{} ms", timeline::ms(timeline.total())), "");
    if let Ok(mut last) = shared.cutover.last.lock() {
        *last = timeline.rows.clone();
    }
    if let Ok(mut p) = shared.cutover.phase.lock() {
        *p = if result.is_ok() { "done".into() } else { "idle".into() };
    }
    result.map(|()| timeline.rows)
}

async fn run_phases(shared: &Arc<Shared>, options: &CutoverOptions, timeline: &mut Timeline) -> Result<(), CutoverError> {
    // One reading for the whole cutover, even if a reload changes the defaults meanwhile.
    let live = shared.live();
    let config = &live.cutover;
    let drain_timeout = options.drain_timeout.unwrap_or(config.drain_timeout);
    let catchup_timeout = options.catchup_timeout.unwrap_or(config.catchup_timeout);
    let fence_old = options.fence_old.unwrap_or(config.fence_old);
    let recheck_changing = options.recheck_changing.unwrap_or(config.recheck_changing);
    let terminate_foreign = options.terminate_foreign.unwrap_or(config.terminate_foreign);
    let aborted = || shared.cutover.abort_requested.load(Ordering::SeqCst);

    // a. Preflight: nothing is held; any failure leaves everything as it was.
    let (checks, links) = preflight::run(shared, true).await;
    let failures: Vec<String> = checks.iter().filter(|c| c.status == "fail").map(|c| format!("{}: {}", c.check, c.detail)).collect();
    if !failures.is_empty() {
        return Err(CutoverError::Preflight(failures.join("; ")));
    }
    if recheck_changing {
        crate::verify::recheck::prepare(&links).await.map_err(|e| CutoverError::Preflight(format!("recheck_changing: {e}")))?;
    }
    let decision_started = std::time::Instant::now();
    let decision_link = epoch::prepare(shared).await.map_err(|e| CutoverError::Preflight(format!("cutover decision: {e}")))?;
    let mut decision_took = decision_started.elapsed();
    let sessions = shared.registry.all();
    let prewarmed = prewarm::run(shared, &sessions).await.map_err(|e| {
        release_standbys(shared);
        CutoverError::Preflight(format!("pre-warm on new failed: {e}"))
    })?;
    // A sentinel round trip while nothing is held: it measures the apply lag in time (bytes
    // alone say little) and leaves new caught up just before the hold, so the proof inside
    // the hold only waits for the last few commits.
    let rehearsal = join_all(links.iter().map(|link| async {
        let (token, _) = sentinel::write(&link.old).await?;
        sentinel::wait_applied(&link.new, &token, catchup_timeout, &aborted).await
    }))
    .await;
    for (link, lag) in links.iter().zip(rehearsal) {
        match lag {
            Ok(waited) => timeline.fact(&format!("{}: apply lag before the hold", link.name), format!("{} ms", timeline::ms(waited)), "a sentinel round trip, nothing held"),
            Err(e) => {
                release_standbys(shared);
                return Err(CutoverError::Preflight(format!("{}: replication did not apply a test commit while nothing was held: {e}", link.name)));
            }
        }
    }
    if aborted() {
        release_standbys(shared);
        return Err(CutoverError::Preflight("abort requested".into()));
    }
    // The epoch opens last, just before the hold: its deadline covers the hold only.
    let subscriptions: Vec<(String, String)> = links.iter().map(|l| (l.name.clone(), l.subscription.name.clone())).collect();
    let deadline = drain_timeout + drain::grace(drain_timeout) + catchup_timeout + epoch::DEADLINE_MARGIN;
    let begin_started = std::time::Instant::now();
    let mut epoch = epoch::begin(shared, decision_link, fence_old, &subscriptions, deadline).await.map_err(|e| {
        release_standbys(shared);
        CutoverError::Preflight(format!("could not open the cutover epoch: {e}"))
    })?;
    decision_took += begin_started.elapsed();
    timeline.fact(
        "epoch",
        epoch.number(),
        format!("pending on both servers ({} ms to check and record); may commit until {} s from now", timeline::ms(decision_took), deadline.as_secs()),
    );

    timeline.next(
        shared,
        "hold",
        format!(
            "{} checks passed, {} databases, {} connections pre-warmed on new ({} sessions already replayed there, {} busy, {} unmovable)",
            checks.len(),
            links.len(),
            prewarmed.connections,
            prewarmed.ready,
            prewarmed.busy,
            prewarmed.unmovable
        ),
    );

    // b + c. Hold and drain.
    shared.set_held(true);
    let idle_policy = options.idle_in_transaction.unwrap_or(config.idle_in_transaction);
    let drained = match drain::run(shared, drain_timeout, idle_policy, &aborted).await {
        Ok(d) => d,
        Err(reason) => return Err(abort_epoch(shared, &mut epoch, timeline, "drain", reason).await),
    };
    let mut closed = 0;
    for handle in &drained.sessions {
        let park = handle.park.borrow().clone();
        if let Park::Unmovable(reason) = park {
            let idle_abort = idle_policy == IdleInTransaction::Abort && reason.contains("idle in transaction");
            if idle_abort || config.unmovable_sessions == UnmovablePolicy::Abort {
                return Err(abort_epoch(shared, &mut epoch, timeline, "drain", format!("session {} cannot move: {reason}", handle.id)).await);
            }
            let message = format!("terminating connection: pgcutover cannot move this session to the new server: {reason}");
            let _ = handle.commands.send(Command::Close { sqlstate: "57P01", message });
            closed += 1;
        }
    }
    if aborted() {
        return Err(abort_epoch(shared, &mut epoch, timeline, "drain", "abort requested".into()).await);
    }
    timeline.next(shared, "catch-up", format!("{} sessions held, {} interrupted at the deadline, {closed} unmovable closed", drained.sessions.len(), drained.interrupted));

    // d. Catch-up proof, per database in parallel.
    if fence_old {
        if let Err(e) = sentinel::fence(&epoch.link.old).await {
            return Err(abort_epoch(shared, &mut epoch, timeline, "catch-up", format!("could not fence old: {e}")).await);
        }
    }
    // Backends the proxy's own sessions use on old: every other client bypasses the proxy.
    let proxy_pids = epoch::backend_pids(&drained.sessions);
    // The proof and the sequence copy are independent: run them side by side to keep the
    // hold short. Both read old only after every session through the proxy is idle.
    let proofs = join_all(links.iter().map(|link| async {
        let foreign = decision::foreign_count_here(&link.old, &proxy_pids).await.unwrap_or(0);
        let (token, lsn) = sentinel::write(&link.old).await?;
        let waited = sentinel::wait_applied(&link.new, &token, catchup_timeout, &aborted).await?;
        Ok::<_, crate::control::ControlError>((lsn, waited, foreign))
    }));
    let synced = async {
        let started = std::time::Instant::now();
        let counts = join_all(links.iter().map(|link| async {
            let names = sequences::list(&link.old).await?;
            let states = sequences::read(&link.old, &names).await?;
            sequences::write(&link.new, &states, config.sequence_margin).await?;
            Ok::<_, crate::control::ControlError>(states.len())
        }))
        .await;
        (counts, started.elapsed())
    };
    let (proofs, (synced, sequences_took)) = tokio::join!(proofs, synced);
    let mut proven = Vec::new();
    for (link, proof) in links.iter().zip(proofs) {
        match proof {
            Ok((lsn, waited, foreign)) => {
                proven.push(format!("{}@{lsn}", link.name));
                timeline.fact(&format!("{}: lsn proven", link.name), &lsn, format!("sentinel applied on new after {} ms", timeline::ms(waited)));
                if foreign > 0 {
                    let fate = if terminate_foreign { "terminated at the commit point" } else if fence_old { "fenced: their writes fail" } else { "their writes to old after this point are not moved (use fence_old=true)" };
                    timeline.fact(&format!("{}: connections bypassing the proxy", link.name), foreign, fate);
                }
            }
            Err(e) => return Err(abort_epoch(shared, &mut epoch, timeline, "catch-up", format!("{}: {e}", link.name)).await),
        }
    }
    let mut sequence_count = 0;
    for (link, result) in links.iter().zip(synced) {
        match result {
            Ok(n) => sequence_count += n,
            Err(e) => return Err(abort_epoch(shared, &mut epoch, timeline, "sequences", format!("{}: {e}", link.name)).await),
        }
    }
    if aborted() {
        return Err(abort_epoch(shared, &mut epoch, timeline, "catch-up", "abort requested".into()).await);
    }
    timeline.fact("sequences synced", sequence_count, format!("copied in {} ms, alongside the catch-up proof", timeline::ms(sequences_took)));
    if recheck_changing {
        use crate::verify::recheck::{in_hold, Rechecked};
        let started = std::time::Instant::now();
        let took = || format!("{} ms", timeline::ms(started.elapsed()));
        match in_hold(shared, &links).await {
            Ok(Rechecked::Nothing) => timeline.fact("verify recheck", "nothing", "the last VERIFY left no chunk still changing"),
            Ok(Rechecked::Equal(n)) => timeline.fact("verify recheck", format!("{n} chunks equal"), format!("chunks still changing at the last VERIFY, compared inside the hold in {}", took())),
            Ok(Rechecked::TooMany(n)) => timeline.fact(
                "verify recheck",
                "skipped",
                format!("{n} chunks were still changing at the last VERIFY, more than verify.hold_recheck_max_chunks ({})", shared.live().verify.hold_recheck_max_chunks),
            ),
            Err(reason) => return Err(abort_epoch(shared, &mut epoch, timeline, "verify recheck", reason).await),
        }
    }
    timeline.next(shared, "rebind", format!("new has applied every commit old acknowledged: {}; {sequence_count} sequences copied", proven.join(", ")));

    // e. THE COMMIT POINT: the decision row on new says committed. From here on there is no abort.
    let proven_lsn = proven.join(", ");
    match epoch.commit(&proven_lsn).await {
        Ok(()) => {}
        Err(CommitError::Refused) => {
            let reason = "the epoch was no longer pending at its commit point (its deadline passed)".to_string();
            return Err(abort_epoch(shared, &mut epoch, timeline, "commit", reason).await);
        }
        Err(CommitError::Failed(e)) => return Err(abort_epoch(shared, &mut epoch, timeline, "commit", format!("new refused the commit: {e}")).await),
        Err(CommitError::Unknown(e)) => {
            tracing::error!(epoch = epoch.number(), error = %e, "the reply to the commit was lost; asking new for the outcome");
            match epoch.settle_unknown(shared).await {
                Some(Outcome::Committed) => {}
                Some(_) => return Err(abort_epoch(shared, &mut epoch, timeline, "commit", format!("the reply to the commit was lost ({e}), and the epoch was then aborted")).await),
                None => {
                    let reason = format!("the commit was sent to new, which then became unreachable ({e})");
                    shared.routing.set_unknown(format!("the outcome of cutover epoch {} is unknown: {reason}", epoch.number()), true);
                    return Err(CutoverError::OutcomeUnknown { epoch: epoch.number(), reason });
                }
            }
        }
    }
    shared.routing.set_known(Route::Active { role: Role::New, epoch: Some(epoch.number()), committed: true });
    timeline.fact("epoch committed", epoch.number(), format!("decision row on new; lsn proven {proven_lsn}"));

    // f. Rebind: every session continues on new.
    let rebound = rebind::run(shared, &drained.sessions).await;
    timeline.next(shared, "cleanup", format!("{} sessions moved, {} closed", rebound.moved, rebound.closed));
    timeline.fact("sessions moved", rebound.moved, "");
    timeline.fact("sessions interrupted", drained.interrupted, "statements cancelled or idle transactions rolled back at the drain deadline");
    timeline.fact("sessions closed", closed + rebound.closed, "could not move");
    timeline.fact("longest hold", format!("{} ms", rebound.longest_hold_ms), "longest time a session waited");
    timeline.fact("lsn proven", proven_lsn, "");
    if rebound.not_confirmed > 0 {
        timeline.fact("sessions unconfirmed", rebound.not_confirmed, "did not confirm the move within 5 s");
    }
    if terminate_foreign {
        match decision::terminate_foreign(&epoch.link.old, &proxy_pids).await {
            Ok(n) => timeline.fact("sessions bypassing the proxy", n, "terminated on old at the commit point"),
            Err(e) => timeline.fact("sessions bypassing the proxy", "not terminated", e.to_string()),
        }
    }
    for fact in epoch::finish(shared, &epoch.row, &epoch.link.old, Some(&epoch.link.new)).await {
        timeline.fact(&fact.item, fact.value, fact.detail);
    }
    timeline.next(shared, "done", "");
    Ok(())
}

/// Abort after the epoch opened: record it on new (a conditional write that never overrides a
/// commit), lift the fence, mirror it on old, and only then let every held session continue
/// on old, as after PAUSE/RESUME: no client sees an error.
async fn abort_epoch(shared: &Shared, epoch: &mut epoch::OpenEpoch, timeline: &mut Timeline, phase: &str, reason: String) -> CutoverError {
    let outcome = epoch.abort(&reason).await;
    for fact in epoch::finish(shared, &epoch.row, &epoch.link.old, Some(&epoch.link.new)).await {
        timeline.fact(&fact.item, fact.value, fact.detail);
    }
    if outcome == Outcome::Committed {
        // Only after a lost commit reply: the epoch did commit. The watcher moves sessions.
        shared.routing.set_unknown(format!("cutover epoch {} committed after its coordinator gave up on it", epoch.number()), true);
    } else {
        shared.routing.set_known(Route::Active { role: Role::Old, epoch: Some(epoch.number()), committed: false });
        resume_on_old(shared);
    }
    CutoverError::Aborted { phase: phase.to_string(), reason }
}

/// Every held session continues on old, as after PAUSE/RESUME; no client sees an error.
fn resume_on_old(shared: &Shared) {
    shared.set_gate(GateState { held: false, active: Role::Old });
}

/// The cutover stopped before holding: sessions close their pre-warmed connections.
fn release_standbys(shared: &Shared) {
    for handle in shared.registry.all() {
        let _ = handle.commands.send(Command::DropStandby);
    }
}

/// Requests the abort of the running cutover; false if none runs.
pub fn abort(shared: &Shared) -> bool {
    if shared.cutover_lock.try_lock().is_ok() {
        return false;
    }
    shared.cutover.abort_requested.store(true, Ordering::SeqCst);
    true
}

/// PAUSE: hold new transactions; returns once every session is at a transaction boundary
/// (or after `timeout`, reporting how many are still busy).
pub async fn pause(shared: &Arc<Shared>, timeout: Duration) -> Result<Vec<ReportRow>, CutoverError> {
    if shared.cutover_lock.try_lock().is_err() {
        return Err(CutoverError::AlreadyRunning);
    }
    let started = std::time::Instant::now();
    shared.set_held(true);
    let deadline = started + timeout;
    let (held, busy) = loop {
        let sessions = shared.registry.all();
        let busy = sessions.iter().filter(|h| matches!(*h.park.borrow(), Park::Running)).count();
        if (busy == 0 && shared.registry.connecting() == 0) || std::time::Instant::now() >= deadline {
            break (sessions.len() - busy, busy);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    Ok(vec![
        ReportRow { item: "sessions held".into(), value: held.to_string(), detail: "at a transaction boundary".into() },
        ReportRow { item: "sessions busy".into(), value: busy.to_string(), detail: "still in a transaction; held when it ends".into() },
        ReportRow { item: "waited".into(), value: format!("{} ms", timeline::ms(started.elapsed())), detail: String::new() },
    ])
}

/// RESUME: release a PAUSE.
pub fn resume(shared: &Shared) -> Result<(), CutoverError> {
    if shared.cutover_lock.try_lock().is_err() {
        return Err(CutoverError::AlreadyRunning);
    }
    if shared.routing.watcher_holds_gate() {
        return Err(CutoverError::RoutingUnknown(shared.routing.unknown_reason().unwrap_or_default()));
    }
    shared.set_held(false);
    Ok(())
}

/// CHECK: the preflight, without holding anything.
pub async fn check(shared: &Arc<Shared>) -> Vec<CheckRow> {
    let mut rows = preflight::run(shared, false).await.0;
    rows.extend(epoch::check_rows(shared).await);
    rows
}

/// SHOW STATUS rows: (field, value).
pub async fn status(shared: &Arc<Shared>) -> Vec<(String, String)> {
    let gate = shared.gate.state();
    let sessions = shared.registry.all();
    let held = sessions.iter().filter(|h| matches!(*h.park.borrow(), Park::Parked { .. })).count();
    let on_new = sessions.iter().filter(|h| h.server_role() == Some(Role::New)).count();
    let mut rows = vec![
        ("active_server".to_string(), gate.active.as_str().to_string()),
        ("held".to_string(), gate.held.to_string()),
        ("phase".to_string(), shared.cutover.phase().if_empty("idle")),
        ("sessions".to_string(), sessions.len().to_string()),
        ("max_clients".to_string(), shared.client_slots.limit().to_string()),
        ("startup_connections".to_string(), shared.startup_slots.used().to_string()),
        ("max_startup_connections".to_string(), shared.startup_slots.limit().to_string()),
        ("sessions_held".to_string(), held.to_string()),
        ("sessions_on_old".to_string(), (sessions.len() - on_new).to_string()),
        ("sessions_on_new".to_string(), on_new.to_string()),
        ("old".to_string(), shared.old.config.address()),
        ("new".to_string(), shared.new.as_ref().map(|n| n.config.address()).unwrap_or_else(|| "-".into())),
    ];
    rows.extend(shared.routing.status_rows());
    let lag = match crate::control::connect(&shared.old.config, &shared.old.config.database).await {
        Ok(old) => match old
            .query("SELECT slot_name::text, (pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_catalog.pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1", &[])
            .await
        {
            Ok(r) => r.iter().map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, Option<i64>>(1).unwrap_or(0))).collect::<Vec<_>>().join(" "),
            Err(e) => format!("unknown: {}", crate::control::ControlError::from(e)),
        },
        Err(e) => format!("unknown: {e}"),
    };
    rows.push(("replication_lag_bytes".to_string(), lag));
    rows
}

trait IfEmpty {
    fn if_empty(self, default: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, default: &str) -> String {
        if self.is_empty() { default.to_string() } else { self }
    }
}

/// One row of SHOW REPLICATION.
#[derive(Clone, Debug)]
pub struct ReplicationRow {
    pub database: String,
    pub subscription: String,
    pub enabled: bool,
    pub slot: String,
    pub lag_bytes: Option<i64>,
    pub table_states: String,
}

pub async fn replication(shared: &Arc<Shared>) -> Result<Vec<ReplicationRow>, String> {
    let new = shared.new.as_ref().ok_or("no new server configured")?;
    let control_new = crate::control::connect(&new.config, &new.config.database).await.map_err(|e| e.to_string())?;
    let subs = control_new
        .query(
            "SELECT d.datname::text, s.subname::text, s.subenabled, coalesce(s.subslotname::text, '') FROM pg_catalog.pg_subscription s \
             JOIN pg_catalog.pg_database d ON d.oid = s.subdbid ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| crate::control::ControlError::from(e).to_string())?;
    let mut rows = Vec::new();
    for r in subs {
        let (database, subscription, enabled, slot): (String, String, bool, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let mut lag_bytes = None;
        let mut table_states = String::new();
        if let Ok(new_db) = crate::control::connect(&new.config, &database).await {
            if let Ok(sub) = replication::find_subscription(&new_db, Some(&subscription)).await {
                table_states = replication::table_states(&new_db, &sub).await.unwrap_or_else(|e| e.to_string());
            }
        }
        if let Ok(old_db) = crate::control::connect(&shared.old.config, &shared.old.config.database).await {
            lag_bytes = replication::slot_lag(&old_db, &slot).await.ok().flatten();
        }
        rows.push(ReplicationRow { database, subscription, enabled, slot, lag_bytes, table_states });
    }
    Ok(rows)
}
