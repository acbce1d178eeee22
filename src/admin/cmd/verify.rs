//! `VERIFY [rows_per_second=N] [chunk_rows=N] [table ...]`: compare the rows of old and new,
//! live; every subscribed table unless tables are named.

use std::sync::Arc;

use super::lex::{self, Token};
use super::run_detached;
use super::show_verify::result_set;
use crate::admin::reply::{AdminError, CommandResult};
use crate::proxy::Shared;
use crate::verify::Request;

pub const HELP: &str = "compare the rows of old and new while writes go on, chunk by primary key; options: rows_per_second=N, chunk_rows=N; default: every subscribed table";

const OPTIONS: &str = "rows_per_second=N, chunk_rows=N, then table names";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verify {
    pub request: Request,
}

impl Verify {
    /// `key=value` options (`key = value`, quoted values, commas allowed) and table names.
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        let mut request = Request::default();
        let tokens = lex::tokens(&args.join(" "))?;
        let mut rest = tokens.as_slice();
        while !rest.is_empty() {
            rest = match rest {
                [Token::Word(key), Token::Equals, Token::Word(value) | Token::Quoted(value), tail @ ..] => {
                    let number = |min: u64| {
                        value.parse::<u64>().ok().filter(|n| *n >= min).ok_or_else(|| AdminError::syntax(format!("VERIFY: {key}=\"{value}\" is not a whole number of at least {min}")))
                    };
                    let duplicate = match key.to_ascii_lowercase().as_str() {
                        "rows_per_second" => request.rows_per_second.replace(number(0)?).is_some(),
                        "chunk_rows" => request.chunk_rows.replace(number(1)?.min(1_000_000) as i64).is_some(),
                        _ => return Err(AdminError::syntax(format!("VERIFY: unknown option \"{key}\"; valid: {OPTIONS}"))),
                    };
                    if duplicate {
                        return Err(AdminError::syntax(format!("VERIFY: option \"{key}\" given twice")));
                    }
                    tail
                }
                [Token::Word(table) | Token::Quoted(table), tail @ ..] => {
                    request.tables.push(table.clone());
                    tail
                }
                [Token::Comma, tail @ ..] => tail,
                _ => {
                    let shown: Vec<String> = rest.iter().take(3).map(Token::shown).collect();
                    return Err(AdminError::syntax(format!("VERIFY: unexpected \"{}\"; valid: {OPTIONS}", shown.join(""))));
                }
            };
        }
        Ok(Verify { request })
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let shared = shared.clone();
        // Detached: a console client that goes away does not stop it; SHOW VERIFY shows the result.
        let outcome = run_detached(async move { crate::verify::run(&shared, self.request).await }).await?;
        outcome.map(result_set).map_err(|e| AdminError::new(e.sqlstate(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Verify, AdminError> {
        Verify::parse(&text.split_whitespace().collect::<Vec<_>>())
    }

    #[test]
    fn options_and_tables() {
        assert_eq!(parse("").ok(), Some(Verify::default()));
        let v = parse("rows_per_second = 5000, public.accounts tellers").expect("parses");
        assert_eq!(v.request.rows_per_second, Some(5000));
        assert_eq!(v.request.tables, vec!["public.accounts", "tellers"]);
        assert_eq!(parse("chunk_rows=100").expect("parses").request.chunk_rows, Some(100));
        assert_eq!(parse("'Mixed Case'").expect("parses").request.tables, vec!["Mixed Case"]);
        for bad in ["speed=fast", "chunk_rows=0", "rows_per_second=-1", "chunk_rows=1 chunk_rows=2", "=5", "t 'open"] {
            assert_eq!(parse(bad).err().map(|e| e.sqlstate), Some("42601"), "{bad}");
        }
    }
}
