//! Reloading the configuration file (SIGHUP) while sessions run. What can change safely is put
//! in force: the log filter, `[[users]]`, the TLS certificate and key, the `[cutover]`,
//! `[check]` and `[verify]` settings, `max_clients` and `max_startup_connections`. Other keys that changed are named
//! as needing a restart and keep their running values. A file that does not load, or does not
//! fit the running proxy, changes nothing. The log names keys and user names, never secrets.

use std::path::PathBuf;

use crate::config::{check_users, Config, ConfigError, Overrides, UserConfig};
use crate::logging::LogControl;
use crate::proxy::{Live, Shared};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Keys put in force, with what changed (`max_clients 100 -> 200`, `users +bob -carol`).
    pub reloaded: Vec<String>,
    /// Keys that differ from the running configuration but only take effect at a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Loads `path` (with the command line's `overrides`, which still win) and applies it; logs
/// the outcome. Returns whether the file was applied.
pub async fn reload(shared: &Shared, path: Option<PathBuf>, overrides: Overrides, log: Option<&LogControl>) -> bool {
    let Some(path) = path else {
        tracing::info!("SIGHUP received, but pgcutover was started without --config: nothing to reload");
        return false;
    };
    // Deriving SCRAM verifiers from passwords takes a few milliseconds per user.
    let loaded = tokio::task::spawn_blocking(move || Config::load(Some(&path), &overrides)).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(e)) => {
            tracing::error!(key = %e.key, "configuration not reloaded, the running one stays: {e}");
            return false;
        }
        Err(e) => {
            tracing::error!("configuration not reloaded, the running one stays: loading failed: {e}");
            return false;
        }
    };
    match apply(shared, &config, log) {
        Ok(report) => {
            let reloaded = if report.reloaded.is_empty() { "nothing changed".to_string() } else { report.reloaded.join("; ") };
            tracing::info!(reloaded = %reloaded, "configuration reloaded");
            if !report.needs_restart.is_empty() {
                tracing::warn!(keys = %report.needs_restart.join(", "), "configuration changed but not applied: these keys need a restart");
            }
            true
        }
        Err(e) => {
            tracing::error!(key = %e.key, "configuration not reloaded, the running one stays: {e}");
            false
        }
    }
}

/// Puts the reloadable part of `new` in force.
pub fn apply(shared: &Shared, new: &Config, log: Option<&LogControl>) -> Result<Report, ConfigError> {
    let running = &shared.config;
    // The users must suit the authentication method (and auth_query) in force, which a reload
    // does not change.
    check_users(running.auth, &new.users, running.auth_query.is_some())?;
    let mut report = Report { needs_restart: needs_restart(running, new), ..Report::default() };
    let old = shared.live();

    let (client_tls, client_end_point) = match (&old.client_tls, &new.client_tls) {
        (Some(_), Some(tls)) => {
            report.reloaded.push("tls_cert, tls_key (certificate and key read again)".into());
            crate::proxy::warn_if_no_end_point(new);
            (Some(tokio_rustls::TlsAcceptor::from(tls.server.clone())), tls.end_point.clone())
        }
        // Turning TLS on or off changes what clients are told at SSLRequest: a restart.
        (current, _) => {
            if new.client_tls.is_some() != current.is_some() {
                report.needs_restart.push("tls_cert, tls_key (TLS on or off)");
            }
            (current.clone(), old.client_end_point.clone())
        }
    };
    if let Some(change) = users_change(&old.users, &new.users) {
        report.reloaded.push(change);
    }
    if old.cutover != new.cutover {
        report.reloaded.push("cutover (defaults for the next CUTOVER)".into());
    }
    for (key, slots, limit) in [
        ("max_clients", &shared.client_slots, new.max_clients),
        ("max_startup_connections", &shared.startup_slots, new.max_startup_connections),
    ] {
        let before = slots.limit();
        if before != limit {
            slots.set_limit(limit);
            report.reloaded.push(format!("{key} {before} -> {limit}"));
        }
    }
    if let Some(log) = log {
        match log.apply(new.log_level.as_deref()) {
            Some(change) => report.reloaded.push(format!("log_level {change}")),
            None if log.set_by_env() && new.log_level.is_some() => {
                report.reloaded.push(format!("log_level ignored: {} is set", crate::logging::LOG_ENV));
            }
            None => {}
        }
    }
    if old.check != new.check {
        report.reloaded.push("check (CHECK's thresholds)".into());
    }
    if old.verify != new.verify {
        report.reloaded.push("verify (settings for the next VERIFY)".into());
    }
    shared.replace_live(Live {
        users: new.users.clone(),
        client_tls,
        client_end_point,
        cutover: new.cutover.clone(),
        check: new.check.clone(),
        verify: new.verify.clone(),
    });
    crate::fdlimit::warn_if_short(new.max_clients, new.max_startup_connections);
    Ok(report)
}

/// `users +added -removed ~changed (N in all)`, or `None` if the same users have the same
/// credentials. Names only: never a password.
fn users_change(old: &[UserConfig], new: &[UserConfig]) -> Option<String> {
    fn find<'a>(list: &'a [UserConfig], name: &str) -> Option<&'a UserConfig> {
        list.iter().find(|u| u.name == name)
    }
    let mut parts = Vec::new();
    for u in new {
        match find(old, &u.name) {
            None => parts.push(format!("+{}", u.name)),
            Some(before) if !before.same_credential(u) => parts.push(format!("~{}", u.name)),
            Some(_) => {}
        }
    }
    for u in old {
        if find(new, &u.name).is_none() {
            parts.push(format!("-{}", u.name));
        }
    }
    (!parts.is_empty()).then(|| format!("users {} ({} in all)", parts.join(" "), new.len()))
}

/// Keys that differ between the running configuration and `new` and take effect only at a
/// restart (listeners, servers, the runtime, timeouts read once per connection, the console).
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let checks = [
        ("listen", running.listen != new.listen),
        ("admin_listen", running.admin_listen != new.admin_listen),
        ("admin_socket", running.admin_socket != new.admin_socket),
        ("metrics_listen", running.metrics_listen != new.metrics_listen),
        ("auth", running.auth != new.auth),
        ("auth_query", running.auth_query != new.auth_query),
        ("workers", running.workers != new.workers),
        ("max_message_size", running.max_message_size != new.max_message_size),
        ("max_buffered_bytes", running.max_buffered_bytes != new.max_buffered_bytes),
        ("startup_packet_timeout", running.startup_packet_timeout != new.startup_packet_timeout),
        ("startup_timeout", running.startup_timeout != new.startup_timeout),
        ("shutdown_timeout", running.shutdown_timeout != new.shutdown_timeout),
        ("require_tls", running.require_tls != new.require_tls),
        ("old", running.old != new.old),
        ("new", running.new != new.new),
        ("admin", running.admin_user != new.admin_user || running.admin_password != new.admin_password),
    ];
    checks.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, FileUser};

    fn user(name: &str, password: &str) -> FileUser {
        FileUser { name: name.into(), password: Some(password.into()), password_env: None, scram_verifier: None }
    }

    fn config(users: Vec<FileUser>, listen: &str) -> Config {
        let overrides = Overrides { old: Some("postgres://u:secret-old@127.0.0.1:1/db".into()), listen: Some(listen.into()), ..Default::default() };
        Config::from_parts(FileConfig { users, ..Default::default() }, &overrides).expect("config")
    }

    #[test]
    fn user_changes_name_names_only() {
        let a = config(vec![user("app", "pw-one"), user("gone", "pw-two")], "127.0.0.1:1");
        let b = config(vec![user("app", "pw-changed"), user("bob", "pw-three")], "127.0.0.1:1");
        let change = users_change(&a.users, &b.users).expect("changed");
        assert_eq!(change, "users ~app +bob -gone (2 in all)");
        // Same passwords, new salts: no change.
        let again = config(vec![user("app", "pw-one"), user("gone", "pw-two")], "127.0.0.1:1");
        assert_eq!(users_change(&a.users, &again.users), None);
    }

    #[test]
    fn restart_keys_are_named() {
        let a = config(vec![user("app", "pw")], "127.0.0.1:1");
        let b = config(vec![user("app", "pw")], "127.0.0.1:2");
        assert_eq!(needs_restart(&a, &b), vec!["listen"]);
        assert!(needs_restart(&a, &a).is_empty());
    }
}
