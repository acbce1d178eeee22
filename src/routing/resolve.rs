//! Where sessions go, from what both servers say about the cutover decision. Pure logic: the
//! watcher and the coordinator read the servers, this decides.
//!
//! The rules (see `control::decision` for the order of writes they rely on):
//! * A row kept on a server whose `system_identifier`s do not match the servers this proxy
//!   talks to belongs to other clusters: refuse to route at all, and say so.
//! * No epoch on any server that answered: old — before any cutover old is the default. With
//!   both servers silent, nothing is known (unless no new server is configured: then old is
//!   the only place a session can go).
//! * Otherwise take the newest epoch E seen anywhere. Its decision row (kept on its target) is
//!   authoritative: committed → its target; aborted → its source; pending → wait until it is
//!   settled, and abort it if its coordinator is gone.
//! * If E's target cannot be read, its marker on the source decides only once settled: a
//!   mirrored commit → the target (never the source, even if the target is down); aborted → the
//!   source; still pending → wait: the outcome cannot be learned.

use crate::backend::Role;
use crate::control::decision::{EpochRow, Outcome, ServerView};

/// What reading one server gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// No such server in the configuration (no `--new`).
    NotConfigured,
    Unreachable(String),
    Seen(Box<ServerView>),
}

impl Read {
    fn view(&self) -> Option<&ServerView> {
        match self {
            Read::Seen(v) => Some(v),
            _ => None,
        }
    }

    fn latest(&self) -> Option<&EpochRow> {
        self.view().and_then(|v| v.latest.as_ref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Sessions go to `role`. `epoch` is the settled epoch this follows (None: no cutover was
    /// ever started); `committed`: that epoch committed, so the other server is retired.
    Active { role: Role, epoch: Option<i64>, committed: bool },
    /// An epoch is open (or its outcome cannot be read): hold new work until it is settled.
    Wait { epoch: i64, reason: String },
    /// The servers that would tell cannot be read.
    Unknown { reason: String },
    /// What was read forbids routing anywhere.
    Refuse { reason: String },
}

impl Route {
    pub fn reason(&self) -> Option<&str> {
        match self {
            Route::Active { .. } => None,
            Route::Wait { reason, .. } | Route::Unknown { reason } | Route::Refuse { reason } => Some(reason),
        }
    }
}

/// Something the reader should write to settle or finish an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Duty {
    /// This pending epoch (its decision row, or only its marker) may have lost its coordinator:
    /// abort it if the coordinator's lock is free or its deadline has passed.
    SettleAbandoned(EpochRow),
    /// This decision row is settled but its marker is not mirrored yet: finish the epoch.
    Finish(EpochRow),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub route: Route,
    pub duty: Option<Duty>,
}

fn route(route: Route) -> Resolution {
    Resolution { route, duty: None }
}

fn read_of(role: Role, old: &Read, new: &Read) -> Read {
    match role {
        Role::Old => old.clone(),
        Role::New => new.clone(),
    }
}

pub fn resolve(old: &Read, new: &Read) -> Resolution {
    if let Some(reason) = other_clusters(old, new) {
        return route(Route::Refuse { reason });
    }
    let newest = [old.latest(), new.latest()].into_iter().flatten().max_by_key(|r| r.epoch);
    let Some(newest) = newest else {
        return match (old, new) {
            // An epoch's first write is its marker on the source, and the first epoch is a
            // cutover from old; its decision rows live on new. Neither has a row: none started,
            // or none ever got far enough to commit.
            (Read::Seen(_), _) | (_, Read::Seen(_)) => route(Route::Active { role: Role::Old, epoch: None, committed: false }),
            // Old is the only server: a session can only go there (and fails if it is down).
            (_, Read::NotConfigured) => route(Route::Active { role: Role::Old, epoch: None, committed: false }),
            _ => route(Route::Unknown { reason: format!("cannot read the cutover decision: {}; {}", describe(Role::Old, old), describe(Role::New, new)) }),
        };
    };
    let (epoch, source, target) = (newest.epoch, newest.source, newest.target);
    let source_read = read_of(source, old, new);
    let target_read = read_of(target, old, new);
    let marker = source_read.latest().filter(|r| r.epoch == epoch);
    let decision = target_read.latest().filter(|r| r.epoch == epoch);
    let unfinished = |row: &EpochRow| marker.filter(|m| m.state == Outcome::Pending).map(|_| Duty::Finish(row.clone()));
    let settled = |row: &EpochRow| match row.state {
        Outcome::Committed => Some(Route::Active { role: target, epoch: Some(epoch), committed: true }),
        Outcome::Aborted => Some(Route::Active { role: source, epoch: Some(epoch), committed: false }),
        Outcome::Pending => None,
    };
    let resolution = match (&target_read, decision, marker) {
        (Read::Seen(_), Some(decision), _) => match settled(decision) {
            Some(active) => Resolution { route: active, duty: unfinished(decision) },
            None => Resolution {
                route: Route::Wait { epoch, reason: format!("cutover epoch {epoch} (started by {}) is not settled yet", decision.started_by) },
                duty: Some(Duty::SettleAbandoned(decision.clone())),
            },
        },
        // The target answered without a row of E: only the marker was written. Renounced (the
        // coordinator gave up without ever committing): the source; otherwise wait, and settle
        // it if the coordinator is gone so that its decision row can never commit.
        (Read::Seen(_), None, Some(marker)) => Resolution {
            route: match marker.state {
                Outcome::Aborted => Route::Active { role: source, epoch: Some(epoch), committed: false },
                _ => Route::Wait { epoch, reason: format!("cutover epoch {epoch} (started by {}) is being started", marker.started_by) },
            },
            duty: Some(Duty::SettleAbandoned(marker.clone())),
        },
        (_, _, Some(marker)) => match settled(marker) {
            Some(active) => route(active),
            None => route(Route::Wait {
                epoch,
                reason: format!(
                    "cannot learn the outcome of cutover epoch {epoch}: its decision is kept on the {} server, which {}",
                    target.as_str(),
                    match &target_read {
                        Read::Unreachable(e) => format!("is unreachable ({e})"),
                        _ => "is not configured".to_string(),
                    }
                ),
            }),
        },
        // Unreachable: the newest row came from the target, so the target answered.
        (_, _, None) => route(Route::Unknown { reason: format!("cannot read the cutover decision of epoch {epoch}") }),
    };
    if let (Route::Active { role: Role::New, epoch: Some(e), .. }, Read::NotConfigured) = (&resolution.route, new) {
        return route(Route::Refuse {
            reason: format!("cutover epoch {e} moved sessions to a new server, and none is configured (--new): refusing to use the old server it retired"),
        });
    }
    resolution
}

fn describe(role: Role, read: &Read) -> String {
    match read {
        Read::NotConfigured => format!("no {} server configured", role.as_str()),
        Read::Unreachable(e) => format!("{} server unreachable ({e})", role.as_str()),
        Read::Seen(_) => format!("{} server read", role.as_str()),
    }
}

/// A reason to refuse, if either server's table records a pair of clusters other than the
/// servers this proxy talks to (a configuration pointed at other clusters, old and new
/// swapped, or rows copied from elsewhere).
fn other_clusters(old: &Read, new: &Read) -> Option<String> {
    let actual = |role: Role| read_of(role, old, new).view().map(|v| v.system_identifier);
    for (kept_on, read) in [(Role::Old, old), (Role::New, new)] {
        let Some(view) = read.view() else { continue };
        for &(recorded_old, recorded_new) in &view.pairs {
            for (role, recorded) in [(Role::Old, recorded_old), (Role::New, recorded_new)] {
                let Some(actual) = actual(role) else { continue };
                if actual != recorded {
                    return Some(format!(
                        "the cutover decision kept on the {kept} server was recorded for other clusters (old system_identifier \
                         {recorded_old}, new {recorded_new}), but this proxy's {} server has system_identifier {actual}. Refusing \
                         to route sessions: check --old and --new; if those rows belong to other clusters, remove them \
                         (DELETE FROM {table} in the control database of the {kept} server)",
                        role.as_str(),
                        kept = kept_on.as_str(),
                        table = crate::control::decision::TABLE,
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_ID: i64 = 7_000_000_000_000_000_015;
    const NEW_ID: i64 = 7_000_000_000_000_000_018;

    fn row(kept_on: Role, epoch: i64, source: Role, state: Outcome) -> EpochRow {
        EpochRow {
            epoch,
            kept_on,
            action: if source == Role::Old { "cutover".into() } else { "switchback".into() },
            source,
            target: other(source),
            state,
            expired: false,
            fence_source: true,
            old_system_identifier: OLD_ID,
            new_system_identifier: NEW_ID,
            databases: vec![],
            subscriptions: vec![],
            started_by: "test".into(),
            decided_by: None,
            proven_lsn: None,
            reason: None,
        }
    }

    fn other(role: Role) -> Role {
        match role {
            Role::Old => Role::New,
            Role::New => Role::Old,
        }
    }

    /// How far an epoch got: the writes of `control::decision`, in their order.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Stage {
        MarkerOnly,
        BothPending,
        Committed,
        CommittedMirrored,
        Aborted,
        AbortedMirrored,
        /// The coordinator could not reach the target and recorded the abort in its marker.
        Renounced,
        RenouncedMarkerOnly,
    }

    const STAGES: [Stage; 8] = [
        Stage::MarkerOnly,
        Stage::BothPending,
        Stage::Committed,
        Stage::CommittedMirrored,
        Stage::Aborted,
        Stage::AbortedMirrored,
        Stage::Renounced,
        Stage::RenouncedMarkerOnly,
    ];
    const SETTLED: [Stage; 4] = [Stage::Committed, Stage::CommittedMirrored, Stage::Aborted, Stage::AbortedMirrored];

    /// The rows each server keeps after `history`, and the server sessions truly belong on.
    struct World {
        rows: Vec<EpochRow>,
        active: Role,
        /// The last epoch can still commit (its outcome is not settled).
        open: Option<i64>,
    }

    fn world(history: &[Stage]) -> World {
        let mut rows = Vec::new();
        let mut active = Role::Old;
        let mut open = None;
        for (i, stage) in history.iter().enumerate() {
            let epoch = i as i64 + 1;
            let source = active;
            let target = other(source);
            let (marker, decision) = match stage {
                Stage::MarkerOnly => (Outcome::Pending, None),
                Stage::BothPending => (Outcome::Pending, Some(Outcome::Pending)),
                Stage::Committed => (Outcome::Pending, Some(Outcome::Committed)),
                Stage::CommittedMirrored => (Outcome::Committed, Some(Outcome::Committed)),
                Stage::Aborted => (Outcome::Pending, Some(Outcome::Aborted)),
                Stage::AbortedMirrored => (Outcome::Aborted, Some(Outcome::Aborted)),
                Stage::Renounced => (Outcome::Aborted, Some(Outcome::Pending)),
                Stage::RenouncedMarkerOnly => (Outcome::Aborted, None),
            };
            rows.push(row(source, epoch, source, marker));
            if let Some(state) = decision {
                rows.push(row(target, epoch, source, state));
            }
            open = matches!(stage, Stage::MarkerOnly | Stage::BothPending).then_some(epoch);
            if matches!(stage, Stage::Committed | Stage::CommittedMirrored) {
                active = target;
            }
        }
        World { rows, active, open }
    }

    fn read(world: &World, role: Role, reachable: bool) -> Read {
        if !reachable {
            return Read::Unreachable("connection refused".into());
        }
        let latest = world.rows.iter().filter(|r| r.kept_on == role).max_by_key(|r| r.epoch).cloned();
        let max_epoch = world.rows.iter().map(|r| r.epoch).max().unwrap_or(0);
        let pairs = if latest.is_some() { vec![(OLD_ID, NEW_ID)] } else { vec![] };
        Read::Seen(Box::new(ServerView { system_identifier: if role == Role::Old { OLD_ID } else { NEW_ID }, latest, max_epoch, pairs }))
    }

    fn histories() -> Vec<Vec<Stage>> {
        let mut out = vec![vec![]];
        for last in STAGES {
            out.push(vec![last]);
            for first in SETTLED {
                out.push(vec![first, last]);
                for second in SETTLED {
                    out.push(vec![first, second, last]);
                }
            }
        }
        out
    }

    /// Every history of up to three epochs, every stage of the last one, every combination of
    /// reachable servers: a route is never a server the committed decisions retired, an open
    /// epoch that can be seen is never routed around, and what can be known is known.
    #[test]
    fn never_routes_to_a_retired_server_and_waits_for_open_epochs() {
        let mut cases = 0;
        for history in histories() {
            let world = world(&history);
            for (old_up, new_up) in [(true, true), (true, false), (false, true), (false, false)] {
                cases += 1;
                let old = read(&world, Role::Old, old_up);
                let new = read(&world, Role::New, new_up);
                let resolution = resolve(&old, &new);
                let context = format!("history {history:?}, old up {old_up}, new up {new_up}: {resolution:?}");
                if let Route::Active { role, .. } = resolution.route {
                    assert_eq!(role, world.active, "{context}");
                    if let Some(open) = world.open {
                        let visible = world.rows.iter().any(|r| r.epoch == open && if r.kept_on == Role::Old { old_up } else { new_up });
                        assert!(!visible, "routed around open epoch {open}: {context}");
                    }
                }
                assert!(!matches!(resolution.route, Route::Refuse { .. }), "{context}");
                if old_up && new_up {
                    // Both answer: the route is known, or the last epoch is still to be settled.
                    let last_open = matches!(history.last(), Some(Stage::MarkerOnly | Stage::BothPending | Stage::Renounced));
                    assert!(matches!(resolution.route, Route::Active { .. }) || last_open, "{context}");
                }
                if !old_up && !new_up {
                    assert!(matches!(resolution.route, Route::Unknown { .. }), "{context}");
                }
            }
        }
        assert!(cases > 400, "{cases}");
    }

    #[test]
    fn fresh_install_goes_to_old_even_with_one_server_down() {
        let empty = |id| Read::Seen(Box::new(ServerView { system_identifier: id, latest: None, max_epoch: 0, pairs: vec![] }));
        let down = Read::Unreachable("refused".into());
        let old_route = Route::Active { role: Role::Old, epoch: None, committed: false };
        assert_eq!(resolve(&empty(OLD_ID), &empty(NEW_ID)).route, old_route);
        assert_eq!(resolve(&empty(OLD_ID), &down).route, old_route);
        assert_eq!(resolve(&down, &empty(NEW_ID)).route, old_route);
        assert_eq!(resolve(&empty(OLD_ID), &Read::NotConfigured).route, old_route);
        assert!(matches!(resolve(&down, &down).route, Route::Unknown { .. }));
        // Without a new server, old is the only place a session can go, up or down.
        assert_eq!(resolve(&down, &Read::NotConfigured).route, old_route);
    }

    #[test]
    fn a_committed_cutover_survives_either_server_being_down() {
        let world = world(&[Stage::CommittedMirrored]);
        let new_route = Route::Active { role: Role::New, epoch: Some(1), committed: true };
        assert_eq!(resolve(&read(&world, Role::Old, true), &read(&world, Role::New, true)).route, new_route);
        assert_eq!(resolve(&read(&world, Role::Old, false), &read(&world, Role::New, true)).route, new_route);
        assert_eq!(resolve(&read(&world, Role::Old, true), &read(&world, Role::New, false)).route, new_route);
        // Without a new server configured, the retired old is still refused.
        let refused = resolve(&read(&world, Role::Old, true), &Read::NotConfigured).route;
        assert!(matches!(&refused, Route::Refuse { reason } if reason.contains("not configured") || reason.contains("none is configured")), "{refused:?}");
    }

    #[test]
    fn unfinished_epochs_are_finished_and_abandoned_ones_settled() {
        let committed = world(&[Stage::Committed]);
        let r = resolve(&read(&committed, Role::Old, true), &read(&committed, Role::New, true));
        assert!(matches!(&r.duty, Some(Duty::Finish(row)) if row.state == Outcome::Committed && row.kept_on == Role::New), "{r:?}");
        let mirrored = world(&[Stage::CommittedMirrored]);
        assert_eq!(resolve(&read(&mirrored, Role::Old, true), &read(&mirrored, Role::New, true)).duty, None);
        for stage in [Stage::MarkerOnly, Stage::BothPending, Stage::Renounced, Stage::RenouncedMarkerOnly] {
            let w = world(&[stage]);
            let r = resolve(&read(&w, Role::Old, true), &read(&w, Role::New, true));
            assert!(matches!(&r.duty, Some(Duty::SettleAbandoned(row)) if row.epoch == 1), "{stage:?}: {r:?}");
        }
        // The marker alone, target down: nothing to write, and nothing known.
        let w = world(&[Stage::BothPending]);
        let r = resolve(&read(&w, Role::Old, true), &read(&w, Role::New, false));
        assert!(matches!(&r.route, Route::Wait { reason, .. } if reason.contains("unreachable")), "{r:?}");
        assert_eq!(r.duty, None);
    }

    #[test]
    fn rows_of_other_clusters_are_refused_and_named() {
        let world = world(&[Stage::CommittedMirrored]);
        let mut new = read(&world, Role::New, true);
        if let Read::Seen(v) = &mut new {
            v.system_identifier = 42;
        }
        let r = resolve(&read(&world, Role::Old, true), &new).route;
        assert!(matches!(&r, Route::Refuse { reason } if reason.contains("other clusters") && reason.contains("42")), "{r:?}");
        // Only old reachable, and old's row names another old: refused too.
        let mut old = read(&world, Role::Old, true);
        if let Read::Seen(v) = &mut old {
            v.system_identifier = 43;
        }
        let r = resolve(&old, &Read::Unreachable("down".into())).route;
        assert!(matches!(r, Route::Refuse { .. }), "{r:?}");
        // A server without rows is not checked against anything.
        let empty = Read::Seen(Box::new(ServerView { system_identifier: 44, latest: None, max_epoch: 0, pairs: vec![] }));
        assert!(matches!(resolve(&empty, &Read::NotConfigured).route, Route::Active { role: Role::Old, .. }));
        // Old and new swapped: each server's own rows are filtered out by `kept_on`, but the
        // pair the table records gives the mistake away.
        let as_swapped = |id: i64| Read::Seen(Box::new(ServerView { system_identifier: id, latest: None, max_epoch: 1, pairs: vec![(OLD_ID, NEW_ID)] }));
        let r = resolve(&as_swapped(NEW_ID), &as_swapped(OLD_ID)).route;
        assert!(matches!(&r, Route::Refuse { reason } if reason.contains("other clusters")), "{r:?}");
    }
}
