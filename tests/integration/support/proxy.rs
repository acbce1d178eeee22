//! An in-process pgcutover proxy for integration tests, and a raw wire-protocol client.
//!
//! * [`for_server`] gives a [`ProxyBuilder`] (old = that server, superuser control credentials,
//!   `auth = scram-sha-256`, every test role configured with its password, metrics on); `start()`
//!   runs `pgcutover::proxy::start` on a multi-thread runtime owned by the returned [`TestProxy`],
//!   so both sync tests (psql, pgbench) and `#[tokio::test]` tests can use it. Drop shuts it down.
//! * Panics on the proxy's own threads are counted: [`TestProxy::assert_no_panics`].
//! * [`RawConn`] speaks the protocol by hand (startup packets, SCRAM/md5/cleartext login, simple
//!   queries, reading until the proxy closes) for the cases real clients cannot produce.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use pgcutover::config::{Config, FileConfig, FileUser, Overrides};
use pgcutover::proxy::{Running, Shared};

use super::{PgServer, HOST, SUPERUSER, SUPERUSER_PASSWORD, TEST_ROLES};

// ------------------------------------------------------------------------------------------------
// Builder
// ------------------------------------------------------------------------------------------------

/// A proxy in front of `server` (as old), with the defaults described in the module docs.
pub fn for_server(server: &PgServer) -> ProxyBuilder {
    ProxyBuilder::new(server.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres"))
}

/// A change to the config file and the flags (see [`ProxyBuilder::configure`]).
type ConfigEdit = Box<dyn FnOnce(&mut FileConfig, &mut Overrides)>;

pub struct ProxyBuilder {
    old_url: String,
    auth: String,
    users: Vec<FileUser>,
    max_clients: Option<usize>,
    max_startup_connections: Option<usize>,
    max_message_size: Option<usize>,
    startup_packet_timeout: Option<String>,
    startup_timeout: Option<String>,
    shutdown_timeout: String,
    tls: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    metrics: bool,
    /// Further changes to the file and the flags, applied last.
    edits: Vec<ConfigEdit>,
}

fn file_user(name: &str, password: Option<&str>, verifier: Option<&str>) -> FileUser {
    FileUser {
        name: name.to_string(),
        password: password.map(str::to_string),
        password_env: None,
        scram_verifier: verifier.map(str::to_string),
    }
}

impl ProxyBuilder {
    /// `old_url`: `postgres://USER:PASS@HOST:PORT/DB` of the old server (control credentials).
    pub fn new(old_url: String) -> Self {
        Self {
            old_url,
            auth: "scram-sha-256".into(),
            users: TEST_ROLES.iter().map(|(u, p)| file_user(u, Some(p), None)).collect(),
            max_clients: None,
            max_startup_connections: None,
            max_message_size: None,
            startup_packet_timeout: None,
            startup_timeout: None,
            shutdown_timeout: "300ms".into(),
            tls: None,
            require_tls: false,
            metrics: true,
            edits: Vec::new(),
        }
    }

    /// Any other setting: `f` edits the file and the flags before the config is loaded.
    pub fn configure(mut self, f: impl FnOnce(&mut FileConfig, &mut Overrides) + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// `auth_query` on the servers, as the control user (the superuser).
    pub fn auth_query(self, sql: &str) -> Self {
        let sql = sql.to_string();
        self.configure(move |file, _| file.auth_query = Some(sql))
    }

    /// `new` as the new server (control credentials: the superuser), `old` being the server
    /// this builder was made for. The control database, where the cutover decision is kept, is
    /// a fresh one of this proxy's own on both, so proxies of other tests never see its
    /// decision; old is fenced only if the config asks for it (other tests write to old).
    pub fn new_server(self, old: &PgServer, new: &PgServer) -> Self {
        let control = old.create_database("ctl");
        new.create_database_named(&control);
        let (old_url, new_url) = (old.url(SUPERUSER, SUPERUSER_PASSWORD, &control), new.url(SUPERUSER, SUPERUSER_PASSWORD, &control));
        self.configure(move |file, flags| {
            flags.old = Some(old_url);
            flags.new = Some(new_url);
            let cutover = file.cutover.get_or_insert_with(Default::default);
            cutover.fence_old = cutover.fence_old.or(Some(false));
        })
    }

    /// Client authentication method: `trust`, `scram-sha-256` or `md5`.
    pub fn auth(mut self, method: &str) -> Self {
        self.auth = method.into();
        self
    }

    /// Forget the default users.
    pub fn no_users(mut self) -> Self {
        self.users.clear();
        self
    }

    /// Add (or replace) a user with a password.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.retain(|u| u.name != name);
        self.users.push(file_user(name, Some(password), None));
        self
    }

    /// Add (or replace) a user known only by a SCRAM verifier (as in `pg_authid.rolpassword`).
    pub fn user_with_verifier(mut self, name: &str, verifier: &str) -> Self {
        self.users.retain(|u| u.name != name);
        self.users.push(file_user(name, None, Some(verifier)));
        self
    }

    pub fn max_clients(mut self, n: usize) -> Self {
        self.max_clients = Some(n);
        self
    }

    pub fn max_startup_connections(mut self, n: usize) -> Self {
        self.max_startup_connections = Some(n);
        self
    }

    /// E.g. `"1s"`.
    pub fn startup_packet_timeout(mut self, t: &str) -> Self {
        self.startup_packet_timeout = Some(t.into());
        self
    }

    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = Some(n);
        self
    }

    /// E.g. `"1s"`.
    pub fn startup_timeout(mut self, t: &str) -> Self {
        self.startup_timeout = Some(t.into());
        self
    }

    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    pub fn require_tls(mut self) -> Self {
        self.require_tls = true;
        self
    }

    /// The `Config` this builder describes (as `pgcutover serve` would load it).
    pub fn config(self) -> Config {
        let mut file = FileConfig {
            users: self.users,
            max_message_size: self.max_message_size,
            max_startup_connections: self.max_startup_connections,
            startup_packet_timeout: self.startup_packet_timeout,
            startup_timeout: self.startup_timeout,
            shutdown_timeout: Some(self.shutdown_timeout),
            require_tls: Some(self.require_tls),
            ..Default::default()
        };
        let mut overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            old: Some(self.old_url),
            auth: Some(self.auth),
            metrics_listen: self.metrics.then(|| "127.0.0.1:0".to_string()),
            max_clients: self.max_clients,
            tls_cert: self.tls.as_ref().map(|(c, _)| c.clone()),
            tls_key: self.tls.as_ref().map(|(_, k)| k.clone()),
            ..Default::default()
        };
        for edit in self.edits {
            edit(&mut file, &mut overrides);
        }
        Config::from_parts(file, &overrides).unwrap_or_else(|e| panic!("test proxy config rejected: {e}"))
    }

    pub fn start(self) -> TestProxy {
        TestProxy::start(self.config())
    }
}

// ------------------------------------------------------------------------------------------------
// The running proxy
// ------------------------------------------------------------------------------------------------

const THREAD_PREFIX: &str = "pgc-proxy-";

static PANICS: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

/// Record panics that happen on a test proxy's runtime threads (tokio swallows task panics).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let id = std::thread::current()
                .name()
                .and_then(|n| n.strip_prefix(THREAD_PREFIX))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(id) = id {
                PANICS.lock().unwrap_or_else(|e| e.into_inner()).push((id, info.to_string()));
            }
            previous(info);
        }));
    });
}

pub struct TestProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    id: usize,
    inner: Option<(tokio::runtime::Runtime, Running)>,
}

impl TestProxy {
    /// Start a proxy with this config on its own runtime (callable from sync or async tests).
    pub fn start(config: Config) -> TestProxy {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        install_panic_hook();
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{THREAD_PREFIX}{id}"))
            .enable_all()
            .build()
            .expect("build proxy runtime");
        // block_on from a thread of our own: the caller may itself be inside a runtime.
        let (rt, running) = std::thread::spawn(move || {
            let running = rt.block_on(pgcutover::proxy::start(config));
            (rt, running)
        })
        .join()
        .expect("proxy start thread panicked");
        let running = running.unwrap_or_else(|e| panic!("pgcutover::proxy::start failed: {e:#}"));
        TestProxy {
            addr: running.listen_addr,
            metrics_addr: running.metrics_addr,
            shared: running.shared.clone(),
            id,
            inner: Some((rt, running)),
        }
    }

    /// Runs `f` on the proxy's own runtime (connections it opens live there, as in production).
    pub fn block_on<F: std::future::Future + Send + 'static>(&self, f: F) -> F::Output
    where
        F::Output: Send + 'static,
    {
        let handle = self.inner.as_ref().map(|(rt, _)| rt.handle().clone()).expect("proxy running");
        std::thread::spawn(move || handle.block_on(f)).join().expect("task on the proxy runtime panicked")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Panics seen on this proxy's threads so far.
    pub fn panics(&self) -> Vec<String> {
        PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, _)| *id == self.id)
            .map(|(_, m)| m.clone())
            .collect()
    }

    pub fn assert_no_panics(&self) {
        let p = self.panics();
        assert!(p.is_empty(), "the proxy panicked:\n{}", p.join("\n"));
    }

    /// `postgres://user:password@127.0.0.1:port/db`.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{}:{}@{HOST}:{}/{}", super::pct(user), super::pct(password), self.port(), super::pct(db))
    }

    pub fn pg_config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(HOST)
            .port(self.port())
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(super::PATIENCE);
        c
    }

    /// tokio-postgres client through the proxy; its connection runs on the caller's runtime.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg_config(user, password, db).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Like [`connect`](Self::connect), also handing out the connection's asynchronous messages
    /// (notifications, notices). The channel closes when the connection ends.
    pub async fn connect_with_messages(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>), tokio_postgres::Error> {
        let (client, mut conn) = self.pg_config(user, password, db).connect(tokio_postgres::NoTls).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                let _ = tx.send(m);
            }
        });
        Ok((client, rx))
    }

    /// psql 15 command connected to the proxy (`-X -v ON_ERROR_STOP=1`); add args and run.
    pub fn psql_command(&self, user: &str, password: &str, db: &str) -> Command {
        let mut cmd = super::client_command("psql");
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-h", HOST])
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", user, "-d", db])
            .env("PGPASSWORD", password);
        cmd
    }

    /// Run SQL through the proxy with psql (`-XAtq`, SQL on stdin); `Err` carries stderr.
    pub fn psql(&self, user: &str, password: &str, db: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.psql_command(user, password, db);
        cmd.args(["-Atq", "-f", "-"]);
        super::psql_output(cmd, sql)
    }

    /// `GET path` on the metrics endpoint: (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let addr = self.metrics_addr.expect("metrics endpoint not configured");
        let mut s = TcpStream::connect(addr).expect("connect to metrics endpoint");
        s.set_read_timeout(Some(super::PATIENCE)).unwrap();
        // One write: a request split over several writes is a different test.
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).expect("send metrics request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read metrics response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (head.lines().next().unwrap_or("").to_string(), body.to_string())
    }

    /// The Prometheus text at /metrics.
    pub fn metrics(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert!(status.contains("200"), "GET /metrics: {status}\n{body}");
        body
    }

    /// Value of an unlabelled metric (`pgcutover_...`) in [`metrics`](Self::metrics).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics(), name)
    }

    /// Graceful shutdown now (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some((rt, running)) = self.inner.take() {
            // On a thread of our own: dropping a runtime inside another one panics.
            let _ = std::thread::spawn(move || {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(30), running.shutdown()).await;
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .join();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `name value` line of a Prometheus text (unlabelled metric).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

/// Run a client command with `stdin` (written from a thread), capturing output.
pub fn run(cmd: Command, stdin: &[u8]) -> Output {
    super::run_with_stdin(cmd, stdin).unwrap_or_else(|e| panic!("cannot run client command: {e}"))
}

/// A client tool of Postgres 15 (psql, pgbench, ...), PG* environment cleared, PGSSLMODE=disable.
pub fn client_tool(tool: &str) -> Command {
    super::client_command(tool)
}

/// Self-signed certificate and key for `localhost` (PEM) in `dir`: (cert, key).
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// A TCP port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    super::free_port()
}

// ------------------------------------------------------------------------------------------------
// Raw protocol client
// ------------------------------------------------------------------------------------------------

pub const PROTOCOL_3_0: u32 = 196_608;
pub const PROTOCOL_3_2: u32 = 196_610;
pub const SSL_REQUEST: u32 = 80_877_103;

/// One backend message.
#[derive(Clone, Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn tag(&self) -> char {
        self.tag as char
    }

    /// Fields of an ErrorResponse/NoticeResponse, by field code (`'C'`, `'M'`, `'S'`, ...).
    pub fn fields(&self) -> HashMap<char, String> {
        error_fields(&self.body)
    }

    /// SQLSTATE of an ErrorResponse.
    pub fn code(&self) -> String {
        self.fields().get(&'C').cloned().unwrap_or_default()
    }

    /// `Int32` at `offset` of the body.
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_be_bytes(self.body[offset..offset + 4].try_into().expect("4 bytes"))
    }
}

pub fn error_fields(mut body: &[u8]) -> HashMap<char, String> {
    let mut out = HashMap::new();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        out.insert(kind as char, String::from_utf8_lossy(&rest[..end]).into_owned());
        body = rest.get(end + 1..).unwrap_or(&[]);
    }
    out
}

/// A tagged frame.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An untagged startup packet: length, `code`, then `key\0value\0`... `\0`.
pub fn startup_packet(code: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    for (k, v) in params {
        payload.extend_from_slice(k.as_bytes());
        payload.push(0);
        payload.extend_from_slice(v.as_bytes());
        payload.push(0);
    }
    payload.push(0);
    let mut p = ((payload.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&payload);
    p
}

pub fn query_frame(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frame(b'Q', &body)
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(super::PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn { stream, buf: Vec::new() }
    }

    /// Connect, send a 3.0 StartupMessage for user/database and log in with `password`.
    /// Panics unless the proxy reaches ReadyForQuery.
    pub fn login(addr: SocketAddr, user: &str, password: &str, db: &str) -> RawConn {
        let mut c = RawConn::connect(addr);
        c.send(&startup_packet(PROTOCOL_3_0, &[("user", user), ("database", db)])).unwrap();
        if let Err(e) = c.authenticate(password) {
            panic!("raw login as {user} failed: {e:?}");
        }
        c
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Next message; `Ok(None)` when the peer closed the connection cleanly.
    pub fn recv(&mut self) -> io::Result<Option<Msg>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(len >= 4, "bad length {len} from the proxy");
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Ok(Some(Msg { tag, body }));
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-message"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Next message, panicking on EOF or an error.
    pub fn expect_msg(&mut self) -> Msg {
        match self.recv() {
            Ok(Some(m)) => m,
            Ok(None) => panic!("connection closed while a message was expected"),
            Err(e) => panic!("reading a message: {e}"),
        }
    }

    /// One raw byte (the answer to SSLRequest).
    pub fn recv_byte(&mut self) -> io::Result<u8> {
        if !self.buf.is_empty() {
            return Ok(self.buf.remove(0));
        }
        let mut b = [0u8; 1];
        self.stream.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Answer authentication requests with `password` until ReadyForQuery; returns the messages
    /// after AuthenticationOk (ParameterStatus, BackendKeyData, ...). `Err` holds the
    /// ErrorResponse (or a description of what went wrong) and the messages seen before it.
    pub fn authenticate(&mut self, password: &str) -> Result<Vec<Msg>, (String, Vec<Msg>)> {
        let mut seen = Vec::new();
        let mut scram: Option<pgcutover::auth::ScramClient> = None;
        let mut after_ok = Vec::new();
        let mut ok = false;
        loop {
            let m = match self.recv() {
                Ok(Some(m)) => m,
                Ok(None) => return Err(("connection closed during login".into(), seen)),
                Err(e) => return Err((format!("read error during login: {e}"), seen)),
            };
            seen.push(m.clone());
            match m.tag {
                b'R' => {
                    let code = m.u32_at(0);
                    let reply = match code {
                        0 => {
                            ok = true;
                            None
                        }
                        3 => {
                            let mut b = password.as_bytes().to_vec();
                            b.push(0);
                            Some(frame(b'p', &b))
                        }
                        5 => {
                            return Err(("md5 requested: use authenticate_md5".into(), seen));
                        }
                        10 => {
                            let client = scram.insert(pgcutover::auth::ScramClient::new(password).expect("scram client"));
                            let first = client.client_first();
                            let mut b = b"SCRAM-SHA-256\0".to_vec();
                            b.extend_from_slice(&(first.len() as i32).to_be_bytes());
                            b.extend_from_slice(&first);
                            Some(frame(b'p', &b))
                        }
                        11 => {
                            let client = scram.as_mut().expect("SASLContinue before SASL");
                            let reply = client.server_first(&m.body[4..]).map_err(|e| (format!("SCRAM: {e}"), seen.clone()))?;
                            Some(frame(b'p', &reply))
                        }
                        12 => {
                            let client = scram.as_ref().expect("SASLFinal before SASL");
                            client.server_final(&m.body[4..]).map_err(|e| (format!("SCRAM server proof: {e}"), seen.clone()))?;
                            None
                        }
                        other => return Err((format!("unexpected auth request {other}"), seen)),
                    };
                    if let Some(reply) = reply {
                        if let Err(e) = self.send(&reply) {
                            return Err((format!("write error during login: {e}"), seen));
                        }
                    }
                }
                b'E' => {
                    let f = m.fields();
                    return Err((format!("{} {}", f.get(&'C').cloned().unwrap_or_default(), f.get(&'M').cloned().unwrap_or_default()), seen));
                }
                b'Z' if ok => return Ok(after_ok),
                _ if ok => after_ok.push(m),
                b'v' => {}
                other => return Err((format!("unexpected message {:?} during login", other as char), seen)),
            }
        }
    }

    /// Simple query; returns every message up to and including ReadyForQuery.
    pub fn simple_query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query_frame(sql)).expect("send query");
        let mut out = Vec::new();
        loop {
            let m = self.expect_msg();
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Text of the first column of each DataRow of a simple query; panics on an ErrorResponse.
    pub fn query_values(&mut self, sql: &str) -> Vec<String> {
        let msgs = self.simple_query(sql);
        if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
            panic!("query {sql:?} failed: {:?}", e.fields());
        }
        msgs.iter()
            .filter(|m| m.tag == b'D')
            .map(|m| {
                let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap());
                if len < 0 {
                    "NULL".into()
                } else {
                    String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned()
                }
            })
            .collect()
    }

    /// Read messages until the peer closes (EOF or reset) or `timeout` passes.
    /// Returns the messages and whether the connection was closed.
    pub fn read_until_closed(&mut self, timeout: Duration) -> (Vec<Msg>, bool) {
        let deadline = Instant::now() + timeout;
        let mut msgs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (msgs, false);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.recv() {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => return (msgs, true),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return (msgs, false),
                Err(_) => return (msgs, true),
            }
        }
    }
}

/// Assert that `msgs` hold a FATAL ErrorResponse with `sqlstate`; returns its fields.
pub fn expect_fatal(msgs: &[Msg], sqlstate: &str) -> HashMap<char, String> {
    let errors: Vec<HashMap<char, String>> = msgs.iter().filter(|m| m.tag == b'E').map(Msg::fields).collect();
    let found = errors.iter().find(|f| f.get(&'C').map(String::as_str) == Some(sqlstate));
    match found {
        Some(f) => {
            assert_eq!(f.get(&'S').map(String::as_str), Some("FATAL"), "severity of {f:?}");
            f.clone()
        }
        None => panic!(
            "expected FATAL {sqlstate}; got errors {errors:?} among {:?}",
            msgs.iter().map(Msg::tag).collect::<String>()
        ),
    }
}
