//! Catalog queries behind CHECK's readiness rows: what logical replication does not carry, what
//! differs between old and new, and what breaks the apply. Each function answers one question
//! from one server; `cutover::checks` compares the answers and words the rows.
//!
//! Tables are named `schema.table` as `format('%I.%I')` writes them, on both servers, so
//! names from old and new compare as strings.

pub mod access;
pub mod carry;
pub mod coverage;
pub mod functions;
pub mod schema;
pub mod vacuum;

/// SQL condition: schema `n.nspname` holds user objects (not a system schema).
pub(crate) const USER_SCHEMA: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_'";

/// SQL condition: the relation `n.nspname`/`c.relname` is not one of pgcutover's own tables,
/// except the sentinel, which must replicate like any application table.
pub(crate) const NOT_PROXY_OWN: &str = "(n.nspname <> 'pgcutover' OR c.relname = 'sentinel')";
