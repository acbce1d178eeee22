//! `SHOW CUTOVER`: the report of the last cutover (item, value, detail).

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::cutover::ReportRow;
use crate::proxy::Shared;

pub const COLUMNS: &[&str] = &["item", "value", "detail"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowCutover;

impl ShowCutover {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("SHOW CUTOVER", args)?;
        Ok(ShowCutover)
    }

    pub fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        // A poisoned lock still holds a complete report: rows are replaced as a whole.
        let rows = match shared.cutover.last.lock() {
            Ok(rows) => rows.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Ok(report(rows))
    }
}

/// Report rows as a result set; shared by PAUSE and CUTOVER.
pub fn report(rows: Vec<ReportRow>) -> ResultSet {
    let mut set = ResultSet::new(COLUMNS);
    for r in rows {
        set.push([r.item, r.value, r.detail]);
    }
    set
}
