//! The cutover: preflight, hold, drain, catch-up proof, sequences, rebind — or a clean abort.

pub mod gate;

use std::sync::Mutex;

/// The last cutover's report, for SHOW CUTOVER.
#[derive(Default)]
pub struct Tracker {
    pub last: Mutex<Option<Vec<(String, String)>>>,
}
