//! Authentication: clients to the proxy (SCRAM, md5, trust) and the proxy to the servers (SCRAM,
//! md5, cleartext, trust), with real Postgres 15 roles.
use crate::support;

use support::proxy::{self, startup_packet, Msg, RawConn, PROTOCOL_3_0};
use support::*;
use tokio_postgres::error::SqlState;

fn err_code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("<no SQLSTATE: {e:?}>"))
}

fn err_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// Raw login with a password; returns the authentication request codes seen and the final
/// error (if any).
fn raw_attempt(proxy: &proxy::TestProxy, user: &str, password: &str, db: &str) -> (Vec<u32>, Option<Msg>) {
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", user), ("database", db)])).unwrap();
    let seen = match c.authenticate(password) {
        Ok(_) => return (vec![0], None),
        Err((_, seen)) => seen,
    };
    let codes = seen.iter().filter(|m| m.tag == b'R').map(|m| m.u32_at(0)).collect();
    (codes, seen.into_iter().find(|m| m.tag == b'E'))
}

#[tokio::test]
async fn scram_right_password_wrong_password_unknown_user() {
    let db = old().create_database("pa_scram");
    let proxy = proxy::for_server(old()).start();

    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let row = client.query_one("SELECT current_user::text, current_database()::text", &[]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (APP_USER.to_string(), db.clone()));

    let wrong = proxy.connect(APP_USER, "not-the-password", &db).await.expect_err("wrong password accepted");
    assert_eq!(err_code(&wrong), "28P01");
    assert_eq!(err_message(&wrong), format!("password authentication failed for user \"{APP_USER}\""));

    let unknown = proxy.connect("nobody_here", "whatever", &db).await.expect_err("unknown user accepted");
    assert_eq!(err_code(&unknown), "28P01");
    assert_eq!(err_message(&unknown), "password authentication failed for user \"nobody_here\"");

    // Same shape on the wire: a full SCRAM exchange (SASL, SASLContinue), then FATAL 28P01 with
    // the same fields. An unknown user cannot be told apart from a wrong password.
    let (codes_wrong, err_wrong) = raw_attempt(&proxy, APP_USER, "not-the-password", &db);
    let (codes_unknown, err_unknown) = raw_attempt(&proxy, "nobody_here", "whatever", &db);
    assert_eq!(codes_wrong, vec![10, 11]);
    assert_eq!(codes_unknown, codes_wrong);
    let (fw, fu) = (err_wrong.unwrap().fields(), err_unknown.unwrap().fields());
    let mut keys_w: Vec<char> = fw.keys().copied().collect();
    let mut keys_u: Vec<char> = fu.keys().copied().collect();
    keys_w.sort();
    keys_u.sort();
    assert_eq!(keys_w, keys_u);
    assert_eq!(fw[&'S'], "FATAL");
    assert_eq!(fu[&'S'], "FATAL");
    assert_eq!(fw[&'M'].replace(APP_USER, "X"), fu[&'M'].replace("nobody_here", "X"));

    // The authenticated session still works after the failures.
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    proxy.assert_no_panics();
}

#[tokio::test]
async fn md5_client_authentication() {
    let db = old().create_database("pa_md5");
    let proxy = proxy::for_server(old()).auth("md5").start();

    // The proxy asks for md5.
    let (codes, _) = raw_attempt(&proxy, APP_USER, "wrong", &db);
    assert_eq!(codes, vec![5], "expected AuthenticationMD5Password only");

    for (user, password) in [(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let client = proxy.connect(user, password, &db).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
    }
    let wrong = proxy.connect(APP_USER, "nope", &db).await.expect_err("wrong password accepted");
    assert_eq!(err_code(&wrong), "28P01");
    let unknown = proxy.connect("ghost", "nope", &db).await.expect_err("unknown user accepted");
    assert_eq!(err_code(&unknown), "28P01");
    assert_eq!(err_message(&unknown), "password authentication failed for user \"ghost\"");
    proxy.assert_no_panics();
}

/// The proxy logs into the server with each user's configured password, whatever the server
/// asks: SCRAM (app_user), md5 (md5_user), cleartext (clear_user), nothing (trust_user).
#[tokio::test]
async fn proxy_logs_into_servers_with_scram_md5_cleartext_and_trust() {
    let db = old().create_database("pa_backend");
    old().psql(&db, "CREATE TABLE who (u text, n int)");
    let proxy = proxy::for_server(old()).start();
    for (i, (user, password)) in TEST_ROLES.iter().enumerate() {
        let client = proxy.connect(user, password, &db).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let n = client.execute("INSERT INTO who VALUES (current_user, $1)", &[&(i as i32)]).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        assert_eq!(n, 1);
        let row = client.query_one("SELECT current_user::text, session_user::text", &[]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (user.to_string(), user.to_string()));
    }
    assert_eq!(
        old().psql(&db, "SELECT string_agg(u, ',' ORDER BY n) FROM who"),
        TEST_ROLES.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(",")
    );

    // psql too (libpq's SCRAM against the proxy, the proxy's md5 against the server).
    let out = proxy.psql(MD5_USER, MD5_PASSWORD, &db, "SELECT count(*) FROM who").unwrap();
    assert_eq!(out, TEST_ROLES.len().to_string());
    proxy.assert_no_panics();
}

/// When the password the proxy holds for a user is not the server's, the server's own refusal
/// reaches the client.
#[tokio::test]
async fn server_refusal_of_the_configured_password_reaches_the_client() {
    let db = old().create_database("pa_badbackend");
    // The client knows "client-side-pw" (which the proxy checks); the server does not.
    let proxy = proxy::for_server(old())
        .user(MD5_USER, "client-side-pw")
        .user(CLEAR_USER, "client-side-pw")
        .user(APP_USER, "client-side-pw")
        .start();
    for user in [MD5_USER, CLEAR_USER, APP_USER] {
        let err = proxy.connect(user, "client-side-pw", &db).await.err().unwrap_or_else(|| panic!("{user}: server accepted a wrong password"));
        assert_eq!(err_code(&err), "28P01", "{user}: {err:?}");
        assert!(err_message(&err).contains(user), "{user}: {}", err_message(&err));
    }
    // trust_user is not affected.
    let client = proxy.connect(TRUST_USER, TRUST_PASSWORD, &db).await.unwrap();
    assert_eq!(client.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    proxy.assert_no_panics();
}

/// A user configured only with a SCRAM verifier (copied from pg_authid) logs in through the
/// proxy by pass-through: the ClientKey from the client's proof answers the server, which
/// holds the same verifier. A verifier the server does not hold, or a server that asks for md5
/// or a cleartext password, gets a clear refusal; a server that trusts the user lets it in.
#[tokio::test]
async fn scram_verifier_only_users() {
    let db = old().create_database("pa_verifier");
    let verifier = |role: &str| old().psql("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = {}", quote_literal(role)));
    let (v_app, v_trust) = (verifier(APP_USER), verifier(TRUST_USER));
    assert!(v_app.starts_with("SCRAM-SHA-256$4096:"), "{v_app}");
    // Verifiers of the right passwords that the server does not hold (another salt).
    let elsewhere = |password: &str| pgcutover::auth::ScramVerifier::generate(password).unwrap().to_string();
    let proxy = proxy::for_server(old())
        .no_users()
        .user_with_verifier(APP_USER, &v_app)
        .user_with_verifier(TRUST_USER, &v_trust)
        .user_with_verifier(MD5_USER, &elsewhere(MD5_PASSWORD))
        .user_with_verifier(CLEAR_USER, &elsewhere(CLEAR_PASSWORD))
        .start();
    assert!(proxy.shared.live().user(APP_USER).unwrap().password().is_none());

    // Right password: full SCRAM with the proxy (server signature checked by the raw client),
    // then the proxy's own login to the server, without a password.
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    c.authenticate(APP_PASSWORD).unwrap_or_else(|e| panic!("pass-through login failed: {e:?}"));
    assert_eq!(c.query_values("SELECT current_user"), vec![APP_USER.to_string()]);
    let client = proxy.connect(APP_USER, APP_PASSWORD, &db).await.unwrap();
    let who: String = client.query_one("SELECT session_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, APP_USER);
    // Wrong password: refused by the proxy itself.
    let err = proxy.connect(APP_USER, "wrong", &db).await.err().unwrap();
    assert_eq!(err_code(&err), "28P01");

    // The server asks md5 (md5_user) or a cleartext password (clear_user): a SCRAM verifier
    // cannot answer either; the error names the role and what to change.
    for (user, password, asks) in [(MD5_USER, MD5_PASSWORD, "md5"), (CLEAR_USER, CLEAR_PASSWORD, "cleartext")] {
        let err = proxy.connect(user, password, &db).await.expect_err("logged in without an answer for the server");
        assert_eq!(err_code(&err), "28000", "{user}: {err:?}");
        let message = err_message(&err);
        assert!(message.contains(user) && message.contains(asks), "{user}: {message}");
    }

    // A verifier the server does not hold: the proxy accepts the right password, the server's
    // salt gives the difference away, and the client gets the 28P01 of a wrong password.
    let stale = proxy::for_server(old()).no_users().user_with_verifier(APP_USER, &elsewhere(APP_PASSWORD)).start();
    let err = stale.connect(APP_USER, APP_PASSWORD, &db).await.expect_err("logged in with a verifier the server does not hold");
    assert_eq!(err_code(&err), "28P01", "{err:?}");
    assert_eq!(err_message(&err), format!("password authentication failed for user \"{APP_USER}\""));

    // trust_user: the server asks for nothing, so a verifier is all the proxy needs.
    let client = proxy.connect(TRUST_USER, TRUST_PASSWORD, &db).await.unwrap();
    let who: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, TRUST_USER);
    let err = proxy.connect(TRUST_USER, "wrong", &db).await.err().unwrap();
    assert_eq!(err_code(&err), "28P01");
    proxy.assert_no_panics();
    stale.assert_no_panics();
}

#[tokio::test]
async fn trust_mode_and_config_checks() {
    let db = old().create_database("pa_trust");
    let proxy = proxy::for_server(old()).auth("trust").start();
    // No password asked; the proxy logs into the server with the configured one.
    let (codes, err) = raw_attempt(&proxy, APP_USER, "", &db);
    assert_eq!((codes, err.map(|e| e.fields())), (vec![0], None));
    let client = proxy.connect(MD5_USER, "ignored", &db).await.unwrap();
    assert_eq!(client.query_one("SELECT current_user::text", &[]).await.unwrap().get::<_, String>(0), MD5_USER);
    // A user the proxy has no password for gets the clear 28000 from the server's request.
    let err = proxy.connect("nobody_here", "x", &db).await.err().unwrap();
    assert_eq!(err.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{err:?}");
    proxy.assert_no_panics();
    drop(proxy);

    // md5 takes verifier-only users too (they do SCRAM, as pg_hba.conf's md5 does); SCRAM
    // needs users or an auth_query.
    let base = || pgcutover::config::Overrides {
        old: Some(old().url(SUPERUSER, SUPERUSER_PASSWORD, "postgres")),
        auth: Some("md5".into()),
        ..Default::default()
    };
    let file = pgcutover::config::FileConfig {
        users: vec![pgcutover::config::FileUser {
            name: APP_USER.into(),
            password: None,
            password_env: None,
            scram_verifier: Some(old().psql("postgres", "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_user'")),
        }],
        ..Default::default()
    };
    pgcutover::config::Config::from_parts(file, &base()).unwrap_or_else(|e| panic!("md5 with a verifier-only user: {e}"));
    let o = pgcutover::config::Overrides { auth: Some("scram-sha-256".into()), ..base() };
    let err = pgcutover::config::Config::from_parts(Default::default(), &o).map(|_| ()).expect_err("scram without users");
    assert_eq!(err.key, "users");
}
