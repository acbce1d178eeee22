//! What every accept loop shares: backing off on accept errors (out of file descriptors makes
//! `accept` fail at once, again and again, while the connection waits in the backlog), a spare
//! descriptor to refuse clients with when the process is out of them, and refusing a
//! connection before reading from it.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::messages::fatal;

/// Whether an error means the process or the system has no file descriptor left.
pub fn out_of_files(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether a connection waits in a listener's backlog, without waiting. `accept` cannot tell:
/// it fails for lack of a descriptor before it looks at the backlog.
pub fn connection_waiting(listener: &impl AsRawFd) -> bool {
    let mut waiting = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd above during the call and keeps no pointer;
    // a timeout of 0 makes it return at once.
    let ready = unsafe { libc::poll(&mut waiting, 1, 0) };
    ready == 1 && waiting.revents & libc::POLLIN != 0
}

/// Exponential back-off after accept errors: 10 ms doubling to 1 s, back to the start after a
/// success. One log line per failure, so at most one a second while it lasts.
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// `what` names the listener in the log.
    pub fn new(what: &'static str) -> Self {
        Self { what, delay: FIRST_DELAY }
    }

    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }

    /// Logs the error and waits before the next accept.
    pub async fn failed(&mut self, e: &io::Error) {
        let delay = self.next_delay();
        tracing::warn!(listener = self.what, error = %e, retry_in_ms = delay.as_millis() as u64, "accept failed");
        tokio::time::sleep(delay).await;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        delay
    }
}

/// A descriptor held in reserve (`/dev/null`): given up for a moment when `accept` fails for
/// lack of descriptors, so the waiting client can be accepted and told why, instead of waiting
/// in the backlog until it gives up.
pub struct SpareFd(Option<std::fs::File>);

impl SpareFd {
    pub fn reserve() -> Self {
        SpareFd(std::fs::File::open("/dev/null").ok())
    }

    /// Frees the descriptor; false if there was none to free.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor back (possible once the refused client's is closed).
    pub fn restore(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }
}

/// Refuses a connection before reading its startup packet: a FATAL ErrorResponse (libpq and
/// other clients read it whether they sent a StartupMessage or an SSLRequest, as with a
/// Postgres that cannot fork), then close. Whatever the client sends within `linger` is read
/// and dropped first: closing with unread bytes would reset the connection and could lose the
/// error before the client reads it.
pub async fn refuse_unread(mut tcp: TcpStream, sqlstate: &str, message: &str, linger: Duration) {
    if tcp.write_all(&fatal(sqlstate, message)).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 1024];
        let mut total = 0;
        // A startup packet is at most 10,000 bytes; a client sending more is not listening.
        while total < 16 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(linger, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_files_is_emfile_or_enfile() {
        assert!(out_of_files(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(out_of_files(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!out_of_files(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
        assert!(!out_of_files(&io::Error::other("x")));
    }

    #[tokio::test]
    async fn a_waiting_connection_is_seen_without_accepting_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        assert!(!connection_waiting(&listener));
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !connection_waiting(&listener) {
            assert!(std::time::Instant::now() < deadline, "connection never seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _accepted = listener.accept().await.expect("accept");
        assert!(!connection_waiting(&listener));
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::new("test");
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.next_delay(), FIRST_DELAY);
    }
}
