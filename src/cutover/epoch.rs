//! The coordinator's side of the durable decision (`control::decision` has the order of writes):
//! checking and opening an epoch before the hold, the commit point, the abort, and finishing a
//! settled epoch — which the watcher also does for an epoch whose coordinator died.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::ReportRow;
use crate::backend::Role;
use crate::control::decision::{self, CommitError, EpochRow, NewEpoch, Outcome, Settle};
use crate::control::{self, replication, sentinel};
use crate::proxy::Shared;
use crate::routing::resolve::{self, Read, Route};

/// Added to the hold's own timeouts for an epoch's deadline: the fence, the sequences and a
/// slow machine. Past the deadline the epoch can no longer commit.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// How long a coordinator whose commit reply was lost keeps trying to learn the outcome before
/// it leaves that to the watcher (sessions stay held meanwhile).
const SETTLE_PATIENCE: Duration = Duration::from_secs(10);

/// Control connections to both servers' control databases, read-write.
pub struct DecisionLink {
    pub old: Client,
    pub new: Client,
    old_id: i64,
    new_id: i64,
    next_epoch: i64,
}

impl DecisionLink {
    pub fn client(&self, role: Role) -> &Client {
        match role {
            Role::Old => &self.old,
            Role::New => &self.new,
        }
    }
}

/// Preflight: opens the connections, creates the table where missing, and checks that the
/// recorded decision routes to where the sessions are and that no epoch is open.
pub async fn prepare(shared: &Shared) -> Result<DecisionLink, String> {
    let Some(new_server) = shared.new.as_ref() else { return Err("no new server configured".into()) };
    let (old, new) = tokio::try_join!(decision::connect(&shared.old.config), decision::connect(&new_server.config)).map_err(|e| e.to_string())?;
    tokio::try_join!(decision::install(&old), decision::install(&new)).map_err(|e| format!("cannot create {}: {e}", decision::TABLE))?;
    let (old_view, new_view) = tokio::try_join!(decision::read(&old, Role::Old), decision::read(&new, Role::New)).map_err(|e| e.to_string())?;
    let (old_id, new_id) = (old_view.system_identifier, new_view.system_identifier);
    if old_id == new_id {
        return Err(format!("old and new are the same cluster (system_identifier {old_id}): check --old and --new"));
    }
    let next_epoch = old_view.max_epoch.max(new_view.max_epoch) + 1;
    match resolve::resolve(&Read::Seen(Box::new(old_view)), &Read::Seen(Box::new(new_view))).route {
        Route::Active { role, .. } if role == shared.gate.state().active => Ok(DecisionLink { old, new, old_id, new_id, next_epoch }),
        Route::Active { role, epoch, .. } => Err(format!(
            "the recorded decision (epoch {}) routes sessions to the {} server, not to where this proxy runs them",
            epoch.unwrap_or(0),
            role.as_str()
        )),
        other => Err(other.reason().unwrap_or("the decision cannot be read").to_string()),
    }
}

/// An epoch this coordinator opened and has not settled yet.
pub struct OpenEpoch {
    pub link: DecisionLink,
    settle: Settle,
    /// The decision row as this coordinator knows it.
    pub row: EpochRow,
}

/// Opens the next epoch of a cutover from old to new (steps 1-3 of `control::decision`). On an
/// error after the marker, the epoch is recorded as aborted where possible.
pub async fn begin(shared: &Shared, link: DecisionLink, fence: bool, subscriptions: &[(String, String)], deadline: Duration) -> Result<OpenEpoch, String> {
    let epoch = link.next_epoch;
    let by = shared.routing.instance.clone();
    let (databases, names): (Vec<String>, Vec<String>) = subscriptions.iter().cloned().unzip();
    if !decision::lock_epoch(&link.new, epoch).await.map_err(|e| e.to_string())? {
        return Err(format!("another pgcutover instance is starting epoch {epoch}"));
    }
    let new_epoch = NewEpoch {
        epoch,
        source: Role::Old,
        target: Role::New,
        deadline_secs: deadline.as_secs_f64(),
        fence_source: fence,
        old_system_identifier: link.old_id,
        new_system_identifier: link.new_id,
        databases: &databases,
        subscriptions: &names,
        started_by: &by,
    };
    decision::insert_pending(&link.old, Role::Old, &new_epoch).await.map_err(|e| format!("old: {e}"))?;
    crate::faults::crash_point("marker");
    let opened = async {
        decision::insert_pending(&link.new, Role::New, &new_epoch).await?;
        Settle::prepare(&link.new).await
    }
    .await;
    let settle = match opened {
        Ok(settle) => settle,
        Err(e) => {
            let reason = format!("could not open the epoch on new: {e}");
            let _ = decision::abort(&link.new, None, Role::New, epoch, &by, &reason).await;
            let _ = decision::mirror(&link.old, Role::Old, epoch, Outcome::Aborted, None, &by, Some(&reason)).await;
            return Err(reason);
        }
    };
    let row = EpochRow {
        epoch,
        kept_on: Role::New,
        action: "cutover".into(),
        source: Role::Old,
        target: Role::New,
        state: Outcome::Pending,
        expired: false,
        fence_source: fence,
        old_system_identifier: link.old_id,
        new_system_identifier: link.new_id,
        databases,
        subscriptions: names,
        started_by: by,
        decided_by: None,
        proven_lsn: None,
        reason: None,
    };
    Ok(OpenEpoch { link, settle, row })
}

impl OpenEpoch {
    pub fn number(&self) -> i64 {
        self.row.epoch
    }

    fn by(&self) -> String {
        self.row.started_by.clone()
    }

    /// THE COMMIT POINT (step 5): one round trip on the connection that holds the epoch's lock.
    pub async fn commit(&mut self, proven_lsn: &str) -> Result<(), CommitError> {
        let by = self.by();
        decision::commit(&self.link.new, &self.settle, Role::New, self.row.epoch, proven_lsn, &by).await?;
        self.row.state = Outcome::Committed;
        self.row.proven_lsn = Some(proven_lsn.to_string());
        self.row.decided_by = Some(by);
        crate::faults::crash_point("commit");
        Ok(())
    }

    /// Records the abort of an epoch whose commit was never sent (or was refused). If new
    /// cannot record it, the abort is recorded in the marker when the epoch is finished: this
    /// coordinator is the only one that could commit, and it will not.
    pub async fn abort(&mut self, reason: &str) -> Outcome {
        let by = self.by();
        self.row.reason = Some(reason.to_string());
        self.row.decided_by = Some(by.clone());
        match decision::abort(&self.link.new, Some(&self.settle), Role::New, self.row.epoch, &by, reason).await {
            Ok(outcome) => self.row.state = outcome,
            Err(e) => {
                tracing::warn!(epoch = self.row.epoch, error = %e, "could not record the abort on new; recording it on old, which this coordinator may do as it never committed");
                self.row.state = Outcome::Aborted;
                self.row.reason = Some(format!("{reason} (new could not record the abort: {e})"));
            }
        }
        self.row.state
    }

    /// The commit's reply was lost: settles the epoch from a fresh connection — the conditional
    /// abort changes nothing if the commit went through, and then reads committed. None if new
    /// cannot be reached in time.
    pub async fn settle_unknown(&mut self, shared: &Shared) -> Option<Outcome> {
        let new_server = shared.new.as_ref()?;
        let by = self.by();
        let until = Instant::now() + SETTLE_PATIENCE;
        loop {
            if let Ok(client) = decision::connect(&new_server.config).await {
                let reason = "the reply to the commit was lost; settled by its coordinator";
                if let Ok(outcome) = decision::abort(&client, None, Role::New, self.row.epoch, &by, reason).await {
                    if outcome == Outcome::Committed {
                        if let Ok(Some(row)) = decision::read_epoch(&client, Role::New, self.row.epoch).await {
                            self.row = row;
                        }
                    }
                    self.row.state = outcome;
                    self.link.new = client;
                    return Some(outcome);
                }
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Finishes a settled epoch (step 6): fences (committed) or unfences (aborted) its source if
/// the epoch planned a fence, disables the subscriptions on its target after a commit, and last
/// mirrors the outcome into the marker. Every step is idempotent: whoever finds the marker still
/// pending under a settled decision does it all again. Returns what was done, for the report.
pub async fn finish(shared: &Shared, row: &EpochRow, source: &Client, target: Option<&Client>) -> Vec<ReportRow> {
    let mut facts = Vec::new();
    let mut fact = |item: String, value: &str, detail: String| facts.push(ReportRow { item, value: value.to_string(), detail });
    let mut complete = true;
    match row.state {
        Outcome::Pending => return facts,
        Outcome::Committed if row.fence_source => match sentinel::fence(source).await {
            Ok(()) => fact("fence".into(), "on", format!("the {} server refuses writes (default_transaction_read_only)", row.source.as_str())),
            Err(e) => {
                complete = false;
                fact("fence".into(), "failed", format!("the {} server may still accept writes that bypass the proxy: {e}", row.source.as_str()));
            }
        },
        Outcome::Aborted if row.fence_source => {
            if let Err(e) = sentinel::unfence(source).await {
                complete = false;
                tracing::error!(epoch = row.epoch, error = %e, "could not lift the fence: run ALTER SYSTEM RESET default_transaction_read_only and SELECT pg_reload_conf() on the {} server", row.source.as_str());
                fact("fence".into(), "still on", format!("could not lift it: {e}"));
            }
        }
        _ => {}
    }
    if row.state == Outcome::Committed && shared.live().cutover.disable_subscription {
        for (database, subscription) in row.databases.iter().zip(&row.subscriptions) {
            let item = format!("{database}: subscription");
            match disable_subscription(shared, row.target, target, database, subscription).await {
                Ok(done) => fact(item, done, subscription.clone()),
                Err(e) => {
                    complete = false;
                    fact(item, "still enabled", format!("could not disable {subscription}: {e}"));
                }
            }
        }
    }
    if complete {
        let by = row.decided_by.clone().unwrap_or_else(|| shared.routing.instance.clone());
        if let Err(e) = decision::mirror(source, row.source, row.epoch, row.state, row.proven_lsn.as_deref(), &by, row.reason.as_deref()).await {
            tracing::warn!(epoch = row.epoch, error = %e, "could not mirror the outcome on the source; the watcher retries");
        }
    }
    facts
}

/// Disables a subscription on `role` (the target) unless it is gone or disabled already.
async fn disable_subscription(shared: &Shared, role: Role, client: Option<&Client>, database: &str, subscription: &str) -> Result<&'static str, control::ControlError> {
    let unreachable = || control::ControlError::Query(format!("the {} server cannot be reached", role.as_str()));
    let enabled = replication::subscription_enabled(client.ok_or_else(unreachable)?, database, subscription).await?;
    match enabled {
        None => Ok("gone"),
        Some(false) => Ok("disabled"),
        Some(true) => {
            let server = shared.server(role).ok_or_else(unreachable)?;
            let in_database = control::connect(&server.config, database).await?;
            replication::set_subscription_enabled(&in_database, subscription, false).await?;
            Ok("disabled")
        }
    }
}

/// The backend pids of these sessions (what `pg_stat_activity` shows for them).
pub fn backend_pids(sessions: &[std::sync::Arc<crate::session::registry::SessionHandle>]) -> Vec<i32> {
    sessions.iter().filter_map(|h| h.cancel_target.lock().ok().and_then(|t| t.as_ref().map(|t| t.pid as i32))).collect()
}

/// Sessions on the active server that do not come through this proxy: a fence cuts off their
/// writes after a cutover, `terminate_foreign` ends them at the commit point. Err when the
/// server cannot be asked.
pub async fn foreign_sessions(shared: &Shared) -> Result<Vec<decision::ForeignSession>, String> {
    let active = shared.gate.state().active;
    let server = shared.server(active).ok_or("no such server configured")?;
    let pids = backend_pids(&shared.registry.all());
    let listed = tokio::time::timeout(Duration::from_secs(5), async {
        let client = control::connect(&server.config, &server.config.database).await?;
        decision::foreign_sessions(&client, &pids).await
    })
    .await;
    match listed {
        Ok(Ok(sessions)) => Ok(sessions),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the {} server did not answer within 5 s", active.as_str())),
    }
}

/// CHECK rows about the durable decision and the sessions that bypass the proxy.
pub async fn check_rows(shared: &Shared) -> Vec<super::CheckRow> {
    let row = |check: &str, status: &'static str, detail: String| super::CheckRow { check: check.into(), status, detail };
    let mut rows = Vec::new();
    if let Some(new_server) = shared.new.as_ref() {
        let read = |config: crate::config::ServerConfig, role: Role| async move {
            let client = decision::connect(&config).await?;
            decision::read(&client, role).await
        };
        let (old, new) = tokio::join!(read(shared.old.config.clone(), Role::Old), read(new_server.config.clone(), Role::New));
        let as_read = |r: Result<decision::ServerView, control::ControlError>| r.map_or_else(|e| Read::Unreachable(e.to_string()), |v| Read::Seen(Box::new(v)));
        let both_found = matches!((&old, &new), (Ok(o), Ok(n)) if o.latest.is_none() && n.latest.is_none());
        rows.push(match resolve::resolve(&as_read(old), &as_read(new)).route {
            Route::Active { role, epoch: None, .. } if both_found => {
                row("cutover decision", "ok", format!("no cutover started yet: sessions go to {}; CUTOVER records its epochs in {}", role.as_str(), decision::TABLE))
            }
            Route::Active { role, epoch, committed } => {
                let from = epoch.map(|e| format!(" (epoch {e} {})", if committed { "committed" } else { "aborted" })).unwrap_or_default();
                let status = if role == shared.gate.state().active { "ok" } else { "fail" };
                row("cutover decision", status, format!("sessions go to {}{from}", role.as_str()))
            }
            other => row("cutover decision", "fail", other.reason().unwrap_or_default().to_string()),
        });
    }
    rows.push(match foreign_sessions(shared).await {
        Ok(sessions) if sessions.is_empty() => row("sessions bypassing the proxy", "ok", "none".into()),
        Ok(sessions) => {
            let listed: Vec<String> = sessions
                .iter()
                .map(|s| format!("pid {} user {} application_name {:?} from {} database {} ({})", s.pid, s.user, s.application_name, s.client_addr, s.database, s.state))
                .collect();
            let fate = if shared.live().cutover.fence_old { "the fence refuses their writes after the commit point" } else { "their writes after the commit point are not moved" };
            row(
                "sessions bypassing the proxy",
                "warn",
                format!("{} sessions on {} do not come through pgcutover ({fate}; CUTOVER terminate_foreign=true ends them): {}", sessions.len(), shared.gate.state().active.as_str(), listed.join("; ")),
            )
        }
        Err(e) => row("sessions bypassing the proxy", "warn", format!("cannot list them: {e}")),
    });
    rows
}
