//! Crash points for the restart tests: the process aborts at a named line when the environment
//! variable `PGCUTOVER_TEST_CRASH_AFTER` names it. Compiled into every build, and inert unless
//! that variable is set: the check runs only at the few lines that call it (none on the hot
//! path), so the tests exercise exactly the binary that ships.

pub const ENV: &str = "PGCUTOVER_TEST_CRASH_AFTER";

/// Aborts the process (as a crash or SIGKILL would end it: no cleanup, no orderly close) if
/// `PGCUTOVER_TEST_CRASH_AFTER` equals `point`.
pub fn crash_point(point: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == point) {
        eprintln!("pgcutover: {ENV}={point}: aborting here on purpose");
        std::process::abort();
    }
}
