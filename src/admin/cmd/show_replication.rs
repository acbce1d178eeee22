//! `SHOW REPLICATION`: the subscriptions that feed the new server, and how far behind they are.

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowReplication;

impl ShowReplication {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("SHOW REPLICATION", args)?;
        Ok(ShowReplication)
    }

    pub async fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        // 08006: the servers could not be queried.
        let rows = crate::cutover::replication(shared).await.map_err(|text| AdminError::new("08006", text))?;
        let mut set = ResultSet::new(&["database", "subscription", "enabled", "slot", "lag_bytes", "table_states"]);
        for r in rows {
            set.push_nullable(vec![
                Some(r.database),
                Some(r.subscription),
                Some(r.enabled.to_string()),
                Some(r.slot),
                // NULL: the lag could not be measured (e.g. the slot is inactive).
                r.lag_bytes.map(|lag| lag.to_string()),
                Some(r.table_states),
            ]);
        }
        Ok(set)
    }
}
