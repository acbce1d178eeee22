//! `ABORT`: ask the running cutover to stop; every session continues on the old server.

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort;

impl Abort {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("ABORT", args)?;
        Ok(Abort)
    }

    pub fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        if crate::cutover::abort(shared) {
            Ok(ResultSet::message("abort requested"))
        } else {
            Err(AdminError::new("55000", "no cutover is running"))
        }
    }
}
