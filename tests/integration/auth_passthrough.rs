//! Production authentication: a proxy that holds no password. `auth_query` looks each role's
//! verifier up on the server; SCRAM and md5 pass-through log the proxy into old (and, at the
//! cutover's pre-warm, into new) as the role. Real Postgres 15 and 18 with scram-sha-256 and
//! md5 roles (pg_hba.conf of the rig), real psql, pgbench and tokio-postgres.

use crate::support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pgcutover::cutover::CutoverOptions;
use support::proxy::{self, startup_packet, RawConn, TestProxy, PROTOCOL_3_0};
use support::*;

/// The documented query, run as the control user (the rig's superuser).
const AUTH_QUERY: &str = "SELECT rolname, rolpassword, rolvaliduntil FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin";

/// The documented least-privilege form: a function only the auth user may run.
const LOOKUP_FUNCTION: &str = "CREATE FUNCTION pgcutover_lookup(text) RETURNS TABLE (name name, verifier text, valid_until timestamptz) \
     LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog \
     AS $$ SELECT a.rolname, a.rolpassword, a.rolvaliduntil FROM pg_catalog.pg_authid a WHERE a.rolname = $1 AND a.rolcanlogin $$; \
     REVOKE ALL ON FUNCTION pgcutover_lookup(text) FROM PUBLIC;";

/// A LOGIN role of one test, with the same verifier on each of its servers (as `pg_dumpall
/// --roles-only` copies it), a member of `app_user` for its table privileges. Dropped at the end.
struct TempRole {
    name: String,
    password: String,
    servers: Vec<&'static PgServer>,
}

impl TempRole {
    fn name(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// A SCRAM verifier made on the first server and copied verbatim to the others.
    fn scram(prefix: &str, password: &str, servers: &[&'static PgServer]) -> TempRole {
        Self::scram_with(prefix, password, "", servers)
    }

    /// [`scram`](Self::scram) with more role options (`NOLOGIN`, `VALID UNTIL ...`).
    fn scram_with(prefix: &str, password: &str, options: &str, servers: &[&'static PgServer]) -> TempRole {
        let name = Self::name(prefix);
        let role = TempRole { name: name.clone(), password: password.to_string(), servers: servers.to_vec() };
        let login = if options.contains("NOLOGIN") { "" } else { "LOGIN" };
        let create = |password: &str| format!("CREATE ROLE {} {login} {options} PASSWORD {} IN ROLE {APP_USER}", quote_ident(&name), quote_literal(password));
        servers[0].psql("postgres", &format!("SET password_encryption = 'scram-sha-256'; {}", create(password)));
        let verifier = role.rolpassword(servers[0]);
        assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
        for server in &servers[1..] {
            server.psql("postgres", &create(&verifier));
        }
        role
    }

    /// An md5 verifier (the same on every server: md5 has no salt). In [`MD5_GROUP`], so
    /// pg_hba.conf asks md5, unless `scram_hba` (then the servers ask SCRAM, which an md5
    /// verifier cannot answer).
    fn md5(prefix: &str, password: &str, scram_hba: bool, servers: &[&'static PgServer]) -> TempRole {
        let name = Self::name(prefix);
        let groups = if scram_hba { APP_USER.to_string() } else { format!("{APP_USER}, {MD5_GROUP}") };
        let verifier = pgcutover::auth::md5_stored(&name, password);
        for server in servers {
            server.psql(
                "postgres",
                &format!("SET client_min_messages = error; CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {groups}", quote_ident(&name), quote_literal(&verifier)),
            );
        }
        TempRole { name, password: password.to_string(), servers: servers.to_vec() }
    }

    /// Creates the role on `server` too, from the password (so with another SCRAM salt: a
    /// different verifier), as a separate `CREATE ROLE` there would.
    fn created_separately_on(&mut self, server: &'static PgServer) {
        server.psql(
            "postgres",
            &format!("SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {APP_USER}", quote_ident(&self.name), quote_literal(&self.password)),
        );
        self.servers.push(server);
    }

    /// Leaves `app_user` (and the rig's default privileges that come with it), e.g. for an
    /// auth user that may run nothing but the lookup function.
    fn without_app_user(self) -> Self {
        for server in &self.servers {
            server.psql("postgres", &format!("REVOKE {APP_USER} FROM {}", quote_ident(&self.name)));
        }
        self
    }

    fn rolpassword(&self, server: &PgServer) -> String {
        server.psql("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = {}", quote_literal(&self.name)))
    }

    /// Sets the password on `server` as Postgres hashes it there now (a new SCRAM salt).
    fn set_password(&self, server: &PgServer, password: &str, encryption: &str) {
        server.psql(
            "postgres",
            &format!("SET client_min_messages = error; SET password_encryption = {}; ALTER ROLE {} PASSWORD {}", quote_literal(encryption), quote_ident(&self.name), quote_literal(password)),
        );
    }
}

impl Drop for TempRole {
    fn drop(&mut self) {
        for server in &self.servers {
            let _ = server.try_psql("postgres", &format!("DROP ROLE IF EXISTS {}", quote_ident(&self.name)));
        }
    }
}

fn err_code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("<no SQLSTATE: {e:?}>"))
}

fn err_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// A proxy in front of old only, with no `[[users]]`: every role comes from the auth_query.
fn passthrough_proxy(auth: &str) -> proxy::ProxyBuilder {
    proxy::for_server(old()).auth(auth).no_users().auth_query(AUTH_QUERY)
}

/// What a raw login saw: the authentication request codes, the salt of a SCRAM server-first
/// message, and the ErrorResponse if it failed.
struct Attempt {
    codes: Vec<u32>,
    salt: Option<String>,
    error: Option<HashMap<char, String>>,
}

/// A raw login answering SCRAM or md5 with `password`, up to ReadyForQuery or an error.
fn raw_login(proxy: &TestProxy, user: &str, password: &str, db: &str) -> Attempt {
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", user), ("database", db)])).unwrap();
    let mut attempt = Attempt { codes: Vec::new(), salt: None, error: None };
    let mut scram: Option<pgcutover::auth::ScramClient> = None;
    loop {
        let m = c.expect_msg();
        match m.tag {
            b'R' => {
                let code = m.u32_at(0);
                attempt.codes.push(code);
                let reply = match code {
                    5 => {
                        let salt: [u8; 4] = m.body[4..8].try_into().unwrap();
                        let mut response = pgcutover::auth::md5_response_from_password(user, password, salt).into_bytes();
                        response.push(0);
                        Some(response)
                    }
                    10 => {
                        let first = scram.insert(pgcutover::auth::ScramClient::new(password).unwrap()).client_first();
                        let mut b = b"SCRAM-SHA-256\0".to_vec();
                        b.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        b.extend_from_slice(&first);
                        Some(b)
                    }
                    11 => {
                        let text = String::from_utf8_lossy(&m.body[4..]).into_owned();
                        attempt.salt = text.split(',').find_map(|a| a.strip_prefix("s=").map(str::to_string));
                        Some(scram.as_mut().expect("SASL first").server_first(&m.body[4..]).unwrap())
                    }
                    12 => {
                        scram.as_ref().expect("SASL first").server_final(&m.body[4..]).expect("the proxy's SCRAM signature");
                        None
                    }
                    _ => None,
                };
                if let Some(reply) = reply {
                    c.send(&proxy::frame(b'p', &reply)).unwrap();
                }
            }
            b'E' => {
                attempt.error = Some(m.fields());
                return attempt;
            }
            b'Z' => return attempt,
            _ => {}
        }
    }
}

/// psql with a conninfo string (TLS settings and all); `Err` carries stderr.
fn psql_conninfo(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let mut cmd = proxy::client_tool("psql");
    cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"]).env("PGPASSWORD", password);
    support::psql_output(cmd, sql)
}

/// A SCRAM role and an md5 role log in with psql, tokio-postgres and pgbench (every protocol
/// mode, a fresh connection per transaction) through a proxy that holds no password: SCRAM for
/// the one, md5 for the other (auth = md5 works as pg_hba.conf's md5), and pass-through to old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_log_in_through_a_proxy_that_holds_no_password() {
    let db = old().create_database("ap_login");
    let port = old().port.to_string();
    support::pgbench(&["-i", "-q", "-s", "1", "-h", HOST, "-p", &port, "-U", SUPERUSER, &db], &[("PGPASSWORD", SUPERUSER_PASSWORD)]).assert_success();
    let scram = TempRole::scram("ap_scram", "scram-pw-1c", &[old()]);
    let md5 = TempRole::md5("ap_md5", "md5-pw-2d", false, &[old()]);
    let proxy = passthrough_proxy("md5").start();
    assert!(proxy.shared.config.users.is_empty(), "the proxy has no [[users]]");

    for (role, method) in [(&scram, 10), (&md5, 5)] {
        let (user, password) = (role.name.as_str(), role.password.as_str());
        let client = proxy.connect(user, password, &db).await.unwrap_or_else(|e| panic!("{user}: {e:?}"));
        let row = client.query_one("SELECT current_user::text, session_user::text, count(*) FROM pgbench_branches", &[]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, i64>(2)), (user.to_string(), user.to_string(), 1));
        assert_eq!(proxy.psql(user, password, &db, "SELECT current_user").as_deref(), Ok(user));
        let attempt = raw_login(&proxy, user, password, &db);
        assert_eq!(attempt.error, None, "{user}");
        assert_eq!(attempt.codes.first(), Some(&method), "{user}: {:?}", attempt.codes);
        // The proxy logged into old with the role's verifier, not a password.
        let sessions = proxy.shared.registry.all();
        let mine: Vec<_> = sessions.iter().filter(|h| h.user == user).collect();
        assert!(!mine.is_empty() && mine.iter().all(|h| h.credential.is_pass_through()), "{user}: {:?}", mine.iter().map(|h| &h.credential).collect::<Vec<_>>());

        for mode in ["simple", "extended", "prepared"] {
            let p = proxy.port().to_string();
            let result = support::pgbench(&["-h", HOST, "-p", &p, "-U", user, "-C", "-c", "2", "-j", "1", "-t", "5", "-S", "-M", mode, "-n", &db], &[("PGPASSWORD", password)]);
            result.assert_success();
            assert_eq!((result.processed, result.failed), (10, 0), "pgbench -C -M {mode} as {user}:\n{result}");
        }
    }
    proxy.assert_no_panics();
}

/// Wrong password, unknown role, role without LOGIN, expired password: each is the same FATAL
/// 28P01 after the same SCRAM exchange (with auth = md5 too, as Postgres with its default
/// password_encryption), so none can be told apart; an unknown role even shows a salt of its
/// own, the same at every attempt, as a real role does.
#[test]
fn every_login_failure_is_the_same_28p01() {
    let db = old().create_database("ap_fail");
    const PW: &str = "right-pw-3e";
    let ok = TempRole::scram("ap_ok", PW, &[old()]);
    let nologin = TempRole::scram_with("ap_nologin", PW, "NOLOGIN", &[old()]);
    let expired = TempRole::scram_with("ap_expired", PW, "VALID UNTIL '2001-01-01'", &[old()]);
    let md5_expired = TempRole::md5("ap_md5exp", PW, false, &[old()]);
    old().psql("postgres", &format!("ALTER ROLE {} VALID UNTIL '2001-01-01'", quote_ident(&md5_expired.name)));
    let unknown = TempRole::name("ap_nobody");

    for auth in ["scram-sha-256", "md5"] {
        let proxy = passthrough_proxy(auth).start();
        assert_eq!(raw_login(&proxy, &ok.name, PW, &db).error, None, "{auth}: the right password works");
        let attempts = [(ok.name.as_str(), "wrong-pw"), (nologin.name.as_str(), PW), (expired.name.as_str(), PW), (unknown.as_str(), PW)];
        for (user, password) in attempts {
            let a = raw_login(&proxy, user, password, &db);
            let error = a.error.unwrap_or_else(|| panic!("{auth}: {user} logged in"));
            assert_eq!(a.codes, vec![10, 11], "{auth}: {user} went through the whole SCRAM exchange");
            let mut keys: Vec<char> = error.keys().copied().collect();
            keys.sort();
            assert_eq!(keys, vec!['C', 'M', 'S', 'V'], "{auth}: {user}: {error:?}");
            assert_eq!((error[&'S'].as_str(), error[&'C'].as_str()), ("FATAL", "28P01"), "{auth}: {user}");
            assert_eq!(error[&'M'], format!("password authentication failed for user \"{user}\""));
        }
        // An md5 role with an expired password has no usable password: the same (SCRAM) failure,
        // as in Postgres, which does its mock exchange with password_encryption's method.
        let a = raw_login(&proxy, &md5_expired.name, PW, &db);
        assert_eq!(a.codes, vec![10, 11], "{auth}: md5 role");
        assert_eq!(a.error.map(|e| e[&'C'].clone()).as_deref(), Some("28P01"), "{auth}: md5 role");
        // An unknown role's salt looks like a real one: its own, and stable.
        let salt = |user: &str| raw_login(&proxy, user, PW, &db).salt.unwrap_or_else(|| panic!("{auth}: no SCRAM salt for {user}"));
        let first = salt(&unknown);
        assert_eq!(first, salt(&unknown), "{auth}: the same salt at every attempt");
        assert_ne!(first, salt(&format!("{unknown}x")), "{auth}: another name, another salt");
        assert_eq!(first.len(), 24, "{auth}: a 16-byte salt like Postgres' own");
        proxy.assert_no_panics();
    }
}

/// `ALTER ROLE ... PASSWORD` on old takes effect without a restart, with a cache that would
/// keep the old verifier for an hour: a failed login refreshes the role's entry, so the new
/// password works (a SCRAM login that failed before the refresh cannot be re-checked: the
/// proof is bound to the old salt) and the old one is refused.
#[test]
fn a_password_change_on_old_is_honoured() {
    let db = old().create_database("ap_change");
    let scram = TempRole::scram("ap_chg_s", "before-s", &[old()]);
    let md5 = TempRole::md5("ap_chg_m", "before-m", false, &[old()]);
    let proxy = passthrough_proxy("md5").configure(|file, _| file.auth_query_cache_ttl = Some("3600s".into())).start();
    for role in [&scram, &md5] {
        assert_eq!(proxy.psql(&role.name, &role.password, &db, "SELECT 1").as_deref(), Ok("1"), "{}", role.name);
    }
    scram.set_password(old(), "after-s", "scram-sha-256");
    md5.set_password(old(), "after-m", "md5");

    for (role, password) in [(&scram, "after-s"), (&md5, "after-m")] {
        let deadline = Instant::now() + PATIENCE;
        let mut failures = 0;
        loop {
            match proxy.psql(&role.name, password, &db, "SELECT current_user") {
                Ok(user) => {
                    assert_eq!(user, role.name);
                    break;
                }
                Err(e) => {
                    assert!(e.contains("password authentication failed"), "{}: {e}", role.name);
                    failures += 1;
                    assert!(Instant::now() < deadline, "{}: the new password was never accepted ({failures} attempts)", role.name);
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let refused = proxy.psql(&role.name, &role.password, &db, "SELECT 1").expect_err("the old password still works");
        assert!(refused.contains("password authentication failed"), "{}: {refused}", role.name);
    }
    proxy.assert_no_panics();
}

/// A verifier that cannot answer what the server asks gets a clear error naming the role and
/// what to change: an md5 verifier where pg_hba.conf asks SCRAM, a cleartext password request.
/// With auth = scram-sha-256, an md5 verifier cannot check the client at all: 28P01.
#[tokio::test]
async fn a_verifier_the_server_cannot_use_gets_a_clear_error() {
    let db = old().create_database("ap_kind");
    let md5_on_scram = TempRole::md5("ap_md5scram", "md5-pw-4f", true, &[old()]);
    let proxy = passthrough_proxy("md5").start();
    let err = proxy.connect(&md5_on_scram.name, &md5_on_scram.password, &db).await.expect_err("an md5 verifier answered SCRAM");
    assert_eq!(err_code(&err), "28000", "{err:?}");
    let message = err_message(&err);
    for needle in [md5_on_scram.name.as_str(), "SCRAM-SHA-256", "md5", "password_encryption"] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    let err = proxy.connect(CLEAR_USER, CLEAR_PASSWORD, &db).await.expect_err("a verifier answered a cleartext request");
    assert_eq!(err_code(&err), "28000", "{err:?}");
    let message = err_message(&err);
    assert!(message.contains(CLEAR_USER) && message.contains("cleartext") && message.contains("pg_hba.conf"), "{message}");
    // The roles that fit log in through the same proxy.
    assert!(proxy.connect(MD5_USER, MD5_PASSWORD, &db).await.is_ok());
    assert!(proxy.connect(APP_USER, APP_PASSWORD, &db).await.is_ok());

    let scram_only = passthrough_proxy("scram-sha-256").start();
    let err = scram_only.connect(MD5_USER, MD5_PASSWORD, &db).await.expect_err("SCRAM checked against an md5 verifier");
    assert_eq!(err_code(&err), "28P01", "{err:?}");
    proxy.assert_no_panics();
    scram_only.assert_no_panics();
}

/// The auth_query failing is an error at once, not a hang: old down gives 08006, a query the
/// auth user may not run or of the wrong shape 28000. The documented least-privilege setup (a
/// SECURITY DEFINER function only the auth user may run) works.
#[tokio::test]
async fn auth_query_failures_are_errors_and_the_least_privilege_setup_works() {
    let db = old().create_database("ap_aqfail");
    old().psql(&db, LOOKUP_FUNCTION);
    let auth_user = TempRole::scram("ap_authuser", "auth-pw-5a", &[old()]).without_app_user();
    old().psql(&db, &format!("GRANT EXECUTE ON FUNCTION pgcutover_lookup(text) TO {}", quote_ident(&auth_user.name)));
    let as_auth_user = |query: &str| {
        let (name, db, query) = (auth_user.name.clone(), db.clone(), query.to_string());
        let mut config = passthrough_proxy("scram-sha-256")
            .configure(move |file, _| {
                file.auth_query = Some(query);
                file.auth_user = Some(name);
                file.auth_dbname = Some(db);
            })
            .config();
        // What auth_password_env would read.
        config.auth_query.as_mut().expect("auth_query").password = Some(auth_user.password.clone());
        TestProxy::start(config)
    };

    let least = as_auth_user("SELECT * FROM pgcutover_lookup($1)");
    let client = least.connect(APP_USER, APP_PASSWORD, &db).await.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(client.query_one("SELECT current_user::text", &[]).await.unwrap().get::<_, String>(0), APP_USER);
    let err = least.connect(APP_USER, "wrong", &db).await.expect_err("wrong password");
    assert_eq!(err_code(&err), "28P01");

    // The auth user may not read pg_authid: permission denied.
    let denied = as_auth_user(AUTH_QUERY);
    let err = denied.connect(APP_USER, APP_PASSWORD, &db).await.expect_err("logged in without a verifier");
    assert_eq!(err_code(&err), "28000", "{err:?}");
    assert!(err_message(&err).contains("auth_query failed") && err_message(&err).contains(APP_USER), "{}", err_message(&err));
    // One column instead of two.
    let shape = passthrough_proxy("md5").auth_query("SELECT rolname FROM pg_authid WHERE rolname = $1").start();
    assert_eq!(err_code(&shape.connect(APP_USER, APP_PASSWORD, &db).await.expect_err("one column")), "28000");

    // Old is down: nothing listens where it should be.
    let down = proxy::ProxyBuilder::new(format!("postgres://{SUPERUSER}:x@{HOST}:{}/postgres", proxy::closed_port())).no_users().auth_query(AUTH_QUERY).start();
    let err = down.connect(APP_USER, APP_PASSWORD, "postgres").await.expect_err("logged in while old is down");
    assert_eq!(err_code(&err), "08006", "{err:?}");
    for p in [&least, &denied, &shape, &down] {
        p.assert_no_panics();
    }
}

/// Over TLS the proxy offers SCRAM-SHA-256-PLUS: psql and tokio-postgres with channel binding
/// required log in (they check the binding to the proxy's certificate); without TLS they cannot.
#[test]
fn channel_binding_over_tls() {
    let db = old().create_database("ap_cbind");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = proxy::self_signed_cert(dir.path());
    let role = TempRole::scram("ap_cbind", "cbind-pw-6b", &[old()]);
    let proxy = passthrough_proxy("scram-sha-256").tls(&cert, &key).start();
    let conninfo = |ssl: &str| format!("host={HOST} port={} user={} dbname={db} {ssl}", proxy.port(), role.name);

    let out = psql_conninfo(&conninfo("sslmode=require channel_binding=require"), &role.password, "SELECT current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())");
    // The proxy's own login to old is plain (the rig's servers have no TLS).
    assert_eq!(out.as_deref(), Ok(format!("{} false", role.name).as_str()));
    let wrong = psql_conninfo(&conninfo("sslmode=require channel_binding=require"), "wrong", "SELECT 1").expect_err("wrong password");
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    let plain = psql_conninfo(&conninfo("sslmode=disable channel_binding=require"), &role.password, "SELECT 1").expect_err("channel binding without TLS");
    assert!(plain.contains("channel binding"), "{plain}");
    assert_eq!(psql_conninfo(&conninfo("sslmode=require channel_binding=disable"), &role.password, "SELECT 1").as_deref(), Ok("1"));

    // tokio-postgres over rustls, channel binding required too.
    let tls = pgcutover::tls::client_config(pgcutover::config::SslMode::Require, None).unwrap().expect("a TLS client config");
    let mut config = proxy.pg_config(&role.name, &role.password, &db);
    config.ssl_mode(tokio_postgres::config::SslMode::Require).channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let user: String = runtime.block_on(async {
        let (client, connection) = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone())).await.unwrap_or_else(|e| panic!("{e:?}"));
        tokio::spawn(connection);
        client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0)
    });
    assert_eq!(user, role.name);
    proxy.assert_no_panics();
}

/// CHECK names a role in use whose verifier differs on new; a CUTOVER then stops at the
/// pre-warm naming it, and every session carries on on old. With old's verifier copied to new,
/// CHECK is satisfied.
#[test]
fn check_names_a_role_whose_verifier_differs_on_new() {
    let (old, new) = (old(), new());
    const PW: &str = "check-pw-7c";
    let same = TempRole::scram("ap_same", PW, &[old, new]);
    let mut differs = TempRole::scram("ap_differs", PW, &[old]);
    differs.created_separately_on(new);
    let db = old.create_database("ap_check");
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY)");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = passthrough_proxy("scram-sha-256").new_server(old, new).start();
    let mut sessions: Vec<RawConn> = [&same, &differs].iter().map(|r| RawConn::login(proxy.addr, &r.name, PW, &db)).collect();

    let check_row = || {
        let shared = proxy.shared.clone();
        let rows = proxy.block_on(async move { pgcutover::cutover::check(&shared).await });
        rows.into_iter().find(|r| r.check == pgcutover::auth::passthrough::CHECK).expect("a role verifier row")
    };
    let row = check_row();
    assert_eq!(row.status, "warn", "{row:?}");
    assert!(row.detail.contains(&differs.name) && !row.detail.contains(&same.name), "{row:?}");

    let err = crate::cutover::run_cutover(&proxy, CutoverOptions::default()).expect_err("a session moved to a server holding another verifier");
    let text = err.to_string();
    assert!(text.contains(&differs.name) && text.contains("verifier"), "{text}");
    for s in &mut sessions {
        assert_eq!(s.query_values("SELECT current_setting('server_version_num')::int / 10000"), vec!["15".to_string()]);
    }

    new.psql("postgres", &format!("ALTER ROLE {} PASSWORD {}", quote_ident(&differs.name), quote_literal(&differs.rolpassword(old))));
    let row = check_row();
    assert_eq!(row.status, "ok", "{row:?}");
    proxy.assert_no_panics();
}

/// A CUTOVER under pgbench (simple, extended, prepared) whose clients log in as a SCRAM role
/// and an md5 role through a proxy without passwords: the pre-warm logs into new as each role
/// by pass-through, every session moves, no transaction fails, and new logins land on new.
#[test]
fn cutover_under_pgbench_moves_pass_through_sessions() {
    let (old, new) = (old(), new());
    let scram = TempRole::scram("ap_cut_s", "cut-pw-8d", &[old, new]);
    let md5 = TempRole::md5("ap_cut_m", "cut-pw-9e", false, &[old, new]);
    let (db, _replication) = crate::cutover::pgbench_db(old, new, "ap_cut", "");
    let proxy = passthrough_proxy("md5").new_server(old, new).start();
    const CLIENTS: usize = 8;
    let loads = [(&scram, "simple"), (&md5, "extended"), (&scram, "prepared")];
    let benches: Vec<_> = loads
        .iter()
        .map(|(role, mode)| (role.name.clone(), *mode, crate::cutover::spawn_pgbench_as(&proxy, &db, (&role.name, &role.password), mode, CLIENTS, 40, 40)))
        .collect();
    crate::cutover::wait_for_pgbench_clients(&proxy, 3 * CLIENTS, benches.iter().map(|(_, _, b)| b));
    thread::sleep(Duration::from_secs(1));
    let options = CutoverOptions { drain_timeout: Some(Duration::from_secs(30)), ..Default::default() };
    let report = crate::cutover::run_cutover(&proxy, options).unwrap_or_else(|e| panic!("cutover failed: {e}"));
    let text = crate::cutover::report_text(&report);

    let mut processed = 0;
    for (user, mode, bench) in benches {
        let result = bench.join().expect("pgbench thread");
        result.assert_success();
        assert_eq!(result.failed, 0, "pgbench -M {mode} as {user}:\n{result}");
        assert!(result.processed > 0, "{mode}: {result}");
        processed += result.processed;
    }
    let moved = report.iter().find(|r| r.item == "sessions moved").and_then(|r| r.value.parse::<usize>().ok());
    assert!(moved >= Some(3 * CLIENTS), "every pgbench session moved\n{text}");
    let (accounts, history, tellers, branches, count) = crate::cutover::pgbench_totals(new, &db);
    assert_eq!((accounts, tellers, branches), (history, history, history), "consistent on new\n{text}");
    assert_eq!(count as u64, processed, "every committed transaction is on new\n{text}");
    // After the switch, new logins of both roles go to new, still without a password.
    for role in [&scram, &md5] {
        let version = proxy.psql(&role.name, &role.password, &db, "SELECT current_setting('server_version_num')::int / 10000");
        assert_eq!(version.as_deref(), Ok("18"), "{}", role.name);
    }
    proxy.assert_no_panics();
}

/// The real binary at debug level, with auth_query through the least-privilege function and
/// an auth user whose password comes from the environment: logins that work and fail, and an
/// auth_query failure (its own log line, 28000 to the client). No password, verifier,
/// StoredKey, ServerKey or ClientKey appears anywhere in the log.
#[test]
fn the_debug_log_holds_no_secret() {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let db = old().create_database("ap_log");
    old().psql(&db, LOOKUP_FUNCTION);
    let scram = TempRole::scram("ap_log_s", "log-pw-scram-0a", &[old()]);
    let md5 = TempRole::md5("ap_log_m", "log-pw-md5-1b", false, &[old()]);
    let auth_user = TempRole::scram("ap_log_auth", "log-pw-auth-2c", &[old()]).without_app_user();
    let late = TempRole::scram("ap_log_late", "log-pw-late-3d", &[old()]);
    old().psql(&db, &format!("GRANT EXECUTE ON FUNCTION pgcutover_lookup(text) TO {}", quote_ident(&auth_user.name)));

    let dir = tempfile::tempdir().unwrap();
    let listen = proxy::closed_port();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{listen}\"\nauth = \"md5\"\nauth_query = \"SELECT * FROM pgcutover_lookup($1)\"\nauth_user = \"{}\"\n\
             auth_password_env = \"PGC_TEST_AUTH_PASSWORD\"\nauth_dbname = \"{db}\"\n[old]\nurl = \"{}\"\nsslmode = \"disable\"\n",
            auth_user.name,
            old().url(SUPERUSER, SUPERUSER_PASSWORD, "postgres")
        ),
    )
    .unwrap();
    let log = dir.path().join("pgcutover.log");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("PGCUTOVER_LOG", "debug")
        .env("PGC_TEST_AUTH_PASSWORD", &auth_user.password)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start pgcutover");
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect((HOST, listen)).is_err() {
        assert!(Instant::now() < deadline && serve.try_wait().unwrap().is_none(), "pgcutover did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        thread::sleep(Duration::from_millis(50));
    }
    let psql = |user: &str, password: &str| {
        let mut cmd = proxy::client_tool("psql");
        cmd.args(["-XAtq", "-h", HOST, "-p", &listen.to_string(), "-U", user, "-d", &db, "-f", "-"]).env("PGPASSWORD", password);
        support::psql_output(cmd, "SELECT current_user")
    };
    for role in [&scram, &md5] {
        assert_eq!(psql(&role.name, &role.password).as_deref(), Ok(role.name.as_str()));
        let wrong = psql(&role.name, "log-pw-wrong-4e").expect_err("wrong password");
        assert!(wrong.contains("28P01") || wrong.contains("password authentication failed"), "{wrong}");
    }
    assert!(psql("ap_log_nobody", "log-pw-nobody-5f").is_err());
    // The auth user loses its right to run the lookup: a role not cached yet cannot log in.
    old().psql(&db, &format!("REVOKE EXECUTE ON FUNCTION pgcutover_lookup(text) FROM {}", quote_ident(&auth_user.name)));
    let failed = psql(&late.name, &late.password).expect_err("logged in without the auth_query");
    assert!(failed.contains("auth_query failed"), "{failed}");
    let _ = Command::new("kill").args(["-TERM", &serve.id().to_string()]).status();
    let status = serve.wait().expect("wait for pgcutover");
    assert!(status.success(), "pgcutover exits 0 after SIGTERM: {status}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG") && text.contains("auth_query answered"), "the log is at debug level:\n{text}");
    assert!(text.contains("auth_query failed") && text.contains(&late.name), "a distinct line for the auth_query failure:\n{text}");
    let mut secrets = vec![SUPERUSER_PASSWORD.to_string(), "log-pw-wrong-4e".into(), "log-pw-nobody-5f".into()];
    for role in [&scram, &md5, &auth_user, &late] {
        secrets.push(role.password.clone());
        let verifier = role.rolpassword(old());
        secrets.push(verifier.clone());
        if let Ok(v) = pgcutover::auth::ScramVerifier::parse(&verifier) {
            secrets.extend([b64(v.stored_key()), b64(v.server_key()), hex(v.stored_key()), hex(v.server_key())]);
            // The ClientKey the proxy recovered for this role.
            let mut server = pgcutover::auth::ScramServer::new(v);
            let mut client = pgcutover::auth::ScramClient::new(&role.password).unwrap();
            let server_first = server.client_first(&client.client_first()).unwrap();
            server.client_final(&client.server_first(&server_first).unwrap()).unwrap();
            let key = server.client_key().unwrap();
            secrets.extend([b64(key.as_bytes()), hex(key.as_bytes())]);
        } else {
            secrets.push(verifier.trim_start_matches("md5").to_string());
        }
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret ({} chars) is in the log:\n{text}", secret.len());
    }
}
