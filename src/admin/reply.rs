//! What a console command answers: a result set of text columns, or an error with a SQLSTATE.

use std::sync::Arc;

use futures::stream;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response};
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireResult, SEVERITY_ERROR};
use pgwire::messages::data::DataRow;

/// Rows of text cells (`None` is SQL NULL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub fn new(columns: &'static [&'static str]) -> Self {
        Self { columns, rows: Vec::new() }
    }

    /// Appends a row of non-null cells.
    pub fn push<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.push_nullable(cells.into_iter().map(|c| Some(c.into())).collect());
    }

    pub fn push_nullable(&mut self, cells: Vec<Option<String>>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "row width must match the columns");
        self.rows.push(cells);
    }

    /// A one-column, one-row answer, for commands that only acknowledge.
    pub fn message(text: impl Into<String>) -> Self {
        let mut set = Self::new(&["result"]);
        set.push([text]);
        set
    }
}

/// An ERROR sent back to the console client; the connection stays usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self { sqlstate, message: message.into() }
    }

    /// A command or option the console does not know, or a malformed value.
    pub fn syntax(message: impl Into<String>) -> Self {
        Self::new("42601", message)
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

pub type CommandResult = Result<ResultSet, AdminError>;

/// The pgwire response for one command's outcome.
pub(super) fn into_response(result: CommandResult) -> PgWireResult<Response> {
    match result {
        Ok(set) => Ok(Response::Query(query_response(set)?)),
        Err(e) => Ok(Response::Error(Box::new(ErrorInfo::new(SEVERITY_ERROR.to_owned(), e.sqlstate.to_owned(), e.message)))),
    }
}

fn query_response(set: ResultSet) -> PgWireResult<QueryResponse> {
    let schema: Arc<Vec<FieldInfo>> =
        Arc::new(set.columns.iter().map(|name| FieldInfo::new((*name).to_owned(), None, None, Type::TEXT, FieldFormat::Text)).collect());
    let mut encoder = DataRowEncoder::new(schema.clone());
    // Encoded up front: the rows are few, and an encoding error then surfaces before any output.
    let rows = set
        .rows
        .into_iter()
        .map(|row| {
            for cell in &row {
                encoder.encode_field(cell)?;
            }
            Ok(encoder.take_row())
        })
        .collect::<PgWireResult<Vec<DataRow>>>()?;
    Ok(QueryResponse::new(schema, stream::iter(rows.into_iter().map(Ok))))
}
