//! CHECK's readiness rows: every known upgrade trap, named with its objects and the fix.
//!
//! "fail" is for what loses data or stops the apply (a CUTOVER refuses to start); "warn" is for
//! what the operator must handle but cannot lose a committed write through pgcutover. The
//! catalog queries live in `control::readiness`; these modules compare and word them.

mod access;
mod apply;
mod carry;
mod coverage;
mod functions;
mod schema;
mod sql_names;
mod vacuum;

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::CheckRow;
use crate::config::CheckConfig;
use crate::control::readiness::coverage::PublishedTable;
use crate::control::replication::Subscription;
use crate::control::ControlError;
use crate::proxy::Shared;

pub(crate) fn row(check: impl Into<String>, status: &'static str, detail: impl Into<String>) -> CheckRow {
    CheckRow { check: check.into(), status, detail: detail.into() }
}

/// One database's control connections and subscription, as the checks see them.
pub struct Database<'a> {
    pub name: &'a str,
    pub old: &'a Client,
    pub new: &'a Client,
    pub subscription: &'a Subscription,
    pub check: &'a CheckConfig,
}

impl Database<'_> {
    fn row(&self, check: &str, status: &'static str, detail: impl Into<String>) -> CheckRow {
        row(format!("{}: {check}", self.name), status, detail)
    }

    /// A check that could not run: `fail` where the trap loses data, else `warn`.
    fn unknown(&self, check: &str, status: &'static str, e: &ControlError) -> CheckRow {
        self.row(check, status, format!("could not check: {e}"))
    }
}

/// What the coverage and schema checks found, for the apply row's "likely cause".
#[derive(Default)]
struct Findings {
    causes: Vec<String>,
    /// `pg_subscription_rel`: (table, state letter).
    subscribed: Option<Vec<(String, String)>>,
}

/// Every readiness row of one database.
pub async fn database_rows(db: &Database<'_>) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    let mut findings = Findings::default();
    let published = match crate::control::readiness::coverage::published_tables(db.old, &db.subscription.publications).await {
        Ok(p) => Some(p),
        Err(e) => {
            rows.push(db.unknown("tables subscribed", "fail", &e));
            None
        }
    };
    if let Some(published) = &published {
        rows.push(coverage::row(db, published, &mut findings).await);
        rows.push(schema::row(db, published, &mut findings).await);
    }
    rows.push(functions::row(db, &mut findings).await);
    rows.extend(apply::rows(db, &findings).await);
    rows.extend(carry::rows(db).await);
    rows.extend(access::database_rows(db).await);
    rows.extend(vacuum::rows(db).await);
    rows
}

/// Rows about the servers as a whole: login roles and connection room on new.
pub async fn server_rows(shared: &Shared, databases: usize) -> Vec<CheckRow> {
    access::server_rows(shared, databases).await
}

/// `items` joined with ", ", at most `max` of them, then "and N more".
fn list<S: AsRef<str>>(items: &[S], max: usize) -> String {
    list_with(items, max, ", ")
}

/// [`list`] with another separator, for items that hold commas themselves.
fn list_with<S: AsRef<str>>(items: &[S], max: usize, separator: &str) -> String {
    let mut text = items.iter().take(max).map(|s| s.as_ref()).collect::<Vec<_>>().join(separator);
    if items.len() > max {
        text.push_str(&format!(" and {} more", items.len() - max));
    }
    text
}

fn names(published: &[PublishedTable]) -> BTreeSet<String> {
    published.iter().map(|t| t.name.clone()).collect()
}
