//! `SHOW VERIFY`: the running VERIFY's progress, or the last one's result.

use std::sync::Arc;

use super::no_arguments;
use crate::admin::reply::{AdminError, CommandResult, ResultSet};
use crate::proxy::Shared;
use crate::verify::TableReport;

pub const COLUMNS: &[&str] = &["database", "table", "rows", "chunks", "result", "detail"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowVerify;

impl ShowVerify {
    pub fn parse(args: &[&str]) -> Result<Self, AdminError> {
        no_arguments("SHOW VERIFY", args)?;
        Ok(ShowVerify)
    }

    pub fn apply(self, shared: &Arc<Shared>) -> CommandResult {
        Ok(result_set(shared.verify.report()))
    }
}

/// Table reports as a result set; shared with VERIFY.
pub fn result_set(tables: Vec<TableReport>) -> ResultSet {
    let mut set = ResultSet::new(COLUMNS);
    for t in tables {
        set.push([t.database, t.table, t.rows.to_string(), t.chunks.to_string(), t.result, t.detail]);
    }
    set
}
