//! Tests of the test rig itself (tests/support): real Postgres 15 and 18 servers.
use crate::support;

use support::*;

#[test]
fn old_is_15_and_new_is_18() {
    let v_old: u32 = old().psql("postgres", "SHOW server_version_num").parse().unwrap();
    let v_new: u32 = new().psql("postgres", "SHOW server_version_num").parse().unwrap();
    assert_eq!(v_old / 10000, 15, "old reports {v_old}");
    assert_eq!(v_new / 10000, 18, "new reports {v_new}");
    assert_eq!(old().version, 15);
    assert_eq!(new().version, 18);
    assert_ne!(old().port, new().port);
    for s in [old(), new()] {
        assert_eq!(s.psql("postgres", "SHOW wal_level"), "logical");
        assert_eq!(s.psql("postgres", "SHOW max_connections"), "400");
        assert_eq!(s.psql("postgres", "SHOW max_replication_slots"), "50");
        assert_eq!(s.psql("postgres", "SHOW max_wal_senders"), "50");
        assert_eq!(s.psql("postgres", "SHOW fsync"), "off");
        // The server process runs unprivileged.
        assert_eq!(s.psql("postgres", "SELECT current_setting('data_directory') <> ''"), "t");
    }
}

#[test]
fn create_database_gives_distinct_usable_names() {
    let a = old().create_database("rig_same");
    let b = old().create_database("rig_same");
    let c = new().create_database("Rig-Weird Prefix!");
    assert_ne!(a, b);
    assert!(c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'), "{c}");
    let n = old().psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname IN ({}, {})", quote_literal(&a), quote_literal(&b)),
    );
    assert_eq!(n, "2");
    // Test roles can create and use tables there.
    for (user, pw) in TEST_ROLES {
        let t = format!("t_{user}");
        let out = old()
            .psql_as(user, pw, &a, &format!("CREATE TABLE {t} (id int primary key); INSERT INTO {t} VALUES (1); SELECT count(*) FROM {t};"))
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(out, "1");
    }
    // Tables the superuser creates are usable by the test roles (default privileges).
    old().psql(&b, "CREATE TABLE su_t (id serial primary key, v text)");
    let out = old().psql_as(APP_USER, APP_PASSWORD, &b, "INSERT INTO su_t (v) VALUES ('x'); SELECT count(*) FROM su_t;").unwrap();
    assert_eq!(out, "1");
}

#[test]
fn urls_are_well_formed() {
    let s = old();
    assert_eq!(s.host(), "127.0.0.1");
    assert_eq!(s.url("app_user", "p@ss word", "db1"), format!("postgres://app_user:p%40ss%20word@127.0.0.1:{}/db1", s.port));
    assert_eq!(s.super_url("x"), format!("postgres://postgres:{}@127.0.0.1:{}/x", SUPERUSER_PASSWORD, s.port));
    assert!(s.bin_dir().join("postgres").exists());
    assert!(new().bin_dir().join("postgres").exists());
    assert!(s.log_path().exists());
}

#[test]
#[should_panic(expected = "shared server")]
fn stopping_a_shared_server_is_refused() {
    old().stop();
}

#[test]
fn psql_failure_panics_with_stderr() {
    let r = std::panic::catch_unwind(|| old().psql("postgres", "SELECT * FROM no_such_table"));
    let msg = match r {
        Ok(out) => panic!("expected a panic, got {out}"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(msg.contains("no_such_table") && msg.contains("does not exist"), "{msg}");
}

#[test]
fn pgbench_runs_and_parses() {
    let s = old();
    let db = s.create_database("rig_bench");
    let port = s.port.to_string();
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", APP_USER];
    let env = [("PGPASSWORD", APP_PASSWORD)];
    let mut init = conn.to_vec();
    init.extend(["-i", "-s", "1", "-q", &db]);
    pgbench(&init, &env).assert_success();
    let mut run = conn.to_vec();
    run.extend(["-c", "2", "-j", "2", "-t", "25", "-M", "prepared", &db]);
    let r = pgbench(&run, &env);
    r.assert_success();
    assert_eq!(r.processed, 50, "{r}");
    assert_eq!(r.failed, 0, "{r}");
    assert!(r.tps > 0.0, "{r}");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM pgbench_history"), "50");
    // A failing run keeps its output.
    let bad = pgbench(&["-h", "127.0.0.1", "-p", &port, "-U", APP_USER, "-t", "1", "no_such_db"], &env);
    assert!(!bad.success);
    assert!(bad.stderr.contains("no_such_db"), "{bad}");
}
