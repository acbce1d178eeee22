//! pgcutover: a Postgres wire-protocol proxy that moves live sessions from one server to
//! another (a major-version upgrade over logical replication) without failing transactions.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod config;
pub mod control;
pub mod cutover;
pub mod faults;
#[cfg(test)]
mod fuzz;
pub mod fdlimit;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod session;
pub mod tls;
pub mod verify;
