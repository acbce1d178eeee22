//! The log filter: from `PGCUTOVER_LOG` (`info`, `debug`, `pgcutover=debug,warn`, ...), else
//! from the config file's `log_level`, which a SIGHUP can change while the proxy runs.

use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Registry;

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "PGCUTOVER_LOG";

/// The filter when nothing sets one.
pub const DEFAULT_FILTER: &str = "info";

/// Parses a filter spec such as `info` or `pgcutover=debug,warn`. Each directive is a level or
/// `target=level`: a bare word that is no level (`loud`) would select that target alone and
/// silence everything else, so it is an error here.
pub fn parse(spec: &str) -> Result<Targets, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Targets::new().with_default(LevelFilter::INFO));
    }
    let invalid = |why: String| format!("{spec:?} is not a log filter like info or pgcutover=debug,warn ({why})");
    for directive in spec.split(',').map(str::trim) {
        if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
            return Err(invalid(format!("{directive:?} is no level: use trace, debug, info, warn, error or off")));
        }
    }
    spec.parse::<Targets>().map_err(|e| invalid(e.to_string()))
}

/// Parses a filter spec; an unset or empty spec means `info`. A bad spec is reported (so the
/// caller can log it once logging works) and falls back to `info`.
pub fn filter(spec: Option<&str>) -> (Targets, Option<String>) {
    let default = Targets::new().with_default(LevelFilter::INFO);
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (default, None),
        Some(spec) => match parse(spec) {
            Ok(targets) => (targets, None),
            Err(e) => (default, Some(format!("{LOG_ENV}: {e}; logging at info"))),
        },
    }
}

/// The installed log filter, changeable while running.
pub struct LogControl {
    handle: reload::Handle<Targets, Registry>,
    /// `PGCUTOVER_LOG` was set: it wins over the file.
    from_env: bool,
    /// The spec in force.
    current: Mutex<String>,
}

impl LogControl {
    /// Installs the global subscriber (stderr) with the filter from `PGCUTOVER_LOG`.
    pub fn init() -> LogControl {
        let env = std::env::var(LOG_ENV).ok().filter(|s| !s.trim().is_empty());
        let (targets, warning) = filter(env.as_deref());
        let (layer, handle) = reload::Layer::new(targets);
        tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
        if let Some(warning) = &warning {
            tracing::warn!("{warning}");
        }
        let current = match (&env, &warning) {
            (Some(spec), None) => spec.trim().to_string(),
            _ => DEFAULT_FILTER.to_string(),
        };
        LogControl { handle, from_env: env.is_some(), current: Mutex::new(current) }
    }

    /// Applies the file's `log_level` (already checked by the config); returns
    /// `Some("old -> new")` when the filter changed. With `PGCUTOVER_LOG` set, the file does not
    /// count.
    pub fn apply(&self, file_spec: Option<&str>) -> Option<String> {
        if self.from_env {
            return None;
        }
        let spec = file_spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_FILTER);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if *current == spec {
            return None;
        }
        let targets = match parse(spec) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("log_level: {e}; keeping {}", *current);
                return None;
            }
        };
        if let Err(e) = self.handle.reload(targets) {
            tracing::error!("log_level: cannot change the log filter: {e}");
            return None;
        }
        let change = format!("{} -> {spec}", *current);
        *current = spec.to_string();
        Some(change)
    }

    /// Whether `PGCUTOVER_LOG` decides the filter (the file's `log_level` is then ignored).
    pub fn set_by_env(&self) -> bool {
        self.from_env
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn specs_parse_and_bad_ones_fall_back_to_info() {
        let (t, warning) = filter(None);
        assert!(t.would_enable("pgcutover::session", &Level::INFO) && !t.would_enable("pgcutover::session", &Level::DEBUG));
        assert!(warning.is_none());
        let (t, _) = filter(Some("pgcutover=debug,warn"));
        assert!(t.would_enable("pgcutover::cutover", &Level::DEBUG));
        assert!(!t.would_enable("rustls", &Level::INFO) && t.would_enable("rustls", &Level::WARN));
        let (t, warning) = filter(Some("pgcutover=loud"));
        assert!(t.would_enable("x", &Level::INFO) && warning.is_some());
        assert!(parse("debug").is_ok() && parse("pgcutover=loud").is_err());
        // A bare word would select one target and silence the rest.
        assert!(parse("loud").is_err() && parse("info,loud").is_err());
        assert!(parse("warn, pgcutover::reload=debug").is_ok());
    }
}
