//! The cutover decision survives the process: `pgcutover serve` is started as a real process,
//! killed with SIGKILL (or aborted at a crash point) at chosen moments of a cutover, and started
//! again with the same flags. What it must do then is read from `pgcutover.epoch` on the servers.

use crate::cutover::{proxy, proxy_config, replicated_db, run_cutover};
use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pgcutover::config::{FileConfig, FileCutover};
use pgcutover::cutover::{self, CutoverError, CutoverOptions};
use support::proxy::{expect_fatal, startup_packet, RawConn, TestProxy, PROTOCOL_3_0};
use support::{PgServer, SUPERUSER, SUPERUSER_PASSWORD};

/// `pgcutover serve` as a child process, with old and new given by flags and `control` as the
/// control database on both. Killed with SIGKILL when dropped.
struct Serve {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(old: &PgServer, new: &PgServer, control: &str, env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        // Generous: what these tests check must not depend on how fast the machine reads the
        // decision after a start.
        let config = dir.path().join("pgcutover.toml");
        std::fs::write(&config, "[cutover]\ndecision_wait = \"120s\"\n").expect("write config");
        let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let (addr, admin) = (free(), free());
        let log = dir.path().join("pgcutover.log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgcutover"))
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &addr.to_string(), "--admin-listen", &admin.to_string(), "--auth", "trust"])
            .args(["--old", &old.url(SUPERUSER, SUPERUSER_PASSWORD, control), "--new", &new.url(SUPERUSER, SUPERUSER_PASSWORD, control)])
            .env("PGCUTOVER_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start pgcutover serve");
        let serve = Serve { child, addr, admin, log, _dir: dir };
        // The console opens once the decision has been read.
        let deadline = Instant::now() + support::PATIENCE;
        while std::net::TcpStream::connect(serve.admin).is_err() {
            assert!(Instant::now() < deadline, "pgcutover did not start:\n{}", serve.log());
            thread::sleep(Duration::from_millis(20));
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin_command(&self, command: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgcutover"));
        c.args(["admin", "--addr", &self.admin.to_string(), command]);
        c
    }

    fn admin(&self, command: &str) -> Output {
        self.admin_command(command).output().expect("run pgcutover admin")
    }

    /// SHOW STATUS as field → value.
    fn status(&self) -> HashMap<String, String> {
        let out = self.admin("SHOW STATUS");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(' ').map(|(field, value)| (field.to_string(), value.trim().to_string())))
            .collect()
    }

    /// Waits until SHOW STATUS shows `field` = `value`.
    fn wait_status(&self, field: &str, value: &str) {
        let deadline = Instant::now() + support::PATIENCE;
        loop {
            let status = self.status();
            if status.get(field).map(String::as_str) == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "SHOW STATUS never showed {field} = {value}: {status:?}\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end by itself (a crash point).
    fn wait_crash(mut self) {
        let deadline = Instant::now() + support::PATIENCE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(!status.success(), "pgcutover exited normally instead of at its crash point");
                return;
            }
            assert!(Instant::now() < deadline, "pgcutover did not reach its crash point:\n{}", self.log());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state of `epoch` in the rows kept on `server` (read straight from the server).
fn epoch_state(server: &PgServer, control: &str, kept_on: &str, epoch: i64) -> String {
    server.psql(control, &format!("SELECT coalesce((SELECT state FROM pgcutover.epoch WHERE kept_on = '{kept_on}' AND epoch = {epoch}), 'none')"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + support::PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn server_addr(server: &PgServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

/// A session straight to `server`, not through any proxy, with its own application_name.
fn direct(server: &PgServer, db: &str, application_name: &str) -> RawConn {
    let mut c = RawConn::connect(server_addr(server));
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", db), ("application_name", application_name)])).expect("send");
    c.authenticate(SUPERUSER_PASSWORD).unwrap_or_else(|e| panic!("direct login: {e:?}"));
    c
}

/// The SQLSTATE of a statement's error, or "ok".
fn outcome(conn: &mut RawConn, sql: &str) -> String {
    match conn.simple_query(sql).iter().find(|m| m.tag == b'E') {
        Some(e) => e.code(),
        None => "ok".into(),
    }
}

/// The SQLSTATE of a write straight to `server` in a fresh session. The fence is a reloaded
/// setting, which backends pick up a moment after the reload: callers wait for the outcome.
fn direct_write(server: &PgServer, db: &str, id: i32) -> String {
    let mut c = direct(server, db, "durable-test-writer");
    outcome(&mut c, &format!("INSERT INTO t VALUES ({id}, {id})"))
}

fn version(conn: &mut RawConn) -> String {
    conn.query_values("SELECT current_setting('server_version_num')")[0].clone()
}

fn count(server: &PgServer, db: &str, id: i32) -> String {
    server.psql(db, &format!("SELECT count(*) FROM t WHERE id = {id}"))
}

#[test]
fn restart_after_a_completed_cutover_routes_to_new_whichever_server_is_down() {
    let old = support::start(15);
    let new = support::start(18);
    let (db, _replication) = replicated_db(&old, &new, "dur_restart");
    let serve = Serve::start(&old, &new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("15"));
    let cut = serve.admin("CUTOVER drain_timeout=30s");
    assert!(cut.status.success(), "CUTOVER: {}{}", String::from_utf8_lossy(&cut.stderr), serve.log());
    assert!(version(&mut session).starts_with("18"));
    assert_eq!(epoch_state(&new, &db, "new", 1), "committed");
    serve.kill9();

    // Same flags, both servers up: new. A write through the proxy lands on new only.
    let serve = Serve::start(&old, &new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("18"), "{}", serve.log());
    assert_eq!(outcome(&mut session, "INSERT INTO t VALUES (3, 3)"), "ok");
    assert_eq!((count(&new, &db, 3), count(&old, &db, 3)), ("1".into(), "0".into()));
    assert!(serve.status()["routing"].contains("new (cutover epoch 1 committed)"), "{:?}", serve.status());
    // Old is fenced (the default): a write that bypasses the proxy fails as read-only.
    assert_eq!(direct_write(&old, &db, 4), "25006");
    serve.kill9();

    // Old down at the start: still new.
    old.stop();
    let serve = Serve::start(&old, &new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("18"), "{}", serve.log());
    serve.kill9();
    old.start_again();

    // New down at the start: a clear 57P03 naming new, never old.
    new.stop();
    let serve = Serve::start(&old, &new, &db, &[]);
    for _ in 0..2 {
        let mut refused = RawConn::connect(serve.addr);
        refused.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", &db)])).expect("send");
        let (msgs, closed) = refused.read_until_closed(support::PATIENCE);
        let fatal = expect_fatal(&msgs, "57P03");
        assert!(closed);
        assert!(fatal[&'M'].contains("new server") && fatal[&'M'].contains("never to the old server"), "{fatal:?}");
    }
    assert_eq!(count(&old, &db, 3), "0");
    serve.kill9();
    new.start_again();
}

#[test]
fn sigkill_before_the_commit_point_resumes_on_old_and_records_the_abort() {
    let old = support::start(15);
    let new = support::new();
    let (db, sub) = replicated_db(&old, new, "dur_precommit");

    // 1. Killed while the drain waits for an open transaction: epoch 1 is pending on both.
    let serve = Serve::start(&old, new, &db, &[]);
    let mut open = RawConn::login(serve.addr, SUPERUSER, "", &db);
    open.simple_query("BEGIN; SELECT 1");
    let mut cut = serve.admin_command("CUTOVER drain_timeout=120s").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("CUTOVER");
    serve.wait_status("held", "true");
    assert_eq!((epoch_state(&old, &db, "old", 1), epoch_state(new, &db, "new", 1)), ("pending".into(), "pending".into()));
    serve.kill9();
    let _ = cut.wait();
    let serve = Serve::start(&old, new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("15"), "{}", serve.log());
    assert_eq!(outcome(&mut session, "INSERT INTO t VALUES (10, 10)"), "ok");
    assert_eq!(count(&old, &db, 10), "1");
    // Recorded aborted on new (the decision) by the restarted proxy, and mirrored on old.
    assert_eq!(epoch_state(new, &db, "new", 1), "aborted");
    wait_for("the abort mirrored on old", || epoch_state(&old, &db, "old", 1) == "aborted");
    let reason = new.psql(&db, "SELECT reason FROM pgcutover.epoch WHERE kept_on = 'new' AND epoch = 1");
    assert!(reason.contains("coordinator"), "{reason}");

    // 2. Killed during the catch-up proof, after old was fenced: the restarted proxy lifts it.
    let mut open = RawConn::login(serve.addr, SUPERUSER, "", &db);
    open.simple_query("BEGIN; SELECT 1");
    let mut cut = serve.admin_command("CUTOVER drain_timeout=120s catchup_timeout=120s").stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("CUTOVER");
    serve.wait_status("held", "true");
    // The proof cannot complete while the subscription is off.
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    open.simple_query("COMMIT");
    serve.wait_status("phase", "catch-up");
    wait_for("old fenced", || direct_write(&old, &db, 11) == "25006");
    serve.kill9();
    let _ = cut.wait();
    let serve = Serve::start(&old, new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("15"), "{}", serve.log());
    assert_eq!(epoch_state(new, &db, "new", 2), "aborted");
    wait_for("the fence lifted", || direct_write(&old, &db, 12) == "ok");
    assert_eq!(outcome(&mut session, "INSERT INTO t VALUES (13, 13)"), "ok");
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} ENABLE"));

    // 3. Crashed right after the marker on old, before the decision row on new existed: the
    //    restarted proxy writes that row as aborted, so the epoch can never commit.
    serve.kill9();
    let serve = Serve::start(&old, new, &db, &[(pgcutover::faults::ENV, "marker")]);
    let _ = serve.admin("CUTOVER");
    serve.wait_crash();
    assert_eq!((epoch_state(&old, &db, "old", 3), epoch_state(new, &db, "new", 3)), ("pending".into(), "none".into()));
    let serve = Serve::start(&old, new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("15"), "{}", serve.log());
    assert_eq!(epoch_state(new, &db, "new", 3), "aborted");
    wait_for("the abort mirrored on old", || epoch_state(&old, &db, "old", 3) == "aborted");
    serve.kill9();
}

#[test]
fn crash_right_after_the_commit_point_routes_to_new_and_finishes_the_epoch() {
    let old = support::start(15);
    let new = support::new();
    let (db, sub) = replicated_db(&old, new, "dur_postcommit");
    let serve = Serve::start(&old, new, &db, &[(pgcutover::faults::ENV, "commit")]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    session.simple_query("UPDATE t SET v = 5 WHERE id = 1");
    let _ = serve.admin("CUTOVER drain_timeout=30s");
    serve.wait_crash();
    // Committed on new; nothing after the commit point happened: the marker is still pending,
    // the subscription still enabled.
    assert_eq!((epoch_state(new, &db, "new", 1), epoch_state(&old, &db, "old", 1)), ("committed".into(), "pending".into()));
    let subscription_enabled = || new.psql(&db, &format!("SELECT subenabled FROM pg_subscription WHERE subname = '{sub}'"));
    assert_eq!(subscription_enabled(), "t");

    let serve = Serve::start(&old, new, &db, &[]);
    let mut session = RawConn::login(serve.addr, SUPERUSER, "", &db);
    assert!(version(&mut session).starts_with("18"), "{}", serve.log());
    assert_eq!(session.query_values("SELECT v FROM t WHERE id = 1"), vec!["5"]);
    assert_eq!(outcome(&mut session, "INSERT INTO t VALUES (30, 30)"), "ok");
    assert_eq!((count(new, &db, 30), count(&old, &db, 30)), ("1".into(), "0".into()));
    // The restarted proxy finished the epoch: subscription off, old fenced, outcome mirrored.
    wait_for("the commit mirrored on old", || epoch_state(&old, &db, "old", 1) == "committed");
    assert_eq!(subscription_enabled(), "f");
    assert_eq!(direct_write(&old, &db, 31), "25006");
    serve.kill9();
}

/// Direct sessions on old are listed before the cutover; an aborted cutover leaves old
/// writable; a completed one fences old and ends the direct sessions when asked.
#[test]
fn the_fence_is_lifted_by_an_abort_and_direct_sessions_end_at_the_commit_point() {
    let old = support::start(15);
    let new = support::new();
    let (db, sub) = replicated_db(&old, new, "dur_fence");
    let file = FileConfig { cutover: Some(FileCutover { fence_old: Some(true), ..Default::default() }), ..Default::default() };
    let proxy = Arc::new(proxy(&old, new, file));
    let mut psql = direct(&old, &db, "dur-direct-psql");
    let pid = psql.query_values("SELECT pg_backend_pid()")[0].clone();
    let client_port = psql.stream.local_addr().expect("local addr").port();
    let mut through = RawConn::login(proxy.addr, SUPERUSER, "", &db);

    // CHECK and SHOW SESSIONS name it: user, application_name, client address.
    let shared = proxy.shared.clone();
    let check = proxy.block_on(async move { cutover::check(&shared).await });
    let bypassing = check.iter().find(|r| r.check == "sessions bypassing the proxy").expect("row");
    assert_eq!(bypassing.status, "warn");
    let named = format!("pid {pid} user {SUPERUSER} application_name \"dur-direct-psql\" from 127.0.0.1:{client_port}");
    assert!(bypassing.detail.contains(&named), "{bypassing:?}");
    let shared = proxy.shared.clone();
    let sessions = proxy.block_on(async move { pgcutover::admin::cmd::ShowSessions.apply(&shared).await }).expect("SHOW SESSIONS");
    let column = |name: &str| sessions.columns.iter().position(|c| *c == name).expect("column");
    let row = sessions.rows.iter().find(|r| r[column("id")].as_deref() == Some(&format!("direct:{pid}"))).expect("the direct session is listed");
    assert_eq!(row[column("user")].as_deref(), Some(SUPERUSER));
    assert_eq!(row[column("application_name")].as_deref(), Some("dur-direct-psql"));
    assert_eq!(row[column("client_addr")].as_deref(), Some(format!("127.0.0.1:{client_port}").as_str()));
    assert_eq!(row[column("server")].as_deref(), Some("old (direct)"));

    // An abort after the fence: old is writable again.
    let mut open = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    open.simple_query("BEGIN; SELECT 1");
    let cut = {
        let proxy = proxy.clone();
        thread::spawn(move || {
            let options = CutoverOptions { drain_timeout: Some(support::PATIENCE), catchup_timeout: Some(Duration::from_millis(800)), ..Default::default() };
            run_cutover(&proxy, options)
        })
    };
    wait_for("the hold", || proxy.shared.gate.state().held);
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} DISABLE"));
    open.simple_query("COMMIT");
    let err = cut.join().expect("cutover thread").expect_err("catch-up cannot be proven");
    assert!(matches!(&err, CutoverError::Aborted { phase, .. } if phase == "catch-up"), "{err}");
    wait_for("old writable again", || outcome(&mut psql, "INSERT INTO t VALUES (40, 40)") == "ok");
    assert_eq!(direct_write(&old, &db, 41), "ok");
    assert!(version(&mut through).starts_with("15"));
    new.psql(&db, &format!("ALTER SUBSCRIPTION {sub} ENABLE"));

    // A completed cutover with terminate_foreign: the direct session ends at the commit point,
    // and old refuses writes that bypass the proxy.
    let report = run_cutover(&proxy, CutoverOptions { terminate_foreign: Some(true), ..Default::default() }).unwrap_or_else(|e| panic!("cutover: {e}"));
    let (msgs, closed) = psql.read_until_closed(support::PATIENCE);
    expect_fatal(&msgs, "57P01");
    assert!(closed);
    assert!(report.iter().any(|r| r.item == "sessions bypassing the proxy" && r.detail.contains("terminated")), "{}", crate::cutover::report_text(&report));
    wait_for("old fenced", || direct_write(&old, &db, 42) == "25006");
    assert!(version(&mut through).starts_with("18"));
    proxy.assert_no_panics();
}

#[test]
fn a_proxy_pointed_at_other_clusters_refuses_the_recorded_decision() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = replicated_db(old, new, "dur_clusters");
    let control = old.create_database("ctl");
    new.create_database_named(&control);
    let file = || FileConfig { cutover: Some(FileCutover { fence_old: Some(false), decision_wait: Some("1s".into()), ..Default::default() }), ..Default::default() };
    let first = TestProxy::start(proxy_config(old, new, &control, file()));
    let _session = RawConn::login(first.addr, SUPERUSER, "", &db);
    run_cutover(&first, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover: {e}"));
    drop(first);

    // The same control database with old and new swapped: the decision names other clusters.
    let swapped = TestProxy::start(proxy_config(new, old, &control, file()));
    let mut refused = RawConn::connect(swapped.addr);
    refused.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", &db)])).expect("send");
    let (msgs, closed) = refused.read_until_closed(support::PATIENCE);
    let fatal = expect_fatal(&msgs, "57P03");
    assert!(closed);
    let old_id = old.psql("postgres", "SELECT system_identifier FROM pg_control_system()");
    assert!(fatal[&'M'].contains("other clusters") && fatal[&'M'].contains(&old_id), "{fatal:?}");
    let shared = swapped.shared.clone();
    let check = swapped.block_on(async move { cutover::check(&shared).await });
    let decision = check.iter().find(|r| r.check == "cutover decision").expect("row");
    assert_eq!(decision.status, "fail", "{decision:?}");
    let shared = swapped.shared.clone();
    let err = swapped.block_on(async move { cutover::run(&shared, CutoverOptions::default()).await }).expect_err("no cutover on an unknown route");
    assert!(matches!(err, CutoverError::RoutingUnknown(_)), "{err}");
    swapped.assert_no_panics();
}
