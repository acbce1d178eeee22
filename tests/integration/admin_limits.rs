//! The admin console's limits: only small messages before login, at most 64 connections, and
//! `startup_timeout` for the login.
use crate::support;

use std::io::Write;
use std::time::{Duration, Instant};

use pgcutover::admin::connection::{MAX_CONNECTIONS, PRE_AUTH_MAX_MESSAGE};
use crate::admin::connect;
use pgcutover::config::Config;
use support::proxy::{expect_fatal, startup_packet, RawConn, PROTOCOL_3_0};
use support::served::Served;
use tokio_postgres::error::SqlState;

const ADMIN_PASSWORD: &str = "console-pw-4d1e";

/// The console of `admin::config()`, with a password and this startup timeout.
fn config(startup_timeout: Duration) -> Config {
    let mut config = crate::admin::config();
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.startup_timeout = startup_timeout;
    config
}

fn console(addr: std::net::SocketAddr) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user("admin").password(ADMIN_PASSWORD).dbname("pgcutover");
    c.connect_timeout(support::PATIENCE);
    c
}

/// A console login that has begun (startup sent, SCRAM asked for) but not finished.
fn half_logged_in(addr: std::net::SocketAddr, user: &str) -> RawConn {
    let mut c = RawConn::connect(addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", user), ("database", "pgcutover")])).unwrap();
    let sasl = c.expect_msg();
    assert_eq!((sasl.tag(), sasl.u32_at(0)), ('R', 10), "SCRAM asked for");
    c
}

/// Three clients that never logged in each start a 1 GiB Query and keep sending: each is
/// refused at the header, and the proxy's memory does not grow with what they send.
#[test]
fn large_messages_before_login_are_refused_at_the_header() {
    const SENT: usize = 200 << 20;
    let config = format!(
        "auth = \"trust\"\nstartup_timeout = \"300s\"\n[old]\nurl = \"postgres://postgres@127.0.0.1:1/postgres\"\n[admin]\npassword = \"{ADMIN_PASSWORD}\"\n"
    );
    let mut proxy = Served::start(&config, true, None);
    let admin = proxy.admin_addr.expect("console");
    let rss_before = proxy.status_kib("VmRSS");
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let c = half_logged_in(admin, "nobody");
            let mut writer = c.stream.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                let mut header = vec![b'Q'];
                header.extend_from_slice(&((1u32 << 30) - 2).to_be_bytes());
                let _ = writer.write_all(&header);
                let chunk = vec![b'q'; 1 << 20];
                // Until the proxy closes the connection.
                for _ in 0..SENT / chunk.len() {
                    if writer.write_all(&chunk).is_err() {
                        break;
                    }
                }
            });
            (c, sender)
        })
        .collect();
    let mut refusals = Vec::new();
    for (mut c, sender) in clients {
        sender.join().unwrap();
        refusals.push(c.read_until_closed(support::PATIENCE));
    }
    let peak = proxy.status_kib("VmHWM").saturating_sub(rss_before);
    assert!(peak < 64 * 1024, "peak RSS grew by {peak} KiB while unauthenticated clients sent up to {SENT} bytes each");
    for (messages, closed) in refusals {
        let fatal = expect_fatal(&messages, "08P01");
        assert!(fatal[&'M'].contains("exceeds the limit of 8192 bytes before login"), "{fatal:?}");
        assert!(closed);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "refused only after {:?}", started.elapsed());
    // A real login and command still work.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(connect(&console(admin))).expect("admin login");
    rt.block_on(client.simple_query("SHOW STATUS")).expect("SHOW STATUS");
    proxy.assert_running();
}

#[tokio::test]
async fn logins_and_long_commands_still_get_through() {
    let running = pgcutover::proxy::start(config(Duration::from_secs(60))).await.expect("start");
    let admin = running.admin_addr.expect("console");
    // A startup packet with a long parameter and the SCRAM exchange fit the pre-login limit.
    let mut config = console(admin);
    config.application_name("a".repeat(2000));
    let client = connect(&config).await.expect("admin login");
    // After login, a command longer than the pre-login limit is fine.
    let padded = format!("SHOW STATUS {}", " ".repeat(3 * PRE_AUTH_MAX_MESSAGE));
    client.simple_query(&padded).await.expect("a long command after login");
    running.shutdown().await;
}

#[tokio::test]
async fn the_console_takes_at_most_64_connections() {
    let running = pgcutover::proxy::start(config(Duration::from_secs(60))).await.expect("start");
    let admin = running.admin_addr.expect("console");
    let mut open = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        open.push(connect(&console(admin)).await.expect("admin login within the cap"));
    }
    let Err(e) = connect(&console(admin)).await else { panic!("one connection too many was let in") };
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("too many admin console connections"), "{e:?}");
    // The open ones keep working, and a slot frees up when one closes.
    open[0].simple_query("SHOW STATUS").await.expect("SHOW STATUS");
    drop(open.pop());
    let deadline = Instant::now() + support::PATIENCE;
    let again = loop {
        match connect(&console(admin)).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot after a connection closed: {e:?}"),
        }
    };
    again.simple_query("SHOW STATUS").await.expect("SHOW STATUS");
    running.shutdown().await;
}

#[tokio::test]
async fn console_logins_get_the_startup_timeout() {
    // Long enough for a real login on a slow machine.
    let running = pgcutover::proxy::start(config(Duration::from_secs(3))).await.expect("start");
    let admin = running.admin_addr.expect("console");
    let started = Instant::now();
    let silent = RawConn::connect(admin);
    // Blocking I/O off the runtime that runs the proxy.
    let stuck = tokio::task::spawn_blocking(move || half_logged_in(admin, "admin")).await.unwrap();
    let logged_in = connect(&console(admin)).await.expect("admin login");
    let waited = tokio::task::spawn_blocking(move || {
        [("silent", silent), ("stuck in SCRAM", stuck)].map(|(what, mut c)| (what, c.read_until_closed(support::PATIENCE)))
    })
    .await
    .unwrap();
    for (what, (messages, closed)) in waited {
        assert!(closed, "{what}: still open after {:?}", started.elapsed());
        assert!(messages.iter().all(|m| m.tag != b'Z'), "{what}: {messages:?}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(40), "closed after {elapsed:?}");
    // The timeout is for the login only.
    logged_in.simple_query("SHOW STATUS").await.expect("a logged-in console outlives the startup timeout");
    running.shutdown().await;
}
