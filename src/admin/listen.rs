//! Accept loops for the console's TCP listener and Unix socket; one task per connection, so a
//! long command (CUTOVER) never holds up another console.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};

use super::connection::{self, Listener};
use crate::listener::AcceptBackoff;

pub(super) async fn serve_tcp(tcp: TcpListener, listener: Arc<Listener>) {
    let mut backoff = AcceptBackoff::new("admin console");
    loop {
        match tcp.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded();
                let _ = stream.set_nodelay(true);
                // No TLS on the console: it is meant for loopback or a private network.
                tokio::spawn(connection::serve(stream, peer, listener.clone()));
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

pub(super) async fn serve_unix(unix: UnixListener, listener: Arc<Listener>) {
    let mut backoff = AcceptBackoff::new("admin console (unix socket)");
    // Authentication tells socket clients apart by the listener, not by this address.
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    loop {
        match unix.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                tokio::spawn(connection::serve(stream, peer, listener.clone()));
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

/// Creates the console socket at exactly `path`, mode 0600, replacing a stale one.
///
/// The socket is bound inside a private (0700) directory, chmod-ed, then renamed into place, so
/// there is no moment at which it is reachable with looser permissions.
pub(super) fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    check_replaceable(path)?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging_dir = staging_dir(parent);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging_dir)
        .with_context(|| format!("admin_socket: cannot create a directory next to {}", path.display()))?;
    let staged = staging_dir.join("s");
    let bound = bind_private(&staged).and_then(|listener| {
        std::fs::rename(&staged, path).with_context(|| format!("admin_socket: cannot move the socket to {}", path.display()))?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&staging_dir);
    bound
}

fn bind_private(staged: &Path) -> anyhow::Result<UnixListener> {
    let listener = UnixListener::bind(staged).with_context(|| format!("admin_socket: cannot listen on {}", staged.display()))?;
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o600)).context("admin_socket: cannot set mode 0600")?;
    Ok(listener)
}

/// A short, unique sibling name (socket paths are limited to ~107 bytes).
fn staging_dir(parent: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    parent.join(format!(".pgc{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Refuses to replace anything but a stale socket.
fn check_replaceable(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow::anyhow!("admin_socket: cannot inspect {}: {e}", path.display())),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!("admin_socket: {} exists and is not a socket; refusing to replace it", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("admin_socket: another process is listening on {}", path.display());
    }
    Ok(())
}

/// Tells how psql reaches the socket, or why it cannot with this name.
pub(super) fn log_socket_hint(path: &Path) {
    let port = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix(".s.PGSQL.")).and_then(|p| p.parse::<u16>().ok());
    let dir = path.parent().map(|d| d.display().to_string()).unwrap_or_default();
    match port {
        Some(port) => tracing::info!(path = %path.display(), "admin console listening on a Unix socket: psql -h {dir} -p {port} -U <admin user>"),
        None => tracing::warn!(
            path = %path.display(),
            "admin console listening on a Unix socket whose name psql cannot find; name it <dir>/.s.PGSQL.<port> to connect with psql -h <dir> -p <port>"
        ),
    }
}
