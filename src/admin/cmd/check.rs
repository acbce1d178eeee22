//! `CHECK`: the cutover preflight, without holding anything.

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check;

impl Check {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("CHECK", args)?;
        Ok(Check)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let mut set = ResultSet::new(&["check", "status", "detail"]);
        for r in crate::cutover::check(shared).await {
            set.push([r.check, r.status.to_string(), r.detail]);
        }
        Ok(set)
    }
}
