//! What a client sees of its session is what Postgres itself would show: one FATAL when the
//! server ends the session, and the answers to a query that a Terminate follows.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::proxy::{self, frame, query_frame, Msg, RawConn};
use support::{old, APP_PASSWORD, APP_USER, PATIENCE};

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
    proxy.assert_no_panics();
}
