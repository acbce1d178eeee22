//! The way back: replication from new to old that starts exactly at a cutover's commit point,
//! and the same switch in the other direction for a way forward again. These are the SQL
//! building blocks; the cutover and SWITCHBACK call them in this order.
//!
//! # One direction, per database
//! A *publisher* holds a publication and a logical slot; a *subscriber* holds a subscription
//! that reads the slot. Forward is old → new (the application's own publication and
//! subscription); reverse is new → old, with objects pgcutover names `pgcutover_reverse_<db>`
//! ([`reverse_names`]).
//!
//! # Order at a cutover (old → new) — why nothing loops and nothing is lost
//! 1. Preflight, nothing held: [`prepare`]. On new the publication (the forward
//!    subscription's tables, the sentinel included, pgcutover's other tables never) and then
//!    the slot, so the slot never decodes WAL older than its publication; on old the reverse
//!    subscription, created *disabled* (`connect` fetches its table list from new, which
//!    proves now — not at the commit point — that old can log into new and has every table).
//! 2. Hold, drain, catch-up proof, sequences: the forward apply has applied all of old.
//! 3. Commit point, then before any client write reaches new: [`stop`] the forward
//!    subscription on new (disabled, and its apply worker gone), then [`arm`] the reverse:
//!    on new a commit is flushed and the slot moved to the flushed position, refused while
//!    the forward subscription is enabled or running; on old the reverse subscription is
//!    enabled.
//! 4. After: [`retire_slot`] drops the forward slot on old (see below).
//!
//! Every commit the forward apply made on new ends before the position the slot is moved to
//! (that position is read after the apply worker exited), and logical decoding skips a transaction
//! whose commit starts before the slot's start point: so nothing old sent comes back. Every
//! client write on new commits after the gate opens, after the move: so all of them go to
//! old, in commit order, each once. A Postgres 15 subscriber cannot ask an 18 publisher for
//! `origin = none`; the move is what prevents the loop. What a session that bypasses the
//! proxy wrote on new *before* the commit point is skipped too (CHECK names such sessions).
//! For the same reason [`arm`] must be done before the first client write reaches new: a
//! proxy restarted after a commit point whose arm did not finish must arm before it routes
//! anyone to new, or declare the way back lost.
//!
//! # The forward slot after a cutover: dropped
//! A disabled subscription's slot still keeps WAL, and once old is fenced the only writes on
//! old are the reverse apply's, i.e. all of new's writes again: kept, the forward slot would
//! hold that WAL on old for as long as the way back stays open, with nothing to consume it.
//! So the cutover drops it ([`retire_slot`]) and keeps the forward subscription, disabled
//! with `slot_name = NONE`. A SWITCHBACK mirrors the cutover: its preflight makes a fresh
//! forward slot ([`prepare_forward`], `pgcutover_forward_<db>`), its commit point stops the
//! reverse subscription on old and [`arm`]s the forward one with that slot. Keeping the slot
//! and moving it at each switch works as well (the same [`arm`] moves it); it only costs the
//! WAL it keeps meanwhile, which [`crate::control::slots::status`] reports.
//!
//! # The password
//! The reverse subscription's connection string comes from the `[new]` config
//! ([`Conninfo`]); written with the password, it is stored in `pg_subscription.subconninfo`
//! on old, readable by superusers only. The statement that creates it runs with statement
//! logging off (`log_statement`, `log_min_error_statement`, `log_min_duration_statement`,
//! `pg_stat_statements.track_utility`), and errors pass through [`Conninfo::scrub`]. While
//! it runs, `pg_stat_activity` shows it to superusers. [`super::conninfo::Password`] can leave
//! it to a passfile on old's host instead.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::conninfo::Conninfo;
use super::readiness::coverage;
use super::replication::{self, Subscription};
use super::sentinel::literal;
use super::{quote_ident, read_write, slots, ControlError};

/// Time taken by each step, in order.
pub type Steps = Vec<(&'static str, Duration)>;

/// The objects of one direction that pgcutover names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// On the publisher.
    pub publication: String,
    /// On the publisher.
    pub slot: String,
    /// On the subscriber.
    pub subscription: String,
}

/// The reverse direction's publication, slot and subscription for `database`.
pub fn reverse_names(database: &str) -> Names {
    let name = derived_name("pgcutover_reverse_", database);
    Names { publication: name.clone(), slot: name.clone(), subscription: name }
}

/// The slot on old a SWITCHBACK creates for the forward subscription of `database`.
pub fn forward_slot(database: &str) -> String {
    derived_name("pgcutover_forward_", database)
}

/// `prefix` + `database` when that is a valid slot name (lowercase letters, digits and `_`, at
/// most 63 bytes); otherwise a readable part of it and a hash of the exact name, so two
/// databases never share a name and the same database always gets the same one.
fn derived_name(prefix: &str, database: &str) -> String {
    let plain = database.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain && prefix.len() + database.len() <= 63 {
        return format!("{prefix}{database}");
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, database.as_bytes());
    let hash: String = digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect();
    let readable: String = database
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(63 - prefix.len() - 1 - hash.len())
        .collect();
    format!("{prefix}{readable}_{hash}")
}

/// What [`prepare`] set up.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub names: Names,
    /// The tables published back, as `schema.table`.
    pub tables: Vec<String>,
    /// False: the slot of an earlier preflight was reused (and moved to the present).
    pub created_slot: bool,
    pub steps: Steps,
}

/// Preflight of a cutover, nothing held: on new the reverse publication and slot, on old the
/// reverse subscription, disabled. `old` and `new` are connected to the same database;
/// `forward` is its subscription on new. Runs again cleanly after an abort: the publication
/// gets the current table list, the slot is reused, the disabled subscription made again.
/// Refused while the reverse subscription is enabled (a way back is armed).
pub async fn prepare(old: &Client, new: &Client, forward: &Subscription, conninfo: &Conninfo) -> Result<Prepared, ControlError> {
    let mut steps = Steps::new();
    let mut clock = Instant::now();
    let mut lap = |steps: &mut Steps, name: &'static str| {
        steps.push((name, clock.elapsed()));
        clock = Instant::now();
    };
    let database = same_database(old, new).await?;
    let names = reverse_names(&database);
    let tables = tables_back(old, new, forward).await?;
    if let Some(sub) = subscription_state(old, &names.subscription).await? {
        if sub.enabled || sub.running {
            return Err(ControlError::Query(format!(
                "the way back is armed: subscription {} on old is enabled; a SWITCHBACK or a teardown disarms it",
                names.subscription
            )));
        }
    }
    lap(&mut steps, "checks");

    let list = tables.join(", ");
    let publication = quote_ident(&names.publication);
    let exists: bool = new.query_one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)", &[&names.publication]).await?.get(0);
    if exists {
        new.batch_execute(&format!("ALTER PUBLICATION {publication} SET TABLE {list}")).await?;
    } else {
        new.batch_execute(&format!("CREATE PUBLICATION {publication} FOR TABLE {list}")).await?;
    }
    lap(&mut steps, "publication");

    let created_slot = slots::ensure(new, &names.slot).await?;
    lap(&mut steps, "slot");

    drop_subscription(old, &names.subscription, SlotFate::Keep).await?;
    create_disabled_subscription(old, &names, conninfo).await?;
    lap(&mut steps, "subscription");
    Ok(Prepared { names, tables, created_slot, steps })
}

/// The name of the database both clients are connected to; they must agree.
async fn same_database(old: &Client, new: &Client) -> Result<String, ControlError> {
    let sql = "SELECT current_database()::text";
    let (o, n) = tokio::try_join!(old.query_one(sql, &[]), new.query_one(sql, &[]))?;
    let (o, n): (String, String) = (o.get(0), n.get(0));
    if o != n {
        return Err(ControlError::Query(format!("old is connected to database {o:?} and new to {n:?}: the way back is per database")));
    }
    Ok(n)
}

/// The tables to publish back: those the forward subscription receives, without pgcutover's
/// own but the sentinel (a SWITCHBACK proves its catch-up with it; the decision table
/// `pgcutover.epoch` is each server's own and must never travel). Each must exist on old.
async fn tables_back(old: &Client, new: &Client, forward: &Subscription) -> Result<Vec<String>, ControlError> {
    let subscribed = coverage::subscribed_tables(new, forward.oid).await?;
    let tables: Vec<String> = subscribed.into_iter().map(|(t, _)| t).filter(|t| !t.starts_with("pgcutover.") || t == super::sentinel::TABLE).collect();
    if !tables.iter().any(|t| t == super::sentinel::TABLE) {
        return Err(ControlError::Query(format!(
            "subscription {} does not receive {} yet: the way back needs it (the cutover's preflight installs it)",
            forward.name,
            super::sentinel::TABLE
        )));
    }
    let on_old = coverage::existing_tables(old, &tables).await?;
    let missing: Vec<&String> = tables.iter().filter(|t| !on_old.contains(t)).collect();
    if !missing.is_empty() {
        return Err(ControlError::Query(format!(
            "tables new receives that old lacks (the way back cannot write them): {}",
            missing.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(tables)
}

/// CREATE SUBSCRIPTION on old, disabled, reading the existing slot on new from its current
/// position. Its text carries the password, so statement logging is turned off for it — in a
/// query of its own before it: `log_statement` judges a whole query string when it arrives.
/// The three queries go out together (one round trip); if the CREATE fails, the COMMIT that
/// follows it ends the failed transaction.
async fn create_disabled_subscription(old: &Client, names: &Names, conninfo: &Conninfo) -> Result<(), ControlError> {
    let quiet = "BEGIN READ WRITE; SET LOCAL log_statement = 'none'; SET LOCAL log_min_error_statement = 'panic'; \
                 SET LOCAL log_min_duration_statement = -1; \
                 SELECT pg_catalog.set_config(name, 'off', true) FROM pg_catalog.pg_settings WHERE name = 'pg_stat_statements.track_utility'";
    let create = format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (enabled = false, create_slot = false, slot_name = {}, copy_data = false)",
        quote_ident(&names.subscription),
        conninfo.sql_literal(),
        quote_ident(&names.publication),
        literal(&names.slot)
    );
    tokio::try_join!(old.batch_execute(quiet), old.batch_execute(&create), old.batch_execute("COMMIT"))
        .map_err(|e| ControlError::Query(conninfo.scrub(&ControlError::from(e).to_string())))?;
    Ok(())
}

/// A subscription as [`arm`] and [`stop`] see it.
#[derive(Clone, Debug)]
struct SubscriptionState {
    oid: u32,
    enabled: bool,
    /// Some worker of it runs.
    running: bool,
    slot: Option<String>,
}

/// Subscription `name` of the connection's database, if there is one.
async fn subscription_state(client: &Client, name: &str) -> Result<Option<SubscriptionState>, ControlError> {
    let row = client
        .query_opt(
            "SELECT s.oid, s.subenabled, EXISTS (SELECT 1 FROM pg_catalog.pg_stat_subscription w WHERE w.subid = s.oid AND w.pid IS NOT NULL), \
             s.subslotname::text FROM pg_catalog.pg_subscription s \
             WHERE s.subname = $1 AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| SubscriptionState { oid: r.get(0), enabled: r.get(1), running: r.get(2), slot: r.get(3) }))
}

/// Disables subscription `name` of the connection's database and waits (up to `timeout`)
/// until none of its workers runs: after that it applies nothing more. A subscription that
/// does not exist is stopped already. Returns the time it took.
pub async fn stop(subscriber: &Client, name: &str, timeout: Duration) -> Result<Duration, ControlError> {
    let started = Instant::now();
    let Some(state) = subscription_state(subscriber, name).await? else { return Ok(started.elapsed()) };
    if state.enabled {
        replication::set_subscription_enabled(subscriber, name, false).await?;
    }
    let mut pause = Duration::from_millis(1);
    loop {
        let workers = coverage::workers(subscriber, state.oid).await?;
        if workers.apply_uptime.is_none() && workers.syncing.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Err(ControlError::Query(format!("subscription {name} still has a worker {timeout:?} after it was disabled")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// One direction to switch on: `subscription` on the subscriber, `slot` on the publisher, and
/// `opposite`, the subscription on the publisher that feeds it from the subscriber (it must
/// be stopped, or what it applies would come back).
#[derive(Clone, Copy, Debug)]
pub struct Link<'a> {
    pub subscription: &'a str,
    pub slot: &'a str,
    pub opposite: Option<&'a str>,
}

/// What [`arm`] did.
#[derive(Clone, Debug)]
pub struct Armed {
    /// The publisher's WAL position the slot starts from: commits before it are never sent.
    pub lsn: String,
    pub steps: Steps,
}

/// THE SWITCH OF A DIRECTION, at a commit point: the subscription must exist on the
/// subscriber, disabled and with no worker (else refused: moving its slot would skip what it
/// has not read yet); on the publisher a commit is flushed and the slot moved to the flushed
/// position, refused while `opposite` is enabled or running; then the subscription reads
/// `slot` from there on (`slot_name` set, enabled). Three round trips.
pub async fn arm(publisher: &Client, subscriber: &Client, link: &Link<'_>) -> Result<Armed, ControlError> {
    let mut steps = Steps::new();
    let started = Instant::now();
    match subscription_state(subscriber, link.subscription).await? {
        None => return Err(ControlError::Query(format!("no subscription {} on the subscriber: prepare it first", link.subscription))),
        Some(s) if s.enabled || s.running => {
            return Err(ControlError::Query(format!("subscription {} is enabled already: it reads its slot, which must not be moved", link.subscription)))
        }
        Some(_) => {}
    }
    steps.push(("check subscriber", started.elapsed()));
    let started = Instant::now();
    let lsn = slots::advance_past_everything(publisher, link.slot, link.opposite).await?;
    steps.push(("move slot", started.elapsed()));
    let started = Instant::now();
    let sub = quote_ident(link.subscription);
    read_write(subscriber, &format!("ALTER SUBSCRIPTION {sub} SET (slot_name = {}); ALTER SUBSCRIPTION {sub} ENABLE", literal(link.slot))).await?;
    steps.push(("enable", started.elapsed()));
    Ok(Armed { lsn, steps })
}

/// Whether dropping a subscription drops its slot on the publisher too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotFate {
    /// Detach first (`slot_name = NONE`): the slot stays, the publisher need not be reachable.
    Keep,
    /// Plain DROP SUBSCRIPTION, which connects to the publisher and drops the slot there.
    Drop,
}

/// Drops subscription `name` of the connection's database (its workers stop first). False:
/// there was none.
pub async fn drop_subscription(subscriber: &Client, name: &str, fate: SlotFate) -> Result<bool, ControlError> {
    let Some(state) = subscription_state(subscriber, name).await? else { return Ok(false) };
    let sub = quote_ident(name);
    match fate {
        SlotFate::Keep => {
            let disable = if state.enabled { format!("ALTER SUBSCRIPTION {sub} DISABLE; ") } else { String::new() };
            read_write(subscriber, &format!("{disable}ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub}")).await?;
        }
        SlotFate::Drop if state.slot.is_none() => read_write(subscriber, &format!("DROP SUBSCRIPTION {sub}")).await?,
        SlotFate::Drop => {
            // Dropping the remote slot cannot run inside a transaction block: the session is
            // made read-write for that one statement, then put back as it was.
            let was: String = subscriber
                .query_one("SELECT current_setting('default_transaction_read_only'), pg_catalog.set_config('default_transaction_read_only', 'off', false)", &[])
                .await?
                .get(0);
            let dropped = subscriber.batch_execute(&format!("DROP SUBSCRIPTION {sub}")).await;
            subscriber.query_one("SELECT pg_catalog.set_config('default_transaction_read_only', $1, false)", &[&was]).await?;
            dropped?;
        }
    }
    Ok(true)
}

/// Retires a stopped direction's slot: drops it on the publisher (once its walsender is gone,
/// up to `timeout`) and detaches the subscription from it (`slot_name = NONE`), which stays,
/// disabled, for a later [`arm`] with a fresh slot. Returns the slot dropped, if any. Refused
/// while the subscription is enabled or running.
pub async fn retire_slot(publisher: &Client, subscriber: &Client, subscription: &str, timeout: Duration) -> Result<Option<String>, ControlError> {
    let Some(state) = subscription_state(subscriber, subscription).await? else { return Ok(None) };
    if state.enabled || state.running {
        return Err(ControlError::Query(format!("subscription {subscription} is still enabled or running: stop it before retiring its slot")));
    }
    let Some(slot) = state.slot else { return Ok(None) };
    // The slot goes first: were the process to end in between, the subscription would still
    // name it, and the next retire or teardown would find it.
    slots::drop_slot(publisher, &slot, timeout).await?;
    read_write(subscriber, &format!("ALTER SUBSCRIPTION {} SET (slot_name = NONE)", quote_ident(subscription))).await?;
    Ok(Some(slot))
}

/// Preflight of a SWITCHBACK (or a way forward again): the fresh forward slot on old for the
/// database the client is connected to. True: created. The forward subscription must be
/// disabled (the cutover left it so).
pub async fn prepare_forward(old: &Client) -> Result<(String, bool), ControlError> {
    let database: String = old.query_one("SELECT current_database()::text", &[]).await?.get(0);
    let slot = forward_slot(&database);
    let created = slots::ensure(old, &slot).await?;
    Ok((slot, created))
}

/// Removes the way back of the database both clients are connected to: the reverse
/// subscription on old (stopped, detached, dropped), then the slot and the publication on
/// new. Idempotent.
pub async fn teardown(old: &Client, new: &Client, timeout: Duration) -> Result<(), ControlError> {
    let database = same_database(old, new).await?;
    let names = reverse_names(&database);
    stop(old, &names.subscription, timeout).await?;
    drop_subscription(old, &names.subscription, SlotFate::Keep).await?;
    slots::drop_slot(new, &names.slot, timeout).await?;
    new.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&names.publication))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_when_they_can_be() {
        assert_eq!(
            reverse_names("app_1"),
            Names { publication: "pgcutover_reverse_app_1".into(), slot: "pgcutover_reverse_app_1".into(), subscription: "pgcutover_reverse_app_1".into() }
        );
        assert_eq!(forward_slot("app_1"), "pgcutover_forward_app_1");
    }

    #[test]
    fn other_names_are_valid_slot_names_unique_and_stable() {
        let long = "a".repeat(200);
        let names = ["App", "app-db", "my db", "ünïcode", long.as_str(), &"a".repeat(45), &"a".repeat(46)];
        let derived: Vec<String> = names.iter().map(|d| reverse_names(d).slot).collect();
        for (db, slot) in names.iter().zip(&derived) {
            assert!(slot.len() <= 63, "{slot}");
            assert!(slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{slot}");
            assert!(slot.starts_with("pgcutover_reverse_"), "{slot}");
            assert_eq!(&reverse_names(db).slot, slot, "stable");
        }
        // 45 bytes fit plainly; 46 do not.
        assert_eq!(derived[5], format!("pgcutover_reverse_{}", "a".repeat(45)));
        let mut unique = derived.clone();
        unique.push(reverse_names("app").slot);
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len() + 1, "{derived:?}");
    }
}
