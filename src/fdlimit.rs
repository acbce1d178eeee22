//! The open-file limit (`RLIMIT_NOFILE`): raised to the hard limit at start, and compared with
//! what the connection limits can need.

use std::io;

/// Descriptors the proxy uses besides connections: listeners, the runtime, the log, control
/// connections during a cutover, the spare descriptor.
pub const HEADROOM: u64 = 100;

/// Descriptors the limits can need at once: each session has a client and a server connection,
/// plus a pre-warmed one on new during a cutover; a connection in startup has its client's.
pub fn needed(max_clients: usize, max_startup_connections: usize) -> u64 {
    (max_clients as u64).saturating_mul(3).saturating_add(max_startup_connections as u64).saturating_add(HEADROOM)
}

/// (soft, hard) limit of open files.
pub fn nofile() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed struct above and
    // keeps no pointer to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on this target, not on every one
    Ok((limit.rlim_cur as u64, limit.rlim_max as u64))
}

/// Raises the soft limit to the hard one; returns the soft limit now in force.
pub fn raise_to_hard() -> io::Result<u64> {
    let (soft, hard) = nofile()?;
    if soft >= hard {
        return Ok(soft);
    }
    let limit = libc::rlimit { rlim_cur: hard as libc::rlim_t, rlim_max: hard as libc::rlim_t };
    // SAFETY: setrlimit only reads the valid rlimit struct above for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(hard)
}

/// Warns when the open-file limit cannot cover the connection limits (at start and after a
/// reload changed them). Past it, clients get FATAL 53300 rather than a hang.
pub fn warn_if_short(max_clients: usize, max_startup_connections: usize) {
    let needed = needed(max_clients, max_startup_connections);
    match nofile() {
        Ok((soft, _)) if soft < needed => tracing::warn!(
            open_files_limit = soft,
            needed,
            max_clients,
            max_startup_connections,
            "the open-file limit (ulimit -n) is below max_clients x 3 + max_startup_connections + {HEADROOM}: past it, clients get FATAL 53300; raise the hard limit or lower max_clients"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let (_, hard) = nofile().expect("getrlimit");
        assert_eq!(raise_to_hard().expect("setrlimit"), hard);
        assert_eq!(nofile().expect("getrlimit").0, hard);
        assert_eq!(needed(10, 5), 135);
        assert_eq!(needed(usize::MAX, 1), u64::MAX);
    }
}
