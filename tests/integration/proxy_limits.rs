//! Robustness: limits, malformed input, unreachable or dying servers, configuration errors,
//! the command line and the metrics endpoint. Each bad case also checks that another session
//! on the same proxy keeps working.
use crate::support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use support::proxy::{self, expect_fatal, query_frame, startup_packet, RawConn, TestProxy, PROTOCOL_3_0};
use support::*;
use tokio_postgres::error::SqlState;

/// A session that must keep working while other connections misbehave.
struct Witness {
    conn: RawConn,
    n: u64,
}

impl Witness {
    fn open(proxy: &TestProxy, db: &str) -> Witness {
        let mut conn = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, db);
        assert_eq!(conn.query_values("SELECT 'witness'"), vec!["witness"]);
        Witness { conn, n: 0 }
    }

    fn check(&mut self) {
        self.n += 1;
        let got = self.conn.query_values(&format!("SELECT {} + 1", self.n));
        assert_eq!(got, vec![(self.n + 1).to_string()], "the witness session broke");
    }
}

fn open_witness(db: &str, proxy: &TestProxy) -> Witness {
    Witness::open(proxy, db)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[tokio::test]
async fn max_clients_refuses_the_extra_client_with_53300() {
    let db = old().create_database("pl_maxclients");
    let proxy = proxy::for_server(old()).max_clients(2).start();
    let a = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let b = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let err = proxy.connect(APP_USER, APP_PASSWORD, &db).await.expect_err("third client accepted");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err:?}");
    assert!(err.as_db_error().unwrap().message().contains("too many clients"), "{err:?}");
    // The two sessions keep working.
    assert_eq!(a.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(b.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    // A slot frees up when a session ends.
    drop(b);
    let deadline = Instant::now() + support::PATIENCE;
    let c = loop {
        match proxy.connect(APP_USER, APP_PASSWORD, &db).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot not freed after a session ended: {e:?}"),
        }
    };
    assert_eq!(c.query_one("SELECT 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    assert_eq!(a.query_one("SELECT 4", &[]).await.unwrap().get::<_, i32>(0), 4);
    // At the limit, a CancelRequest (a connection of its own) still gets through.
    let token = a.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..100 {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let err = a.simple_query("SELECT pg_sleep(300)").await.expect_err("cancel at max_clients did not get through");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    canceller.abort();
    assert_eq!(proxy.metrics().matches("reason=\"too_many_clients\"} ").count(), 1, "rejection metric");
    proxy.assert_no_panics();
}

#[test]
fn oversized_message_gets_08p01_and_close() {
    const LIMIT: usize = 1 << 20;
    let db = old().create_database("pl_maxmsg");
    let proxy = proxy::for_server(old()).max_message_size(LIMIT).start();
    let mut witness = open_witness(&db, &proxy);

    // Just under the limit passes.
    let mut ok = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let sql = format!("SELECT length('{}')", "x".repeat(LIMIT - 100));
    assert!(query_frame(&sql).len() - 1 <= LIMIT);
    assert_eq!(ok.query_values(&sql), vec![(LIMIT - 100).to_string()]);

    // A 2 MiB Query after a successful startup: FATAL 08P01, then the proxy closes.
    let mut bad = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let frame = query_frame(&format!("SELECT '{}'", "y".repeat(2 << 20)));
    let mut writer = bad.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The proxy may close before reading it all; write errors are expected then.
        let _ = writer.write_all(&frame);
    });
    let (msgs, closed) = bad.read_until_closed(support::PATIENCE);
    let f = expect_fatal(&msgs, "08P01");
    assert!(f[&'M'].contains("exceeds"), "{f:?}");
    assert!(closed, "connection left open after an oversized message");
    sender.join().unwrap();

    witness.check();
    assert_eq!(ok.query_values("SELECT 'still fine'"), vec!["still fine"]);
    proxy.assert_no_panics();
}

/// Before authentication only small messages are accepted (Postgres: 65535 bytes), whatever
/// max_message_size says: an anonymous client cannot make the proxy buffer a big frame.
#[test]
fn oversized_message_before_authentication_is_refused() {
    let db = old().create_database("pl_preauth");
    // Default max_message_size (1 GiB); a startup timeout far past the bound asserted below.
    let proxy = proxy::for_server(old()).startup_timeout("300s").start();
    let mut witness = open_witness(&db, &proxy);
    for (what, len) in [("512 MiB", 512u32 << 20), ("just over 64 KiB", 65_535 + 5)] {
        let mut c = RawConn::connect(proxy.addr);
        c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
        let sasl = c.expect_msg();
        assert_eq!((sasl.tag(), sasl.u32_at(0)), ('R', 10));
        let started = Instant::now();
        let mut header = vec![b'p'];
        header.extend_from_slice(&len.to_be_bytes());
        c.send(&header).unwrap();
        let _ = c.send(&vec![b'n'; 1024]);
        let (msgs, closed) = c.read_until_closed(support::PATIENCE);
        let f = expect_fatal(&msgs, "08P01");
        assert!(f[&'M'].contains("exceeds"), "{what}: {f:?}");
        assert!(closed, "{what}: not closed");
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: refused only after {:?}", started.elapsed());
        witness.check();
    }
    // A SCRAM exchange (small messages) still works, as does a big message after login.
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let sql = format!("SELECT length('{}')", "z".repeat(200_000));
    assert_eq!(c.query_values(&sql), vec!["200000"]);
    proxy.assert_no_panics();
}

/// Each malformed startup packet gets what Postgres answers: nothing at all for a packet that
/// is no startup packet, the version-2 format for a protocol below 3, else a FATAL.
#[test]
fn malformed_startup_packets_get_postgres_answers() {
    let db = old().create_database("pl_badstartup");
    let proxy = proxy::for_server(old()).start();
    let mut witness = open_witness(&db, &proxy);

    let mut unterminated = startup_packet(PROTOCOL_3_0, &[("user", APP_USER)]);
    unterminated.truncate(unterminated.len() - 2);
    let len = unterminated.len() as u32;
    unterminated[..4].copy_from_slice(&len.to_be_bytes());
    // None: closed without a reply; Some("v2"): the old format; else a FATAL with this code.
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("length too small", vec![0, 0, 0, 3, 0, 3, 0, 0], None),
        ("length huge", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, b'u'], None),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), None),
        ("unknown protocol code", startup_packet(1234, &[("user", APP_USER)]), Some("v2")),
        ("protocol 2.0", startup_packet(2 << 16, &[("user", APP_USER)]), Some("v2")),
        ("protocol 4.0", startup_packet(4 << 16, &[("user", APP_USER)]), Some("0A000")),
        ("no user", startup_packet(PROTOCOL_3_0, &[("database", "x")]), Some("28000")),
        ("unterminated parameters", unterminated, Some("08P01")),
    ];
    for (what, bytes, expected) in cases {
        let mut c = RawConn::connect(proxy.addr);
        c.send(&bytes).unwrap();
        let mut reply = Vec::new();
        c.stream.read_to_end(&mut reply).unwrap_or_else(|e| panic!("{what}: {e}"));
        match expected {
            None => assert!(reply.is_empty(), "{what}: {:?}", String::from_utf8_lossy(&reply)),
            Some("v2") => assert!(reply.starts_with(b"EFATAL:  unsupported frontend protocol"), "{what}: {reply:?}"),
            Some(code) => {
                assert_eq!(reply.first(), Some(&b'E'), "{what}: {reply:?}");
                let f = proxy::error_fields(&reply[5..]);
                assert_eq!((f[&'S'].as_str(), f[&'C'].as_str()), ("FATAL", code), "{what}: {f:?}");
            }
        }
        witness.check();
    }
    proxy.assert_no_panics();
}

#[test]
fn startup_timeout_closes_silent_connections() {
    let db = old().create_database("pl_timeout");
    // Long enough for the witness's own login on a slow machine.
    let proxy = proxy::for_server(old()).startup_timeout("5s").start();
    let mut witness = open_witness(&db, &proxy);
    let started = Instant::now();
    // Nothing at all; half a startup packet; a startup packet but no password.
    let mut silent = RawConn::connect(proxy.addr);
    let mut partial = RawConn::connect(proxy.addr);
    partial.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER)])[..6]).unwrap();
    let mut no_password = RawConn::connect(proxy.addr);
    no_password.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    for (what, c) in [("silent", &mut silent), ("partial", &mut partial), ("no password", &mut no_password)] {
        let (msgs, closed) = c.read_until_closed(support::PATIENCE);
        assert!(closed, "{what}: still open after {:?}", started.elapsed());
        assert!(msgs.iter().all(|m| m.tag != b'Z'), "{what}: {msgs:?}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(4900) && elapsed < Duration::from_secs(35), "closed after {elapsed:?}");
    witness.check();
    // The witness outlived the startup timeout: it applies to the startup only.
    std::thread::sleep(Duration::from_millis(200));
    witness.check();
    proxy.assert_no_panics();
}

#[test]
fn wrong_password_gets_28p01() {
    let db = old().create_database("pl_wrongpw");
    let proxy = proxy::for_server(old()).start();
    let mut witness = open_witness(&db, &proxy);
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    let (_, seen) = c.authenticate("wrong-password").expect_err("wrong password accepted");
    expect_fatal(&seen, "28P01");
    let (_, closed) = c.read_until_closed(support::PATIENCE);
    assert!(closed);
    witness.check();
    let failures = proxy.metric("pgcutover_auth_failures_total");
    assert_eq!(failures, Some(1.0));
    proxy.assert_no_panics();
}

#[test]
fn unreachable_server_gets_08006_naming_the_address() {
    let port = proxy::closed_port();
    let url = format!("postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres");
    let proxy = proxy::ProxyBuilder::new(url).start();
    let rt = rt();
    for _ in 0..2 {
        let started = Instant::now();
        let err = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, "postgres")).expect_err("connected to nothing");
        assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
        let db = err.as_db_error().unwrap();
        assert_eq!(db.severity(), "FATAL");
        assert!(db.message().contains(&format!("127.0.0.1:{port}")), "{}", db.message());
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    }
    // The proxy itself is fine: metrics answer and count the errors.
    let metrics = proxy.metrics();
    assert!(metrics.contains("pgcutover_errors_total{class=\"08\"} 2"), "{metrics}");
    proxy.assert_no_panics();
}

/// The server goes away under an open session: the client gets an error and the connection
/// closes; the proxy keeps accepting and serves again once the server is back.
#[test]
fn server_dying_mid_session() {
    let server = support::start(15);
    let db = server.create_database("pl_dies");
    let proxy = proxy::for_server(&server).start();
    let mut victim = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(victim.query_values("SELECT 'alive'"), vec!["alive"]);
    let mut busy = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    busy.send(&query_frame("SELECT pg_sleep(300)")).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    server.stop_immediate();
    let started = Instant::now();
    for (what, c) in [("idle", &mut victim), ("busy", &mut busy)] {
        let (msgs, closed) = c.read_until_closed(support::PATIENCE);
        let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').map(|m| m.fields()).collect();
        assert!(
            errors.iter().any(|f| f.get(&'S').map(String::as_str) == Some("FATAL")),
            "{what}: no FATAL before the close: {errors:?}"
        );
        assert!(closed, "{what}: connection not closed");
        // The proxy's own word on it, naming the server.
        let lost = expect_fatal(&msgs, "08006");
        assert!(lost[&'M'].contains("server connection lost"), "{what}: {lost:?}");
    }
    assert!(started.elapsed() < support::PATIENCE);

    // Still accepting: a new client gets a clear 08006 while the server is down...
    let rt = rt();
    let err = rt.block_on(proxy.connect(APP_USER, APP_PASSWORD, &db)).expect_err("connected to a stopped server");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
    // ...and a working session once it is back.
    server.start_again();
    let mut again = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(again.query_values("SELECT 'back'"), vec!["back"]);
    assert_eq!(proxy.shared.registry.len(), 1, "sessions of the dead server still registered");
    proxy.assert_no_panics();
}

#[test]
fn random_bytes_do_not_hurt_the_proxy() {
    let db = old().create_database("pl_random");
    // A small frame limit so that random frame lengths are refused at once instead of being
    // waited for (up to the default 1 GiB).
    let proxy = proxy::for_server(old()).max_message_size(64 << 10).start();
    let mut witness = open_witness(&db, &proxy);
    let mut rng = rand::rng();
    let mut threads = Vec::new();
    for i in 0..12 {
        let mut noise = vec![0u8; 4096 + (rng.next_u32() % 4096) as usize];
        rng.fill_bytes(&mut noise);
        let addr = proxy.addr;
        let db = db.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = match i % 4 {
                // Pure noise.
                0 => RawConn::connect(addr),
                // A plausible startup length, then noise.
                1 => {
                    let mut c = RawConn::connect(addr);
                    let _ = c.send(&[0, 0, 0, 64, 0, 3, 0, 0]);
                    c
                }
                // SSLRequest (declined), then noise.
                2 => {
                    let mut c = RawConn::connect(addr);
                    let _ = c.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
                    assert_eq!(c.recv_byte().unwrap(), b'N');
                    c
                }
                // Logged in, then noise as "frames".
                _ => RawConn::login(addr, APP_USER, APP_PASSWORD, &db),
            };
            let _ = c.send(&noise);
            let (msgs, closed) = c.read_until_closed(support::PATIENCE);
            (i, closed, msgs.iter().any(|m| m.tag == b'E'))
        }));
    }
    for t in threads {
        let (i, closed, error) = t.join().unwrap();
        assert!(closed, "noisy connection {i} left open");
        // Noise where a startup packet belongs (cases 0 and 2) is no startup packet: closed
        // without a reply, as Postgres does.
        assert!(error || matches!(i % 4, 0 | 2), "noisy connection {i} closed without an ErrorResponse");
    }
    witness.check();
    let mut fresh = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(fresh.query_values("SELECT 'fresh'"), vec!["fresh"]);
    proxy.assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// The binary: configuration errors and help
// ------------------------------------------------------------------------------------------------

fn pgcutover() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgcutover"));
    c.env_remove("PGCUTOVER_LOG");
    c
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = proxy::self_signed_cert(dir.path());
    let url = format!("postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:1/postgres");
    let cases = [
        ("unknown key", format!("listen = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n[old]\nurl = \"{url}\"\n"), "listen_adress"),
        ("wrong type", format!("max_clients = \"many\"\n[old]\nurl = \"{url}\"\n"), "max_clients"),
        ("bad auth", format!("auth = \"kerberos\"\n[old]\nurl = \"{url}\"\n"), "auth"),
        ("bad old url", "auth = \"trust\"\n[old]\nurl = \"mysql://x\"\n".to_string(), "old.url"),
        ("bad duration", format!("auth = \"trust\"\nstartup_timeout = \"soon\"\n[old]\nurl = \"{url}\"\n"), "startup_timeout"),
        ("bad listen", format!("auth = \"trust\"\nlisten = \"nowhere\"\n[old]\nurl = \"{url}\"\n"), "listen"),
        ("user without credential", format!("[old]\nurl = \"{url}\"\n[[users]]\nname = \"u\"\n"), "users[0]"),
        ("unknown key in a table", format!("auth = \"trust\"\n[old]\nurl = \"{url}\"\nurll = \"x\"\n"), "old.urll"),
        ("bad sslmode", format!("auth = \"trust\"\n[old]\nurl = \"{url}\"\nsslmode = \"sometimes\"\n"), "old.sslmode"),
        ("bad cutover policy", format!("auth = \"trust\"\n[old]\nurl = \"{url}\"\n[cutover]\nidle_in_transaction = \"wait\"\n"), "cutover.idle_in_transaction"),
        ("missing TLS certificate", format!("auth = \"trust\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n[old]\nurl = \"{url}\"\n"), "tls_cert"),
        ("TLS key that is no key", format!("auth = \"trust\"\ntls_cert = \"{cert}\"\ntls_key = \"{cert}\"\n[old]\nurl = \"{url}\"\n", cert = cert.display()), "tls_key"),
        ("zero workers", format!("auth = \"trust\"\nworkers = 0\n[old]\nurl = \"{url}\"\n"), "workers"),
        ("require_tls without TLS", format!("auth = \"trust\"\nrequire_tls = true\n[old]\nurl = \"{url}\"\n"), "require_tls"),
    ];
    for (what, text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = pgcutover().arg("serve").arg("--config").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit {:?}, stderr {stderr}", out.status);
        assert!(stderr.contains(key), "{what}: stderr does not name {key:?}: {stderr}");
        assert!(!stderr.contains(SUPERUSER_PASSWORD), "{what}: stderr shows a password: {stderr}");
    }
    // A missing file is a config error too.
    let out = pgcutover().args(["serve", "--config", "/nonexistent/pgcutover.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // Flags override the file and are checked the same way.
    let out = pgcutover().args(["serve", "--auth", "trust", "--old", "postgres://u@h:1/d", "--listen", "bad"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[test]
fn help_mentions_every_option() {
    let out = pgcutover().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "admin"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let out = pgcutover().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--config",
        "--listen",
        "--old",
        "--new",
        "--admin-listen",
        "--admin-socket",
        "--metrics-listen",
        "--auth",
        "--max-clients",
        "--workers",
        "--tls-cert",
        "--tls-key",
    ] {
        assert!(text.contains(option), "serve --help lacks {option}:\n{text}");
    }
    let out = pgcutover().args(["admin", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in ["--addr", "--user", "--password"] {
        assert!(text.contains(option), "admin --help lacks {option}:\n{text}");
    }
    let out = pgcutover().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    // An unknown flag is a usage error (exit 2).
    let out = pgcutover().args(["serve", "--no-such-flag"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ------------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_endpoint_counts_and_hides_passwords() {
    let db = old().create_database("pl_metrics");
    let proxy = proxy::for_server(old()).start();
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    for i in 0..5 {
        let msgs = client.simple_query(&format!("SELECT {i}")).await.unwrap();
        assert_eq!(msgs.len(), 3);
    }
    client.batch_execute("BEGIN; SELECT 1; SELECT 2; COMMIT").await.unwrap();
    let _ = proxy.connect(APP_USER, "wrong", &db).await.expect_err("wrong password accepted");
    let _ = client.simple_query("SELECT 1/0").await.expect_err("division by zero");
    // tokio-postgres returns the error before the ReadyForQuery behind it: one more round trip
    // so the counters below are settled.
    client.simple_query("SELECT 'settled'").await.unwrap();

    let text = proxy.metrics();
    let value = |name: &str| proxy::metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(value("pgcutover_client_connections"), 1.0);
    assert_eq!(value("pgcutover_transactions_total"), 8.0, "6 selects, 1 transaction block, 1 failed query\n{text}");
    assert_eq!(value("pgcutover_queries_total"), 8.0, "{text}");
    assert_eq!(value("pgcutover_auth_failures_total"), 1.0);
    assert!(value("pgcutover_client_bytes_received_total") > 0.0);
    assert!(value("pgcutover_client_bytes_sent_total") > 0.0);
    for name in [
        "pgcutover_server_connections{server=\"old\"} 1",
        "pgcutover_errors_total{class=\"22\"} 1",
        "# TYPE pgcutover_session_held_seconds histogram",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    for (_, pw) in TEST_ROLES.iter().chain([&(SUPERUSER, SUPERUSER_PASSWORD)]) {
        assert!(!text.contains(pw), "metrics contain a password");
    }
    let (status, _) = proxy.http_get("/secret");
    assert!(status.contains("404"), "{status}");
    // A request that arrives in pieces is still answered.
    let mut s = std::net::TcpStream::connect(proxy.metrics_addr.unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    for piece in ["GET ", "/metr", "ics HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
        s.write_all(piece.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut response = String::new();
    std::io::Read::read_to_string(&mut s, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("pgcutover_client_connections 1"), "{response}");

    // The session's end shows.
    drop(client);
    let deadline = Instant::now() + support::PATIENCE;
    while proxy.metric("pgcutover_client_connections") != Some(0.0) {
        assert!(Instant::now() < deadline, "client_connections did not drop to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.assert_no_panics();
}

/// Errors the server raises during the proxy's login (here: no such database) reach the client
/// unchanged.
#[test]
fn server_startup_errors_pass_through() {
    let db = old().create_database("pl_nodb");
    let proxy = proxy::for_server(old()).start();
    let mut witness = open_witness(&db, &proxy);
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", "no_such_db_here")])).unwrap();
    let (_, seen) = c.authenticate(APP_PASSWORD).expect_err("session on a missing database");
    let f = expect_fatal(&seen, "3D000");
    assert!(f[&'M'].contains("no_such_db_here"), "{f:?}");
    // A bad setting in the startup packet: the server's own 22023/42704 FATAL.
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db), ("options", "-c no_such.setting_x=1 -c work_mem=bogus")])).unwrap();
    let (_, seen) = c.authenticate(APP_PASSWORD).expect_err("bogus work_mem accepted");
    let e = seen.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(e.fields()[&'S'], "FATAL");
    assert_eq!(e.code(), "22023", "{:?}", e.fields());
    // Valid options pass through.
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db), ("options", "-c work_mem=12345kB")])).unwrap();
    c.authenticate(APP_PASSWORD).unwrap();
    assert_eq!(c.query_values("SHOW work_mem"), vec!["12345kB"]);
    witness.check();
    proxy.assert_no_panics();
}

/// Shutdown: idle and busy sessions get FATAL 57P01 at the deadline, and the port closes.
#[test]
fn shutdown_closes_sessions_with_57p01() {
    let db = old().create_database("pl_shutdown");
    let proxy = proxy::for_server(old()).start();
    let addr = proxy.addr;
    let mut idle = RawConn::login(addr, APP_USER, APP_PASSWORD, &db);
    let mut busy = RawConn::login(addr, APP_USER, APP_PASSWORD, &db);
    busy.send(&query_frame("SELECT pg_sleep(300)")).unwrap();
    let started = Instant::now();
    proxy.stop();
    for (what, c) in [("idle", &mut idle), ("busy", &mut busy)] {
        let (msgs, closed) = c.read_until_closed(support::PATIENCE);
        let f = expect_fatal(&msgs, "57P01");
        assert!(f[&'M'].contains("shutting down"), "{what}: {f:?}");
        assert!(closed, "{what}: not closed");
    }
    assert!(started.elapsed() < support::PATIENCE, "{:?}", started.elapsed());
    assert!(std::net::TcpStream::connect(addr).is_err(), "still accepting after shutdown");
}

/// A client told "terminating connection" (FATAL 57P01) must be able to assume its statement
/// did not commit, as with a real server. Here the proxy shuts down while a write is still
/// running on the server behind it.
#[test]
fn shutdown_does_not_let_a_terminated_statement_commit() {
    let db = old().create_database("pl_shutdown_write");
    old().psql(&db, "CREATE TABLE w (id int)");
    let proxy = proxy::for_server(old()).start();
    let mut busy = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    // One simple Query = one implicit transaction: sleep, then insert. The sleep is long enough
    // to be seen running by a poll on a slow machine; the shutdown cancels it.
    busy.send(&query_frame("SELECT pg_sleep(20); INSERT INTO w VALUES (1)")).unwrap();
    let deadline = Instant::now() + support::PATIENCE;
    while old().psql(&db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query LIKE 'SELECT pg_sleep%'") == "0" {
        assert!(Instant::now() < deadline, "the statement never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.stop();
    let (msgs, closed) = busy.read_until_closed(support::PATIENCE);
    assert!(closed);
    // Normally the cancel ends the sleep: 57P01. On a very slow machine the statement may
    // finish first: then the client must have seen it complete before the FATAL. If the server
    // did not even answer the cancel in time, the proxy says the outcome is unknown (08006).
    let outcome_unknown = msgs.iter().any(|m| m.tag == b'E' && m.code() == "08006");
    if outcome_unknown {
        expect_fatal(&msgs, "08006");
    } else {
        expect_fatal(&msgs, "57P01");
    }
    let saw_insert = msgs.iter().any(|m| m.tag == b'C' && m.body.starts_with(b"INSERT"));
    // Give the statement time to finish had it been left running.
    let deadline = Instant::now() + support::PATIENCE;
    while old().psql(&db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()") != "0" {
        assert!(Instant::now() < deadline, "server session left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let committed = old().psql(&db, "SELECT count(*) FROM w") == "1";
    if !outcome_unknown {
        assert_eq!(committed, saw_insert, "committed: {committed}, but the client saw {msgs:?} before FATAL 57P01 (terminating connection)");
    }
}
