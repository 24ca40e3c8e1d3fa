//! A scratch `nats-server -js` for the NATS demo and the dedup comparison (feature `nats`).
//!
//! Owns one server process: started on a free loopback port with its JetStream store in a
//! directory of the caller's, and stopped (SIGKILL to its process id, then reaped) when the
//! [`NatsServer`] is dropped, so that no error path leaves a server running. It listens on
//! 127.0.0.1 only.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli_error::{CliError, CliResult, Context};

/// How to get `nats-server` when it is missing.
pub const INSTALL_HINT: &str =
    "install it (Debian/Ubuntu: `apt-get install nats-server`, 2.9 there; \
     or a release from https://github.com/nats-io/nats-server/releases), or point the demo at a \
     running JetStream server with --nats-url";

/// A running `nats-server -js`, stopped on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port, its store in `dir/jetstream` and its
    /// log in `dir/nats-server.log`; returns once it accepts connections.
    pub fn start(dir: &Path) -> CliResult<NatsServer> {
        std::fs::create_dir_all(dir).context(format_args!("creating {}", dir.display()))?;
        let port = free_port()?;
        let log = dir.join("nats-server.log");
        let log_file = File::create(&log).context(format_args!("creating {}", log.display()))?;
        let stderr = log_file
            .try_clone()
            .context(format_args!("opening {}", log.display()))?;
        let spawned = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::new(format!(
                    "nats-server is not on the PATH: {INSTALL_HINT}"
                )))
            }
            Err(e) => return Err(e).context("starting nats-server"),
        };
        let mut server = NatsServer { child, port, log };
        server.wait_listening(Duration::from_secs(15))?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in bytes (VmRSS of /proc/<pid>/status).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        crate::bench::parse_vm_rss(&status)
    }

    fn wait_listening(&mut self, limit: Duration) -> CliResult<()> {
        let started = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CliError::new(format!(
                    "nats-server exited with {status} before it listened: {}",
                    self.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(CliError::new(format!(
                    "nats-server did not listen on port {} within {}s: {}",
                    self.port,
                    limit.as_secs(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        format!("log {}: {tail}", self.log.display())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // By process id: this server and nothing else. A scratch server has nothing to flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on now (the OS picks it; the server binds it right after).
fn free_port() -> CliResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    let port = listener.local_addr().context("finding a free port")?.port();
    Ok(port)
}

/// Whether `nats-server` can be started (on the PATH and runs `--version`).
#[cfg(test)]
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
