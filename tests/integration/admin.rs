//! The admin console, in-process, without a Postgres server: the proxy's old server points at a
//! closed port, and the console is reached with tokio-postgres like psql would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use pgcutover::config::{Config, FileConfig, Overrides};
use pgcutover::proxy::Running;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub(crate) fn config() -> Config {
    let overrides = Overrides {
        old: Some("postgres://postgres@127.0.0.1:1/postgres".into()),
        auth: Some("trust".into()),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..Default::default()
    };
    Config::from_parts(FileConfig::default(), &overrides).expect("config")
}

pub(crate) async fn start(config: Config) -> Running {
    pgcutover::proxy::start(config).await.expect("proxy starts")
}

pub(crate) fn console(running: &Running) -> tokio_postgres::Config {
    let addr = running.admin_addr.expect("admin console on TCP");
    let mut c = tokio_postgres::Config::new();
    c.host(addr.ip().to_string()).port(addr.port()).user("admin").dbname("pgcutover");
    c
}

pub(crate) async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Column names and rows of the first result set.
pub(crate) async fn query(client: &Client, text: &str) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), tokio_postgres::Error> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in client.simple_query(text).await? {
        match message {
            SimpleQueryMessage::RowDescription(described) if columns.is_empty() => {
                columns = described.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
            _ => {}
        }
    }
    Ok((columns, rows))
}

pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

pub(crate) fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|db| db.message().to_string()).unwrap_or_else(|| e.to_string())
}

#[tokio::test]
async fn show_status_works_case_insensitively_with_a_semicolon() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("trusted on loopback without a password");
    let (columns, _) = query(&client, "SHOW STATUS").await.expect("SHOW STATUS");
    assert_eq!(columns, ["field", "value"]);
    let (columns, _) = query(&client, "show status;").await.expect("show status;");
    assert_eq!(columns, ["field", "value"]);
    running.shutdown().await;
}

#[tokio::test]
async fn unknown_command_is_a_syntax_error_listing_the_commands() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let e = client.simple_query("SELECT 1").await.expect_err("not a console command");
    assert_eq!(sqlstate(&e), "42601");
    let text = message(&e);
    for command in ["SHOW STATUS", "SHOW SESSIONS", "SHOW REPLICATION", "CHECK", "PAUSE", "RESUME", "CUTOVER", "ABORT", "HELP"] {
        assert!(text.contains(command), "{command} missing from: {text}");
    }
    // The connection stays usable after an ERROR.
    query(&client, "SHOW STATUS").await.expect("still usable");
    running.shutdown().await;
}

#[tokio::test]
async fn bad_cutover_option_lists_the_valid_ones() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let e = client.simple_query("CUTOVER speed=fast").await.expect_err("unknown option");
    assert_eq!(sqlstate(&e), "42601");
    assert!(message(&e).contains("drain_timeout") && message(&e).contains("idle_in_transaction"), "{}", message(&e));
    running.shutdown().await;
}

#[tokio::test]
async fn cutover_without_a_new_server_fails_with_its_sqlstate() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let e = client.simple_query("CUTOVER drain_timeout=100ms").await.expect_err("no new server");
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    running.shutdown().await;
}

#[tokio::test]
async fn wrong_password_is_28p01() {
    let mut config = config();
    config.admin_password = Some("s3cret".into());
    let running = start(config).await;
    let mut wrong = console(&running);
    wrong.password("guess");
    let e = connect(&wrong).await.map(drop).expect_err("wrong password refused");
    assert_eq!(sqlstate(&e), "28P01");
    assert_eq!(message(&e), "password authentication failed for user \"admin\"");
    // A wrong user name fails the same way, so it cannot be told apart.
    let mut stranger = console(&running);
    stranger.user("postgres").password("s3cret");
    let e = connect(&stranger).await.map(drop).expect_err("wrong user refused");
    assert_eq!(sqlstate(&e), "28P01");
    // No password at all: the client cannot answer the SCRAM challenge.
    assert!(connect(&console(&running)).await.is_err());
    running.shutdown().await;
}

#[tokio::test]
async fn right_password_works() {
    let mut config = config();
    config.admin_password = Some("s3cret".into());
    let running = start(config).await;
    let mut right = console(&running);
    right.password("s3cret");
    let client = connect(&right).await.expect("right password accepted");
    let (columns, _) = query(&client, "SHOW STATUS").await.expect("SHOW STATUS");
    assert_eq!(columns, ["field", "value"]);
    running.shutdown().await;
}

#[tokio::test]
async fn without_a_password_other_users_are_refused() {
    let running = start(config()).await;
    let mut stranger = console(&running);
    stranger.user("postgres");
    let e = connect(&stranger).await.map(drop).expect_err("only the admin user");
    assert_eq!(sqlstate(&e), "28000");
    running.shutdown().await;
}

#[tokio::test]
async fn abort_without_a_cutover_is_55000() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let e = client.simple_query("ABORT").await.expect_err("nothing to abort");
    assert_eq!(sqlstate(&e), "55000");
    assert!(message(&e).contains("no cutover is running"), "{}", message(&e));
    running.shutdown().await;
}

#[tokio::test]
async fn show_sessions_with_no_sessions() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let (columns, rows) = query(&client, "SHOW SESSIONS").await.expect("SHOW SESSIONS");
    assert_eq!(columns, ["id", "client_addr", "user", "database", "state", "tx_status", "server", "age_s", "prepared", "can_move", "application_name"]);
    assert!(rows.is_empty(), "{rows:?}");
    running.shutdown().await;
}

#[tokio::test]
async fn other_commands_answer_with_their_columns() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let (columns, _) = query(&client, "CHECK").await.expect("CHECK");
    assert_eq!(columns, ["check", "status", "detail"]);
    let (columns, _) = query(&client, "SHOW CUTOVER").await.expect("SHOW CUTOVER");
    assert_eq!(columns, ["item", "value", "detail"]);
    let (columns, rows) = query(&client, "help").await.expect("HELP");
    assert_eq!(columns, ["command", "description"]);
    assert!(rows.len() >= 9, "{rows:?}");
    match query(&client, "SHOW REPLICATION").await {
        Ok((columns, _)) => assert_eq!(columns, ["database", "subscription", "enabled", "slot", "lag_bytes", "table_states"]),
        Err(e) => assert_eq!(sqlstate(&e), "08006", "{}", message(&e)),
    }
    running.shutdown().await;
}

#[tokio::test]
async fn empty_query_and_extended_protocol() {
    let running = start(config()).await;
    let client = connect(&console(&running)).await.expect("connect");
    let messages = client.simple_query("").await.expect("empty query");
    assert!(messages.iter().all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
    let e = client.query("SHOW STATUS", &[]).await.expect_err("extended protocol refused");
    assert!(message(&e).contains("simple"), "{}", message(&e));
    query(&client, "SHOW STATUS").await.expect("still usable after the extended-protocol error");
    running.shutdown().await;
}

#[tokio::test]
async fn unix_socket_is_private_and_psql_style_connections_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Named like a Postgres socket, so `psql -h DIR -p 6433` finds it.
    let path = dir.path().join(".s.PGSQL.6433");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    let mut config = config();
    config.admin_listen = None;
    config.admin_socket = Some(path.clone());
    let running = start(config).await;
    assert_eq!(running.admin_addr, None);
    let mode = std::fs::metadata(&path).expect("socket exists").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "no staging leftovers");

    let mut c = tokio_postgres::Config::new();
    c.host_path(dir.path()).port(6433).user("admin").dbname("anything");
    let client = connect(&c).await.expect("trusted over the socket");
    let (columns, rows) = query(&client, "SHOW SESSIONS").await.expect("SHOW SESSIONS");
    assert_eq!(columns.len(), 11);
    assert!(rows.is_empty());
    running.shutdown().await;
    assert!(!path.exists(), "shutdown removes the socket");
}

#[tokio::test]
async fn unix_socket_never_replaces_other_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(".s.PGSQL.6433");
    std::fs::write(&path, "precious").expect("file");
    let mut config = config();
    config.admin_socket = Some(path.clone());
    let e = pgcutover::proxy::start(config).await.err().expect("refuses");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).expect("file"), "precious");
    assert!(Path::new(&path).exists());
}

#[tokio::test]
async fn admin_subcommand_exit_codes() {
    let running = start(config()).await;
    let addr = running.admin_addr.expect("admin addr").to_string();
    let run = pgcutover::admin::client::run;
    assert_eq!(run(&addr, "admin", None, "SHOW STATUS").await, ExitCode::SUCCESS);
    assert_eq!(run(&addr, "admin", None, "HELP").await, ExitCode::SUCCESS);
    assert_eq!(run(&addr, "admin", None, "FROBNICATE").await, ExitCode::from(1));
    assert_eq!(run(&addr, "admin", None, "ABORT").await, ExitCode::from(1));
    running.shutdown().await;
    assert_eq!(run("127.0.0.1:1", "admin", None, "SHOW STATUS").await, ExitCode::from(1));
}
