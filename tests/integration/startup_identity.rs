//! The startup phase under hostile or unusual input: what reaches the server is exactly what
//! the proxy authenticated and recorded, and the proxy answers (or stays silent) as Postgres
//! does. Raw protocol clients against the shared Postgres 15 server.
use crate::support;

use std::io::Read;
use std::net::TcpStream;

use support::proxy::{self, error_fields, expect_fatal, frame, query_frame, startup_packet, Msg, RawConn, PROTOCOL_3_0};
use support::*;

/// What [`RawConn::authenticate`] returns.
type Login = Result<Vec<Msg>, (String, Vec<Msg>)>;

/// Sends `params` in a 3.0 StartupMessage and answers the login with `password`.
fn attempt(proxy: &proxy::TestProxy, params: &[(&str, &str)], password: &str) -> (RawConn, Login) {
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, params)).unwrap();
    let outcome = c.authenticate(password);
    (c, outcome)
}

/// A parameter given twice is refused before authentication: Postgres would take the last
/// one, the proxy authenticated the first. `trust_user` is trusted by the server, so without
/// the refusal the server would log in whoever the last `user` names, into the last database.
#[test]
fn repeated_startup_parameters_get_08p01() {
    let db = old().create_database("si_dup");
    let proxy = proxy::for_server(old()).start();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("user", vec![("user", TRUST_USER), ("database", &db), ("user", SUPERUSER)]),
        ("database", vec![("user", TRUST_USER), ("database", &db), ("database", "postgres")]),
        ("replication", vec![("user", TRUST_USER), ("database", &db), ("replication", "false"), ("replication", "database")]),
        ("application_name", vec![("user", TRUST_USER), ("database", &db), ("application_name", "a"), ("Application_Name", "b")]),
    ];
    for (name, params) in cases {
        let (mut c, outcome) = attempt(&proxy, &params, TRUST_PASSWORD);
        let seen = match outcome {
            Err((_, seen)) => seen,
            Ok(_) => {
                let who = c.query_values("SELECT current_user || ' in ' || current_database() || ' walsender=' || (SELECT backend_type FROM pg_stat_activity WHERE pid = pg_backend_pid())");
                panic!("{name} given twice: logged in as {who:?}");
            }
        };
        let fatal = expect_fatal(&seen, "08P01");
        assert!(fatal[&'M'].contains(&format!("\"{}\"", name.to_ascii_lowercase())), "{name}: {fatal:?}");
        assert!(seen.iter().all(|m| m.tag != b'R'), "{name}: refused before any authentication: {seen:?}");
        let (rest, closed) = c.read_until_closed(PATIENCE);
        assert!(rest.is_empty() && closed, "{name}: closed after the FATAL, got {rest:?}");
    }
    // The ordinary login on the same proxy: the session is the authenticated user's, in the
    // database it asked for, and the proxy records that same pair.
    let mut c = RawConn::login(proxy.addr, TRUST_USER, TRUST_PASSWORD, &db);
    assert_eq!(c.query_values("SELECT current_user || '/' || current_database()"), vec![format!("{TRUST_USER}/{db}")]);
    let recorded: Vec<(String, String)> = proxy.shared.registry.all().iter().map(|h| (h.user.clone(), h.database.clone())).collect();
    assert_eq!(recorded, vec![(TRUST_USER.to_string(), db.clone())]);
    proxy.assert_no_panics();
}

/// Postgres reads a first packet whose length is not a startup packet's (a Terminate sent by a
/// client that gives up before starting, an HTTP request, garbage), logs it and closes without
/// a word. So does the proxy.
#[test]
fn a_first_packet_that_is_no_startup_packet_is_closed_silently() {
    let proxy = proxy::for_server(old()).start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Terminate", frame(b'X', &[])),
        ("length too small", vec![0, 0, 0, 3, 0, 3, 0, 0]),
        ("length huge", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0, b'u']),
        ("HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        for server in [proxy.addr, format!("{HOST}:{}", old().port).parse().expect("address")] {
            let reply = raw_reply(server, &bytes);
            assert!(reply.is_empty(), "{what} to {server}: got {:?}", String::from_utf8_lossy(&reply));
        }
    }
    let db = old().create_database("si_silent");
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(c.query_values("SELECT 'still serving'"), vec!["still serving"]);
    proxy.assert_no_panics();
}

/// The reply to a startup packet, read to the end of the connection.
fn raw_reply(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    std::io::Write::write_all(&mut s, bytes).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

/// An unsupported protocol version gets Postgres' own answer: for a major version below 3 in
/// the old format (a protocol 2 client can read only that), above 3 a 0A000 ErrorResponse.
/// The proxy speaks 3.0, as Postgres 15 does, so both answer alike.
#[test]
fn unsupported_protocol_versions_are_answered_as_postgres_does() {
    let proxy = proxy::for_server(old()).start();
    let server: std::net::SocketAddr = format!("{HOST}:{}", old().port).parse().expect("address");
    for (what, code) in [("2.0", 2u32 << 16), ("0.1234", 1234)] {
        let packet = startup_packet(code, &[("user", APP_USER), ("database", "postgres")]);
        let from_proxy = raw_reply(proxy.addr, &packet);
        let from_postgres = raw_reply(server, &packet);
        assert_eq!(
            String::from_utf8_lossy(&from_proxy),
            String::from_utf8_lossy(&from_postgres),
            "protocol {what}: the proxy's answer differs from Postgres 15's"
        );
        assert!(from_proxy.starts_with(b"EFATAL:  unsupported frontend protocol"), "{what}: {from_proxy:?}");
    }
    let packet = startup_packet(4 << 16, &[("user", APP_USER), ("database", "postgres")]);
    let fields = |reply: Vec<u8>| {
        assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
        error_fields(&reply[5..])
    };
    let (from_proxy, from_postgres) = (fields(raw_reply(proxy.addr, &packet)), fields(raw_reply(server, &packet)));
    for field in ['S', 'C', 'M'] {
        assert_eq!(from_proxy.get(&field), from_postgres.get(&field), "protocol 4.0, field {field}");
    }
    assert_eq!(from_proxy[&'C'], "0A000");
    proxy.assert_no_panics();
}

/// A message type Postgres does not know ends the session with one FATAL 08P01, worded as
/// Postgres words it; the proxy does not add a second one of its own. A query sent just
/// before it, in the same write, is answered first, as Postgres answers it.
#[test]
fn an_unknown_message_type_gets_exactly_one_fatal() {
    let db = old().create_database("si_unknown");
    let proxy = proxy::for_server(old()).start();
    let mut c = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(c.query_values("SELECT 1"), vec!["1"]);
    let mut bytes = query_frame("SELECT 41 + 1");
    bytes.extend(frame(b'z', b"junk"));
    c.send(&bytes).unwrap();
    let (msgs, closed) = c.read_until_closed(PATIENCE);
    assert!(closed, "connection left open");
    assert_eq!(msgs.iter().map(Msg::tag).collect::<String>(), "TDCZE", "{msgs:?}");
    assert_eq!(&msgs[1].body[6..], b"42");
    let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').map(Msg::fields).collect();
    assert_eq!(errors.len(), 1, "exactly one ErrorResponse: {errors:?}");
    assert_eq!(errors[0][&'S'], "FATAL");
    assert_eq!(errors[0][&'C'], "08P01");
    assert_eq!(errors[0][&'M'], "invalid frontend message type 122");
    let mut again = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(again.query_values("SELECT 2"), vec!["2"]);
    proxy.assert_no_panics();
}

/// Notices the server sends while the session starts (here: an application_name too long,
/// truncated) reach the client, as they do without the proxy, before its first ReadyForQuery.
#[test]
fn startup_notices_reach_the_client() {
    let db = old().create_database("si_notice");
    let proxy = proxy::for_server(old()).start();
    let long_name = "n".repeat(70);
    let (mut c, outcome) = attempt(&proxy, &[("user", APP_USER), ("database", &db), ("application_name", &long_name)], APP_PASSWORD);
    let after_ok = outcome.unwrap_or_else(|e| panic!("login failed: {e:?}"));
    let notices: Vec<_> = after_ok.iter().filter(|m| m.tag == b'N').map(Msg::fields).collect();
    assert_eq!(notices.len(), 1, "one startup notice, got {:?}", after_ok.iter().map(Msg::tag).collect::<String>());
    assert_eq!(notices[0][&'C'], "42622");
    assert!(notices[0][&'M'].contains("will be truncated"), "{:?}", notices[0]);
    assert_eq!(c.query_values("SELECT length(current_setting('application_name'))"), vec!["63"]);
    // Only at login: the next query brings no copy of it.
    let msgs = c.simple_query("SELECT 1");
    assert!(msgs.iter().all(|m| m.tag != b'N'), "{msgs:?}");
    proxy.assert_no_panics();
}
