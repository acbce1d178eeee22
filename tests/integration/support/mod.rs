//! Test rig: real Postgres servers for integration tests.
//!
//! `tests/integration/main.rs` declares it once for every test module of the one test binary.
//!
//! * [`old()`] (Postgres 15) and [`new()`] (Postgres 18) are shared servers, started lazily once for
//!   the test binary (the first call starts both, in parallel) and killed when it exits.
//!   Tests must not stop them; use [`start`] for a dedicated server that a test may stop/restart.
//! * Servers run as the unprivileged user `pgcutover` when the tests run as root (initdb/postgres
//!   refuse to run as root). `scripts/install-deps.sh` provisions binaries and that user; it is run
//!   automatically (once) if something is missing.
//! * Authentication (host 127.0.0.1/32): `trust_user` trust, `md5_user` and members of
//!   [`MD5_GROUP`] md5 (md5-hashed password), `clear_user` password (cleartext), every other role
//!   scram-sha-256; replication connections scram-sha-256; local socket connections trust.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// In-process pgcutover proxy and raw protocol client for tests.
pub mod proxy;
/// `pgcutover serve` as a separate process (its memory, an address-space limit).
pub mod served;

// ------------------------------------------------------------------------------------------------
// Constants
// ------------------------------------------------------------------------------------------------

/// Superuser role on every test server.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "super-pw-3f9a";

/// Plain LOGIN role authenticated with scram-sha-256.
pub const APP_USER: &str = "app_user";
pub const APP_PASSWORD: &str = "app-pw-7c21";
/// LOGIN role with `trust` authentication over TCP (password is set but never checked).
pub const TRUST_USER: &str = "trust_user";
pub const TRUST_PASSWORD: &str = "trust-pw-51be";
/// LOGIN role with `md5` authentication; its password is stored md5-hashed.
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-pw-a0d4";
/// LOGIN role with `password` (cleartext) authentication.
pub const CLEAR_USER: &str = "clear_user";
pub const CLEAR_PASSWORD: &str = "clear-pw-9e6f";

/// NOLOGIN role whose members authenticate with md5 (a test's own md5 roles join it).
pub const MD5_GROUP: &str = "md5_group";

/// The non-superuser test roles and their passwords.
pub const TEST_ROLES: &[(&str, &str)] = &[
    (APP_USER, APP_PASSWORD),
    (TRUST_USER, TRUST_PASSWORD),
    (MD5_USER, MD5_PASSWORD),
    (CLEAR_USER, CLEAR_PASSWORD),
];

/// Debian's Postgres 15 (server, client tools, pgbench, pg_dump).
pub const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Unprivileged system user the servers run as when the tests run as root.
pub const RUN_AS_USER: &str = "pgcutover";
/// Host every server listens on.
pub const HOST: &str = "127.0.0.1";

/// How long a test waits for something that should happen soon (a reply, a close, a phase).
/// Generous: CI machines have been 25x slower than a quiet one. A test that checks a timing of
/// the product asserts that bound on its own.
pub const PATIENCE: Duration = Duration::from_secs(120);

const READY_TIMEOUT: Duration = Duration::from_secs(180);
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(300);

// ------------------------------------------------------------------------------------------------
// Shared servers
// ------------------------------------------------------------------------------------------------

static OLD: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEW: OnceLock<Result<PgServer, String>> = OnceLock::new();
static KICK: Once = Once::new();

/// The shared Postgres 15 server of this test binary.
pub fn old() -> &'static PgServer {
    kick_shared();
    shared(&OLD, 15)
}

/// The shared Postgres 18 server of this test binary.
pub fn new() -> &'static PgServer {
    kick_shared();
    shared(&NEW, 18)
}

/// Start both shared servers in parallel the first time either is asked for.
fn kick_shared() {
    KICK.call_once(|| {
        register_atexit();
        // The other one starts in the background; whoever asks for it later waits on its OnceLock.
        let _ = std::thread::Builder::new()
            .name("pg-shared-18".into())
            .spawn(|| {
                let _ = NEW.get_or_init(|| start_catching(18, true));
            });
        let _ = std::thread::Builder::new()
            .name("pg-shared-15".into())
            .spawn(|| {
                let _ = OLD.get_or_init(|| start_catching(15, true));
            });
    });
}

fn shared(cell: &'static OnceLock<Result<PgServer, String>>, version: u32) -> &'static PgServer {
    match cell.get_or_init(|| start_catching(version, true)) {
        Ok(s) => s,
        Err(e) => panic!("shared Postgres {version} server failed to start:\n{e}"),
    }
}

fn start_catching(version: u32, shared: bool) -> Result<PgServer, String> {
    std::panic::catch_unwind(|| PgServer::start_inner(version, shared)).map_err(|p| {
        if let Some(s) = p.downcast_ref::<String>() {
            s.clone()
        } else if let Some(s) = p.downcast_ref::<&str>() {
            s.to_string()
        } else {
            "unknown panic".to_string()
        }
    })
}

/// At process exit: immediate shutdown of the shared servers and removal of their data.
/// (Statics are never dropped; the servers also get SIGQUIT through PR_SET_PDEATHSIG.)
fn register_atexit() {
    extern "C" fn cleanup() {
        for cell in [&OLD, &NEW] {
            if let Some(Ok(server)) = cell.get() {
                server.shutdown(libc::SIGQUIT, Duration::from_secs(10));
                let _ = fs::remove_dir_all(&server.root);
            }
        }
    }
    unsafe {
        libc::atexit(cleanup);
    }
}

/// Start a dedicated server of the given major version (15 or 18), owned by the caller.
/// It is stopped and its data removed on drop.
pub fn start(version: u32) -> PgServer {
    PgServer::start_inner(version, false)
}

// ------------------------------------------------------------------------------------------------
// PgServer
// ------------------------------------------------------------------------------------------------

pub struct PgServer {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Major version (15 or 18).
    pub version: u32,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    shared: bool,
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("version", &self.version)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("shared", &self.shared)
            .finish()
    }
}

impl PgServer {
    pub fn host(&self) -> &str {
        HOST
    }

    /// `postgres://user:password@127.0.0.1:port/db` (components percent-encoded).
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            pct(user),
            pct(password),
            HOST,
            self.port,
            pct(db)
        )
    }

    /// URL for the superuser `postgres`.
    pub fn super_url(&self, db: &str) -> String {
        self.url(SUPERUSER, SUPERUSER_PASSWORD, db)
    }

    /// libpq keyword/value connection string (as used by CREATE SUBSCRIPTION).
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            HOST,
            self.port,
            conninfo_quote(user),
            conninfo_quote(password),
            conninfo_quote(db)
        )
    }

    /// Directory of this server's binaries (initdb, postgres, ...). Client tools (psql, pg_dump,
    /// pgbench) are always taken from [`PG15_BIN`].
    pub fn bin_dir(&self) -> PathBuf {
        self.bin_dir.clone()
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.socket_dir.clone()
    }

    /// The server log (for assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Run SQL as the superuser over TCP with psql (`-XAtq -v ON_ERROR_STOP=1`, SQL fed on stdin,
    /// so several statements run one by one). Panics with stderr on failure; returns trimmed stdout.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        match self.try_psql(db, sql) {
            Ok(out) => out,
            Err(e) => panic!("psql on Postgres {} (port {}) db {db:?} failed:\nSQL: {sql}\n{e}", self.version, self.port),
        }
    }

    /// Like [`psql`](Self::psql), `Err` carrying stderr instead of a panic.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        psql_output(self.superuser_client("psql", db), sql)
    }

    /// A client tool (psql, pg_dump) connected as the superuser over the unix socket: trust
    /// auth, so no SCRAM exchange per call (which costs real time on a slow machine).
    fn superuser_client(&self, tool: &str, db: &str) -> Command {
        let mut cmd = client_command(tool);
        cmd.arg("-h").arg(&self.socket_dir).arg("-p").arg(self.port.to_string()).args(["-U", SUPERUSER, "-d", db]);
        if tool == "psql" {
            cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        }
        cmd
    }

    /// Like [`psql`](Self::psql) but as any role with any password; `Err` carries stderr.
    pub fn psql_as(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = client_command("psql");
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h", HOST])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", user, "-d", db, "-f", "-"])
            .env("PGPASSWORD", password);
        psql_output(cmd, sql)
    }

    /// Create a uniquely named database (unique across tests and test binaries), grant every test
    /// role CONNECT/CREATE/TEMPORARY on it and ALL on schema public (plus default privileges on
    /// tables/sequences/functions the superuser creates there). Returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut p = sanitize_ident(prefix);
        p.truncate(32);
        if p.is_empty() || !p.as_bytes()[0].is_ascii_lowercase() {
            p = format!("db_{p}");
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{p}_{}_{n}", std::process::id());
        self.create_database_named(&name);
        name
    }

    /// CREATE DATABASE `name` with the test-role grants, in one psql run. FILE_COPY copies the
    /// template's files instead of writing them to WAL, which every walsender of every other
    /// test would have to read through.
    pub fn create_database_named(&self, name: &str) {
        let roles = TEST_ROLES.iter().map(|(r, _)| quote_ident(r)).collect::<Vec<_>>().join(", ");
        let db = quote_ident(name);
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {db} STRATEGY = FILE_COPY;\n\
                 GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {roles};\n\
                 \\c {db}\n\
                 GRANT ALL ON SCHEMA public TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO {roles};\n\
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO {roles};"
            ),
        );
    }

    /// Is the postmaster process (started by this rig) alive?
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fast shutdown (SIGINT: clients get 57P01 admin_shutdown), waiting for the postmaster to
    /// exit. Dedicated servers only.
    pub fn stop(&self) {
        self.assert_dedicated("stop");
        if !self.shutdown(libc::SIGINT, Duration::from_secs(60)) {
            panic!("Postgres {} (port {}) did not stop; log:\n{}", self.version, self.port, self.log_tail(40));
        }
    }

    /// Immediate shutdown (SIGQUIT, like a crash for clients). Dedicated servers only.
    pub fn stop_immediate(&self) {
        self.assert_dedicated("stop_immediate");
        self.shutdown(libc::SIGQUIT, Duration::from_secs(60));
    }

    /// Start a stopped dedicated server again on the same port and data dir.
    pub fn start_again(&self) {
        self.assert_dedicated("start_again");
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!("start_again: Postgres {} (port {}) is still running", self.version, self.port);
            }
        }
        *guard = None;
        match self.launch() {
            Ok(child) => *guard = Some(child),
            Err(e) => panic!("start_again of Postgres {} (port {}) failed: {e}", self.version, self.port),
        }
    }

    fn assert_dedicated(&self, what: &str) {
        if self.shared {
            panic!("{what}() on a shared server (old()/new()) would break other tests; use support::start(version)");
        }
    }

    /// Send `sig` to the postmaster and wait up to `timeout` for it to exit (then SIGKILL).
    /// Returns true if it exited before the timeout.
    fn shutdown(&self, sig: libc::c_int, timeout: Duration) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(child) = guard.as_mut() else { return true };
        if let Ok(Some(_)) = child.try_wait() {
            *guard = None;
            return true;
        }
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    *guard = None;
                    return true;
                }
                Ok(None) => {}
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                *guard = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // --------------------------------------------------------------------------------------------
    // Startup
    // --------------------------------------------------------------------------------------------

    fn start_inner(version: u32, shared: bool) -> PgServer {
        ensure_deps();
        let bin_dir = match version {
            15 => PathBuf::from(PG15_BIN),
            18 => pg18_bin_dir(),
            v => panic!("support::start: unsupported Postgres version {v} (15 and 18 are available)"),
        };
        let owner = run_as();
        let root = make_server_root(version, owner);
        let data_dir = root.join("data");
        let socket_dir = root.join("sock");
        let log_path = root.join("postgres.log");
        fs::create_dir(&socket_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", socket_dir.display()));
        chown(&socket_dir, owner);

        initdb(&bin_dir, &root, &data_dir, owner, version);
        write_config(&data_dir, &socket_dir, version);

        let mut server = PgServer {
            port: 0,
            version,
            root,
            data_dir,
            socket_dir,
            log_path,
            bin_dir,
            shared,
            child: Mutex::new(None),
        };
        // A port picked as free can be taken by a parallel test binary before postgres binds it.
        let mut last_err = String::new();
        for _attempt in 0..8 {
            server.port = free_port();
            match server.launch() {
                Ok(child) => {
                    *server.child.lock().unwrap() = Some(child);
                    server.create_test_roles();
                    return server;
                }
                Err(e) if e.contains("Address already in use") || e.contains("could not create any TCP/IP sockets") => {
                    last_err = e;
                    continue;
                }
                Err(e) => {
                    let _ = fs::remove_dir_all(&server.root);
                    panic!("Postgres {version} failed to start: {e}");
                }
            }
        }
        let _ = fs::remove_dir_all(&server.root);
        panic!("Postgres {version} could not find a free port: {last_err}");
    }

    /// Spawn the postmaster and wait until it accepts connections. Err carries the log.
    fn launch(&self) -> Result<Child, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("open {}: {e}", self.log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let start_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = server_command(&self.bin_dir.join("postgres"), &self.root);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let mut child = spawn_long_lived(cmd, run_as(), libc::SIGQUIT)
            .map_err(|e| format!("cannot spawn {}: {e}", self.bin_dir.join("postgres").display()))?;

        let new_log = |path: &Path| -> String {
            let mut s = String::new();
            if let Ok(mut f) = File::open(path) {
                use std::io::Seek;
                let _ = f.seek(io::SeekFrom::Start(start_offset));
                let _ = f.read_to_string(&mut s);
            }
            s
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "postgres (port {}) exited with {status} before becoming ready; log {}:\n{}",
                    self.port,
                    self.log_path.display(),
                    new_log(&self.log_path)
                ));
            }
            let ready = client_command("pg_isready")
                .args(["-q", "-t", "2", "-h", HOST, "-d", "postgres", "-U", SUPERUSER])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "postgres (port {}) not ready after {:?}; log {}:\n{}",
                    self.port,
                    READY_TIMEOUT,
                    self.log_path.display(),
                    new_log(&self.log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    fn create_test_roles(&self) {
        let mut sql = format!("CREATE ROLE {} NOLOGIN;\nSET password_encryption = 'scram-sha-256';\n", quote_ident(MD5_GROUP));
        for (role, pw) in TEST_ROLES.iter().filter(|(r, _)| *r != MD5_USER) {
            sql.push_str(&format!("CREATE ROLE {} LOGIN PASSWORD {};\n", quote_ident(role), quote_literal(pw)));
        }
        sql.push_str("SET password_encryption = 'md5';\n");
        sql.push_str(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {};\n",
            quote_ident(MD5_USER),
            quote_literal(MD5_PASSWORD)
        ));
        // Over the unix socket (trust), quiet about PG 18's md5 deprecation warning.
        let mut cmd = client_command("psql");
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres", "-f", "-"])
            .env("PGOPTIONS", "-c client_min_messages=error");
        let out = run_with_stdin(cmd, sql.as_bytes()).unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        if !out.status.success() {
            panic!(
                "creating test roles on Postgres {} failed: {}\nlog:\n{}",
                self.version,
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(40)
            );
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown(libc::SIGQUIT, Duration::from_secs(30));
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ------------------------------------------------------------------------------------------------
// Logical replication
// ------------------------------------------------------------------------------------------------

/// Replicate database `db` (which must exist on `old`, with its tables) to `new`: create `db` on
/// new (with the test-role grants), load old's `pg_dump --schema-only` into it, `CREATE PUBLICATION
/// ... FOR ALL TABLES` on old and `CREATE SUBSCRIPTION` on new, then wait (up to
/// [`REPLICATION_TIMEOUT`]) until every table of the subscription is in state `r` and its apply
/// worker runs. The returned guard shows the subscription name (also the slot name on old; the
/// publication name is [`publication_name`]) and drops the subscription when the test ends, so no
/// idle walsender keeps reading the WAL of every other test.
pub fn setup_replication<'a>(old: &'a PgServer, new: &'a PgServer, db: &str) -> Replication<'a> {
    let sub = subscription_name(db);
    let publ = publication_name(db);

    new.create_database_named(db);

    // Schema: old's pg_dump (15) into new with psql.
    let mut dump = old.superuser_client("pg_dump", db);
    dump.args(["--schema-only", "--no-publications", "--no-subscriptions"]).stdin(Stdio::null());
    let out = dump.output().unwrap_or_else(|e| panic!("cannot run pg_dump: {e}"));
    if !out.status.success() {
        panic!("pg_dump --schema-only of {db} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let schema = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Err(e) = new.try_psql(db, &schema) {
        panic!("loading the schema of {db} into Postgres {} failed: {e}\nschema:\n{schema}", new.version);
    }

    old.psql(db, &format!("CREATE PUBLICATION {} FOR ALL TABLES;", quote_ident(&publ)));
    // Creating the slot waits for every transaction open on old at that moment, other tests'
    // included: on a slow machine that takes a while, hence the generous timeout below.
    new.psql(
        db,
        &format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {};",
            quote_ident(&sub),
            quote_literal(&old.conninfo(SUPERUSER, SUPERUSER_PASSWORD, db)),
            quote_ident(&publ)
        ),
    );
    let replication = Replication { name: sub, old, new, db: db.to_string() };

    let check = format!(
        "SELECT (SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                  WHERE s.subname = {lit} AND r.srsubstate <> 'r') \
             || ' ' || (SELECT count(*) FROM pg_stat_subscription WHERE subname = {lit} AND relid IS NULL AND pid IS NOT NULL);",
        lit = quote_literal(&replication.name)
    );
    let deadline = Instant::now() + REPLICATION_TIMEOUT;
    loop {
        let state = new.psql(db, &check);
        if state == "0 1" {
            return replication;
        }
        if Instant::now() >= deadline {
            let rels = new.psql(
                db,
                &format!(
                    "SELECT string_agg(r.srrelid::regclass || '=' || r.srsubstate, ', ') FROM pg_subscription_rel r \
                     JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = {};",
                    quote_literal(&replication.name)
                ),
            );
            panic!(
                "subscription {replication} on Postgres {} not ready after {:?} (not-ready tables / apply workers: {state}; \
                 tables: {rels})\nnew log:\n{}\nold log:\n{}",
                new.version,
                REPLICATION_TIMEOUT,
                new.log_tail(40),
                old.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A subscription made by [`setup_replication`]; dropped (with its slot on old) with the guard.
pub struct Replication<'a> {
    name: String,
    old: &'a PgServer,
    new: &'a PgServer,
    db: String,
}

impl fmt::Display for Replication<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Replication<'_> {
    fn drop(&mut self) {
        let sub = quote_ident(&self.name);
        if self.new.is_running() {
            if self.new.try_psql(&self.db, &format!("DROP SUBSCRIPTION IF EXISTS {sub};")).is_ok() {
                return;
            }
            // Old unreachable or fenced: detach the slot and drop the subscription...
            let _ = self.new.try_psql(
                &self.db,
                &format!("ALTER SUBSCRIPTION {sub} DISABLE; ALTER SUBSCRIPTION {sub} SET (slot_name = NONE); DROP SUBSCRIPTION {sub};"),
            );
        }
        // ... then the slot, which would otherwise keep old's WAL.
        if self.old.is_running() {
            let _ = self.old.try_psql(
                "postgres",
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {} AND NOT active;",
                    quote_literal(&self.name)
                ),
            );
        }
    }
}

/// Subscription (and replication slot) name that [`setup_replication`] uses for `db`.
pub fn subscription_name(db: &str) -> String {
    object_name("pgc_sub_", db)
}

/// Publication name that [`setup_replication`] uses for `db`.
pub fn publication_name(db: &str) -> String {
    object_name("pgc_pub_", db)
}

fn object_name(prefix: &str, db: &str) -> String {
    let s = sanitize_ident(db);
    let name = format!("{prefix}{s}");
    if name.len() <= 63 && s == db {
        return name;
    }
    // Too long or not a plain identifier: keep it unique with a hash of the real name.
    let mut h = DefaultHasher::new();
    db.hash(&mut h);
    let mut name = format!("{prefix}{s}");
    name.truncate(63 - 17);
    format!("{name}_{:016x}", h.finish())
}

// ------------------------------------------------------------------------------------------------
// pgbench
// ------------------------------------------------------------------------------------------------

/// Result of one pgbench run; `Display` shows everything for assertion messages.
#[derive(Debug, Clone)]
pub struct PgbenchResult {
    pub status: ExitStatus,
    pub success: bool,
    /// "number of transactions actually processed" (0 if absent).
    pub processed: u64,
    /// "number of failed transactions" (0 if absent).
    pub failed: u64,
    /// First "tps = ..." value (0.0 if absent).
    pub tps: f64,
    pub stdout: String,
    pub stderr: String,
}

impl PgbenchResult {
    /// Panic with the full output unless pgbench exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success, "pgbench failed:\n{self}");
        self
    }
}

impl fmt::Display for PgbenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pgbench {} (processed {}, failed {}, tps {})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.processed, self.failed, self.tps, self.stdout, self.stderr
        )
    }
}

/// Run Postgres 15's pgbench with `args` and extra environment `env` (e.g. PGPASSWORD).
pub fn pgbench(args: &[&str], env: &[(&str, &str)]) -> PgbenchResult {
    ensure_deps();
    let mut cmd = client_command("pgbench");
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run pgbench: {e}"));
    parse_pgbench(out)
}

fn parse_pgbench(out: Output) -> PgbenchResult {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut processed = 0;
    let mut failed = 0;
    let mut tps = None;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // "1000" or "1000/1000"
            processed = leading_number(rest).unwrap_or(0.0) as u64;
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = leading_number(rest).unwrap_or(0.0) as u64;
        } else if let Some(rest) = line.strip_prefix("tps =") {
            if tps.is_none() {
                tps = leading_number(rest);
            }
        }
    }
    PgbenchResult {
        status: out.status,
        success: out.status.success(),
        processed,
        failed,
        tps: tps.unwrap_or(0.0),
        stdout,
        stderr,
    }
}

fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s[..end].parse().ok()
}

// ------------------------------------------------------------------------------------------------
// Provisioning
// ------------------------------------------------------------------------------------------------

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PGCUTOVER_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| unsafe {
            let pw = libc::getpwuid(libc::geteuid());
            if pw.is_null() {
                None
            } else {
                Some(PathBuf::from(std::ffi::CStr::from_ptr((*pw).pw_dir).to_string_lossy().into_owned()))
            }
        })
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("pgcutover")
}

/// Where `scripts/install-deps.sh` puts the Postgres 18 binaries.
pub fn pg18_bin_dir() -> PathBuf {
    cache_dir().join("pg18").join("package").join("native").join("bin")
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn missing_deps() -> Vec<String> {
    let mut missing = Vec::new();
    for b in ["postgres", "initdb", "psql", "pgbench", "pg_dump", "pg_isready"] {
        let p = Path::new(PG15_BIN).join(b);
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    let pg18 = pg18_bin_dir();
    for b in ["postgres", "initdb"] {
        let p = pg18.join(b);
        if !p.exists() {
            missing.push(p.display().to_string());
        }
    }
    if !cache_dir().join("pg18").join(".complete").exists() {
        missing.push(format!("{}/pg18/.complete", cache_dir().display()));
    }
    if is_root() && lookup_user(RUN_AS_USER).is_none() {
        missing.push(format!("system user {RUN_AS_USER}"));
    }
    missing
}

/// Make sure the binaries (and the `pgcutover` user, as root) exist; run scripts/install-deps.sh
/// once if not. Panics if they are still missing.
pub fn ensure_deps() {
    static DEPS: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DEPS.get_or_init(|| {
        let missing = missing_deps();
        if missing.is_empty() {
            return Ok(());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("install-deps.sh");
        eprintln!("test rig: missing {missing:?}; running {}", script.display());
        let status = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let still = missing_deps();
        if !status.success() || !still.is_empty() {
            return Err(format!(
                "Postgres test servers unavailable: {} exited with {status}; still missing: {still:?}",
                script.display()
            ));
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Owner {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(name: &str) -> Option<Owner> {
    let c = CString::new(name).ok()?;
    // getpwnam is not thread-safe; serialize.
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(Owner { uid: (*pw).pw_uid, gid: (*pw).pw_gid })
        }
    }
}

/// The user servers run as: `pgcutover` when we are root, else ourselves (None = no switch).
fn run_as() -> Option<Owner> {
    if is_root() {
        Some(lookup_user(RUN_AS_USER).unwrap_or_else(|| {
            panic!("running as root but system user {RUN_AS_USER} does not exist (run scripts/install-deps.sh)")
        }))
    } else {
        None
    }
}

fn chown(path: &Path, owner: Option<Owner>) {
    if let Some(o) = owner {
        std::os::unix::fs::chown(path, Some(o.uid), Some(o.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// A command for a server-side binary: clean environment, cwd in the server's own dir.
fn server_command(program: &Path, root: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .env("HOME", root)
        .current_dir(root);
    cmd
}

/// A command for a Postgres 15 client tool; PG* variables of the test environment are dropped.
fn client_command(tool: &str) -> Command {
    let mut cmd = Command::new(Path::new(PG15_BIN).join(tool));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", PATIENCE.as_secs().to_string()).env("PGSSLMODE", "disable");
    cmd
}

/// Runs psql with `sql` on stdin: trimmed stdout, or `Err` with the exit status and stderr.
pub fn psql_output(cmd: Command, sql: &str) -> Result<String, String> {
    let out = run_with_stdin(cmd, sql.as_bytes()).map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql exited with {}\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> io::Result<Output> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // Write from a thread so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output();
    let _ = writer.join();
    out
}

/// Drop privileges to `owner` (if any) and arrange for `deathsig` when our process dies.
/// Runs between fork and exec: raw syscalls only (they act on the single thread of the child).
fn prepare_child(cmd: &mut Command, owner: Option<Owner>, deathsig: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if let Some(o) = owner {
                let groups = [o.gid];
                if libc::syscall(libc::SYS_setgroups, 1 as libc::c_long, groups.as_ptr()) != 0
                    || libc::syscall(libc::SYS_setresgid, o.gid, o.gid, o.gid) != 0
                    || libc::syscall(libc::SYS_setresuid, o.uid, o.uid, o.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After the uid change: changing credentials clears the parent-death signal.
            if deathsig != 0 {
                if libc::prctl(libc::PR_SET_PDEATHSIG, deathsig as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // Our parent already died between fork and prctl.
                    return Err(io::Error::other("parent exited"));
                }
            }
            Ok(())
        });
    }
}

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and libtest runs each
/// test on its own short-lived thread. So long-lived children are spawned from one dedicated
/// thread that lives as long as the test process: they get `deathsig` only when the process dies.
fn spawn_long_lived(mut cmd: Command, owner: Option<Owner>, deathsig: libc::c_int) -> io::Result<Child> {
    type Req = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    prepare_child(&mut cmd, owner, deathsig);
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("pg-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn pg-spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock().unwrap_or_else(|e| e.into_inner()).send((cmd, rtx)).map_err(|_| io::Error::other("spawner gone"))?;
    rrx.recv().map_err(|_| io::Error::other("spawner gone"))?
}

// ------------------------------------------------------------------------------------------------
// Data directories
// ------------------------------------------------------------------------------------------------

/// `/tmp/pgcutover-rig-<uid>` (short: unix socket paths are limited to 107 bytes), or
/// `$PGCUTOVER_TEST_TMP`.
fn rig_base() -> PathBuf {
    let base = std::env::var_os("PGCUTOVER_TEST_TMP")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/pgcutover-rig-{}", unsafe { libc::geteuid() })));
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let _ = fs::create_dir_all(&base);
        sweep_stale(&base);
    });
    base
}

/// Remove server dirs left by test processes that no longer exist (killed before cleanup).
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // An orphaned postmaster may still run there: immediate shutdown first.
        if let Ok(pidfile) = fs::read_to_string(e.path().join("data").join("postmaster.pid")) {
            if let Some(pm) = pidfile.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) {
                let cmdline = fs::read(format!("/proc/{pm}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains("postgres") {
                    unsafe {
                        libc::kill(pm, libc::SIGQUIT);
                    }
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while Path::new(&format!("/proc/{pm}")).exists() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(e.path());
    }
}

fn make_server_root(version: u32, owner: Option<Owner>) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = rig_base();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = base.join(format!("{}-pg{version}-{n}-{nanos:x}", std::process::id()));
        match fs::create_dir(&root) {
            Ok(()) => {
                chown(&root, owner);
                return root;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", root.display()),
        }
    }
}

fn initdb(bin_dir: &Path, root: &Path, data_dir: &Path, owner: Option<Owner>, version: u32) {
    let pwfile = root.join("pwfile");
    fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).unwrap_or_else(|e| panic!("write {}: {e}", pwfile.display()));
    chown(&pwfile, owner);
    let mut cmd = server_command(&bin_dir.join("initdb"), root);
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "-N", "--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SIGKILL if the test process dies mid-initdb; spawned from this (waiting) thread is fine.
    prepare_child(&mut cmd, owner, libc::SIGKILL);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin_dir.join("initdb").display()));
    let _ = fs::remove_file(&pwfile);
    if !out.status.success() {
        let _ = fs::remove_dir_all(root);
        panic!(
            "initdb (Postgres {version}) failed with {}:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn write_config(data_dir: &Path, socket_dir: &Path, version: u32) {
    let mut conf = format!(
        "\n# --- pgcutover test rig ---\n\
         listen_addresses = '{HOST}'\n\
         unix_socket_directories = '{}'\n\
         wal_level = logical\n\
         max_connections = 400\n\
         max_replication_slots = 50\n\
         max_wal_senders = 50\n\
         max_worker_processes = 96\n\
         max_logical_replication_workers = 80\n\
         fsync = off\n\
         synchronous_commit = on\n\
         full_page_writes = off\n\
         shared_buffers = 32MB\n\
         password_encryption = 'scram-sha-256'\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n\
         log_min_messages = warning\n\
         datestyle = 'iso, mdy'\n\
         timezone = 'UTC'\n\
         lc_messages = 'C'\n",
        socket_dir.display()
    );
    if version >= 18 {
        // PG 18: subscriptions each need an active replication origin (default limit 10).
        conf.push_str("max_active_replication_origins = 50\n");
    }
    let conf_path = data_dir.join("postgresql.conf");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .unwrap_or_else(|e| panic!("open {}: {e}", conf_path.display()));
    f.write_all(conf.as_bytes()).unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));

    let hba = format!(
        "# pgcutover test rig\n\
         local   all          all                         trust\n\
         local   replication  all                         trust\n\
         host    all          {TRUST_USER}   127.0.0.1/32   trust\n\
         host    all          {MD5_USER}     127.0.0.1/32   md5\n\
         host    all          +{MD5_GROUP}   127.0.0.1/32   md5\n\
         host    all          {CLEAR_USER}   127.0.0.1/32   password\n\
         host    replication  all            127.0.0.1/32   scram-sha-256\n\
         host    all          all            127.0.0.1/32   scram-sha-256\n"
    );
    let hba_path = data_dir.join("pg_hba.conf");
    fs::write(&hba_path, hba).unwrap_or_else(|e| panic!("write {}: {e}", hba_path.display()));
}

/// A port for a process that binds it later (a Postgres server, a spawned proxy, a port kept
/// closed). Taken from below the kernel's ephemeral range (32768-60999 by default), where
/// listeners bound to port 0 (the in-process proxies) and outgoing connections never land: a
/// port picked here cannot be taken by another test between the pick and the bind, nor while a
/// test restarts a process on it. Each test binary walks its own stretch, starting from its pid.
fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = std::process::id() * 97;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (FIRST + (start + step) % SPAN) as u16;
        if TcpListener::bind((HOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

// ------------------------------------------------------------------------------------------------
// Quoting
// ------------------------------------------------------------------------------------------------

/// SQL identifier quoting: `"name"`.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL string literal quoting: `'text'`.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Lowercase `[a-z0-9_]` version of `s`.
fn sanitize_ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect()
}

/// Percent-encode everything but unreserved characters (for URL userinfo/path).
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
