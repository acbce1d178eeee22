//! Memory: the proxy's memory follows the bytes that actually arrived, not the lengths messages
//! declare; large messages stream through instead of being held whole; and `max_buffered_bytes`
//! bounds what all sessions buffer together, slowing them down rather than failing them.
use crate::support;

use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use pgcutover::admin::cmd::ShowSessions;
use support::proxy::{self, frame, query_frame, RawConn, TestProxy};
use support::served::Served;
use support::*;

const MIB: u64 = 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A proxy process in front of old: clients log in as the superuser without a password.
fn served(address_space_kib: Option<u64>) -> Served {
    let config = format!("auth = \"trust\"\nworkers = 2\n[old]\nurl = \"{}\"\n", old().url(SUPERUSER, SUPERUSER_PASSWORD, "postgres"));
    Served::start(&config, false, address_space_kib)
}

fn check(c: &mut RawConn, n: u32) {
    assert_eq!(c.query_values(&format!("SELECT {n} + 1")), vec![(n + 1).to_string()], "a bystander session broke");
}

fn hex_md5(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Four clients each send the header of a Query declaring 1 GiB and a few bytes of it. That
/// must cost the proxy those few bytes: under an address-space limit of 3 GiB it keeps running
/// (reserving the declared length would abort it with "memory allocation failed").
#[test]
fn declared_lengths_cost_only_the_bytes_that_arrived() {
    let db = old().create_database("mem_declared");
    let mut proxy = served(Some(3 * 1024 * MIB));
    let mut bystander = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    check(&mut bystander, 0);
    let (rss_before, size_before) = (proxy.status_kib("VmRSS"), proxy.status_kib("VmSize"));
    let mut hogs: Vec<RawConn> = (0..4).map(|_| RawConn::login(proxy.addr, SUPERUSER, "", &db)).collect();
    let mut message = vec![b'Q'];
    message.extend_from_slice(&(1u32 << 30).to_be_bytes());
    message.extend_from_slice(b"SELECT '");
    message.extend_from_slice(&[b'x'; 100]);
    for hog in &mut hogs {
        hog.send(&message).unwrap();
    }
    // The proxy reads those headers at once; give a slow machine a moment, then look.
    std::thread::sleep(Duration::from_millis(500));
    proxy.assert_running();
    check(&mut bystander, 1);
    std::thread::sleep(Duration::from_millis(500));
    check(&mut bystander, 2);
    proxy.assert_running();
    let rss_growth = proxy.status_kib("VmRSS").saturating_sub(rss_before);
    let size_growth = proxy.status_kib("VmSize").saturating_sub(size_before);
    assert!(rss_growth < 64 * MIB, "RSS grew by {rss_growth} KiB");
    assert!(size_growth < 512 * MIB, "address space grew by {size_growth} KiB for 4 GiB declared");
    // The hogs give up half-way: protocol violation for them, nothing for anyone else.
    for mut hog in hogs {
        let _ = hog.stream.shutdown(std::net::Shutdown::Write);
        let (_, closed) = hog.read_until_closed(PATIENCE);
        assert!(closed);
    }
    check(&mut bystander, 3);
    proxy.assert_running();
}

/// The server sends a 200 MB row the client does not read: the proxy forwards what the client
/// takes and otherwise stops reading (the server waits), instead of holding the row.
#[test]
fn a_large_row_the_client_does_not_read_is_not_held_by_the_proxy() {
    const ROW: usize = 200_000_000;
    let db = old().create_database("mem_bigrow");
    let mut proxy = served(None);
    let mut bystander = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    let mut reader = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    check(&mut bystander, 0);
    let rss_before = proxy.status_kib("VmRSS");
    reader.send(&query_frame(&format!("SELECT repeat('x', {ROW})"))).unwrap();
    // Until the server is blocked writing to the proxy (or, if the proxy took it all, done).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let state = old().psql(
            &db,
            "SELECT state || '/' || coalesce(wait_event, '') FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'SELECT repeat%' AND pid <> pg_backend_pid()",
        );
        if state == "active/ClientWrite" || state.starts_with("idle") {
            break;
        }
        assert!(Instant::now() < deadline, "the server neither finished nor blocked: {state:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let growth = proxy.status_kib("VmRSS").saturating_sub(rss_before);
    assert!(growth < 64 * MIB, "RSS grew by {growth} KiB while a {ROW}-byte row waited for its client");
    check(&mut bystander, 1);
    // Read now, the row arrives whole and intact.
    let messages: Vec<_> = std::iter::from_fn(|| Some(reader.expect_msg())).take_while(|m| m.tag != b'Z').collect();
    let row = messages.iter().find(|m| m.tag == b'D').expect("a DataRow");
    assert_eq!(row.body.len(), 2 + 4 + ROW);
    assert_eq!(i32::from_be_bytes(row.body[2..6].try_into().unwrap()) as usize, ROW);
    assert!(row.body[6..].iter().all(|&b| b == b'x'), "the row was changed on its way");
    assert!(messages.iter().any(|m| m.tag == b'C'));
    let peak = proxy.status_kib("VmHWM").saturating_sub(rss_before);
    assert!(peak < 64 * MIB, "peak RSS {peak} KiB above the start while streaming the row");
    check(&mut bystander, 2);
    proxy.assert_running();
}

/// Big values both ways: a Bind parameter, a row, COPY data in and out, and a prepared
/// statement too large to keep for replay (the session works, but cannot move while it exists).
#[test]
fn large_messages_stream_through_intact() {
    let db = old().create_database("mem_stream");
    old().psql(&db, &format!("CREATE TABLE blobs (id int, v text); GRANT ALL ON blobs TO {APP_USER}"));
    let proxy = proxy::for_server(old()).start();
    let rt = rt();
    let client = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, &db)).unwrap();
    let big: String = (0..20_000_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();

    let row = rt.block_on(client.query_one("SELECT length($1::text), md5($1::text)", &[&big])).unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (big.len() as i32, hex_md5(big.as_bytes())));
    let row = rt.block_on(client.query_one("SELECT repeat('ab', 10000000)", &[])).unwrap();
    let text: &str = row.get(0);
    assert!(text.len() == 20_000_000 && text.as_bytes().chunks(2).all(|c| c == b"ab"));

    // COPY on a session of its own, closed below.
    let copier = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, &db)).unwrap();
    let line = format!("1\t{big}\n");
    rt.block_on(async {
        use futures::SinkExt;
        let sink = copier.copy_in("COPY blobs FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(line.clone())).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
    });
    let row = rt.block_on(client.query_one("SELECT md5(v) FROM blobs WHERE id = 1", &[])).unwrap();
    assert_eq!(row.get::<_, String>(0), hex_md5(big.as_bytes()));
    let copied = rt.block_on(async {
        use futures::TryStreamExt;
        let stream = copier.copy_out("COPY blobs TO STDOUT").await.unwrap();
        stream.try_fold(Vec::new(), |mut all, chunk| async move {
            all.extend_from_slice(&chunk);
            Ok(all)
        })
        .await
        .unwrap()
    });
    assert!(copied == line.as_bytes(), "COPY TO returned {} bytes, not the {} stored", copied.len(), line.len());
    // The dropped client sends Terminate and closes only once its last answers are in (the
    // Close of its COPY statement), and only while this runtime runs: keep it running.
    drop(copier);
    rt.block_on(client.simple_query("SELECT 1")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while proxy.shared.registry.len() > 1 {
        assert!(Instant::now() < deadline, "the COPY session did not end");
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
    }

    // A statement of 2 MiB is prepared and runs, but is too large to keep for replay.
    let sql = format!("SELECT length('{}')", "p".repeat(2 << 20));
    let statement = rt.block_on(client.prepare(&sql)).unwrap();
    // (A row holds on to its statement: this one is dropped at once.)
    let length: i32 = rt.block_on(client.query_one(&statement, &[])).unwrap().get(0);
    assert_eq!(length, 2 << 20);
    let verdict = can_move(&proxy);
    assert_eq!(verdict.len(), 1);
    assert!(verdict[0].1.contains("too large for pgcutover to keep for replay"), "{verdict:?}");
    // Once the client closes it, the session can move again.
    drop(statement);
    let deadline = Instant::now() + PATIENCE;
    while can_move(&proxy)[0].1 != "yes" {
        rt.block_on(client.simple_query("SELECT 1")).unwrap();
        assert!(Instant::now() < deadline, "still unmovable: {:?}", can_move(&proxy));
    }
    proxy.assert_no_panics();
}

/// `(client_addr, can_move, database)` of every session, from SHOW SESSIONS.
pub(crate) fn can_move(proxy: &TestProxy) -> Vec<(String, String, String)> {
    let shared = proxy.shared.clone();
    let sessions = proxy.block_on(async move { ShowSessions.apply(&shared).await }).unwrap_or_else(|e| panic!("SHOW SESSIONS: {e:?}"));
    let column = |name: &str| sessions.columns.iter().position(|c| *c == name).unwrap();
    let (addr, verdict, database) = (column("client_addr"), column("can_move"), column("database"));
    let value = |r: &Vec<Option<String>>, i: usize| r[i].clone().unwrap_or_default();
    sessions.rows.iter().map(|r| (value(r, addr), value(r, verdict), value(r, database))).collect()
}

/// A named Parse of `sql` and a Sync; waits for ReadyForQuery.
fn prepare_raw(c: &mut RawConn, name: &str, sql: &str) {
    let mut body = format!("{name}\0{sql}\0").into_bytes();
    body.extend_from_slice(&[0, 0]);
    let mut messages = frame(b'P', &body);
    messages.extend(frame(b'S', b""));
    c.send(&messages).unwrap();
    let replies: Vec<u8> = std::iter::from_fn(|| Some(c.expect_msg())).map(|m| m.tag).take_while(|&t| t != b'Z').collect();
    assert_eq!(replies, b"1", "Parse of {name}");
}

/// With `max_buffered_bytes` spent by two clients that do not read their large rows, every
/// other session still works (at its own small allowance), a large Parse is streamed instead
/// of kept, and all of the budget comes back when the sessions end.
#[test]
fn a_spent_budget_slows_sessions_down_but_never_stops_them() {
    const BUDGET: usize = 1 << 20;
    const ROW: usize = 50_000_000;
    let db = old().create_database("mem_budget");
    let mut config = proxy::for_server(old()).config();
    config.max_buffered_bytes = BUDGET;
    let proxy = TestProxy::start(config);
    let mut hogs: Vec<RawConn> = (0..2).map(|_| RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db)).collect();
    for hog in &mut hogs {
        hog.send(&query_frame(&format!("SELECT repeat('h', {ROW})"))).unwrap();
    }
    let deadline = Instant::now() + PATIENCE;
    while proxy.shared.budget.used() < BUDGET {
        assert!(Instant::now() < deadline, "budget not spent by the stalled sessions: {}", proxy.shared.budget.used());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Another session moves megabytes both ways meanwhile.
    let rt = rt();
    let client = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, &db)).unwrap();
    let big: String = (0..4_000_000u32).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let row = rt.block_on(client.query_one("SELECT md5($1::text), repeat('r', 4000000)", &[&big])).unwrap();
    assert_eq!(row.get::<_, String>(0), hex_md5(big.as_bytes()));
    assert!(row.get::<_, &str>(1).bytes().all(|b| b == b'r'));
    // A Parse larger than what a session holds on its own cannot be gathered whole now.
    let mut preparer = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let sql = format!("SELECT '{}'", "s".repeat(200_000));
    prepare_raw(&mut preparer, "streamed", &sql);
    assert_eq!(proxy.shared.budget.used(), BUDGET, "the stalled sessions hold the budget");
    assert_eq!(proxy.metric("pgcutover_buffered_bytes"), Some(BUDGET as f64));

    for hog in &mut hogs {
        let messages: Vec<_> = std::iter::from_fn(|| Some(hog.expect_msg())).take_while(|m| m.tag != b'Z').collect();
        let row = messages.iter().find(|m| m.tag == b'D').expect("a DataRow");
        assert_eq!(row.body.len(), 2 + 4 + ROW);
        assert!(row.body[6..].iter().all(|&b| b == b'h'));
    }
    // With the budget back, the same Parse is kept.
    let mut kept = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    prepare_raw(&mut kept, "kept", &sql);
    let verdicts = can_move(&proxy);
    let verdict_of = |c: &RawConn| {
        let addr = c.stream.local_addr().unwrap().to_string();
        verdicts.iter().find(|(a, _, _)| *a == addr).map(|(_, v, _)| v.clone()).unwrap_or_else(|| panic!("no session for {addr}: {verdicts:?}"))
    };
    assert!(verdict_of(&preparer).contains("\"streamed\" too large for pgcutover to keep"), "{verdicts:?}");
    assert_eq!(verdict_of(&kept), "yes", "{verdicts:?}");

    // Dropping the runtime ends the tokio-postgres connection.
    drop((client, rt, hogs, preparer, kept));
    let deadline = Instant::now() + PATIENCE;
    while !proxy.shared.registry.is_empty() || proxy.shared.budget.used() > 0 {
        let (sessions, used) = (proxy.shared.registry.len(), proxy.shared.budget.used());
        assert!(Instant::now() < deadline, "{sessions} sessions left, {used} bytes of budget not given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.assert_no_panics();
}
