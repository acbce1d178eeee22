//! What the move replays on new: only the session's own state (a PREPARE's own statement,
//! setting values, LISTEN channels), never the rest of the client's SQL around it.
use crate::cutover::{proxy, report_text, run_cutover};
use crate::support;

use pgcutover::config::FileConfig;
use pgcutover::cutover::{self, CutoverOptions};
use support::proxy::{expect_fatal, startup_packet, Msg, RawConn, PROTOCOL_3_0};
use support::{PATIENCE, SUPERUSER};

fn count(server: &support::PgServer, db: &str, note: &str) -> String {
    server.psql(db, &format!("SELECT count(*) FROM audit WHERE note = {}", support::quote_literal(note)))
}

/// `pg_prepared_statements.statement` holds the whole query string a PREPARE came in. Replaying
/// that string would run the INSERT beside the PREPARE a second time, on new. The move replays
/// the PREPARE alone; a PREPARE that cannot be told apart from the rest of its query string
/// keeps its session from moving (closed with a FATAL that says why), and an ordinary PREPARE
/// moves and works. Also: a startup notice is not shown again at the move.
#[test]
fn a_prepare_moves_without_the_rest_of_its_query() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cr_prepare");
    // No key: a second 'once' would be accepted, not refused.
    old.psql(&db, "CREATE TABLE audit (note text) WITH (autovacuum_enabled = off); ALTER TABLE audit REPLICA IDENTITY FULL");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());

    let mut shared_query = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    shared_query.query_values("PREPARE p AS SELECT 1; INSERT INTO audit VALUES ('once')");
    let mut ordinary = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    ordinary.query_values("PREPARE ins(text) AS INSERT INTO audit VALUES ($1)");
    ordinary.query_values("EXECUTE ins('before')");
    let mut commented = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    commented.query_values("/* ; PREPARE q AS x */ SELECT 'a;b', $d$;$d$; PREPARE \"Q\" AS SELECT $1::text || ';'; -- PREPARE q");
    // Which of the two definitions of r exists depends on which statements failed: unknowable.
    let mut ambiguous = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    ambiguous.query_values("PREPARE r AS SELECT 1; DEALLOCATE r; PREPARE r AS SELECT 2");
    let mut noticed = RawConn::connect(proxy.addr);
    noticed
        .send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", &db), ("application_name", &"n".repeat(70))]))
        .unwrap();
    let greeting = noticed.authenticate("").unwrap_or_else(|e| panic!("login: {e:?}"));
    assert_eq!(greeting.iter().filter(|m| m.tag == b'N').count(), 1, "the startup notice at login");

    // CHECK names the session that cannot move, and why, before anything is held.
    let shared = proxy.shared.clone();
    let check = proxy.block_on(async move { cutover::check(&shared).await });
    let movable = check.iter().find(|r| r.check == "sessions movable").expect("sessions movable row");
    assert!(movable.detail.contains("prepared statement \"r\""), "{movable:?}");

    let report = run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let text = report_text(&report);
    assert_eq!(count(old, &db, "once"), "1", "{text}");
    assert_eq!(count(new, &db, "once"), "1", "the INSERT beside the PREPARE ran again on new\n{text}");

    assert!(shared_query.query_values("SHOW server_version")[0].starts_with("18"), "{text}");
    assert_eq!(shared_query.query_values("EXECUTE p"), vec!["1"]);
    assert!(ordinary.query_values("SHOW server_version")[0].starts_with("18"));
    ordinary.query_values("EXECUTE ins('after')");
    assert_eq!((count(old, &db, "after"), count(new, &db, "after")), ("0".to_string(), "1".to_string()));
    assert_eq!((count(old, &db, "before"), count(new, &db, "before")), ("1".to_string(), "1".to_string()));
    assert_eq!(commented.query_values("EXECUTE \"Q\"('x')"), vec!["x;"]);
    assert!(commented.query_values("SHOW server_version")[0].starts_with("18"));

    let (msgs, closed) = ambiguous.read_until_closed(PATIENCE);
    let fatal = expect_fatal(&msgs, "57P01");
    assert!(fatal[&'M'].contains("prepared statement \"r\""), "{fatal:?}");
    assert!(closed);

    // The standby's own login notice is not passed on: the client saw it once, at its login.
    let msgs = noticed.simple_query("SELECT 1");
    assert!(msgs.iter().all(|m| m.tag != b'N'), "notice repeated after the move: {:?}", msgs.iter().map(Msg::fields).collect::<Vec<_>>());
    assert!(msgs.iter().any(|m| m.tag == b'S' && m.body.starts_with(b"server_version\x0018")), "{text}");
    proxy.assert_no_panics();
}

/// First column of the first DataRow of a simple query sent as raw bytes (the client's encoding).
fn raw_value(conn: &mut RawConn, sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    conn.send(&support::proxy::frame(b'Q', &body)).unwrap();
    let mut value = None;
    loop {
        let m = conn.expect_msg();
        match m.tag {
            b'E' => panic!("{:?} failed: {:?}", String::from_utf8_lossy(sql), m.fields()),
            b'D' if value.is_none() => {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap()) as usize;
                value = Some(m.body[6..6 + len].to_vec());
            }
            b'Z' => return value.unwrap_or_default(),
            _ => {}
        }
    }
}

/// Settings move as values, byte for byte, in the session's client encoding, whatever
/// `standard_conforming_strings` the connection started with; a PREPARE's text too.
#[test]
fn settings_and_prepares_move_byte_for_byte() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("cr_values");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", &db), ("standard_conforming_strings", "off")])).unwrap();
    c.authenticate("").unwrap_or_else(|e| panic!("login: {e:?}"));
    c.query_values("SET client_encoding = 'LATIN1'");
    raw_value(&mut c, b"SET search_path = E'\"caf\xe9 C:\\\\dir ''q''\", public'");
    raw_value(&mut c, b"PREPARE word AS SELECT 'na\xefve'");
    let path = raw_value(&mut c, b"SHOW search_path");
    let needle: &[u8] = b"caf\xe9 C:\\dir 'q'";
    assert!(path.windows(needle.len()).any(|w| w == needle), "{:?}", String::from_utf8_lossy(&path));

    let report = run_cutover(&proxy, CutoverOptions::default()).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    assert!(c.query_values("SHOW server_version")[0].starts_with("18"), "{}", report_text(&report));
    assert_eq!(String::from_utf8_lossy(&raw_value(&mut c, b"SHOW search_path")), String::from_utf8_lossy(&path));
    assert_eq!(raw_value(&mut c, b"EXECUTE word"), b"na\xefve");
    assert_eq!(c.query_values("SHOW client_encoding"), vec!["LATIN1"]);
    assert_eq!(c.query_values("SHOW standard_conforming_strings"), vec!["off"]);
    proxy.assert_no_panics();
}
