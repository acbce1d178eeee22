//! `CUTOVER [option=value ...]`: move every session to the new server. Options left out come
//! from the `[cutover]` config section.

use std::sync::Arc;
use std::time::Duration;

use super::show_cutover::report;
use super::lex::{self, Token};
use super::{cutover_error, run_detached};
use crate::admin::reply::{AdminError, CommandResult};
use crate::config::{parse_duration, IdleInTransaction};
use crate::cutover::CutoverOptions;
use crate::proxy::Shared;

pub const OPTIONS_HELP: &str = "move every session to the new server; options: drain_timeout=2s, catchup_timeout=5s, \
     idle_in_transaction=rollback|terminate|abort, fence_old=true|false, terminate_foreign=true|false, recheck_changing=true|false";

const VALID_OPTIONS: &str = "drain_timeout=<duration>, catchup_timeout=<duration>, idle_in_transaction=rollback|terminate|abort, \
     fence_old=true|false, terminate_foreign=true|false, recheck_changing=true|false";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cutover {
    pub drain_timeout: Option<Duration>,
    pub catchup_timeout: Option<Duration>,
    pub idle_in_transaction: Option<IdleInTransaction>,
    pub fence_old: Option<bool>,
    pub recheck_changing: Option<bool>,
    pub terminate_foreign: Option<bool>,
}

impl Cutover {
    /// Accepts `key=value`, `key = value`, `'value'` and separating commas.
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        let mut cutover = Cutover::default();
        for (key, value) in options(args)? {
            let duplicate = match key.as_str() {
                "drain_timeout" => cutover.drain_timeout.replace(duration(&key, &value)?).is_some(),
                "catchup_timeout" => cutover.catchup_timeout.replace(duration(&key, &value)?).is_some(),
                "idle_in_transaction" => cutover.idle_in_transaction.replace(idle_policy(&value)?).is_some(),
                "fence_old" => cutover.fence_old.replace(boolean(&key, &value)?).is_some(),
                "recheck_changing" => cutover.recheck_changing.replace(boolean(&key, &value)?).is_some(),
                "terminate_foreign" => cutover.terminate_foreign.replace(boolean(&key, &value)?).is_some(),
                _ => return Err(AdminError::syntax(format!("CUTOVER: unknown option \"{key}\"; valid options: {VALID_OPTIONS}"))),
            };
            if duplicate {
                return Err(AdminError::syntax(format!("CUTOVER: option \"{key}\" given twice")));
            }
        }
        Ok(cutover)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let options = CutoverOptions {
            drain_timeout: self.drain_timeout,
            catchup_timeout: self.catchup_timeout,
            idle_in_transaction: self.idle_in_transaction,
            fence_old: self.fence_old,
            recheck_changing: self.recheck_changing,
            terminate_foreign: self.terminate_foreign,
        };
        let shared = shared.clone();
        // cutover::run allows one cutover at a time; a concurrent one gets its error.
        let outcome = run_detached(async move { crate::cutover::run(&shared, options).await }).await?;
        outcome.map(report).map_err(|e| cutover_error(&e))
    }
}

/// (lower-case key, value) pairs from `key=value`, `key = value`, `key='value'`, with optional
/// separating commas. A quoted value is taken whole (`;` and spaces included) and then checked
/// like any other.
fn options(args: &[&str]) -> Result<Vec<(String, String)>, AdminError> {
    let tokens = lex::tokens(&args.join(" "))?;
    let mut pairs = Vec::new();
    let mut rest = tokens.as_slice();
    while !rest.is_empty() {
        match rest {
            [Token::Word(key), Token::Equals, Token::Word(value) | Token::Quoted(value), tail @ ..] => {
                pairs.push((key.to_ascii_lowercase(), value.clone()));
                rest = tail.strip_prefix(&[Token::Comma]).unwrap_or(tail);
            }
            _ => {
                let shown: Vec<String> = rest.iter().take(3).map(Token::shown).collect();
                return Err(AdminError::syntax(format!("CUTOVER: expected option=value, got \"{}\"; valid options: {VALID_OPTIONS}", shown.join(""))));
            }
        }
    }
    Ok(pairs)
}

fn duration(key: &str, value: &str) -> Result<Duration, AdminError> {
    parse_duration(value).ok_or_else(|| AdminError::syntax(format!("CUTOVER: {key}=\"{value}\" is not a duration; use e.g. 500ms, 2s or 1m")))
}

fn idle_policy(value: &str) -> Result<IdleInTransaction, AdminError> {
    match value.to_ascii_lowercase().as_str() {
        "rollback" => Ok(IdleInTransaction::Rollback),
        "terminate" => Ok(IdleInTransaction::Terminate),
        "abort" => Ok(IdleInTransaction::Abort),
        _ => Err(AdminError::syntax(format!("CUTOVER: idle_in_transaction=\"{value}\" is not valid; use rollback, terminate or abort"))),
    }
}

fn boolean(key: &str, value: &str) -> Result<bool, AdminError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => Err(AdminError::syntax(format!("CUTOVER: {key}=\"{value}\" is not valid; use true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Cutover, AdminError> {
        Cutover::parse(&text.split_whitespace().collect::<Vec<_>>())
    }

    #[test]
    fn no_options_means_config_defaults() {
        assert_eq!(parse("").ok(), Some(Cutover::default()));
    }

    #[test]
    fn every_option() {
        let c = parse("drain_timeout=500ms CATCHUP_TIMEOUT = 1m, idle_in_transaction='terminate' fence_old=true terminate_foreign=yes").expect("parses");
        assert_eq!(c.drain_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.catchup_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.idle_in_transaction, Some(IdleInTransaction::Terminate));
        assert_eq!(c.fence_old, Some(true));
        assert_eq!(c.terminate_foreign, Some(true));
    }

    #[test]
    fn bad_options_are_syntax_errors_that_list_the_valid_ones() {
        let e = parse("speed=fast").expect_err("error");
        assert_eq!(e.sqlstate, "42601");
        assert!(e.message.contains("drain_timeout") && e.message.contains("fence_old"), "{}", e.message);
        for bad in ["drain_timeout=2", "fence_old=maybe", "idle_in_transaction=wait", "drain_timeout", "fence_old=true fence_old=false", "=2s", "drain_timeout=", ","] {
            assert_eq!(parse(bad).err().map(|e| e.sqlstate), Some("42601"), "{bad}");
        }
    }

    #[test]
    fn quoted_values_are_taken_whole_and_checked() {
        let e = super::super::Command::parse("CUTOVER drain_timeout='1s; DROP TABLE x'").expect_err("a quoted ; is no separator");
        assert_eq!(e.sqlstate, "42601");
        assert!(e.message.contains("drain_timeout=\"1s; DROP TABLE x\" is not a duration"), "{}", e.message);
        let e = super::super::Command::parse("CUTOVER drain_timeout='1s").expect_err("unterminated");
        assert!(e.message.contains("unterminated"), "{}", e.message);
        let c = parse("idle_in_transaction = \"abort\", drain_timeout='750ms'").expect("parses");
        assert_eq!((c.idle_in_transaction, c.drain_timeout), (Some(IdleInTransaction::Abort), Some(Duration::from_millis(750))));
        let e = parse("fence_old='tr ue'").expect_err("space inside");
        assert!(e.message.contains("\"tr ue\""), "{}", e.message);
    }
}
