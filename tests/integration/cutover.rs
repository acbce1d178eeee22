//! Live cutover from Postgres 15 to Postgres 18 through the proxy, with real logical
//! replication, real pgbench load and real clients.

use crate::support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pgcutover::config::{Config, FileConfig, Overrides};
use pgcutover::cutover::{self, CutoverError, CutoverOptions};
use support::proxy::{RawConn, TestProxy};
use support::{PgServer, HOST, SUPERUSER, SUPERUSER_PASSWORD};

/// A proxy in front of `old` and `new` with trust auth for clients; logs into the servers as
/// the superuser with the rig's password. Its control database (where the cutover decision is
/// kept) is a fresh one of its own on both servers, so that proxies of other tests on the same
/// servers never see its decision. Old is fenced only if `file` asks for it: other tests write
/// to the shared old server.
pub(crate) fn proxy(old: &PgServer, new: &PgServer, mut file: FileConfig) -> TestProxy {
    let control = old.create_database("ctl");
    new.create_database_named(&control);
    let cutover = file.cutover.get_or_insert_with(Default::default);
    cutover.fence_old = cutover.fence_old.or(Some(false));
    TestProxy::start(proxy_config(old, new, &control, file))
}

/// The config of [`proxy`], with `control` as the control database on both servers.
pub(crate) fn proxy_config(old: &PgServer, new: &PgServer, control: &str, file: FileConfig) -> Config {
    let overrides = Overrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        old: Some(old.url(SUPERUSER, SUPERUSER_PASSWORD, control)),
        new: Some(new.url(SUPERUSER, SUPERUSER_PASSWORD, control)),
        auth: Some("trust".into()),
        ..Default::default()
    };
    Config::from_parts(file, &overrides).unwrap_or_else(|e| panic!("config: {e}"))
}

/// Runs a cutover on the proxy's runtime, as the admin console does.
pub(crate) fn run_cutover(proxy: &TestProxy, options: CutoverOptions) -> Result<Vec<cutover::ReportRow>, CutoverError> {
    let shared = proxy.shared.clone();
    proxy.block_on(async move { cutover::run(&shared, options).await })
}

pub(crate) fn report_text(rows: &[cutover::ReportRow]) -> String {
    rows.iter().map(|r| format!("{:<40} {:<24} {}", r.item, r.value, r.detail)).collect::<Vec<_>>().join("\n")
}

/// Sums that must agree on a consistent pgbench database.
pub(crate) fn pgbench_totals(server: &PgServer, db: &str) -> (i64, i64, i64, i64, i64) {
    let line = server.psql(
        db,
        "SELECT (SELECT coalesce(sum(abalance),0) FROM pgbench_accounts) || ',' || (SELECT coalesce(sum(delta),0) FROM pgbench_history) \
         || ',' || (SELECT coalesce(sum(tbalance),0) FROM pgbench_tellers) || ',' || (SELECT coalesce(sum(bbalance),0) FROM pgbench_branches) \
         || ',' || (SELECT count(*) FROM pgbench_history)",
    );
    let v: Vec<i64> = line.split(',').map(|x| x.trim().parse().unwrap_or_else(|_| panic!("bad totals {line:?}"))).collect();
    (v[0], v[1], v[2], v[3], v[4])
}

/// Three pgbench loads at once, one per protocol mode (simple, extended, prepared), 16 clients
/// each, through one cutover in the middle of their run, plus sequences used through the proxy.
#[test]
fn pgbench_cutover_loses_nothing_in_any_protocol_mode() {
    let (old, new) = (support::old(), support::new());
    // A sequence that pgbench does not touch but the application uses through the proxy.
    let sequences = "CREATE SEQUENCE order_ids; CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)";
    let (db, _replication) = pgbench_db(old, new, "cut_pgbench", sequences);
    let proxy = proxy(old, new, FileConfig::default());
    // Use the sequences through the proxy before the cutover.
    let psql = |sql: &str| proxy.psql(SUPERUSER, "", &db, sql).unwrap_or_else(|e| panic!("psql through the proxy failed: {e}"));
    psql("SELECT nextval('order_ids') FROM generate_series(1, 41)");
    psql("INSERT INTO orders (note) SELECT 'x' FROM generate_series(1, 17)");
    // A steady rate and a transaction count: about 11 s of live traffic on a quiet machine, and
    // longer, never shorter, on a slow one, where the preflight alone can take many seconds.
    const CLIENTS: usize = 16;
    let benches: Vec<_> = ["simple", "extended", "prepared"].into_iter().map(|mode| (mode, spawn_pgbench(&proxy, &db, mode, CLIENTS, 40, 60))).collect();
    // Cut over a second after every client is connected. (Not counted from the sessions there
    // now: the psql sessions above may still be ending.)
    wait_for_pgbench_clients(&proxy, 3 * CLIENTS, benches.iter().map(|(_, b)| b));
    thread::sleep(Duration::from_secs(1));
    // The drain waits for the transactions in flight; a deadline far above the default keeps
    // this check about lost transactions on a machine of any speed (the deadline's cancels
    // have their own test).
    let options = CutoverOptions { drain_timeout: Some(Duration::from_secs(30)), ..Default::default() };
    let report = run_cutover(&proxy, options).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let text = report_text(&report);
    eprintln!("cutover report:\n{text}");
    // After the cutover, sequences continue on new without duplicates.
    assert_eq!(psql("SELECT nextval('order_ids')"), "42", "sequence continues on new\n{text}");
    psql("INSERT INTO orders (note) VALUES ('after')");
    assert_eq!(psql("SELECT max(id) FROM orders"), "18");
    assert!(psql("SHOW server_version").starts_with("18"), "new connections go to new");

    let mut processed = 0;
    for (mode, bench) in benches {
        let result = bench.join().expect("pgbench thread");
        result.assert_success();
        assert_eq!(result.failed, 0, "pgbench -M {mode} saw failed transactions:\n{result}");
        assert!(result.processed > 0, "{mode}: {result}");
        assert!(result.stderr.is_empty() || !result.stderr.contains("ERROR"), "pgbench -M {mode} errors:\n{result}");
        processed += result.processed;
    }
    // Checked after pgbench's own outcome, which explains a shortfall better.
    let moved = report.iter().find(|r| r.item == "sessions moved").and_then(|r| r.value.parse::<usize>().ok());
    assert!(moved >= Some(3 * CLIENTS), "the cutover moved every pgbench session\n{text}");

    let (accounts, history, tellers, branches, count) = pgbench_totals(new, &db);
    assert_eq!(accounts, history, "sum(abalance) = sum(delta) on new\n{text}");
    assert_eq!(tellers, history, "sum(tbalance) = sum(delta) on new");
    assert_eq!(branches, history, "sum(bbalance) = sum(delta) on new");
    assert_eq!(count as u64, processed, "every committed transaction is on new\n{text}");
    // Every sequence on new is at least where it was on old.
    let on_old = old.psql(&db, "SELECT string_agg(schemaname||'.'||sequencename||'='||coalesce(last_value,0), ',' ORDER BY 1) FROM pg_sequences");
    for entry in on_old.split(',').filter(|e| !e.is_empty()) {
        let (name, value) = entry.split_once('=').expect("seq=value");
        let v_new: i64 = new.psql(&db, &format!("SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname||'.'||sequencename = '{name}'")).parse().expect("number");
        assert!(v_new >= value.parse::<i64>().expect("number"), "sequence {name}: new {v_new} < old {value}");
    }
    let sub_enabled = new.psql(&db, "SELECT bool_and(subenabled) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())");
    assert_eq!(sub_enabled, "f", "subscription disabled after the cutover");
    proxy.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_survives_the_move() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cut_state");
    old.psql(&db, "CREATE SCHEMA app; CREATE TABLE app.items (id int PRIMARY KEY, name text); INSERT INTO app.items VALUES (1, 'one')");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());

    let (client, mut messages) = proxy.connect_with_messages(SUPERUSER, "", &db).await.expect("connect through proxy");
    client
        .batch_execute("SET search_path = app, public; SET statement_timeout = '12345'; SET application_name = 'stays'; PREPARE double_it(int) AS SELECT $1 * 2; LISTEN moved_channel")
        .await
        .expect("session setup");
    let named = client.prepare("SELECT name FROM items WHERE id = $1").await.expect("protocol-level prepare");
    assert_eq!(client.query_one(&named, &[&1i32]).await.expect("query").get::<_, String>(0), "one");
    let mut raw = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    assert!(raw.query_values("SHOW server_version")[0].starts_with("15"));

    let report = run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let text = report_text(&report);

    let version: String = client.query_one("SHOW server_version", &[]).await.expect("query").get(0);
    assert!(version.starts_with("18"), "session is on new: {version}\n{text}");
    assert_eq!(client.query_one("SHOW search_path", &[]).await.expect("query").get::<_, String>(0), "app, public");
    assert_eq!(client.query_one("SHOW statement_timeout", &[]).await.expect("query").get::<_, String>(0), "12345ms");
    assert_eq!(client.query_one("SELECT current_setting('application_name')", &[]).await.expect("query").get::<_, String>(0), "stays");
    assert_eq!(client.query_one(&named, &[&1i32]).await.expect("prepared statement on new").get::<_, String>(0), "one");
    let doubled = client.simple_query("EXECUTE double_it(21)").await.expect("SQL PREPARE survived");
    let value = doubled.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("42"));

    // LISTEN moved: a NOTIFY on new reaches the client.
    new.psql(&db, "NOTIFY moved_channel, 'hello from 18'");
    let note = loop {
        let message = tokio::time::timeout(support::PATIENCE, messages.recv()).await.expect("notification in time").expect("channel open");
        if let tokio_postgres::AsyncMessage::Notification(n) = message {
            break (n.channel().to_string(), n.payload().to_string());
        }
    };
    assert_eq!(note, ("moved_channel".to_string(), "hello from 18".to_string()));

    // The raw client saw ParameterStatus server_version change to 18 before its next result.
    let msgs = raw.simple_query("SELECT 1");
    let reported = msgs.iter().find(|m| m.tag == b'S' && m.body.starts_with(b"server_version\0")).map(|m| String::from_utf8_lossy(&m.body).to_string());
    assert!(reported.as_deref().is_some_and(|r| r.contains("\u{0}18")), "ParameterStatus server_version after move: {reported:?}");

    // The cancel key the client got from the proxy cancels a statement on new.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(300)").await });
    // Repeated: a cancel that arrives before the statement starts is ignored.
    let canceller = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request");
        }
    });
    let err = tokio::time::timeout(support::PATIENCE, sleeper).await.expect("cancelled in time").expect("task").expect_err("cancelled");
    canceller.abort();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    proxy.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cancels_long_statements_and_rolls_back_idle_transactions() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cut_drain");
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());

    let sleeper = proxy.connect(SUPERUSER, "", &db).await.expect("connect");
    let idle = proxy.connect(SUPERUSER, "", &db).await.expect("connect");
    idle.batch_execute("BEGIN; UPDATE t SET v = v + 1 WHERE id = 1").await.expect("open transaction");
    let sleeper = Arc::new(sleeper);
    let sleeping = {
        let s = sleeper.clone();
        tokio::spawn(async move { s.simple_query("SELECT pg_sleep(300)").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let options = CutoverOptions { drain_timeout: Some(Duration::from_millis(500)), ..Default::default() };
    let proxy = Arc::new(proxy);
    let report = {
        let proxy = proxy.clone();
        tokio::task::spawn_blocking(move || run_cutover(&proxy, options)).await.expect("join")
    };
    let report = report.unwrap_or_else(|e| panic!("cutover failed: {e}"));
    assert!(started.elapsed() < support::PATIENCE, "drain deadline respected");

    let err = sleeping.await.expect("task").expect_err("long statement cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    let version: String = sleeper.query_one("SHOW server_version", &[]).await.expect("continues on new").get(0);
    assert!(version.starts_with("18"), "{version}\n{}", report_text(&report));

    let err = idle.batch_execute("UPDATE t SET v = v + 1 WHERE id = 1").await.expect_err("retryable error");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    idle.batch_execute("ROLLBACK").await.expect("rollback after the retryable error");
    idle.batch_execute("UPDATE t SET v = v + 1 WHERE id = 1").await.expect("retry on new");
    assert_eq!(new.psql(&db, "SELECT v FROM t WHERE id = 1"), "1", "the rolled-back update did not happen, the retry did");
    assert_eq!(old.psql(&db, "SELECT v FROM t WHERE id = 1"), "0");
    proxy.assert_no_panics();
}

/// A database on `old` with pgbench tables (scale 1), `extra_sql` run after the load, replicated
/// to `new`. Returns the database and the subscription (dropped with it).
pub(crate) fn pgbench_db<'a>(old: &'a PgServer, new: &'a PgServer, prefix: &str, extra_sql: &str) -> (String, support::Replication<'a>) {
    let db = old.create_database(prefix);
    let port = old.port.to_string();
    support::pgbench(&["-i", "-q", "-s", "1", "-h", HOST, "-p", &port, "-U", SUPERUSER, &db], &[("PGPASSWORD", SUPERUSER_PASSWORD)])
        .assert_success();
    if !extra_sql.is_empty() {
        old.psql(&db, extra_sql);
    }
    let replication = support::setup_replication(old, new, &db);
    (db, replication)
}

/// pgbench TPC-B-like through the proxy, in the background: `clients` clients, `transactions`
/// each, at `rate` transactions per second in all (-t and -R rather than -T: a slow machine does
/// the same work, never less).
pub(crate) fn spawn_pgbench(proxy: &TestProxy, db: &str, mode: &'static str, clients: usize, transactions: u32, rate: u32) -> thread::JoinHandle<support::PgbenchResult> {
    spawn_pgbench_as(proxy, db, (SUPERUSER, ""), mode, clients, transactions, rate)
}

/// [`spawn_pgbench`] logged in as `(user, password)`.
pub(crate) fn spawn_pgbench_as(
    proxy: &TestProxy,
    db: &str,
    (user, password): (&str, &str),
    mode: &'static str,
    clients: usize,
    transactions: u32,
    rate: u32,
) -> thread::JoinHandle<support::PgbenchResult> {
    let (port, db, user, password) = (proxy.port().to_string(), db.to_string(), user.to_string(), password.to_string());
    let (clients, transactions, rate) = (clients.to_string(), transactions.to_string(), rate.to_string());
    thread::spawn(move || {
        let args = ["-h", HOST, "-p", &port, "-U", &user, "-c", &clients, "-j", "2", "-t", &transactions, "-R", &rate, "-M", mode, "-n", &db];
        support::pgbench(&args, &[("PGPASSWORD", &password)])
    })
}

/// Waits until the proxy has `sessions` sessions, or one of `benches` ended early (joining it
/// reports why).
pub(crate) fn wait_for_pgbench_clients<'a>(proxy: &TestProxy, sessions: usize, benches: impl Iterator<Item = &'a thread::JoinHandle<support::PgbenchResult>> + Clone) {
    let deadline = Instant::now() + support::PATIENCE;
    while proxy.shared.registry.len() < sessions && !benches.clone().any(|b| b.is_finished()) {
        assert!(Instant::now() < deadline, "pgbench clients did not connect: {} sessions", proxy.shared.registry.len());
        thread::sleep(Duration::from_millis(20));
    }
}

/// pgbench -M prepared, 8 clients, 400 transactions at 40 per second (10 s on a quiet
/// machine, longer on a slow one), in the background; returns once its clients are connected.
fn background_pgbench(proxy: &TestProxy, db: &str) -> thread::JoinHandle<support::PgbenchResult> {
    const CLIENTS: usize = 8;
    let before = proxy.shared.registry.len();
    let bench = spawn_pgbench(proxy, db, "prepared", CLIENTS, 50, 40);
    wait_for_pgbench_clients(proxy, before + CLIENTS, std::iter::once(&bench));
    bench
}

/// Waits until the cutover running on `proxy` holds its sessions.
fn wait_for_hold(proxy: &TestProxy) {
    let deadline = Instant::now() + support::PATIENCE;
    while proxy.shared.cutover.phase() != "hold" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(proxy.shared.cutover.phase(), "hold", "the cutover reached the hold");
}

/// After an aborted cutover: pgbench lost nothing and everything it committed is on old.
fn assert_pgbench_stayed_on_old(proxy: &TestProxy, old: &PgServer, db: &str, bench: thread::JoinHandle<support::PgbenchResult>) {
    let result = bench.join().expect("pgbench");
    result.assert_success();
    assert_eq!(result.failed, 0, "{result}");
    assert!(result.processed > 0);
    assert_eq!(proxy.shared.gate.state().active, pgcutover::backend::Role::Old);
    let count: u64 = old.psql(db, "SELECT count(*) FROM pgbench_history").parse().expect("count");
    assert_eq!(count, result.processed, "everything committed on old");
}

#[test]
fn abort_when_new_is_down_keeps_pgbench_on_old() {
    let old = support::old();
    let new = support::start(18);
    let (db, _replication) = pgbench_db(old, &new, "cut_newdown", "");
    let proxy = proxy(old, &new, FileConfig::default());
    let bench = background_pgbench(&proxy, &db);
    thread::sleep(Duration::from_secs(1));
    new.stop_immediate();
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("cutover must fail with new down");
    assert!(matches!(err, CutoverError::Preflight(_)), "{err}");
    assert!(err.to_string().contains("new"), "{err}");
    assert_pgbench_stayed_on_old(&proxy, old, &db, bench);
    proxy.assert_no_panics();
}

#[test]
fn stalled_replication_fails_the_preflight_before_anything_is_held() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = pgbench_db(old, new, "cut_stall", "CREATE TABLE blocker (id int PRIMARY KEY)");
    // A row on new that the next insert on old collides with: the apply worker fails and
    // retries, so replication stalls while the subscription stays enabled.
    new.psql(&db, "INSERT INTO blocker VALUES (1)");
    old.psql(&db, "INSERT INTO blocker VALUES (1)");
    let proxy = proxy(old, new, FileConfig::default());
    let bench = background_pgbench(&proxy, &db);
    thread::sleep(Duration::from_secs(1));
    let options = CutoverOptions { catchup_timeout: Some(Duration::from_millis(800)), ..Default::default() };
    let err = run_cutover(&proxy, options).expect_err("catch-up cannot be proven");
    // Found before anything is held: by CHECK's apply row once the error is counted, else by
    // the rehearsal round trip.
    assert!(
        matches!(&err, CutoverError::Preflight(reason) if reason.contains("apply worker") || reason.contains("did not apply a test commit")),
        "{err}"
    );
    assert_pgbench_stayed_on_old(&proxy, old, &db, bench);
    // Clear the conflict so this database's subscription does not spin for the rest of the run.
    new.psql(&db, "DELETE FROM blocker");
    proxy.assert_no_panics();
}

#[test]
fn subscription_disabled_during_the_hold_aborts_at_catch_up_and_pgbench_continues_on_old() {
    let (old, new) = (support::old(), support::new());
    let (db, sub) = pgbench_db(old, new, "cut_sub_off", "");
    let proxy = Arc::new(proxy(old, new, FileConfig::default()));
    let bench = background_pgbench(&proxy, &db);
    // An open transaction keeps the cutover in its hold until this test ends it, so the
    // subscription is disabled during the hold however slow the machine.
    let mut open = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    open.simple_query("BEGIN; SELECT 1");
    let cutover = {
        let proxy = proxy.clone();
        thread::spawn(move || {
            let options = CutoverOptions {
                drain_timeout: Some(support::PATIENCE),
                catchup_timeout: Some(Duration::from_millis(800)),
                ..Default::default()
            };
            run_cutover(&proxy, options)
        })
    };
    wait_for_hold(&proxy);
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    // The open transaction goes on through the hold; its end lets the drain finish.
    assert_eq!(open.query_values("SELECT 'inside'"), vec!["inside".to_string()]);
    assert!(open.simple_query("COMMIT").iter().all(|m| m.tag != b'E'), "COMMIT during the hold");
    let err = cutover.join().expect("cutover thread").expect_err("catch-up cannot be proven");
    assert!(matches!(&err, CutoverError::Aborted { phase, .. } if phase == "catch-up"), "{err}");
    assert_eq!(err.sqlstate(), "57014");
    assert_eq!(open.query_values("SELECT 'still here'"), vec!["still here".to_string()], "the held session continued without an error");
    assert_pgbench_stayed_on_old(&proxy, old, &db, bench);
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} ENABLE"));
    proxy.assert_no_panics();
}

#[test]
fn disabled_subscription_fails_the_preflight() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cut_disabled");
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let sub = support::setup_replication(old, new, &db);
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    let proxy = proxy(old, new, FileConfig::default());
    let mut raw = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("preflight must fail");
    assert!(err.to_string().contains("subscription enabled"), "{err}");
    assert!(raw.query_values("SHOW server_version")[0].starts_with("15"), "session untouched");
    proxy.assert_no_panics();
}

#[test]
fn a_second_cutover_is_refused_while_one_runs() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cut_twice");
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());
    // An open transaction keeps the first cutover in its drain phase for the whole deadline.
    let mut raw = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    raw.simple_query("BEGIN");
    let proxy = Arc::new(proxy);
    let first = {
        let proxy = proxy.clone();
        thread::spawn(move || run_cutover(&proxy, CutoverOptions { drain_timeout: Some(Duration::from_secs(2)), ..Default::default() }))
    };
    wait_for_hold(&proxy);
    let second = run_cutover(&proxy, CutoverOptions::default()).expect_err("second cutover refused");
    assert!(matches!(second, CutoverError::AlreadyRunning), "{second}");
    assert_eq!(second.sqlstate(), "55006");
    first.join().expect("first cutover thread").expect("first cutover completes");
    proxy.assert_no_panics();
}

pub(crate) fn replicated_db<'a>(old: &'a PgServer, new: &'a PgServer, prefix: &str) -> (String, support::Replication<'a>) {
    let db = old.create_database(prefix);
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0)");
    let replication = support::setup_replication(old, new, &db);
    (db, replication)
}

pub(crate) fn file_with(f: impl FnOnce(&mut pgcutover::config::FileCutover)) -> FileConfig {
    let mut cutover = pgcutover::config::FileCutover::default();
    f(&mut cutover);
    FileConfig { cutover: Some(cutover), ..Default::default() }
}

#[test]
fn sessions_holding_temp_tables_are_closed_with_a_clear_fatal() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_temp");
    let proxy = proxy(old, new, FileConfig::default());
    let mut pinned = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    pinned.simple_query("CREATE TEMP TABLE scratch (x int)");
    let mut plain = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    // CHECK and SHOW SESSIONS name the session and what pins it, before any cutover.
    let shared = proxy.shared.clone();
    let check = proxy.block_on(async move { cutover::check(&shared).await });
    let movable = check.iter().find(|r| r.check == "sessions movable").expect("sessions movable row");
    assert_eq!(movable.status, "warn", "{movable:?}");
    assert!(movable.detail.contains("temporary tables"), "{movable:?}");
    let shared = proxy.shared.clone();
    let sessions = proxy
        .block_on(async move { pgcutover::admin::cmd::ShowSessions.apply(&shared).await })
        .unwrap_or_else(|e| panic!("SHOW SESSIONS: {e:?}"));
    let can_move = sessions.columns.iter().position(|c| *c == "can_move").expect("can_move column");
    let verdicts: Vec<String> = sessions.rows.iter().map(|r| r[can_move].clone().unwrap_or_default()).collect();
    assert_eq!(verdicts.iter().filter(|v| v.as_str() == "yes").count(), 1, "{verdicts:?}");
    assert_eq!(verdicts.iter().filter(|v| v.contains("temporary tables")).count(), 1, "{verdicts:?}");
    let report = run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let (msgs, closed) = pinned.read_until_closed(support::PATIENCE);
    let fatal = support::proxy::expect_fatal(&msgs, "57P01");
    assert!(fatal.get(&'M').is_some_and(|m| m.contains("temporary tables")), "{fatal:?}");
    assert!(closed, "the pinned session is closed");
    assert!(plain.query_values("SHOW server_version")[0].starts_with("18"), "{}", report_text(&report));
    proxy.assert_no_panics();
}

#[test]
fn unmovable_sessions_can_abort_the_cutover_instead() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_temp_abort");
    let proxy = proxy(old, new, file_with(|c| c.unmovable_sessions = Some("abort".into())));
    let mut pinned = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    pinned.simple_query("SELECT pg_advisory_lock(42)");
    let err = run_cutover(&proxy, CutoverOptions::default()).expect_err("cutover aborts");
    assert!(err.to_string().contains("advisory"), "{err}");
    assert!(pinned.query_values("SHOW server_version")[0].starts_with("15"), "session continues on old");
    assert_eq!(pinned.query_values("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"), vec!["1"]);
    proxy.assert_no_panics();
}

#[test]
fn idle_transaction_policy_terminate_closes_with_57p01() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_terminate");
    let proxy = proxy(old, new, file_with(|c| c.idle_in_transaction = Some("terminate".into())));
    let mut idle = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    idle.simple_query("BEGIN; UPDATE t SET v = 5 WHERE id = 1");
    let options = CutoverOptions { drain_timeout: Some(Duration::from_millis(300)), ..Default::default() };
    run_cutover(&proxy, options).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let (msgs, closed) = idle.read_until_closed(support::PATIENCE);
    support::proxy::expect_fatal(&msgs, "57P01");
    assert!(closed);
    assert_eq!(new.psql(&db, "SELECT v FROM t"), "0", "the idle transaction was rolled back, not applied");
    proxy.assert_no_panics();
}

#[test]
fn idle_transaction_policy_abort_keeps_everything_on_old() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_idle_abort");
    let proxy = proxy(old, new, FileConfig::default());
    let mut idle = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    idle.simple_query("BEGIN; UPDATE t SET v = 7 WHERE id = 1");
    let options = CutoverOptions {
        drain_timeout: Some(Duration::from_millis(300)),
        idle_in_transaction: Some(pgcutover::config::IdleInTransaction::Abort),
        ..Default::default()
    };
    let err = run_cutover(&proxy, options).expect_err("cutover aborts");
    assert!(matches!(err, CutoverError::Aborted { .. }), "{err}");
    // The transaction is intact on old and commits there.
    idle.simple_query("COMMIT");
    assert_eq!(idle.query_values("SELECT v FROM t"), vec!["7"]);
    assert!(idle.query_values("SHOW server_version")[0].starts_with("15"));
    proxy.assert_no_panics();
}

#[test]
fn clients_connecting_during_the_hold_wait_and_land_on_new() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_latecomer");
    let proxy = Arc::new(proxy(old, new, FileConfig::default()));
    // An open transaction keeps the hold up for the drain deadline.
    let mut idle = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    idle.simple_query("BEGIN; SELECT 1");
    let cut = {
        let proxy = proxy.clone();
        thread::spawn(move || run_cutover(&proxy, CutoverOptions { drain_timeout: Some(Duration::from_millis(1500)), ..Default::default() }))
    };
    let deadline = Instant::now() + support::PATIENCE;
    while !proxy.shared.gate.state().held && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(proxy.shared.gate.state().held, "the cutover holds");
    let started = Instant::now();
    let mut late = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    let waited = started.elapsed();
    cut.join().expect("cutover thread").unwrap_or_else(|e| panic!("cutover failed: {e}"));
    assert!(waited >= Duration::from_millis(500), "the new client waited for the hold ({waited:?})");
    assert!(late.query_values("SHOW server_version")[0].starts_with("18"));
    proxy.assert_no_panics();
}

#[test]
fn abort_command_during_the_hold_resumes_sessions_without_errors() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "cut_abortcmd");
    let proxy = Arc::new(proxy(old, new, FileConfig::default()));
    let mut busy = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    busy.simple_query("BEGIN; UPDATE t SET v = 1 WHERE id = 1");
    let mut waiting = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    let cut = {
        let proxy = proxy.clone();
        thread::spawn(move || run_cutover(&proxy, CutoverOptions { drain_timeout: Some(Duration::from_secs(5)), ..Default::default() }))
    };
    wait_for_hold(&proxy);
    // This query is held by the proxy until the abort releases it.
    let query = thread::spawn(move || {
        let values = waiting.query_values("SELECT v FROM t");
        (values, waiting)
    });
    thread::sleep(Duration::from_millis(200));
    assert!(cutover::abort(&proxy.shared), "abort accepted");
    let err = cut.join().expect("cutover thread").expect_err("aborted");
    assert!(matches!(err, CutoverError::Aborted { .. }), "{err}");
    let (values, mut waiting) = query.join().expect("held query");
    assert_eq!(values, vec!["0"], "the held query ran on old after the abort");
    busy.simple_query("COMMIT");
    assert!(waiting.query_values("SHOW server_version")[0].starts_with("15"));
    assert!(!cutover::abort(&proxy.shared), "no cutover runs any more");
    proxy.assert_no_panics();
}

/// The whole operator flow with the real binaries: `pgcutover serve`, pgbench through it,
/// and `pgcutover admin CUTOVER` from another process.
#[test]
fn operator_flow_with_the_binaries() {
    use std::process::{Command, Stdio};
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cut_binary");
    let port = old.port.to_string();
    support::pgbench(&["-i", "-q", "-s", "1", "-h", HOST, "-p", &port, "-U", SUPERUSER, &db], &[("PGPASSWORD", SUPERUSER_PASSWORD)])
        .assert_success();
    let _replication = support::setup_replication(old, new, &db);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (listen, admin) = (free(), free());
    let binary = env!("CARGO_BIN_EXE_pgcutover");
    let mut serve = Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{listen}"), "--admin-listen", &format!("127.0.0.1:{admin}"), "--auth", "trust"])
        // The test's own database is the control database: its decision stays its own.
        .args(["--old", &old.url(SUPERUSER, SUPERUSER_PASSWORD, &db), "--new", &new.url(SUPERUSER, SUPERUSER_PASSWORD, &db)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pgcutover");
    let deadline = Instant::now() + support::PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "pgcutover did not start");
        thread::sleep(Duration::from_millis(50));
    }
    let bench = {
        let db = db.clone();
        thread::spawn(move || {
            let p = listen.to_string();
            support::pgbench(&["-h", HOST, "-p", &p, "-U", SUPERUSER, "-c", "16", "-j", "2", "-T", "6", "-R", "300", "-M", "prepared", "-n", &db], &[])
        })
    };
    thread::sleep(Duration::from_secs(2));
    let admin_cmd = |command: &str| {
        Command::new(binary).args(["admin", "--addr", &format!("127.0.0.1:{admin}"), command]).output().expect("run pgcutover admin")
    };
    let check = admin_cmd("CHECK");
    assert!(check.status.success(), "CHECK: {}", String::from_utf8_lossy(&check.stderr));
    // A drain deadline far above the default: this test is about the operator's flow and lost
    // transactions, on a machine of any speed.
    // fence_old=false: the shared old server serves other tests.
    let cut = admin_cmd("CUTOVER drain_timeout=30s fence_old=false");
    let report = String::from_utf8_lossy(&cut.stdout).to_string();
    assert!(cut.status.success(), "CUTOVER failed: {}{report}", String::from_utf8_lossy(&cut.stderr));
    assert!(report.contains("completed"), "{report}");
    let again = admin_cmd("CUTOVER");
    assert!(!again.status.success(), "a second CUTOVER after completion is refused");
    let bogus = admin_cmd("FROBNICATE");
    assert!(String::from_utf8_lossy(&bogus.stderr).contains("42601"), "unknown command");
    let result = bench.join().expect("pgbench");
    result.assert_success();
    assert_eq!(result.failed, 0, "{result}");
    let (accounts, history, _, _, count) = pgbench_totals(new, &db);
    assert_eq!(accounts, history);
    assert_eq!(count as u64, result.processed, "{result}\n{report}");
    let shown = admin_cmd("SHOW CUTOVER");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("phase rebind"));
    // SIGTERM: the proxy stops cleanly.
    let _ = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status();
    let status = serve.wait().expect("wait for pgcutover");
    assert!(status.success(), "pgcutover exits 0 after SIGTERM: {status}");
}
