//! The relay under test: the release binary as a child process with its own ports, stream and secret.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running relay.
pub struct Relay {
    child: Child,
    pub pid: u32,
    pub live_url: String,
    admin: SocketAddr,
}

/// What the relay is started with.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub database_url: &'a str,
    pub redis_url: &'a str,
    pub stream: &'a str,
    pub jwt_secret: &'a str,
    /// Extra command-line flags (`--relay-arg`).
    pub extra: &'a [String],
    /// Whether the live side runs (off: `--live-addr off`, the ingest side alone).
    pub live: bool,
}

impl Relay {
    /// Starts the relay and waits until `/readyz` answers 200 and the live port (if any) accepts connections.
    pub async fn start(launch: &Launch<'_>) -> Result<Relay> {
        let live = free_port()?;
        let admin = free_port()?;
        let mut command = Command::new(launch.binary);
        command
            .env("DATABASE_URL", launch.database_url)
            .env("REDIS_URL", launch.redis_url)
            .env("TRACKWAY_STREAM", launch.stream)
            .env("RUST_LOG", "warn")
            .env("TRACKWAY_LOG_FORMAT", "text")
            .args(["--admin-addr", &admin.to_string()]);
        if launch.live {
            command
                .args(["--auth", "jwt", "--jwt-secret", launch.jwt_secret])
                .args(["--live-addr", &live.to_string()])
                // Every benchmark client signs in with the same token: one user standing for thousands.
                .args(["--live-max-connections-per-user", "1000000"]);
        } else {
            command.args(["--live-addr", "off"]);
        }
        let child = command
            .args(launch.extra)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", launch.binary.display()))?;
        let pid = child.id();
        let mut relay = Relay { child, pid, live_url: format!("ws://{live}/live"), admin };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = relay.child.try_wait()? {
                bail!("the relay exited at start: {status}");
            }
            let live_up = !launch.live || tokio::net::TcpStream::connect(live).await.is_ok();
            if live_up && relay.ready().await {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!("the relay did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `/readyz` answers 200.
    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.admin).await else { return false };
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.admin);
        if s.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut answer)).await;
        answer.starts_with(b"HTTP/1.1 200")
    }

    /// The relay's `/metrics` text (empty when it cannot be read).
    pub async fn metrics(&self) -> String {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.admin).await else { return String::new() };
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.admin);
        if s.write_all(request.as_bytes()).await.is_err() {
            return String::new();
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Stops the relay with SIGTERM and waits for it (SIGKILL after 15 s).
    pub async fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    eprintln!("note: the relay exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("the relay did not stop within 15 s of SIGTERM (killed)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A relay left behind by an error is killed (stop() already reaped a stopped one).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
