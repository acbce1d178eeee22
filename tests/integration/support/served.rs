//! `pgcutover serve` as a process of its own, for what only a separate process shows: its
//! memory in `/proc/<pid>/status`, or how it fares under an address-space limit (`ulimit -v`).
//!
//! [`Served::start`] writes the given TOML (plus `listen`, and `admin_listen` if asked for, on
//! free ports) to a file, starts the debug binary with it, logs to a file, and waits until the
//! ports answer. Drop kills the process.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `config`: the rest of the configuration file (top-level keys first, then tables).
    /// `address_space_kib`: run under `ulimit -v` with this many KiB.
    pub fn start(config: &str, admin: bool, address_space_kib: Option<u64>) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let admin_addr = admin.then(|| SocketAddr::from(([127, 0, 0, 1], super::free_port())));
        let mut text = format!("listen = \"{addr}\"\n");
        if let Some(admin) = admin_addr {
            text.push_str(&format!("admin_listen = \"{admin}\"\n"));
        }
        text.push_str(config);
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, text).expect("write config");
        let log = dir.path().join("pgcutover.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let binary = env!("CARGO_BIN_EXE_pgcutover");
        let limit = address_space_kib.map_or("unlimited".to_string(), |k| k.to_string());
        // exec: the shell's pid becomes the proxy's, so /proc/<pid> is the proxy.
        let child = Command::new("sh")
            .args(["-c", "ulimit -v \"$1\" && shift && exec \"$@\"", "sh", &limit, binary, "serve", "--config"])
            .arg(&config_path)
            .env("PGCUTOVER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("start pgcutover serve");
        let mut served = Served { child, addr, admin_addr, log, _dir: dir };
        let deadline = Instant::now() + super::PATIENCE;
        for port in [Some(addr), admin_addr].into_iter().flatten() {
            while TcpStream::connect(port).is_err() {
                served.assert_running();
                assert!(Instant::now() < deadline, "pgcutover did not listen on {port}:\n{}", served.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        served
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/<pid>/status` field in KiB: `VmRSS`, `VmHWM` (peak RSS), `VmSize`.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status (process gone?):\n{}", self.pid(), self.log()))
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgcutover exited ({status}):\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
