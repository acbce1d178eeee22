//! What a client sees of its session is what Postgres itself would show: one FATAL when the
//! server ends the session, the server's own pid in BackendKeyData and NotificationResponse
//! (before and after a move), and the answers to a query that a Terminate follows.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use pgcutover::config::FileConfig;
use pgcutover::cutover::CutoverOptions;
use support::proxy::{self, frame, query_frame, startup_packet, Msg, RawConn, PROTOCOL_3_0};
use support::{old, APP_PASSWORD, APP_USER, PATIENCE, SUPERUSER};

/// Logs in and returns the connection with the cancel key it was given (pid, secret).
fn login_with_key(addr: SocketAddr, user: &str, password: &str, db: &str) -> (RawConn, u32, Vec<u8>) {
    let mut c = RawConn::connect(addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", user), ("database", db)])).expect("send startup");
    let after = c.authenticate(password).unwrap_or_else(|(e, _)| panic!("login as {user} failed: {e}"));
    let key = after.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    (c, key.u32_at(0), key.body[4..].to_vec())
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(Msg::tag).collect()
}

/// Every ErrorResponse in `msgs` as (severity, SQLSTATE).
fn errors(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| m.tag == b'E')
        .map(|m| {
            let f = m.fields();
            (f.get(&'V').or(f.get(&'S')).cloned().unwrap_or_default(), m.code())
        })
        .collect()
}

/// The pids of the NotificationResponses in `msgs`, with their payloads.
fn notifications(msgs: &[Msg]) -> Vec<(u32, String)> {
    msgs.iter()
        .filter(|m| m.tag == b'A')
        .map(|m| {
            let mut parts = m.body[4..].split(|&b| b == 0);
            let _channel = parts.next();
            (m.u32_at(0), String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
        })
        .collect()
}

/// `pg_terminate_backend(pid)` on `server` as the superuser; true if it signalled a backend.
fn terminate_backend(server: &support::PgServer, db: &str, pid: u32) -> bool {
    server.psql(db, &format!("SELECT pg_terminate_backend({pid})")) == "t"
}

/// What a client at `addr` receives when its backend is terminated, idle or running a
/// statement: (messages, closed).
fn terminated_session(addr: SocketAddr, db: &str, busy: bool) -> (Vec<Msg>, bool) {
    let mut c = RawConn::login(addr, APP_USER, APP_PASSWORD, db);
    let pid: u32 = c.query_values("SELECT pg_backend_pid()")[0].parse().expect("pid");
    if busy {
        c.send(&query_frame("SELECT pg_sleep(300)")).expect("send query");
        let deadline = std::time::Instant::now() + PATIENCE;
        while old().psql(db, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND query LIKE '%pg_sleep(300)%'")) == "0" {
            assert!(std::time::Instant::now() < deadline, "pg_sleep never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(terminate_backend(old(), db, pid), "pid {pid} not found");
    c.read_until_closed(PATIENCE)
}

/// Defect 9: after pg_terminate_backend the client gets the server's FATAL 57P01 and then the
/// end of the connection, as from Postgres itself; not a second FATAL of the proxy's own.
#[test]
fn a_server_fatal_reaches_the_client_once_then_the_connection_closes() {
    let db = old().create_database("tr_fatal");
    let proxy = proxy::for_server(old()).start();
    let direct: SocketAddr = format!("{}:{}", support::HOST, old().port).parse().expect("address");
    for busy in [false, true] {
        let (expected, closed) = terminated_session(direct, &db, busy);
        assert!(closed, "Postgres closed the connection (busy={busy})");
        let (msgs, closed) = terminated_session(proxy.addr, &db, busy);
        assert!(closed, "busy={busy}: the connection was not closed: {}", tags(&msgs));
        assert_eq!(errors(&msgs), vec![("FATAL".to_string(), "57P01".to_string())], "busy={busy}: {:?}", msgs.iter().map(Msg::fields).collect::<Vec<_>>());
        assert_eq!(errors(&msgs), errors(&expected), "busy={busy}: as from Postgres");
    }
    proxy.assert_no_panics();
}

/// Defect 13: Postgres reads a Terminate that follows a Query only after the query finished,
/// so the client gets the results, then the end of the connection.
#[test]
fn terminate_after_a_query_gets_the_results_first() {
    let db = old().create_database("tr_terminate");
    let proxy = proxy::for_server(old()).start();
    let direct: SocketAddr = format!("{}:{}", support::HOST, old().port).parse().expect("address");
    for (who, addr) in [("postgres", direct), ("proxy", proxy.addr)] {
        let mut c = RawConn::login(addr, APP_USER, APP_PASSWORD, &db);
        let mut both = query_frame("SELECT pg_sleep(1), 42");
        both.extend(frame(b'X', &[]));
        c.send(&both).expect("send query and terminate in one write");
        let (msgs, closed) = c.read_until_closed(PATIENCE);
        assert!(closed, "{who}: not closed after {}", tags(&msgs));
        assert_eq!(tags(&msgs), "TDCZ", "{who}: results before the close");
        let row = &msgs[1].body;
        assert!(row.ends_with(b"42"), "{who}: DataRow {row:?}");
    }
    // A client that closes right after its Terminate is not waited for: its session ends at
    // once (its statement runs on, as it would on Postgres).
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let mut both = query_frame("SELECT pg_sleep(300)");
    both.extend(frame(b'X', &[]));
    c.send(&both).expect("send query and terminate");
    crate::proxy_protocol::wait_for_sleeper(&db);
    drop(c);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !proxy.shared.registry.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the session outlived its client");
        std::thread::sleep(Duration::from_millis(20));
    }
    old().psql(&db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = 'SELECT pg_sleep(300)'");
    proxy.assert_no_panics();
}

/// Defect 10, before any move: the pid in BackendKeyData is the server backend's, so the
/// session recognises its own notifications and pg_terminate_backend on it ends the session
/// (with one FATAL); the cancel key still works.
#[test]
fn the_advertised_pid_is_the_server_backends() {
    let db = old().create_database("tr_pid");
    let proxy = proxy::for_server(old()).start();
    let (mut c, pid, secret) = login_with_key(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(c.query_values("SELECT pg_backend_pid()"), vec![pid.to_string()]);
    c.simple_query("LISTEN mine");
    let own = c.simple_query("NOTIFY mine, 'own'");
    assert_eq!(notifications(&own), vec![(pid, "own".to_string())]);
    cancel_until_cancelled(&proxy, &mut c, pid, &secret);

    assert!(terminate_backend(old(), &db, pid), "pg_terminate_backend({pid}) found no backend");
    let (msgs, closed) = c.read_until_closed(PATIENCE);
    assert!(closed, "not closed: {}", tags(&msgs));
    assert_eq!(errors(&msgs), vec![("FATAL".to_string(), "57P01".to_string())]);
    proxy.assert_no_panics();
}

/// Runs a long statement on `c` and sends CancelRequest (pid, secret) to the proxy until it
/// ends with 57014 (a cancel that arrives before the statement starts is ignored).
fn cancel_until_cancelled(proxy: &support::proxy::TestProxy, c: &mut RawConn, pid: u32, secret: &[u8]) {
    c.send(&query_frame("SELECT pg_sleep(300)")).expect("send query");
    let mut request = 80_877_102u32.to_be_bytes().to_vec();
    request.extend_from_slice(&pid.to_be_bytes());
    request.extend_from_slice(secret);
    let addr = proxy.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let canceller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                // Checked after the pause: no cancel may be sent once the statement has ended.
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let mut s = RawConn::connect(addr);
                let mut packet = ((request.len() + 4) as u32).to_be_bytes().to_vec();
                packet.extend_from_slice(&request);
                let _ = s.send(&packet);
                let _ = s.read_until_closed(PATIENCE);
            }
        })
    };
    let msgs: Vec<Msg> = std::iter::from_fn(|| Some(c.expect_msg())).take_while(|m| m.tag != b'Z').collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    canceller.join().expect("canceller thread");
    assert_eq!(errors(&msgs), vec![("ERROR".to_string(), "57014".to_string())], "the statement was cancelled");
}

/// Defect 10, across a CUTOVER: the session's own notifications carry the pid it was given
/// in BackendKeyData on new too, and its cancel key reaches its backend on new.
#[test]
fn own_notifications_keep_the_advertised_pid_after_the_move() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = crate::cutover::replicated_db(old, new, "tr_pid_move");
    let proxy = crate::cutover::proxy(old, new, FileConfig::default());
    let (mut c, pid, secret) = login_with_key(proxy.addr, SUPERUSER, "", &db);
    c.simple_query("LISTEN mine");
    assert_eq!(notifications(&c.simple_query("NOTIFY mine, 'on old'")), vec![(pid, "on old".to_string())]);

    let report = crate::cutover::run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let text = crate::cutover::report_text(&report);
    assert!(c.query_values("SHOW server_version")[0].starts_with("18"), "moved to new\n{text}");
    let on_new: u32 = c.query_values("SELECT pg_backend_pid()")[0].parse().expect("pid");
    let own = c.simple_query("NOTIFY mine, 'on new'; SELECT pg_notify('mine', 'again')");
    assert_eq!(notifications(&own), vec![(pid, "on new".to_string()), (pid, "again".to_string())], "backend on new: {on_new}");
    // Another session's notification keeps its sender's pid.
    let mut other = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    let other_pid: u32 = other.query_values("SELECT pg_backend_pid()")[0].parse().expect("pid");
    other.simple_query("NOTIFY mine, 'from another session'");
    // The session is idle: the notification arrives without a request.
    let note = c.expect_msg();
    assert_eq!(notifications(&[note]), vec![(other_pid, "from another session".to_string())]);

    cancel_until_cancelled(&proxy, &mut c, pid, &secret);
    assert_eq!(c.query_values("SELECT 'still here'"), vec!["still here"]);
    proxy.assert_no_panics();
}
