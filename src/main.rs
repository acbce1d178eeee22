//! The `pgcutover` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgcutover::config::{Config, Overrides};
use pgcutover::fdlimit;
use pgcutover::logging::LogControl;

#[derive(Parser)]
#[command(name = "pgcutover", version, about = "Postgres proxy that moves live sessions from an old server to a new one (zero-downtime major-version cutover)")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Send one command to a running proxy's admin console and print the result.
    Admin(AdminArgs),
}

#[derive(Parser)]
struct ServeArgs {
    /// TOML config file (see proxy.toml). Flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address for clients, e.g. 127.0.0.1:6432.
    #[arg(long)]
    listen: Option<String>,
    /// Old server and the proxy's control credentials: postgres://USER[:PASS]@HOST:PORT/DB[?sslmode=...].
    #[arg(long)]
    old: Option<String>,
    /// New server, same form as --old.
    #[arg(long)]
    new: Option<String>,
    /// Address of the admin console (psql-compatible), e.g. 127.0.0.1:6433.
    #[arg(long)]
    admin_listen: Option<String>,
    /// Unix socket path for the admin console (created with mode 0600).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Address for Prometheus metrics at /metrics, e.g. 127.0.0.1:9187.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Client authentication: trust, scram-sha-256 or md5.
    #[arg(long)]
    auth: Option<String>,
    /// SQL returning a role's name and stored verifier ($1 = the role), run on the server to
    /// check clients of roles not in [[users]] and log in as them without their password.
    #[arg(long)]
    auth_query: Option<String>,
    /// Maximum authenticated client sessions; more get FATAL 53300.
    #[arg(long)]
    max_clients: Option<usize>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// PEM certificate for TLS to clients.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS to clients.
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

#[derive(Parser)]
struct AdminArgs {
    /// Admin console address.
    #[arg(long, default_value = "127.0.0.1:6433")]
    addr: String,
    /// Admin user.
    #[arg(long, short, default_value = "admin")]
    user: String,
    /// Admin password (or set PGCUTOVER_ADMIN_PASSWORD).
    #[arg(long, env = "PGCUTOVER_ADMIN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The command, e.g. SHOW STATUS or CUTOVER.
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = pgcutover::logging::LogControl::init();
    match cli.command {
        Commands::Serve(args) => serve(args, &log),
        Commands::Admin(args) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(pgcutover::admin::client::run(&args.addr, &args.user, args.password.as_deref(), &args.command.join(" "))),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn serve(args: ServeArgs, log: &LogControl) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        admin_socket: args.admin_socket,
        metrics_listen: args.metrics_listen,
        auth: args.auth,
        auth_query: args.auth_query,
        old: args.old,
        new: args.new,
        max_clients: args.max_clients,
        workers: args.workers,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    log.apply(config.log_level.as_deref());
    match fdlimit::raise_to_hard() {
        Ok(limit) => tracing::debug!(open_files_limit = limit, "open-file limit raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    fdlimit::warn_if_short(config.max_clients, config.max_startup_connections);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(config, args.config, overrides, log));
    // After a second stop signal, what still runs is dropped rather than waited for.
    runtime.shutdown_background();
    code
}

async fn run(config: Config, path: Option<PathBuf>, overrides: Overrides, log: &LogControl) -> ExitCode {
    // First of all: once handled, SIGHUP no longer ends the process (its default action).
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let running = match pgcutover::proxy::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let shared = running.shared.clone();
    let first = loop {
        match signals.next().await {
            Signal::Hangup => {
                tracing::info!("SIGHUP received: reloading the configuration");
                pgcutover::reload::reload(&shared, path.clone(), overrides.clone(), Some(log)).await;
            }
            Signal::Stop(name) => break name,
        }
    };
    tracing::info!("{first} received: shutting down (SIGTERM or SIGINT again exits at once)");
    let shutdown = running.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return ExitCode::SUCCESS,
            signal = signals.next() => match signal {
                Signal::Hangup => tracing::info!("SIGHUP received during shutdown: not reloading"),
                Signal::Stop(name) => {
                    tracing::warn!(sessions = shared.registry.len(), "{name} received again: exiting now, without waiting for sessions");
                    return ExitCode::from(1);
                }
            },
        }
    }
}

enum Signal {
    Hangup,
    /// SIGTERM or SIGINT.
    Stop(&'static str),
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())?, hup: signal(SignalKind::hangup())? })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Hangup,
        }
    }
}
