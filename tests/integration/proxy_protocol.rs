//! The proxy is transparent: real clients (psql, pgbench, tokio-postgres) and hand-made protocol
//! traffic through an in-process pgcutover in front of the shared Postgres 15 server.
use crate::support;

use std::fs;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, TryStreamExt};
use md5::{Digest, Md5};
use support::proxy::{self, expect_fatal, startup_packet, RawConn, PROTOCOL_3_0, PROTOCOL_3_2};
use support::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for 64 MB in a debug build.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

// ------------------------------------------------------------------------------------------------
// psql
// ------------------------------------------------------------------------------------------------

#[test]
fn psql_simple_query_and_copy_in_and_out() {
    let db = old().create_database("pp_psql");
    let proxy = proxy::for_server(old()).start();

    let out = proxy.psql(APP_USER, APP_PASSWORD, &db, "SELECT 1 + 1; SELECT current_user, current_database();").unwrap();
    assert_eq!(out, format!("2\n{APP_USER}|{db}"));

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tsv");
    let output = dir.path().join("out.tsv");
    let mut data = String::new();
    for i in 1..=5000 {
        data.push_str(&format!("{i}\trow {i} ünïcödé \\\\ tab\\there\t{}\n", if i % 7 == 0 { "\\N".to_string() } else { (i * 3).to_string() }));
    }
    fs::write(&input, &data).unwrap();
    let script = format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int);\n\
         \\copy t FROM '{}'\n\
         \\copy (SELECT * FROM t ORDER BY id) TO '{}'\n\
         SELECT count(*), sum(id), count(n) FROM t;\n",
        input.display(),
        output.display()
    );
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.args(["-At", "-f", "-"]);
    let out = proxy::run(cmd, script.as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("COPY 5000").count(), 2, "both \\copy commands report 5000 rows:\n{stdout}");
    assert!(stdout.trim_end().ends_with(&format!("5000|{}|{}", 5000 * 5001 / 2, 5000 - 5000 / 7)), "{stdout}");
    assert_eq!(fs::read_to_string(&output).unwrap(), data, "\\copy out differs from what \\copy in loaded");
    // The rows really are on the server.
    assert_eq!(old().psql(&db, "SELECT count(*) FROM t WHERE v LIKE '%ünïcödé%'"), "5000");
    proxy.assert_no_panics();
}

/// Client encoding LATIN1: bytes go through unchanged, exactly as on a direct connection.
#[test]
fn latin1_client_encoding_round_trip() {
    let db = old().create_database("pp_latin1");
    old().psql(&db, "CREATE TABLE l (id int, v text)");
    let proxy = proxy::for_server(old()).start();
    // "café naïve Æøå ©µÿ" in LATIN1.
    let latin1: &[u8] = b"caf\xe9 na\xefve \xc6\xf8\xe5 \xa9\xb5\xff";
    let utf8 = "café naïve Æøå ©µÿ";
    assert_eq!(latin1.iter().map(|&b| b as char).collect::<String>(), utf8);

    let run_latin1 = |port: u16, id: u32| -> Vec<u8> {
        let mut sql = format!("SHOW client_encoding;\nINSERT INTO l VALUES ({id}, '").into_bytes();
        sql.extend_from_slice(latin1);
        sql.extend_from_slice(format!("');\nSELECT v FROM l WHERE id = {id};\n").as_bytes());
        let mut cmd = proxy::client_tool("psql");
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", &port.to_string(), "-U", APP_USER, "-d", &db, "-f", "-"])
            .env("PGPASSWORD", APP_PASSWORD)
            .env("PGCLIENTENCODING", "LATIN1");
        let out = proxy::run(cmd, &sql);
        assert!(out.status.success(), "psql (port {port}) failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let through_proxy = run_latin1(proxy.port(), 1);
    let direct = run_latin1(old().port, 2);
    let mut expected = b"LATIN1\n".to_vec();
    expected.extend_from_slice(latin1);
    expected.push(b'\n');
    assert_eq!(through_proxy, expected, "through the proxy: {:?}", String::from_utf8_lossy(&through_proxy));
    assert_eq!(through_proxy, direct, "proxy and direct connection differ");
    // Stored as the right characters (server encoding UTF8).
    assert_eq!(old().psql(&db, "SELECT count(DISTINCT v) || ' ' || min(v) FROM l"), format!("1 {utf8}"));
    proxy.assert_no_panics();
}

/// psql's \lo_import / \lo_export go through libpq's large-object API, i.e. FunctionCall messages.
#[test]
fn large_objects_via_function_call() {
    let db = old().create_database("pp_lo");
    let proxy = proxy::for_server(old()).start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("blob.in");
    let output = dir.path().join("blob.out");
    let data = pseudo_random(300_000, 0x5eed);
    fs::write(&input, &data).unwrap();
    let script = format!(
        "\\lo_import '{}'\n\
         \\lo_export :LASTOID '{}'\n\
         SELECT 'size=' || length(lo_get(:LASTOID));\n\
         \\lo_unlink :LASTOID\n\
         SELECT 'left=' || count(*) FROM pg_largeobject_metadata;\n",
        input.display(),
        output.display()
    );
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.args(["-At", "-f", "-"]);
    let out = proxy::run(cmd, script.as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("lo_import "), "{stdout}");
    assert!(stdout.contains("lo_export"), "{stdout}");
    assert!(stdout.contains("size=300000"), "{stdout}");
    assert!(stdout.contains("lo_unlink "), "{stdout}");
    assert!(stdout.contains("left=0"), "{stdout}");
    assert_eq!(fs::read(&output).unwrap(), data, "exported large object differs from the imported file");
    proxy.assert_no_panics();
}

/// FunctionCall ('F') by hand: result ('V') and errors come back; ParameterStatus after a SET
/// reaches the client mid-session.
#[test]
fn raw_function_call_and_parameter_status() {
    let db = old().create_database("pp_fcall");
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let call = |c: &mut RawConn, function: &str, args: [i32; 2]| -> Vec<proxy::Msg> {
        let oid: u32 = c.query_values(&format!("SELECT '{function}'::regproc::oid"))[0].parse().unwrap();
        let mut body = oid.to_be_bytes().to_vec();
        body.extend_from_slice(&1u16.to_be_bytes()); // one argument format code...
        body.extend_from_slice(&1u16.to_be_bytes()); // ...binary, for all arguments
        body.extend_from_slice(&2u16.to_be_bytes());
        for v in args {
            body.extend_from_slice(&4i32.to_be_bytes());
            body.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&1u16.to_be_bytes()); // binary result
        c.send(&proxy::frame(b'F', &body)).unwrap();
        let mut msgs = Vec::new();
        loop {
            let m = c.expect_msg();
            let done = m.tag == b'Z';
            msgs.push(m);
            if done {
                return msgs;
            }
        }
    };
    let msgs = call(&mut c, "int4pl", [40, 2]);
    let tags: String = msgs.iter().map(proxy::Msg::tag).collect();
    assert_eq!(tags, "VZ");
    assert_eq!(msgs[0].body, [&4i32.to_be_bytes()[..], &42i32.to_be_bytes()[..]].concat());
    let msgs = call(&mut c, "int4div", [1, 0]);
    let err = msgs.iter().find(|m| m.tag == b'E').expect("division by zero error");
    assert_eq!(err.code(), "22012");
    assert_eq!(msgs.last().unwrap().body, b"I");

    let msgs = c.simple_query("SET application_name = 'mid-session'");
    let status: Vec<_> = msgs.iter().filter(|m| m.tag == b'S').map(|m| m.body.clone()).collect();
    assert_eq!(status, vec![b"application_name\0mid-session\0".to_vec()]);
    assert_eq!(c.query_values("SELECT 'still here'"), vec!["still here"]);
    proxy.assert_no_panics();
}

#[test]
fn pgbench_simple_extended_prepared() {
    let db = old().create_database("pp_bench");
    let proxy = proxy::for_server(old()).start();
    let port = proxy.port().to_string();
    let env = [("PGPASSWORD", APP_PASSWORD)];
    let conn = ["-h", HOST, "-p", port.as_str(), "-U", APP_USER];
    let mut args = vec!["-i", "-s", "1", "-q"];
    args.extend_from_slice(&conn);
    args.push(&db);
    pgbench(&args, &env).assert_success();

    let mut total = 0;
    for mode in ["simple", "extended", "prepared"] {
        // A count (well under a second on a quiet machine), not a duration: a slow machine still does
        // the same work instead of running out of time while its clients connect.
        let mut args = vec!["-n", "-M", mode, "-c", "8", "-j", "2", "-t", "50"];
        args.extend_from_slice(&conn);
        args.push(&db);
        let r = pgbench(&args, &env);
        r.assert_success();
        assert_eq!(r.failed, 0, "-M {mode}: {r}");
        assert!(r.processed > 0, "-M {mode}: {r}");
        assert!(!r.stderr.contains("error"), "-M {mode}: {r}");
        total += r.processed;
    }
    // Every processed transaction committed exactly once (-n keeps the history).
    let check = old().psql(
        &db,
        "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || \
                ((SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history) AND \
                 (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(delta) FROM pgbench_history) AND \
                 (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history))",
    );
    assert_eq!(check, format!("{total} true"));
    proxy.assert_no_panics();
}

#[test]
fn tls_to_clients_and_require_tls() {
    let db = old().create_database("pp_tls");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = proxy::self_signed_cert(dir.path());
    let proxy = proxy::for_server(old()).tls(&cert, &key).require_tls().start();

    // psql with sslmode=verify-ca against our certificate: TLS is really negotiated with it.
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.env("PGSSLMODE", "verify-ca").env("PGSSLROOTCERT", &cert).args(["-At", "-c", "\\conninfo", "-c", "SELECT 40 + 2"]);
    let out = proxy::run(cmd, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "psql over TLS failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SSL connection (protocol: TLSv1."), "{stdout}");
    assert!(stdout.trim_end().ends_with("42"), "{stdout}");

    // Without TLS: refused with 28000 (psql shows the message; tokio-postgres gives the code).
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.env("PGSSLMODE", "disable").args(["-At", "-c", "SELECT 1"]);
    let out = proxy::run(cmd, b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires an encrypted connection"), "{stderr}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, &db)).expect_err("plain connection must be refused");
    assert_eq!(code(&err), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{err:?}");
    proxy.assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// tokio-postgres
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokio_postgres_simple_extended_and_binary_parameters() {
    let db = old().create_database("pp_tpg");
    let proxy = proxy::for_server(old()).start();
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();

    // Simple protocol, several statements in one Query.
    let msgs = client
        .simple_query("CREATE TABLE kv (id int8 PRIMARY KEY, b bytea, f float8[], t text[]); SELECT 'x' || 1, NULL::text; SELECT 2")
        .await
        .unwrap();
    assert_eq!(simple_rows(&msgs), vec![vec![Some("x1".to_string()), None], vec![Some("2".to_string())]]);

    // Extended protocol with binary parameters and results.
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let floats = vec![0.0, -0.0, 1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY, f64::NEG_INFINITY, -123.456, 1e-300];
    let texts: Vec<Option<&str>> = vec![Some("a,b"), None, Some("ünï \"quoted\" {brace} \\"), Some("")];
    let insert = client.prepare("INSERT INTO kv VALUES ($1, $2, $3, $4)").await.unwrap();
    let ids = [i64::MIN, -1, 0, i64::MAX];
    for id in ids {
        let b: Vec<u8> = bytes.iter().map(|x| x.wrapping_add(id as u8)).collect();
        assert_eq!(client.execute(&insert, &[&id, &b, &floats, &texts]).await.unwrap(), 1);
    }
    let rows = client.query("SELECT id, b, f, t, md5(b) FROM kv ORDER BY id", &[]).await.unwrap();
    assert_eq!(rows.len(), 4);
    for (row, id) in rows.iter().zip(ids) {
        assert_eq!(row.get::<_, i64>(0), id);
        let b: Vec<u8> = row.get(1);
        let expected: Vec<u8> = bytes.iter().map(|x| x.wrapping_add(id as u8)).collect();
        assert_eq!(b, expected);
        assert_eq!(row.get::<_, String>(4), md5_hex(&expected));
        let f: Vec<f64> = row.get(2);
        assert_eq!(f.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), floats.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
        let t: Vec<Option<String>> = row.get(3);
        assert_eq!(t, texts.iter().map(|s| s.map(str::to_string)).collect::<Vec<_>>());
    }

    // Unnamed statements with inferred parameter types.
    let row = client
        .query_one("SELECT $1::int8 + 1, $2::bytea || '\\x00ff'::bytea, array_length($3::float8[], 1)", &[&41i64, &vec![1u8, 2], &floats])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, Vec<u8>>(1), vec![1, 2, 0, 255]);
    assert_eq!(row.get::<_, i32>(2), floats.len() as i32);

    // An error in the extended protocol, then the session goes on.
    let err = client.query("SELECT 1 / $1::int", &[&0i32]).await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::DIVISION_BY_ZERO), "{err:?}");

    // Pipelining: many queries in flight on one connection, answers in order.
    let stmt = client.prepare("SELECT $1::int4 * 2").await.unwrap();
    let futures: Vec<_> = (0..100i32).map(|i| {
        let (client, stmt) = (&client, &stmt);
        async move { client.query_one(stmt, &[&i]).await.map(|r| r.get::<_, i32>(0)) }
    }).collect();
    let results = futures::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (0..100).map(|i| i * 2).collect::<Vec<_>>());

    // A transaction that rolls back leaves nothing behind.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM kv", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(client.query_one("SELECT count(*) FROM kv", &[]).await.unwrap().get::<_, i64>(0), 4);
    proxy.assert_no_panics();
}

#[tokio::test]
async fn copy_in_and_out_with_tokio_postgres() {
    let db = old().create_database("pp_copy");
    let proxy = proxy::for_server(old()).start();
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    client.batch_execute("CREATE TABLE c (id int PRIMARY KEY, v text)").await.unwrap();

    let mut all = BytesMut::new();
    let sink = client.copy_in("COPY c (id, v) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    for chunk in 0..20 {
        let mut buf = BytesMut::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            buf.extend_from_slice(format!("{i}\tvalue {i} with some text to make it longer ✓\n").as_bytes());
        }
        all.extend_from_slice(&buf);
        sink.send(buf.freeze()).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20_000);

    let stream = client.copy_out("COPY (SELECT id, v FROM c ORDER BY id) TO STDOUT").await.unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let out: Vec<u8> = chunks.concat();
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 20_000);
    assert!(out == all[..], "COPY OUT returned different data than COPY IN loaded");

    // A COPY that fails on the server (bad data): the error reaches the client and the
    // connection goes on.
    let sink = client.copy_in("COPY c (id, v) FROM STDIN").await.unwrap();
    futures::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n")).await.unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{err:?}");
    assert_eq!(client.query_one("SELECT count(*) FROM c", &[]).await.unwrap().get::<_, i64>(0), 20_000);
    proxy.assert_no_panics();
}

#[tokio::test]
async fn listen_notify_arrives_asynchronously() {
    let db = old().create_database("pp_notify");
    let proxy = proxy::for_server(old()).start();
    let (listener, mut messages) = proxy.connect_with_messages(APP_USER, APP_PASSWORD, &db).await.unwrap();
    listener.batch_execute("LISTEN chan_a; LISTEN \"Chan B\"").await.unwrap();

    let notifier = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let notifier_pid: i32 = notifier.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    notifier.batch_execute("NOTIFY chan_a, 'hello'").await.unwrap();
    notifier.query_one("SELECT pg_notify('Chan B', 'wörld')", &[]).await.unwrap();
    notifier.batch_execute("NOTIFY not_listened, 'x'").await.unwrap();

    // The listener is idle: the notifications arrive without it sending anything.
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(support::PATIENCE, messages.recv()).await {
            Ok(Some(AsyncMessage::Notification(n))) => got.push((n.channel().to_string(), n.payload().to_string(), n.process_id())),
            Ok(Some(_)) => {}
            Ok(None) => panic!("listener connection ended"),
            Err(_) => panic!("notifications not delivered within 10 s; got {got:?}"),
        }
    }
    assert_eq!(
        got,
        vec![("chan_a".to_string(), "hello".to_string(), notifier_pid), ("Chan B".to_string(), "wörld".to_string(), notifier_pid)]
    );
    // Nothing else (the unlistened channel) arrives.
    assert!(tokio::time::timeout(Duration::from_millis(300), messages.recv()).await.is_err());
    assert_eq!(listener.query_one("SELECT count(*) FROM pg_listening_channels()", &[]).await.unwrap().get::<_, i64>(0), 2);
    proxy.assert_no_panics();
}

#[tokio::test]
async fn notices_pass_through() {
    let db = old().create_database("pp_notice");
    let proxy = proxy::for_server(old()).start();
    let (client, mut messages) = proxy.connect_with_messages(APP_USER, APP_PASSWORD, &db).await.unwrap();
    client
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful' USING DETAIL = 'some detail'; END $$")
        .await
        .unwrap();
    let mut notices = Vec::new();
    while notices.len() < 2 {
        match tokio::time::timeout(support::PATIENCE, messages.recv()).await {
            Ok(Some(AsyncMessage::Notice(n))) => notices.push((n.severity().to_string(), n.code().code().to_string(), n.message().to_string(), n.detail().map(str::to_string))),
            Ok(Some(_)) => {}
            Ok(None) => panic!("connection ended"),
            Err(_) => panic!("notices not delivered; got {notices:?}"),
        }
    }
    assert_eq!(
        notices,
        vec![
            ("NOTICE".to_string(), "00000".to_string(), "hello 42".to_string(), None),
            ("WARNING".to_string(), "01000".to_string(), "careful".to_string(), Some("some detail".to_string())),
        ]
    );

    // psql prints them too.
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.args(["-At", "-c", "DO $$ BEGIN RAISE NOTICE 'from psql %', 7; END $$"]);
    let out = proxy::run(cmd, b"");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOTICE:  from psql 7"), "{}", String::from_utf8_lossy(&out.stderr));
    proxy.assert_no_panics();
}

/// Sessions of this database running `SELECT pg_sleep(...)` right now.
const SLEEPING: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                        AND state = 'active' AND query LIKE 'SELECT pg_sleep(%'";

/// Wait (sync) until a pg_sleep runs in `db` on old.
pub(crate) fn wait_for_sleeper(db: &str) {
    let deadline = Instant::now() + support::PATIENCE;
    while old().psql(db, SLEEPING) == "0" {
        assert!(Instant::now() < deadline, "pg_sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn cancel_request_through_the_proxy() {
    let db = old().create_database("pp_cancel");
    let proxy = proxy::for_server(old()).start();
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let token = client.cancel_token();
    let started = Instant::now();
    let db2 = db.clone();
    let canceller = tokio::spawn(async move {
        // Cancel once the query really runs on the server.
        let (observer, conn) = tokio_postgres::connect(&old().super_url(&db2), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let deadline = Instant::now() + support::PATIENCE;
        while observer.query_one(SLEEPING, &[]).await.unwrap().get::<_, i64>(0) == 0 {
            assert!(Instant::now() < deadline, "pg_sleep never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let err = client.simple_query("SELECT pg_sleep(300)").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    assert!(started.elapsed() < support::PATIENCE, "cancel took {:?}", started.elapsed());
    canceller.await.unwrap().unwrap();
    // The session goes on.
    assert_eq!(client.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    proxy.assert_no_panics();
}

/// A CancelRequest with the wrong secret cancels nothing; the right one (the key the proxy gave
/// the client, not the server's) cancels.
#[test]
fn cancel_request_needs_the_right_key() {
    let db = old().create_database("pp_cancel_key");
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    let after = c.authenticate(APP_PASSWORD).unwrap();
    let key = after.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(key.body.len(), 8, "3.0 keys are pid + 4-byte secret");
    let (pid, secret) = (key.u32_at(0), key.body[4..].to_vec());
    let server_pid: u32 = c.query_values("SELECT pg_backend_pid()")[0].parse().unwrap();

    let cancel = |pid: u32, secret: &[u8]| {
        let mut payload = 80_877_102u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&pid.to_be_bytes());
        payload.extend_from_slice(secret);
        let mut p = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
        p.extend_from_slice(&payload);
        let mut s = RawConn::connect(proxy.addr);
        s.send(&p).unwrap();
        // The proxy closes the cancel connection without answering.
        let (msgs, closed) = s.read_until_closed(support::PATIENCE);
        assert!(msgs.is_empty() && closed, "{msgs:?}");
    };

    let wrong: Vec<u8> = secret.iter().map(|b| b ^ 0x5a).collect();
    // Long enough to be seen running by a poll on a slow machine; it ends on its own.
    c.send(&proxy::query_frame("SELECT pg_sleep(8)")).unwrap();
    wait_for_sleeper(&db);
    cancel(pid, &wrong);
    if server_pid != pid {
        cancel(server_pid, &secret);
    }
    let msgs: Vec<_> = std::iter::from_fn(|| Some(c.expect_msg())).take_while(|m| m.tag != b'Z').collect();
    assert!(msgs.iter().all(|m| m.tag != b'E'), "a wrong key cancelled the query: {:?}", msgs.iter().map(|m| m.fields()).collect::<Vec<_>>());

    let started = Instant::now();
    c.send(&proxy::query_frame("SELECT pg_sleep(300)")).unwrap();
    wait_for_sleeper(&db);
    cancel(pid, &secret);
    let msgs: Vec<_> = std::iter::from_fn(|| Some(c.expect_msg())).take_while(|m| m.tag != b'Z').collect();
    let err = msgs.iter().find(|m| m.tag == b'E').expect("the query was not cancelled");
    assert_eq!(err.code(), "57014");
    assert!(started.elapsed() < support::PATIENCE);
    proxy.assert_no_panics();
}

#[tokio::test]
async fn value_of_64_mb_round_trips() {
    let db = old().create_database("pp_big");
    let proxy = proxy::for_server(old()).start();
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    client.batch_execute("CREATE TABLE big (id int, b bytea)").await.unwrap();

    const SIZE: usize = 64 << 20;
    let data = pseudo_random(SIZE, 0x1234_5678_9abc_def0);
    let digest = md5_hex(&data);
    // Client → server: one 64 MB Bind (binary parameter).
    assert_eq!(client.execute("INSERT INTO big VALUES (1, $1)", &[&data]).await.unwrap(), 1);
    let row = client.query_one("SELECT length(b), md5(b) FROM big WHERE id = 1", &[]).await.unwrap();
    assert_eq!((row.get::<_, i32>(0) as usize, row.get::<_, String>(1)), (SIZE, digest.clone()));
    // Server → client: one 64 MB DataRow (binary).
    let row = client.query_one("SELECT b FROM big WHERE id = 1", &[]).await.unwrap();
    let back: Vec<u8> = row.get(0);
    assert_eq!(back.len(), SIZE);
    assert!(back == data, "64 MB bytea came back different");
    drop(back);

    // 64 MB of text over the simple protocol (text DataRow), checked by length and md5.
    let expected = {
        let mut t = "pgcutover-64MB-".repeat(SIZE / 15 + 1);
        t.truncate(SIZE);
        t
    };
    let n = SIZE / 15 + 1;
    let msgs = client
        .simple_query(&format!("SELECT left(repeat('pgcutover-64MB-', {n}), {SIZE}), md5(left(repeat('pgcutover-64MB-', {n}), {SIZE}))"))
        .await
        .unwrap();
    let rows = simple_rows(&msgs);
    let text = rows[0][0].as_ref().expect("text value");
    assert_eq!(text.len(), SIZE);
    assert!(*text == expected, "64 MB text came back different");
    assert_eq!(rows[0][1].as_deref(), Some(md5_hex(expected.as_bytes()).as_str()));
    proxy.assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// Hand-made startup traffic
// ------------------------------------------------------------------------------------------------

/// A 3.2 StartupMessage with a `_pq_.` option: NegotiateProtocolVersion (3.0, option listed),
/// then authentication and the session proceed on 3.0.
#[test]
fn protocol_3_2_gets_negotiate_protocol_version() {
    let db = old().create_database("pp_proto32");
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(
        PROTOCOL_3_2,
        &[("user", APP_USER), ("database", &db), ("_pq_.foo", "bar"), ("application_name", "raw32")],
    ))
    .unwrap();
    let v = c.expect_msg();
    assert_eq!(v.tag(), 'v', "expected NegotiateProtocolVersion, got {:?} {:?}", v.tag(), v.fields());
    assert_eq!(v.u32_at(0), 0, "newest minor version supported");
    assert_eq!(v.u32_at(4), 1, "number of unrecognized options");
    assert_eq!(&v.body[8..], b"_pq_.foo\0");
    let after = c.authenticate(APP_PASSWORD).unwrap_or_else(|e| panic!("login after negotiation failed: {e:?}"));
    let params: Vec<(String, String)> = after
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| {
            let mut parts = m.body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned());
            (parts.next().unwrap(), parts.next().unwrap())
        })
        .collect();
    assert!(params.contains(&("application_name".into(), "raw32".into())), "{params:?}");
    assert!(params.iter().any(|(k, v)| k == "server_version" && v.starts_with("15")), "{params:?}");
    let key = after.iter().find(|m| m.tag == b'K').expect("BackendKeyData");
    assert_eq!(key.body.len(), 8, "3.0 BackendKeyData");
    assert_eq!(c.query_values("SELECT current_setting('application_name') || '/' || current_user"), vec![format!("raw32/{APP_USER}")]);
    proxy.assert_no_panics();
}

#[test]
fn replication_connections_are_refused() {
    let db = old().create_database("pp_repl");
    let proxy = proxy::for_server(old()).start();
    for value in ["database", "true"] {
        let mut c = RawConn::connect(proxy.addr);
        c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db), ("replication", value)])).unwrap();
        let (msgs, closed) = c.read_until_closed(support::PATIENCE);
        let f = expect_fatal(&msgs, "0A000");
        assert!(f[&'M'].contains("replication"), "{f:?}");
        assert!(closed, "connection left open after the refusal");
    }
    // replication=false is an ordinary session.
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db), ("replication", "false")])).unwrap();
    c.authenticate(APP_PASSWORD).unwrap();
    assert_eq!(c.query_values("SELECT 1"), vec!["1"]);
    proxy.assert_no_panics();
}

/// Without TLS configured, SSLRequest and GSSENCRequest get 'N' and the startup continues in
/// the clear.
#[test]
fn ssl_and_gss_requests_declined_without_tls() {
    let db = old().create_database("pp_nossl");
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::connect(proxy.addr);
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap(); // GSSENCRequest 80877104
    assert_eq!(c.recv_byte().unwrap(), b'N');
    c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap(); // SSLRequest 80877103
    assert_eq!(c.recv_byte().unwrap(), b'N');
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    c.authenticate(APP_PASSWORD).unwrap();
    assert_eq!(c.query_values("SELECT 'clear'"), vec!["clear"]);

    // psql with sslmode=prefer falls back to a plain connection.
    let mut cmd = proxy.psql_command(APP_USER, APP_PASSWORD, &db);
    cmd.env("PGSSLMODE", "prefer").args(["-At", "-c", "SELECT 5"]);
    let out = proxy::run(cmd, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    proxy.assert_no_panics();
}
