//! `SHOW STATUS`: (field, value) rows describing the proxy and the cutover.

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowStatus;

impl ShowStatus {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("SHOW STATUS", args)?;
        Ok(ShowStatus)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        let mut set = ResultSet::new(&["field", "value"]);
        for (field, value) in crate::cutover::status(shared).await {
            set.push([field, value]);
        }
        Ok(set)
    }
}
