//! `HELP` / `SHOW HELP`: the command list.

use super::{no_arguments, COMMANDS};
use crate::admin::reply::{AdminError, CommandResult, ResultSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Help;

impl Help {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("HELP", args)?;
        Ok(Help)
    }

    pub fn apply(self) -> CommandResult {
        let mut set = ResultSet::new(&["command", "description"]);
        for (syntax, description) in COMMANDS {
            set.push([*syntax, *description]);
        }
        Ok(set)
    }
}
