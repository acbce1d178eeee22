//! `RESUME`: release a PAUSE.

use std::sync::Arc;

use super::{cutover_error, no_arguments};
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume;

impl Resume {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("RESUME", args)?;
        Ok(Resume)
    }

    pub fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        crate::cutover::resume(shared).map_err(|e| cutover_error(&e))?;
        Ok(ResultSet::message("resumed"))
    }
}
