//! Byte-exact Postgres frame codec and the handful of messages the proxy inspects or builds.
//! Everything else is forwarded as opaque bytes.

pub mod frame;
pub mod messages;
pub mod startup;

pub use frame::{Batch, FrameIter, FrameReader, ProtocolError};
