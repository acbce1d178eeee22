//! COPY through the proxy in the extended protocol: the Sync a client sends right after the
//! COPY's Execute is ignored by the server (it is in copy mode), so the proxy must not wait for
//! its ReadyForQuery; the session is idle after the copy, moves at a CUTOVER, and ends at once
//! when its client goes.
use crate::cutover::{proxy as cutover_proxy, run_cutover};
use crate::memory::can_move;
use crate::support;

use std::time::{Duration, Instant};

use futures::{SinkExt, TryStreamExt};
use pgcutover::config::FileConfig;
use pgcutover::cutover::CutoverOptions;
use support::proxy::{self, frame, RawConn, TestProxy};
use support::*;

/// Rows COPY FROM STDIN sends, and COPY TO STDOUT must give back.
const ROWS: &str = "1\tone\n2\ttwo\n3\tthree\n";

async fn copy_in(client: &tokio_postgres::Client, data: &str) -> u64 {
    let sink = client.copy_in("COPY items FROM STDIN").await.expect("COPY FROM STDIN");
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(data.to_string())).await.expect("CopyData");
    sink.finish().await.expect("COPY FROM STDIN finished")
}

async fn copy_out(client: &tokio_postgres::Client) -> String {
    let stream = client.copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT").await.expect("COPY TO STDOUT");
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("CopyData");
    String::from_utf8(chunks.concat()).expect("text")
}

/// `can_move` of the proxy's sessions on `db` (each test has its own database).
fn verdicts(proxy: &TestProxy, db: &str) -> Vec<String> {
    can_move(proxy).into_iter().filter(|(_, _, database)| database == db).map(|(_, verdict, _)| verdict).collect()
}

/// The proxy's sessions on `db`.
fn sessions_on(proxy: &TestProxy, db: &str) -> usize {
    proxy.shared.registry.all().iter().filter(|s| s.database == db).count()
}

/// Waits (driving this runtime, where the clients' connections run) until the proxy has no
/// session on `db`.
async fn wait_until_ended(proxy: &TestProxy, db: &str) {
    let deadline = Instant::now() + PATIENCE;
    while sessions_on(proxy, db) > 0 {
        assert!(Instant::now() < deadline, "the session did not end after its client closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// tokio-postgres sends Bind/Execute/Sync, then CopyData, CopyDone and Sync: one ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_leaves_the_session_idle_and_movable() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("copy_ext");
    old.psql(&db, "CREATE TABLE items (id int PRIMARY KEY, name text)");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = cutover_proxy(old, new, FileConfig::default());
    let client = proxy.connect(SUPERUSER, "", &db).await.expect("connect through the proxy");

    assert_eq!(copy_in(&client, ROWS).await, 3);
    assert_eq!(copy_out(&client).await, ROWS);
    // Idle and movable: the probe behind SHOW SESSIONS is answered only at a boundary.
    assert_eq!(tokio::task::block_in_place(|| verdicts(&proxy, &db)), ["yes"]);

    tokio::task::block_in_place(|| run_cutover(&proxy, CutoverOptions::default())).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let version: String = client.query_one("SHOW server_version", &[]).await.expect("query after the move").get(0);
    assert!(version.starts_with("18"), "the session is on new: {version}");
    // The copies work on new too (the rows came over by replication).
    assert_eq!(copy_in(&client, "4\tfour\n").await, 1);
    assert_eq!(copy_out(&client).await, format!("{ROWS}4\tfour\n"));
    assert_eq!(new.psql(&db, "SELECT count(*) FROM items"), "4");
    assert_eq!(tokio::task::block_in_place(|| verdicts(&proxy, &db)), ["yes"], "after the copies on new");

    drop(client);
    wait_until_ended(&proxy, &db).await;
    proxy.assert_no_panics();
}

/// Parse, Bind, Execute of `sql` (unnamed), then Sync.
fn execute(sql: &str) -> Vec<u8> {
    let mut parse = format!("\0{sql}\0").into_bytes();
    parse.extend_from_slice(&[0, 0]);
    let mut out = frame(b'P', &parse);
    out.extend(frame(b'B', &[0; 8]));
    out.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    out.extend(frame(b'S', b""));
    out
}

/// Tags of the next `n` messages.
fn next_tags(c: &mut RawConn, n: usize) -> String {
    (0..n).map(|_| c.expect_msg().tag as char).collect()
}

fn count(c: &mut RawConn) -> Vec<String> {
    c.query_values("SELECT count(*) FROM items")
}

/// Raw frames, as libpq and tokio-postgres send them, and pipelined: Postgres answers as the
/// proxy expects (no ReadyForQuery for a Sync in copy mode), and the session is idle after.
#[test]
fn raw_extended_copy_in_and_copy_fail() {
    let db = old().create_database("copy_raw");
    old().psql(&db, &format!("CREATE TABLE items (id int, name text); GRANT ALL ON items TO {APP_USER}"));
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let copy = execute("COPY items FROM STDIN");
    let data = |line: &str| frame(b'd', line.as_bytes());
    let done = frame(b'c', b"");
    let sync = frame(b'S', b"");

    c.send(&copy).unwrap();
    assert_eq!(next_tags(&mut c, 3), "12G");
    // In copy mode the session is busy: not idle, not probed.
    let verdict = verdicts(&proxy, &db);
    assert!(verdict.len() == 1 && verdict[0].starts_with("unknown: busy"), "during the copy: {verdict:?}");
    c.send(&[data("1\tone\n"), data("2\ttwo\n"), done.clone(), sync.clone()].concat()).unwrap();
    assert_eq!(next_tags(&mut c, 2), "CZ");
    assert_eq!(verdicts(&proxy, &db), ["yes"]);
    // Nothing more came for the ignored Sync: the next answer is the next query's.
    assert_eq!(count(&mut c), ["2"]);

    // All of it at once, before the server's CopyInResponse, with a second Sync in copy mode.
    c.send(&[copy.clone(), sync.clone(), data("3\tthree\n"), done.clone(), sync.clone()].concat()).unwrap();
    assert_eq!(next_tags(&mut c, 5), "12GCZ");
    assert_eq!(verdicts(&proxy, &db), ["yes"]);
    assert_eq!(count(&mut c), ["3"]);

    // CopyFail: the server discards what follows until a Sync, and answers that one.
    c.send(&copy).unwrap();
    assert_eq!(next_tags(&mut c, 3), "12G");
    c.send(&[data("4\tfour\n"), frame(b'f', b"changed my mind\0"), execute("SELECT 1")].concat()).unwrap();
    let error = c.expect_msg();
    assert_eq!((error.tag, error.code()), (b'E', "57014".to_string()), "{:?}", error.fields());
    assert_eq!(next_tags(&mut c, 1), "Z");
    assert_eq!(verdicts(&proxy, &db), ["yes"]);
    assert_eq!(count(&mut c), ["3"]);

    // A simple-Query COPY works as before.
    c.send(&[proxy::query_frame("COPY items FROM STDIN"), data("5\tfive\n"), done].concat()).unwrap();
    assert_eq!(next_tags(&mut c, 3), "GCZ");
    assert_eq!(verdicts(&proxy, &db), ["yes"]);
    assert_eq!(count(&mut c), ["4"]);
    proxy.assert_no_panics();
}

/// However the client ends after an extended COPY, its session ends: Terminate with the
/// connection kept open (the proxy closes it), Terminate and close at once, close alone, and
/// Terminate in the middle of a copy followed by the close.
#[test]
fn sessions_end_after_an_extended_copy() {
    let db = old().create_database("copy_end");
    old().psql(&db, &format!("CREATE TABLE items (id int, name text); GRANT ALL ON items TO {APP_USER}"));
    let proxy = proxy::for_server(old()).start();
    let copied = || {
        let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
        c.send(&execute("COPY items FROM STDIN")).unwrap();
        assert_eq!(next_tags(&mut c, 3), "12G");
        c
    };
    let finish = |c: &mut RawConn| {
        c.send(&[frame(b'd', b"1\tone\n"), frame(b'c', b""), frame(b'S', b"")].concat()).unwrap();
        assert_eq!(next_tags(c, 2), "CZ");
    };
    let ended = |what: &str| {
        let deadline = Instant::now() + PATIENCE;
        while sessions_on(&proxy, &db) > 0 {
            assert!(Instant::now() < deadline, "the session did not end: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let terminate = frame(b'X', b"");

    let mut c = copied();
    finish(&mut c);
    c.send(&terminate).unwrap();
    let (after, closed) = c.read_until_closed(PATIENCE);
    assert!(closed && after.is_empty(), "Terminate with the connection open: closed {closed}, then {after:?}");
    ended("Terminate with the connection open");

    let mut c = copied();
    finish(&mut c);
    c.send(&terminate).unwrap();
    drop(c);
    ended("Terminate and close");

    let mut c = copied();
    finish(&mut c);
    drop(c);
    ended("close without Terminate");

    // In copy mode Postgres takes Terminate for a protocol violation (08P01) and waits for a
    // Sync; the client's close ends the session.
    let mut c = copied();
    c.send(&terminate).unwrap();
    drop(c);
    ended("Terminate in copy mode, then close");
    assert_eq!(old().psql(&db, "SELECT count(*) FROM items"), "3");
    proxy.assert_no_panics();
}
