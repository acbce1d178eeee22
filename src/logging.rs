//! The log filter from `PGCUTOVER_LOG` (`info`, `debug`, `pgcutover=debug,warn`, ...).

use tracing_subscriber::filter::{LevelFilter, Targets};

/// The environment variable that sets the log filter.
pub const LOG_ENV: &str = "PGCUTOVER_LOG";

/// Parses a filter spec; an unset or empty spec means `info`. A bad spec is reported (so the
/// caller can log it once logging works) and falls back to `info`.
pub fn filter(spec: Option<&str>) -> (Targets, Option<String>) {
    let default = Targets::new().with_default(LevelFilter::INFO);
    match spec.map(str::trim).filter(|s| !s.is_empty()) {
        None => (default, None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (default, Some(format!("{LOG_ENV} is not a log filter like info or pgcutover=debug,warn ({e}); logging at info"))),
        },
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
    }
}
