//! VERIFY against real replicas 15 -> 18: every table equal under pgbench load; rows deleted,
//! changed or added on new alone named by table and key; a table without a primary key with a
//! row missing; CUTOVER recheck_changing comparing chunks inside the hold.

use crate::cutover::{pgbench_db, proxy, report_text, run_cutover, spawn_pgbench, wait_for_pgbench_clients};
use crate::support;

use std::thread;
use std::time::{Duration, Instant};

use pgcutover::admin::cmd::Command;
use pgcutover::admin::reply::ResultSet;
use pgcutover::config::FileConfig;
use pgcutover::control::verify::{KeyColumn, Range, RowHash, TableSpec};
use pgcutover::cutover::{CutoverError, CutoverOptions};
use pgcutover::verify::ChangingChunk;
use support::proxy::{RawConn, TestProxy};
use support::SUPERUSER;

/// Runs a console command on the proxy, as the admin console does.
fn console(proxy: &TestProxy, text: &str) -> Result<ResultSet, String> {
    let command = Command::parse(text).map_err(|e| e.to_string())?;
    let shared = proxy.shared.clone();
    proxy.block_on(async move { command.apply(&shared).await }).map_err(|e| e.to_string())
}

/// VERIFY's rows as (table, result, detail).
fn results(set: &ResultSet) -> Vec<(String, String, String)> {
    let cell = |row: &Vec<Option<String>>, name: &str| {
        let i = set.columns.iter().position(|c| *c == name).unwrap_or_else(|| panic!("no column {name}"));
        row[i].clone().unwrap_or_default()
    };
    set.rows.iter().map(|r| (cell(r, "table"), cell(r, "result"), cell(r, "detail"))).collect()
}

fn result_of<'a>(rows: &'a [(String, String, String)], table: &str) -> &'a (String, String, String) {
    rows.iter().find(|(t, _, _)| t == table).unwrap_or_else(|| panic!("no VERIFY row for {table}: {rows:#?}"))
}

#[test]
fn verify_under_pgbench_load_reports_every_table_equal() {
    let (old, new) = (support::old(), support::new());
    let (db, _replication) = pgbench_db(old, new, "verify_load", "");
    let proxy = proxy(old, new, FileConfig::default());
    // 4 clients, rate-limited (the one pgbench_branches row changes 40 times a second; a busy
    // machine stretches VERIFY's comparisons, not the rate), for longer than VERIFY takes on a
    // quiet machine.
    let bench = spawn_pgbench(&proxy, &db, "prepared", 4, 200, 40);
    wait_for_pgbench_clients(&proxy, 4, std::iter::once(&bench));
    let started = Instant::now();
    let set = console(&proxy, "VERIFY").unwrap_or_else(|e| panic!("VERIFY: {e}"));
    let took = started.elapsed();
    let load_still_running = !bench.is_finished();
    let rows = results(&set);
    eprintln!("VERIFY in {took:?} (pgbench still running at the end: {load_still_running}):\n{rows:#?}");
    for table in ["public.pgbench_accounts", "public.pgbench_branches", "public.pgbench_history", "public.pgbench_tellers"] {
        let (_, result, detail) = result_of(&rows, table);
        assert_eq!(result, "equal", "{table}: {detail}");
    }
    assert_eq!(rows.len(), 4, "every subscribed table, nothing else: {rows:#?}");
    let accounts = set.rows.iter().find(|r| r[1].as_deref() == Some("public.pgbench_accounts")).expect("accounts row");
    assert_eq!(accounts[2].as_deref(), Some("100000"), "every row of pgbench_accounts compared");
    // SHOW VERIFY keeps the result; the metrics count what was read.
    assert_eq!(console(&proxy, "SHOW VERIFY").expect("SHOW VERIFY").rows, set.rows);
    let metrics = proxy.shared.metrics.render();
    let read: f64 = support::proxy::metric_value(&metrics, "pgcutover_verify_rows_total{side=\"old\"}").expect("rows metric");
    assert!(read >= 100_000.0, "{metrics}");
    let result = bench.join().expect("pgbench");
    result.assert_success();
    assert_eq!(result.failed, 0, "VERIFY makes no transaction fail:\n{result}");
    proxy.assert_no_panics();
}

#[test]
fn verify_names_rows_that_differ_on_new_by_table_and_key() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("verify_diff");
    old.psql(
        &db,
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 20000) g;
         CREATE TABLE pairs (a int, b text, n float8, PRIMARY KEY (a, b)); INSERT INTO pairs SELECT g % 7, 'k' || g, g / 3.0 FROM generate_series(1, 500) g;
         CREATE TABLE nokey (v int, note text); INSERT INTO nokey SELECT g, 'n' || g FROM generate_series(1, 100) g;
         CREATE TABLE same (id bigint PRIMARY KEY, at timestamptz, d interval, b bytea);
         INSERT INTO same SELECT g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', g * interval '1 second', int4send(g) FROM generate_series(1, 5000) g; ANALYZE same;",
    );
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());
    let _session = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    // Written on new alone: lost, changed and extra rows, and one row of a table without a key.
    new.psql(
        &db,
        "DELETE FROM t WHERE id = 777; UPDATE t SET v = 'changed' WHERE id = 15000; INSERT INTO t VALUES (30000, 'new only');
         UPDATE pairs SET n = -1 WHERE a = 3 AND b = 'k10';
         DELETE FROM nokey WHERE v = 42",
    );
    let set = console(&proxy, "VERIFY chunk_rows=1000").unwrap_or_else(|e| panic!("VERIFY: {e}"));
    let rows = results(&set);
    eprintln!("{rows:#?}");
    let (_, result, detail) = result_of(&rows, "public.t");
    assert_eq!(result, "differ", "{detail}");
    for named in ["3 rows differ", "id=777 missing on new", "id=15000 differs on new", "id=30000 only on new"] {
        assert!(detail.contains(named), "{named:?} not in {detail}");
    }
    let (_, result, detail) = result_of(&rows, "public.pairs");
    assert_eq!(result, "differ", "{detail}");
    assert!(detail.contains("(a, b)=(3, k10) differs on new"), "{detail}");
    let (_, result, detail) = result_of(&rows, "public.nokey");
    assert_eq!(result, "differ", "{detail}");
    assert!(detail.contains("no primary key") && detail.contains("1 rows of old missing on new"), "{detail}");
    let (_, result, detail) = result_of(&rows, "public.same");
    assert_eq!(result, "equal", "timestamps, intervals and bytea print alike on 15 and 18: {detail}");

    // Named tables only; a rate limit makes it take at least as long as the rate allows, and
    // SHOW VERIFY shows its progress meanwhile.
    let proxy = std::sync::Arc::new(proxy);
    let started = Instant::now();
    let limited = {
        let proxy = proxy.clone();
        thread::spawn(move || console(&proxy, "VERIFY rows_per_second=4000 chunk_rows=1000 same"))
    };
    let deadline = Instant::now() + support::PATIENCE;
    let progress = loop {
        let shown = results(&console(&proxy, "SHOW VERIFY").expect("SHOW VERIFY"));
        if let Some(row) = shown.iter().find(|(t, result, detail)| t == "public.same" && result == "running" && detail.contains("rows")) {
            break row.clone();
        }
        assert!(!limited.is_finished() && Instant::now() < deadline, "SHOW VERIFY never showed the running VERIFY: {shown:#?}");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(progress.2.contains("of about 5000 rows"), "{progress:?}");
    let set = limited.join().expect("VERIFY thread").unwrap_or_else(|e| panic!("VERIFY same: {e}"));
    let took = started.elapsed();
    let rows = results(&set);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(result_of(&rows, "public.same").1, "equal");
    // 5 chunks of 1000 rows at 4000 rows/s: the 4 waits between them take 1 s.
    assert!(took >= Duration::from_millis(950), "rows_per_second=4000 over 5000 rows took {took:?}");
    let e = console(&proxy, "VERIFY no_such_table").expect_err("unknown table");
    assert!(e.contains("42P01") && e.contains("no_such_table"), "{e}");
    proxy.assert_no_panics();
}

#[test]
fn cutover_rechecks_still_changing_chunks_inside_the_hold() {
    let (old, new) = (support::old(), support::new());
    let db = old.create_database("verify_recheck");
    old.psql(&db, "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 300) g");
    let _replication = support::setup_replication(old, new, &db);
    let proxy = proxy(old, new, FileConfig::default());
    let mut session = RawConn::login(proxy.addr, SUPERUSER, "", &db);
    session.simple_query("UPDATE t SET v = v + 1 WHERE id <= 100");
    // What a VERIFY under heavy writes leaves behind: chunks that kept changing.
    let spec = TableSpec {
        name: "public.t".into(),
        key: vec![KeyColumn { name: "id".into(), type_name: "integer".into() }],
        columns: vec!["id".into(), "v".into()],
        estimated_rows: 300,
        hash: RowHash::Md5,
    };
    let chunk = |after: &str, upto: &str| ChangingChunk {
        database: db.clone(),
        spec: spec.clone(),
        range: Range { after: Some(vec![after.into()]), upto: Some(vec![upto.into()]) },
    };
    *proxy.shared.verify.changing.lock().expect("lock") = vec![chunk("0", "100"), chunk("100", "200")];
    // A row lost on new in the second chunk: the recheck in the hold finds it and aborts.
    let deadline = Instant::now() + support::PATIENCE;
    while new.psql(&db, "SELECT count(*) FROM t WHERE v <> id") != "100" {
        assert!(Instant::now() < deadline, "the update did not replicate");
        thread::sleep(Duration::from_millis(50));
    }
    new.psql(&db, "DELETE FROM t WHERE id = 150");
    let options = CutoverOptions { recheck_changing: Some(true), ..Default::default() };
    let err = run_cutover(&proxy, options.clone()).expect_err("the recheck aborts the cutover");
    assert!(matches!(&err, CutoverError::Aborted { phase, reason } if phase == "verify recheck" && reason.contains("id=150 missing on new")), "{err}");
    assert!(session.query_values("SHOW server_version")[0].starts_with("15"), "the session continues on old");
    // Repaired on new, the same chunks compare equal inside the hold and the cutover completes.
    new.psql(&db, "INSERT INTO t VALUES (150, 150)");
    let report = run_cutover(&proxy, options).unwrap_or_else(|e| panic!("cutover after the repair: {e}"));
    let text = report_text(&report);
    let recheck = report.iter().find(|r| r.item == "verify recheck").unwrap_or_else(|| panic!("no recheck row:\n{text}"));
    assert_eq!(recheck.value, "2 chunks equal", "{text}");
    assert!(session.query_values("SHOW server_version")[0].starts_with("18"), "{text}");
    proxy.assert_no_panics();
}
