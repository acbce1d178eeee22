//! CHECK's readiness rows against real replicas 15 -> 18 with upgrade traps planted: each trap
//! is named with its object; a clean replica has no failing row; CUTOVER refuses a table that
//! would lose its writes.

use crate::cutover::{file_with, pgbench_db, proxy, report_text, run_cutover};
use crate::support;

use std::thread;
use std::time::{Duration, Instant};

use pgcutover::config::{FileCheck, FileConfig};
use pgcutover::cutover::{self, CheckRow, CutoverError, CutoverOptions};
use support::proxy::{RawConn, TestProxy};
use support::{quote_ident, quote_literal, PgServer, SUPERUSER};

/// The CHECK rows, as the console's CHECK shows them.
pub(crate) fn check(proxy: &TestProxy) -> Vec<CheckRow> {
    let shared = proxy.shared.clone();
    proxy.block_on(async move { cutover::check(&shared).await })
}

fn text(rows: &[CheckRow]) -> String {
    rows.iter().map(|r| format!("{:<45} {:<5} {}", r.check, r.status, r.detail)).collect::<Vec<_>>().join("\n")
}

/// The row named `check` (database rows are "db: check"), with its status and detail checked.
fn expect<'a>(rows: &'a [CheckRow], check: &str, status: &str, mentions: &[&str]) -> &'a CheckRow {
    let found = rows.iter().find(|r| r.check == check || r.check.ends_with(&format!(": {check}")));
    let row = found.unwrap_or_else(|| panic!("no row {check:?} in:\n{}", text(rows)));
    assert_eq!(row.status, status, "row {check:?}:\n{}", text(rows));
    for m in mentions {
        assert!(row.detail.contains(m), "row {check:?} does not mention {m:?}:\n{}", text(rows));
    }
    row
}

/// Polls `sql` on `server` until it prints `want`.
fn wait_for(server: &PgServer, db: &str, sql: &str, want: &str) {
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let got = server.psql(db, sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} still gives {got:?}, not {want:?}\nnew log:\n{}", server.log_tail(20));
        thread::sleep(Duration::from_millis(100));
    }
}

/// Roles and a slot the trap test makes outside its database, removed when it ends.
struct ClusterLeftovers<'a> {
    old: &'a PgServer,
    new: &'a PgServer,
    roles: Vec<String>,
    slot: String,
}

impl Drop for ClusterLeftovers<'_> {
    fn drop(&mut self) {
        let _ = self.old.try_psql("postgres", &format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {}", quote_literal(&self.slot)));
        for role in &self.roles {
            for server in [self.old, self.new] {
                let _ = server.try_psql("postgres", &format!("DROP ROLE IF EXISTS {}", quote_ident(role)));
            }
        }
    }
}

#[test]
fn check_names_every_trap_planted_on_a_replica() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("ready_traps");
    old.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
         CREATE TABLE drift (id int PRIMARY KEY, a int, b text, c int);
         CREATE FUNCTION is_ok_inner(j jsonb) RETURNS bool LANGUAGE sql AS $$ SELECT j ? 'a' $$;
         CREATE FUNCTION is_ok(j jsonb) RETURNS bool LANGUAGE sql AS $$ SELECT is_ok_inner(j) $$;
         CREATE TABLE events (id int PRIMARY KEY, payload jsonb CHECK (is_ok(payload)));
         CREATE FUNCTION norm_inner(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT lower(t) $$;
         CREATE FUNCTION norm(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN norm_inner(t); END $$;
         CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.tag := norm_inner(NEW.tag); RETURN NEW; END $$;
         CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM norm_inner('x'); RETURN NEW; END $$;
         CREATE TABLE tagged (id int PRIMARY KEY, tag text);
         CREATE INDEX tagged_norm ON tagged (norm(tag));
         CREATE TRIGGER tagged_stamp BEFORE INSERT ON tagged FOR EACH ROW EXECUTE FUNCTION stamp();
         ALTER TABLE tagged ENABLE ALWAYS TRIGGER tagged_stamp;
         CREATE TRIGGER tagged_audit BEFORE INSERT ON tagged FOR EACH ROW EXECUTE FUNCTION audit();
         CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n FROM t;
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); INSERT INTO scratch VALUES (1);
         CREATE SEQUENCE free_numbers;
         CREATE EXTENSION hstore; CREATE EXTENSION pgcrypto;
         CREATE PUBLICATION cdc_pub FOR TABLE t;",
    );
    let sub = support::setup_replication(old, new, &db);
    let leftovers = ClusterLeftovers { old, new, roles: vec![format!("{db}_only_old"), format!("{db}_other_pw")], slot: format!("{db}_cdc") };
    let (only_old, other_pw, cdc) = (&leftovers.roles[0], &leftovers.roles[1], &leftovers.slot);

    // A table copy that fails: new already holds one of old's keys.
    old.psql(&db, "CREATE TABLE stuck (id int PRIMARY KEY); INSERT INTO stuck VALUES (1), (2)");
    new.psql(&db, &format!("CREATE TABLE stuck (id int PRIMARY KEY); INSERT INTO stuck VALUES (1); ALTER SUBSCRIPTION {sub} REFRESH PUBLICATION"));
    let stat = |column: &str| format!("SELECT {column} > 0 FROM pg_stat_subscription_stats WHERE subname = {}", quote_literal(&sub.to_string()));
    wait_for(new, &db, &stat("sync_error_count"), "t");
    // Created on both after the subscription, not refreshed: published, not subscribed.
    old.psql(&db, "CREATE TABLE late (id int PRIMARY KEY); INSERT INTO late VALUES (1)");
    new.psql(&db, "CREATE TABLE late (id int PRIMARY KEY)");
    // Created on old only (nothing written to it: that would stop the apply).
    old.psql(&db, "CREATE TABLE absent (id int PRIMARY KEY)");
    // Drift: a column missing, a narrower type, NOT NULL and a CHECK only on new.
    new.psql(&db, "ALTER TABLE drift DROP COLUMN c, ALTER COLUMN b TYPE varchar(5), ALTER COLUMN a SET NOT NULL, ADD CONSTRAINT a_positive CHECK (a > 0)");
    // A row changed on new alone, then updated on old: the apply finds it missing.
    new.psql(&db, "DELETE FROM t WHERE id = 3");
    old.psql(&db, "UPDATE t SET v = 30 WHERE id = 3");
    wait_for(new, &db, &stat("confl_update_missing"), "t");
    // What logical replication does not carry, and what differs outside the tables.
    old.psql(&db, &format!("SELECT lo_from_bytea(0, 'large'); SELECT pg_create_logical_replication_slot({}, 'pgoutput')", quote_literal(cdc)));
    new.psql(&db, "REVOKE INSERT ON t FROM app_user; DROP EXTENSION pgcrypto; DROP EXTENSION hstore; CREATE EXTENSION hstore VERSION '1.4'");
    old.psql("postgres", &format!("CREATE ROLE {} LOGIN PASSWORD 'x'; CREATE ROLE {} LOGIN PASSWORD 'one'", quote_ident(only_old), quote_ident(other_pw)));
    new.psql("postgres", &format!("CREATE ROLE {} LOGIN PASSWORD 'two'", quote_ident(other_pw)));
    // Last: a row whose CHECK calls a function that calls another unqualified. The apply
    // worker's empty search_path makes it fail there, over and over.
    old.psql(&db, r#"INSERT INTO events VALUES (1, '{"a": 1}')"#);
    wait_for(new, &db, &stat("apply_error_count"), "t");

    let file = FileConfig {
        check: Some(FileCheck { xid_age_warn: Some(1), wal_retained_warn: Some(1) }),
        ..file_with(|c| c.subscriptions = vec![pgcutover::config::FileSubscription { database: db.clone(), name: sub.to_string() }])
    };
    let proxy = proxy(old, new, file);
    // A client connected to new directly (a writer the cutover does not know about).
    let direct_url = new.super_url(&db);
    let _direct = proxy.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&direct_url, tokio_postgres::NoTls).await.expect("connect to new");
        tokio::spawn(connection);
        client
    });
    let rows = check(&proxy);
    eprintln!("CHECK:\n{}", text(&rows));
    expect(&rows, "tables subscribed", "fail", &["public.late", "not subscribed", "public.absent", "missing on new", "REFRESH PUBLICATION"]);
    expect(&rows, "schema on new", "fail", &["public.drift.c missing on new", "character varying(5)", "a_positive", "NOT NULL on new only"]);
    let functions = expect(
        &rows,
        "functions the apply runs",
        "fail",
        &["public.is_ok(jsonb)", "is_ok_inner()", "CHECK events_payload_check", "SET search_path", "index tagged_norm", "public.norm(text)", "trigger tagged_stamp"],
    );
    assert!(!functions.detail.contains("tagged_audit"), "a trigger the apply does not fire is no trap: {}", functions.detail);
    expect(&rows, "apply worker", "fail", &["apply errors", "likely cause", "is_ok"]);
    expect(&rows, "tables ready", "fail", &["public.stuck:d", "table copies failed"]);
    expect(&rows, "writes on new", "fail", &["update_missing=1", "VERIFY", "clients connected to new directly", "postgres@127.0.0.1"]);
    expect(&rows, "large objects", "fail", &["1 large objects on old, 0 on new"]);
    expect(&rows, "materialized views", "warn", &["public.totals", "REFRESH MATERIALIZED VIEW"]);
    expect(&rows, "unlogged tables", "warn", &["public.scratch"]);
    expect(&rows, "unowned sequences", "warn", &["public.free_numbers"]);
    expect(&rows, "privileges on new", "warn", &["app_user lacks INSERT on table public.t"]);
    expect(&rows, "extensions", "warn", &["pgcrypto", "missing on new", "hstore is 1.8 on old but 1.4 on new"]);
    expect(&rows, "other slots and publications", "warn", &[cdc.as_str(), "inactive", "cdc_pub"]);
    expect(&rows, "transaction ID age", "warn", &["age(datfrozenxid)"]);
    expect(&rows, "vacuum held back", "warn", &[&format!("slot {cdc}")]);
    expect(&rows, "WAL retained", "warn", &["check.wal_retained_warn"]);
    expect(&rows, "login roles", "warn", &[only_old.as_str(), "missing on new", other_pw.as_str(), "different password verifier"]);
    // The trap rows block a CUTOVER before anything is held.
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("preflight refuses");
    assert!(matches!(&err, CutoverError::Preflight(reason) if reason.contains("tables subscribed") && reason.contains("functions the apply runs")), "{err}");
    // Let the subscription go before the guard drops it: its worker would retry for ever.
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    proxy.assert_no_panics();
}

#[test]
fn clean_replica_passes_and_an_unsubscribed_table_blocks_the_cutover_until_refreshed() {
    let (old, new) = (support::old(), support::new());
    // Functions the apply runs, done right: pinned, schema-qualified or SQL-standard bodies.
    let extras = "CREATE FUNCTION check_inner(j jsonb) RETURNS bool LANGUAGE sql AS $$ SELECT j ? 'a' $$;
        CREATE FUNCTION check_pinned(j jsonb) RETURNS bool LANGUAGE sql SET search_path = public AS $$ SELECT check_inner(j) $$;
        CREATE FUNCTION check_qualified(j jsonb) RETURNS bool LANGUAGE sql AS $$ SELECT public.check_inner(j) $$;
        CREATE FUNCTION check_atomic(j jsonb) RETURNS bool LANGUAGE sql BEGIN ATOMIC SELECT check_inner(j); END;
        CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body jsonb
            CHECK (check_pinned(body)) CHECK (check_qualified(body)) CHECK (check_atomic(body)));
        INSERT INTO docs (body) VALUES ('{\"a\": 1}')";
    let (db, sub) = pgbench_db(old, new, "ready_clean", extras);
    let proxy = proxy(old, new, FileConfig::default());
    let mut session = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    session.simple_query(r#"INSERT INTO docs (body) VALUES ('{"a": 2}')"#);
    wait_for(new, &db, "SELECT count(*) FROM docs", "2");
    let rows = check(&proxy);
    let failing: Vec<&CheckRow> = rows.iter().filter(|r| r.status == "fail").collect();
    assert!(failing.is_empty(), "a clean replica has no failing row:\n{}", text(&rows));
    expect(&rows, "tables subscribed", "ok", &[]);
    expect(&rows, "functions the apply runs", "ok", &[]);
    expect(&rows, "schema on new", "ok", &[]);

    // The trap the issue found by accident: a table created on both after the subscription.
    old.psql(&db, "CREATE TABLE appended (id int PRIMARY KEY, note text)");
    new.psql(&db, "CREATE TABLE appended (id int PRIMARY KEY, note text)");
    session.simple_query("INSERT INTO appended VALUES (1, 'written before the refresh')");
    expect(&check(&proxy), "tables subscribed", "fail", &["public.appended"]);
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("the preflight refuses");
    assert!(matches!(&err, CutoverError::Preflight(reason) if reason.contains("public.appended")), "{err}");
    assert!(session.query_values("SHOW server_version")[0].starts_with("15"), "nothing moved");
    // The fix the row names.
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} REFRESH PUBLICATION"));
    wait_for(new, &db, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", "0");
    let report = run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover after the refresh: {e}"));
    assert!(session.query_values("SHOW server_version")[0].starts_with("18"), "{}", report_text(&report));
    assert_eq!(session.query_values("SELECT note FROM appended"), vec!["written before the refresh"], "the row written before the refresh is on new");
    proxy.assert_no_panics();
}

#[test]
fn too_few_connection_slots_on_new_fail_the_check() {
    let old = support::old();
    let new = support::start(18);
    new.psql("postgres", "ALTER SYSTEM SET max_connections = 12");
    new.stop();
    new.start_again();
    let (db, _replication) = crate::cutover::replicated_db(old, &new, "ready_slots");
    let proxy = proxy(old, &new, FileConfig::default());
    let first = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    expect(&check(&proxy), "connections on new", "ok", &["max_connections 12"]);
    // 12 - 3 reserved leaves at most 9; each session needs a pre-warmed connection.
    let mut sessions = vec![first];
    sessions.extend((0..9).map(|_| RawConn::login(proxy.addr, SUPERUSER, "", &db)));
    let rows = check(&proxy);
    expect(&rows, "connections on new", "fail", &["10 sessions", "raise max_connections"]);
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("preflight refuses");
    assert!(err.to_string().contains("connections on new"), "{err}");
    drop(sessions);
    proxy.assert_no_panics();
}
