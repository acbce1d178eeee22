//! Console commands: each file parses one command's arguments and applies it.
//!
//! A query may hold several commands separated by `;`; keywords are case-insensitive and
//! `--` comments are ignored; quotes (`'...'`, `"..."`) hide both (see [`lex`]).

mod abort;
mod check;
mod cutover;
mod help;
mod lex;
mod pause;
mod resume;
mod show_cutover;
mod show_replication;
mod show_sessions;
mod show_status;
mod show_verify;
mod verify;

use std::sync::Arc;

use crate::admin::reply::{AdminError, CommandResult};
use crate::proxy::Shared;

pub use abort::Abort;
pub use check::Check;
pub use cutover::Cutover;
pub use help::Help;
pub use lex::split_statements;
pub use pause::Pause;
pub use resume::Resume;
pub use show_cutover::ShowCutover;
pub use show_replication::ShowReplication;
pub use show_sessions::ShowSessions;
pub use show_status::ShowStatus;
pub use show_verify::ShowVerify;
pub use verify::Verify;

/// Every command, as listed in errors and HELP: (syntax, description).
pub const COMMANDS: &[(&str, &str)] = &[
    ("SHOW STATUS", "proxy, servers and cutover state"),
    ("SHOW SESSIONS", "client sessions and whether each can move to the new server"),
    ("SHOW REPLICATION", "subscriptions feeding the new server, and their lag"),
    ("SHOW CUTOVER", "report of the last cutover"),
    ("CHECK", "preflight checks and every known upgrade trap, without holding anything"),
    ("VERIFY [option=value ...] [table ...]", verify::HELP),
    ("SHOW VERIFY", "progress or result of the last VERIFY"),
    ("PAUSE [timeout]", "hold new transactions until RESUME; waits up to timeout (default 10s) for running ones"),
    ("RESUME", "release a PAUSE"),
    ("CUTOVER [option=value ...]", cutover::OPTIONS_HELP),
    ("ABORT", "stop the running cutover; every session continues on the old server"),
    ("HELP", "this list (also SHOW HELP)"),
];

/// The command list on one line, for error messages.
pub fn command_list() -> String {
    COMMANDS.iter().map(|(syntax, _)| *syntax).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    ShowStatus(ShowStatus),
    ShowSessions(ShowSessions),
    ShowReplication(ShowReplication),
    ShowCutover(ShowCutover),
    Check(Check),
    Verify(Verify),
    ShowVerify(ShowVerify),
    Pause(Pause),
    Resume(Resume),
    Cutover(Cutover),
    Abort(Abort),
    Help(Help),
}

impl Command {
    /// Parses one statement (no `;`).
    pub fn parse(statement: &str) -> Result<Command, AdminError> {
        let words = lex::words(statement)?;
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let Some((first, rest)) = words.split_first() else {
            return Err(unknown(statement));
        };
        let command = match first.to_ascii_uppercase().as_str() {
            "SHOW" => return Self::parse_show(statement, rest),
            "CHECK" => Command::Check(Check::parse(rest)?),
            "VERIFY" => Command::Verify(Verify::parse(rest)?),
            "PAUSE" => Command::Pause(Pause::parse(rest)?),
            "RESUME" => Command::Resume(Resume::parse(rest)?),
            "CUTOVER" => Command::Cutover(Cutover::parse(rest)?),
            "ABORT" => Command::Abort(Abort::parse(rest)?),
            "HELP" => Command::Help(Help::parse(rest)?),
            _ => return Err(unknown(statement)),
        };
        Ok(command)
    }

    fn parse_show(statement: &str, words: &[&str]) -> Result<Command, AdminError> {
        let Some((what, rest)) = words.split_first() else {
            return Err(unknown(statement));
        };
        let command = match what.to_ascii_uppercase().as_str() {
            "STATUS" => Command::ShowStatus(ShowStatus::parse(rest)?),
            "SESSIONS" => Command::ShowSessions(ShowSessions::parse(rest)?),
            "REPLICATION" => Command::ShowReplication(ShowReplication::parse(rest)?),
            "CUTOVER" => Command::ShowCutover(ShowCutover::parse(rest)?),
            "VERIFY" => Command::ShowVerify(ShowVerify::parse(rest)?),
            "HELP" => Command::Help(Help::parse(rest)?),
            _ => return Err(unknown(statement)),
        };
        Ok(command)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        match self {
            Command::ShowStatus(c) => c.apply(shared).await,
            Command::ShowSessions(c) => c.apply(shared).await,
            Command::ShowReplication(c) => c.apply(shared).await,
            Command::ShowCutover(c) => c.apply(shared),
            Command::Check(c) => c.apply(shared).await,
            Command::Verify(c) => c.apply(shared).await,
            Command::ShowVerify(c) => c.apply(shared),
            Command::Pause(c) => c.apply(shared).await,
            Command::Resume(c) => c.apply(shared),
            Command::Cutover(c) => c.apply(shared).await,
            Command::Abort(c) => c.apply(shared),
            Command::Help(c) => c.apply(),
        }
    }

    /// Commands that change what sessions do (logged at info; the others at debug).
    pub fn changes_state(&self) -> bool {
        matches!(self, Command::Pause(_) | Command::Resume(_) | Command::Cutover(_) | Command::Abort(_))
    }
}

fn unknown(statement: &str) -> AdminError {
    let shown: String = statement.chars().take(80).collect();
    AdminError::syntax(format!("unknown command \"{shown}\"; commands: {}", command_list()))
}

/// For commands without arguments.
fn no_arguments(command: &str, args: &[&str]) -> Result<(), AdminError> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(AdminError::syntax(format!("{command} takes no arguments (got \"{}\"); commands: {}", args.join(" "), command_list())))
    }
}

/// `CutoverError` as a console error.
fn cutover_error(e: &crate::cutover::CutoverError) -> AdminError {
    AdminError::new(e.sqlstate(), e.to_string())
}

/// Runs a cutover step on its own task: if the console client goes away (or its connection task
/// is dropped), the step still finishes and leaves the sessions in a consistent state.
async fn run_detached<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, AdminError> {
    tokio::spawn(future).await.map_err(|e| AdminError::new("XX000", format!("internal error: the command's task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(Command::parse("show status").ok(), Some(Command::ShowStatus(ShowStatus)));
        assert_eq!(Command::parse("Show  Sessions").ok(), Some(Command::ShowSessions(ShowSessions)));
        assert_eq!(Command::parse("help").ok(), Some(Command::Help(Help)));
        assert_eq!(Command::parse("SHOW HELP").ok(), Some(Command::Help(Help)));
        assert_eq!(Command::parse("abort").ok(), Some(Command::Abort(Abort)));
    }

    #[test]
    fn unknown_commands_list_the_commands() {
        for text in ["SELECT 1", "SHOW", "SHOW FOO", "frobnicate"] {
            let e = Command::parse(text).expect_err("error");
            assert_eq!(e.sqlstate, "42601");
            assert!(e.message.contains("SHOW SESSIONS") && e.message.contains("CUTOVER"), "{}", e.message);
        }
        let e = Command::parse("SHOW STATUS now").expect_err("error");
        assert!(e.message.contains("takes no arguments"), "{}", e.message);
    }

    #[test]
    fn pause_takes_an_optional_timeout() {
        assert_eq!(Command::parse("PAUSE").ok(), Some(Command::Pause(Pause { timeout: Duration::from_secs(10) })));
        assert_eq!(Command::parse("pause 3s").ok(), Some(Command::Pause(Pause { timeout: Duration::from_secs(3) })));
        assert_eq!(Command::parse("pause timeout=500ms").ok(), Some(Command::Pause(Pause { timeout: Duration::from_millis(500) })));
        assert_eq!(Command::parse("pause soon").err().map(|e| e.sqlstate), Some("42601"));
    }
}
