//! The integration suite, as one test binary: the shared Postgres 15 ("old") and 18 ("new")
//! servers start once for all of it, and the crate's dependencies are linked once.

mod support;

mod admin;
mod admin_limits;
mod auth_passthrough;
mod backend_tls;
mod copy_protocol;
mod cutover;
mod cutover_replay;
mod durable;
mod memory;
mod ops;
mod proxy_auth;
mod proxy_limits;
mod proxy_protocol;
mod readiness;
mod reverse;
mod rig;
mod startup_identity;
mod transparency;
mod verify;
