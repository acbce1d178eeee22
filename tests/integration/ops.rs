//! Operations: SIGHUP reloads, a second stop signal, connections in startup against the
//! limits, running out of file descriptors, the metrics path, quoting on the console. The
//! signal and file-descriptor tests run the real binary (`pgcutover serve --config`).
use crate::support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::proxy::{self, expect_fatal, query_frame, startup_packet, RawConn, TestProxy, PROTOCOL_3_0};
use support::*;

// ------------------------------------------------------------------------------------------------
// The binary as a child process
// ------------------------------------------------------------------------------------------------

/// `pgcutover serve --config <file>`, its stderr collected line by line; killed on drop.
struct Serve {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    config: PathBuf,
}

impl Serve {
    /// Writes `config` to `config_path` and starts the binary on it, with an open-file limit
    /// of `nofile` (soft and hard) if given; returns once it says it is ready.
    fn start(config_path: &Path, config: &str, nofile: Option<u64>) -> Serve {
        std::fs::write(config_path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgcutover"));
        cmd.args(["serve", "--config"]).arg(config_path).env_remove("PGCUTOVER_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(n) = nofile {
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, on a struct of its own stack.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start pgcutover");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut serve = Serve { child, log, config: config_path.to_path_buf() };
        serve.wait_log("pgcutover ready", 0);
        serve
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines logged so far.
    fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The first line from `from` on that contains `needle`, and its index; panics with the
    /// log if none comes within PATIENCE or the process ends first.
    fn wait_log(&mut self, needle: &str, from: usize) -> (usize, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let log = self.log.lock().unwrap();
                if let Some((i, line)) = log.iter().enumerate().skip(from).find(|(_, l)| l.contains(needle)) {
                    return (i, line.clone());
                }
            }
            if let Some(status) = self.exited() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!("pgcutover exited ({status}) before logging {needle:?}; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// User plus system CPU time of the process so far (from /proc).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc/<pid>/stat");
        // Fields after "(comm)": state is the first; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system constant.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address with nothing listening yet.
fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], proxy::closed_port()))
}

/// `[old]` pointing at the shared old server, with the superuser as control user.
fn old_section() -> String {
    format!("[old]\nurl = \"{}\"\nsslmode = \"disable\"\n", old().url(SUPERUSER, SUPERUSER_PASSWORD, "postgres"))
}

fn users_section(users: &[(&str, &str)]) -> String {
    users.iter().map(|(name, password)| format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n")).collect()
}

/// Log in with trust (the proxy logs into the server as the superuser).
fn trusted_login(addr: SocketAddr, db: &str) -> Result<RawConn, (String, Vec<proxy::Msg>)> {
    let mut c = RawConn::connect(addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", db)])).unwrap();
    c.authenticate("").map(|_| c)
}

/// A CancelRequest with a key nobody has (the proxy logs it at debug level and closes).
fn unknown_cancel(addr: SocketAddr) {
    let mut c = RawConn::connect(addr);
    let mut packet = 16u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
    c.send(&packet).unwrap();
    let (_, closed) = c.read_until_closed(PATIENCE);
    assert!(closed, "cancel connection left open");
}

/// A self-signed certificate for `localhost` with `cn` as its subject: (cert, key).
fn certificate(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The subject of the certificate the proxy presents after SSLRequest.
fn presented_subject(addr: SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    // OpenSSL 3 writes "CN = x", older ones "CN=x".
    let subject = text.lines().find_map(|l| l.strip_prefix("subject=")).unwrap_or_else(|| panic!("no certificate presented:\n{text}"));
    subject.replace(' ', "")
}

// ------------------------------------------------------------------------------------------------
// SIGHUP
// ------------------------------------------------------------------------------------------------

/// SIGHUP reloads users, log level, TLS certificate, limits and cutover defaults without
/// touching open sessions; keys that need a restart are named; a file that does not load or
/// does not fit changes nothing; no password reaches the log.
#[test]
fn sighup_reloads_what_it_can_and_keeps_sessions() {
    let db = old().create_database("ops_reload");
    let dir = tempfile::tempdir().unwrap();
    let (cert_before, key_before) = certificate(dir.path(), "before-reload");
    let (cert_after, key_after) = certificate(dir.path(), "after-reload");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::copy(&cert_before, &cert).unwrap();
    std::fs::copy(&key_before, &key).unwrap();
    let listen = free_addr();
    let head = |listen: SocketAddr, extra: &str| {
        format!(
            "listen = \"{listen}\"\nauth = \"scram-sha-256\"\nmax_clients = 50\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
            cert.display(),
            key.display()
        )
    };
    let path = dir.path().join("proxy.toml");
    let first = format!("{}{}{}", head(listen, ""), old_section(), users_section(&[(APP_USER, APP_PASSWORD)]));
    let mut serve = Serve::start(&path, &first, None);

    let mut session = RawConn::login(listen, APP_USER, APP_PASSWORD, &db);
    assert_eq!(session.query_values("SELECT 'before'"), vec!["before"]);
    let mut c = RawConn::connect(listen);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", MD5_USER), ("database", &db)])).unwrap();
    let (error, _) = c.authenticate(MD5_PASSWORD).expect_err("md5_user is not configured yet");
    assert!(error.starts_with("28P01"), "{error}");
    assert_eq!(presented_subject(listen), "CN=before-reload");
    unknown_cancel(listen);

    // Add a user, turn on debug logging, raise max_clients, change the cutover defaults, rotate
    // the certificate; also move the listener, which needs a restart.
    std::fs::copy(&cert_after, &cert).unwrap();
    std::fs::copy(&key_after, &key).unwrap();
    let second = format!(
        "{}{}{}[cutover]\ndrain_timeout = \"7s\"\n",
        head(free_addr(), "log_level = \"debug\"\nmax_clients = 60").replace("max_clients = 50\n", ""),
        old_section(),
        users_section(&[(APP_USER, APP_PASSWORD), (MD5_USER, MD5_PASSWORD)])
    );
    std::fs::write(&serve.config, &second).unwrap();
    let mark = serve.mark();
    serve.signal("HUP");
    let (at, reloaded) = serve.wait_log("configuration reloaded", mark);
    for part in ["users +md5_user (2 in all)", "log_level info -> debug", "max_clients 50 -> 60", "tls_cert, tls_key", "cutover"] {
        assert!(reloaded.contains(part), "reload line lacks {part:?}: {reloaded}");
    }
    let (_, restart) = serve.wait_log("need a restart", mark);
    assert!(restart.contains("listen"), "{restart}");
    assert!(serve.exited().is_none(), "the proxy exited on SIGHUP:\n{}", serve.log_text());
    // The unknown cancel before the reload was not logged (debug was off)...
    assert!(!serve.log.lock().unwrap()[..at].iter().any(|l| l.contains("unknown key")), "debug line before the reload");
    // ...and is now.
    let mark = serve.mark();
    unknown_cancel(listen);
    serve.wait_log("cancel request with an unknown key ignored", mark);
    // The open session carries on; the new user logs in; the new certificate is presented.
    assert_eq!(session.query_values("SELECT 'after'"), vec!["after"]);
    let mut added = RawConn::login(listen, MD5_USER, MD5_PASSWORD, &db);
    assert_eq!(added.query_values("SELECT current_user"), vec![MD5_USER]);
    assert_eq!(presented_subject(listen), "CN=after-reload");

    // Files that do not load, or do not fit the running proxy: logged, nothing changes.
    let broken = [
        ("max_clients", format!("{}{}", head(listen, "max_clients = \"many\"").replace("max_clients = 50\n", ""), old_section())),
        ("users[0].password", format!("{}{}[[users]]\nname = \"x\"\npassword = 987654321\n", head(listen, ""), old_section())),
        ("users", format!("{}{}", head(listen, ""), old_section())),
        ("log_level", format!("{}{}{}", head(listen, "log_level = \"loud\""), old_section(), users_section(&[(APP_USER, APP_PASSWORD)]))),
    ];
    for (key, text) in broken {
        std::fs::write(&serve.config, text).unwrap();
        let mark = serve.mark();
        serve.signal("HUP");
        let (_, error) = serve.wait_log("configuration not reloaded", mark);
        assert!(error.contains("ERROR") && error.contains(&format!("key={key}")), "{key}: {error}");
        assert!(serve.exited().is_none(), "the proxy exited on a bad reload:\n{}", serve.log_text());
        assert_eq!(session.query_values("SELECT 'still'"), vec!["still"], "{key}");
        let mut again = RawConn::login(listen, MD5_USER, MD5_PASSWORD, &db);
        assert_eq!(again.query_values("SELECT 1"), vec!["1"], "{key}");
    }
    let log = serve.log_text();
    for secret in [APP_PASSWORD, MD5_PASSWORD, SUPERUSER_PASSWORD, "987654321"] {
        assert!(!log.contains(secret), "the log shows a secret:\n{log}");
    }
}

// ------------------------------------------------------------------------------------------------
// SIGTERM twice
// ------------------------------------------------------------------------------------------------

/// The first SIGTERM waits for sessions (here up to 600 s); a second one exits at once,
/// non-zero, saying so.
#[test]
fn second_sigterm_exits_at_once() {
    let db = old().create_database("ops_sigterm");
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let config = format!("listen = \"{listen}\"\nauth = \"trust\"\nshutdown_timeout = \"600s\"\n{}", old_section());
    let mut serve = Serve::start(&dir.path().join("proxy.toml"), &config, None);
    let mut busy = trusted_login(listen, &db).unwrap_or_else(|e| panic!("login: {e:?}"));
    busy.send(&query_frame("SELECT pg_sleep(600)")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while old().psql(&db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = 'SELECT pg_sleep(600)'") == "0" {
        assert!(Instant::now() < deadline, "the sleep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    serve.signal("TERM");
    serve.wait_log("shutting down", 0);
    assert!(serve.exited().is_none(), "exited before the busy session finished or the deadline");
    serve.signal("TERM");
    let status = serve.wait_exit(PATIENCE).unwrap_or_else(|| panic!("still running after a second SIGTERM:\n{}", serve.log_text()));
    assert_eq!(status.code(), Some(1), "{status}");
    serve.wait_log("SIGTERM received again: exiting now", 0);
    let (_, closed) = busy.read_until_closed(PATIENCE);
    assert!(closed, "the busy session's connection stayed open");
    old().psql(&db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
}

// ------------------------------------------------------------------------------------------------
// Connections in startup
// ------------------------------------------------------------------------------------------------

/// Sockets that send nothing do not take `max_clients` slots: real clients still log in, and
/// SHOW STATUS and the metrics count the silent ones apart.
#[test]
fn silent_connections_do_not_use_up_max_clients() {
    let db = old().create_database("ops_silent");
    let proxy = proxy::for_server(old()).max_clients(2).startup_timeout("300s").start();
    // Connections are accepted in the order they arrive: the silent ones first.
    let silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
    let mut a = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let mut b = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(a.query_values("SELECT 'a'"), vec!["a"]);
    assert_eq!(b.query_values("SELECT 'b'"), vec!["b"]);
    // max_clients still holds for sessions.
    let mut c = RawConn::connect(proxy.addr);
    c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    let (_, seen) = c.authenticate(APP_PASSWORD).expect_err("a third session at max_clients = 2");
    let f = expect_fatal(&seen, "53300");
    assert!(f[&'M'].contains("too many clients"), "{f:?}");
    wait_for_metric(&proxy, "pgcutover_startup_connections", 20.0);
    let shared = proxy.shared.clone();
    let status = proxy.block_on(async move { pgcutover::cutover::status(&shared).await });
    let field = |name: &str| status.iter().find(|(f, _)| f == name).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("SHOW STATUS lacks {name}: {status:?}"));
    assert_eq!((field("sessions"), field("startup_connections"), field("max_clients")), ("2".into(), "20".into(), "2".into()));
    assert_eq!(proxy.metric("pgcutover_client_connections"), Some(2.0));
    drop(silent);
    wait_for_metric(&proxy, "pgcutover_startup_connections", 0.0);
    drop(b);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = RawConn::connect(proxy.addr);
        c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
        match c.authenticate(APP_PASSWORD) {
            Ok(_) => break,
            Err((e, _)) if e.starts_with("53300") && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("login after a session ended: {e:?}"),
        }
    }
    assert_eq!(a.query_values("SELECT 'a again'"), vec!["a again"]);
    proxy.assert_no_panics();
}

fn wait_for_metric(proxy: &TestProxy, name: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    while proxy.metric(name) != Some(value) {
        assert!(Instant::now() < deadline, "{name} is {:?}, not {value}", proxy.metric(name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Past `max_startup_connections` a connection is refused at once with FATAL 53300, whether
/// the client has sent its startup packet or not; freed slots are taken again.
#[test]
fn excess_startup_connections_get_53300_at_once() {
    let db = old().create_database("ops_startup_limit");
    let proxy = proxy::for_server(old()).max_startup_connections(5).startup_timeout("300s").startup_packet_timeout("300s").start();
    let mut witness = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    let silent: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(proxy.addr).unwrap()).collect();
    wait_for_metric(&proxy, "pgcutover_startup_connections", 5.0);
    for sends_startup in [false, true] {
        let mut c = RawConn::connect(proxy.addr);
        if sends_startup {
            c.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
        }
        let (msgs, closed) = c.read_until_closed(PATIENCE);
        let f = expect_fatal(&msgs, "53300");
        assert!(f[&'M'].contains("too many connections in startup"), "{f:?}");
        assert!(closed, "refused connection left open");
    }
    assert!(proxy.metrics().contains("pgcutover_rejected_clients_total{reason=\"too_many_startup\"} 2"), "{}", proxy.metrics());
    assert_eq!(witness.query_values("SELECT 'witness'"), vec!["witness"]);
    drop(silent);
    wait_for_metric(&proxy, "pgcutover_startup_connections", 0.0);
    let mut fresh = RawConn::login(proxy.addr, APP_USER, APP_PASSWORD, &db);
    assert_eq!(fresh.query_values("SELECT 'fresh'"), vec!["fresh"]);
    proxy.assert_no_panics();
}

/// A connection that sends no startup packet is closed after `startup_packet_timeout`; one
/// that sent it has the whole `startup_timeout` to authenticate.
#[test]
fn startup_packet_timeout_closes_silent_connections_first() {
    let db = old().create_database("ops_packet_timeout");
    let proxy = proxy::for_server(old()).startup_packet_timeout("1s").startup_timeout("300s").start();
    let mut silent = RawConn::connect(proxy.addr);
    let mut authenticating = RawConn::connect(proxy.addr);
    authenticating.send(&startup_packet(PROTOCOL_3_0, &[("user", APP_USER), ("database", &db)])).unwrap();
    let sasl = authenticating.expect_msg();
    assert_eq!((sasl.tag(), sasl.u32_at(0)), ('R', 10));
    let (msgs, closed) = silent.read_until_closed(PATIENCE);
    assert!(closed && msgs.is_empty(), "silent connection: closed {closed}, {msgs:?}");
    let (msgs, closed) = authenticating.read_until_closed(Duration::from_secs(2));
    assert!(!closed && msgs.is_empty(), "the authenticating connection was closed with the silent one: {msgs:?}");
    assert!(proxy.metrics().contains("pgcutover_rejected_clients_total{reason=\"startup_packet_timeout\"} 1"), "{}", proxy.metrics());
    proxy.assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// File descriptors
// ------------------------------------------------------------------------------------------------

/// With a low open-file limit: the proxy warns at start; clients past the limit get FATAL
/// 53300 promptly instead of hanging; the listeners do not spin on failing accepts; closing
/// sessions lets clients (and the pending metrics request) in again.
#[test]
fn out_of_file_descriptors_refuses_with_53300_without_spinning() {
    let db = old().create_database("ops_nofile");
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let metrics = free_addr();
    let config = format!("listen = \"{listen}\"\nmetrics_listen = \"{metrics}\"\nauth = \"trust\"\n{}", old_section());
    let mut serve = Serve::start(&dir.path().join("proxy.toml"), &config, Some(64));
    let mut sessions = Vec::new();
    let refused = loop {
        assert!(sessions.len() < 64, "64 sessions under an open-file limit of 64");
        match trusted_login(listen, &db) {
            Ok(c) => sessions.push(c),
            Err((e, seen)) => break (e, seen),
        }
    };
    let fds = Command::new("ls").arg("-l").arg(format!("/proc/{}/fd", serve.pid())).output().unwrap();
    assert!(refused.1.iter().any(|m| m.tag == b'E' && m.code() == "53300"), "{refused:?}\n{}\n{}", serve.log_text(), String::from_utf8_lossy(&fds.stdout));
    let f = expect_fatal(&refused.1, "53300");
    assert!(f[&'M'].contains("file descriptors"), "{f:?}");
    assert!(sessions.len() >= 5, "only {} sessions under a limit of 64", sessions.len());
    // Both ways to be out of descriptors: at accept, and at the server connection.
    let started = Instant::now();
    for _ in 0..3 {
        let (e, seen) = trusted_login(listen, &db).err().expect("a client past the limit logged in");
        assert!(seen.iter().any(|m| m.tag == b'E' && m.code() == "53300"), "{e}");
    }
    assert!(started.elapsed() < PATIENCE);
    // A metrics request waits in the backlog while nothing can be accepted: no busy loop.
    let mut pending = TcpStream::connect(metrics).unwrap();
    pending.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut waiting_client = RawConn::connect(listen);
    let _ = waiting_client.send(&startup_packet(PROTOCOL_3_0, &[("user", SUPERUSER), ("database", &db)]));
    let (cpu_before, wall) = (serve.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let cpu = serve.cpu_time() - cpu_before;
    let elapsed = wall.elapsed();
    assert!(cpu < elapsed / 10, "the proxy used {cpu:?} of CPU in {elapsed:?} while out of descriptors (spinning)");
    // Room again: clients and the waiting metrics request get in.
    sessions.truncate(sessions.len() / 2);
    let deadline = Instant::now() + PATIENCE;
    let mut again = loop {
        match trusted_login(listen, &db) {
            Ok(c) => break c,
            Err((e, _)) if e.starts_with("53300") && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no login after sessions closed: {e:?}"),
        }
    };
    assert_eq!(again.query_values("SELECT 'again'"), vec!["again"]);
    for s in sessions.iter_mut().take(3) {
        assert_eq!(s.query_values("SELECT 'old'"), vec!["old"]);
    }
    pending.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut response = String::new();
    pending.read_to_string(&mut response).expect("metrics response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // It said at start that the limit is too low for max_clients.
    serve.wait_log("open-file limit", 0);
}

// ------------------------------------------------------------------------------------------------
// Metrics path, console quoting
// ------------------------------------------------------------------------------------------------

/// Only `/metrics` itself (a query string allowed) serves the metrics.
#[test]
fn metrics_are_served_at_exactly_metrics() {
    let mut config = crate::admin::config();
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let proxy = TestProxy::start(config);
    for path in ["/metrics", "/metrics?name[]=pgcutover_client_connections"] {
        let (status, body) = proxy.http_get(path);
        assert!(status.contains("200") && body.contains("pgcutover_client_connections"), "{path}: {status}");
    }
    for path in ["/metricsXYZ", "/metrics/../..", "/metrics/", "/metrics.txt", "/"] {
        let (status, body) = proxy.http_get(path);
        assert!(status.contains("404"), "{path}: {status}");
        assert!(!body.contains("pgcutover_"), "{path}: {body}");
    }
}

/// A `;` inside quotes does not end a console command: the quoted value is an option error and
/// no cutover starts.
#[tokio::test]
async fn console_quoted_semicolon_is_an_option_error() {
    use crate::admin::{config, connect, console, message, sqlstate, start};
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    for text in ["CUTOVER drain_timeout='1s; DROP TABLE x'", "CUTOVER drain_timeout=\"1s;SHOW STATUS\""] {
        let e = client.simple_query(text).await.expect_err("a quoted ; split the command");
        assert_eq!(sqlstate(&e), "42601", "{text}: {}", message(&e));
        assert!(message(&e).contains("drain_timeout") && message(&e).contains("is not a duration"), "{text}: {}", message(&e));
    }
    let e = client.simple_query("CUTOVER drain_timeout='1s; DROP").await.expect_err("unterminated quote");
    assert!(message(&e).contains("unterminated"), "{}", message(&e));
    // Outside quotes, ; still separates commands and -- still starts a comment.
    let messages = client.simple_query("SHOW STATUS; -- ; CUTOVER\nSHOW STATUS").await.expect("two commands");
    let results = messages.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_))).count();
    assert_eq!(results, 2);
    running.shutdown().await;
}
