//! TLS from the proxy to the servers: sslmode require and verify-full (with a CA file), for
//! client sessions and for the proxy's own control connections.

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use pgcutover::config::{Config, FileConfig, Overrides};
use support::proxy::{RawConn, TestProxy};
use support::{PgServer, SUPERUSER, SUPERUSER_PASSWORD};

/// A CA, and a server certificate it signed for 127.0.0.1 / localhost.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pgcutover test CA", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext");
    run(&["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem"]);
    // An unrelated CA, for the negative case.
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=other CA", "-days", "1", "-keyout", "other.key", "-out", "other.pem"]);
}

/// Turns on TLS in a running server (ssl can be enabled with a reload).
fn enable_ssl(server: &PgServer, certs: &Path) {
    let data = server.data_dir();
    for (from, to) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
        let target = data.join(to);
        std::fs::copy(certs.join(from), &target).expect("copy cert");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let owner = std::fs::metadata(&data).expect("data dir");
        std::os::unix::fs::chown(&target, Some(std::os::unix::fs::MetadataExt::uid(&owner)), Some(std::os::unix::fs::MetadataExt::gid(&owner))).expect("chown");
    }
    server.psql("postgres", "ALTER SYSTEM SET ssl = on");
    server.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn proxy_with_old_url(url: String) -> TestProxy {
    let overrides = Overrides { listen: Some("127.0.0.1:0".into()), old: Some(url), auth: Some("trust".into()), ..Default::default() };
    TestProxy::start(Config::from_parts(FileConfig::default(), &overrides).unwrap_or_else(|e| panic!("config: {e}")))
}

#[test]
fn sessions_and_control_connections_use_tls_to_the_server() {
    let server = support::start(15);
    let certs = tempfile::tempdir().expect("tempdir");
    make_certs(certs.path());
    enable_ssl(&server, certs.path());
    let ca = certs.path().join("ca.pem");
    let other = certs.path().join("other.pem");
    let base = server.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres");

    for mode in ["require".to_string(), format!("verify-full&sslrootcert={}", ca.display())] {
        let proxy = proxy_with_old_url(format!("{base}?sslmode={mode}"));
        let mut conn = RawConn::login(proxy.addr, SUPERUSER, "", "postgres");
        assert_eq!(conn.query_values("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), vec!["t"], "sslmode={mode}");
        // Control connections (the cutover's catalog queries) honour sslmode too.
        let shared = proxy.shared.clone();
        let encrypted = proxy.block_on(async move {
            let client = pgcutover::control::connect(&shared.old.config, "postgres").await.expect("control connection");
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("query").get::<_, bool>(0)
        });
        assert!(encrypted, "control connection encrypted with sslmode={mode}");
        proxy.assert_no_panics();
    }

    // verify-full with a CA that did not sign the server's certificate: refused, 08006.
    let proxy = proxy_with_old_url(format!("{base}?sslmode=verify-full&sslrootcert={}", other.display()));
    let mut conn = RawConn::connect(proxy.addr);
    conn.send(&support::proxy::startup_packet(support::proxy::PROTOCOL_3_0, &[("user", SUPERUSER), ("database", "postgres")])).expect("send");
    let (msgs, _) = conn.read_until_closed(support::PATIENCE);
    let fatal = support::proxy::expect_fatal(&msgs, "08006");
    assert!(fatal.get(&'M').is_some_and(|m| m.contains("old server")), "{fatal:?}");
}

#[test]
fn sslmode_require_fails_clearly_when_the_server_has_no_tls() {
    let server = support::old();
    let proxy = proxy_with_old_url(format!("{}?sslmode=require", server.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres")));
    let mut conn = RawConn::connect(proxy.addr);
    conn.send(&support::proxy::startup_packet(support::proxy::PROTOCOL_3_0, &[("user", SUPERUSER), ("database", "postgres")])).expect("send");
    let (msgs, closed) = conn.read_until_closed(support::PATIENCE);
    let fatal = support::proxy::expect_fatal(&msgs, "08006");
    assert!(fatal.get(&'M').is_some_and(|m| m.contains("does not support TLS")), "{fatal:?}");
    assert!(closed);
    // Without TLS required, the same server works.
    let plain = proxy_with_old_url(server.url(SUPERUSER, SUPERUSER_PASSWORD, "postgres"));
    let mut ok = RawConn::login(plain.addr, SUPERUSER, "", "postgres");
    assert_eq!(ok.query_values("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), vec!["f"]);
}
