//! `PAUSE [timeout]`: hold new transactions (until RESUME) and wait for running ones to finish.

use std::sync::Arc;
use std::time::Duration;

use super::show_cutover::report;
use super::{command_list, cutover_error, run_detached};
use crate::admin::reply::{AdminError, CommandResult};
use crate::config::parse_duration;
use crate::proxy::Shared;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// How long to wait for sessions to reach a transaction boundary.
    pub timeout: Duration,
}

impl Pause {
    /// `PAUSE`, `PAUSE 5s` or `PAUSE timeout=5s`.
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        let text = match args {
            [] => return Ok(Pause { timeout: DEFAULT_TIMEOUT }),
            [one] => one.split_once('=').filter(|(key, _)| key.eq_ignore_ascii_case("timeout")).map_or(*one, |(_, value)| value),
            _ => return Err(AdminError::syntax(format!("PAUSE takes at most one argument, a timeout like 5s; commands: {}", command_list()))),
        };
        let timeout = parse_duration(text)
            .ok_or_else(|| AdminError::syntax(format!("PAUSE: \"{text}\" is not a timeout; give a duration like 500ms, 5s or 1m (default 10s)")))?;
        Ok(Pause { timeout })
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let shared = shared.clone();
        let paused = run_detached(async move { crate::cutover::pause(&shared, self.timeout).await }).await?;
        paused.map(report).map_err(|e| cutover_error(&e))
    }
}
