//! Private PostgreSQL and Redis servers for tests that stop, crash and restart them without disturbing
//! other tests: a Redis with an append-only file, and a PostgreSQL 15 cluster from the system binaries (so
//! the installed extension is available in it).

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::relay::free_port_addr;

/// A private Redis that a test may kill and restart; data survives restarts (AOF, fsync always).
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    dir: PathBuf,
    /// Extra `redis-server` arguments.
    extra: Vec<String>,
    /// The running server.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a new, empty server.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a new, empty server with extra `redis-server` arguments, e.g.
    /// `["--client-output-buffer-limit", "normal 1mb 1mb 0"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port_addr().port();
        let dir = std::env::temp_dir().join(format!("trackway-redis-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("redis dir");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer { port, dir, extra, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        wait_for(|| redis::Client::open(self.url()).and_then(|c| c.get_connection()).is_ok(), "redis-server to start");
    }

    /// SIGKILL: a crash; what was acknowledged to clients is on disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private PostgreSQL 15 cluster (same binaries, so the installed extension is available) that a test may
/// stop and start without disturbing other tests.
pub struct PgCluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory.
    dir: PathBuf,
    /// Extra server settings (`-c name=value …`).
    settings: String,
}

/// PostgreSQL 15 binaries (Debian layout).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl PgCluster {
    /// Creates and starts a new cluster.
    pub fn start() -> PgCluster {
        PgCluster::start_with("")
    }

    /// Creates and starts a new cluster with extra server settings, e.g.
    /// `-c shared_preload_libraries=timescaledb`.
    pub fn start_with(settings: &str) -> PgCluster {
        let port = free_port_addr().port();
        let dir = std::env::temp_dir().join(format!("trackway-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.to_string_lossy().into_owned();
        as_postgres(
            &format!("{PG_BIN}/initdb"),
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        );
        let cluster = PgCluster { port, dir, settings: settings.to_owned() };
        cluster.restart();
        cluster
    }

    /// Creates and starts a hot standby of `primary` (streaming replication from a base backup).
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let port = free_port_addr().port();
        let dir = std::env::temp_dir().join(format!("trackway-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.to_string_lossy().into_owned();
        let primary_port = primary.port.to_string();
        as_postgres(
            &format!("{PG_BIN}/pg_basebackup"),
            &["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres", "-D", &data, "-R", "-X", "stream", "-cfast"],
        );
        let cluster = PgCluster { port, dir, settings: primary.settings.clone() };
        cluster.restart();
        cluster
    }

    /// libpq key=value form without dbname.
    pub fn server(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn restart(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        let log = format!("{data}.log");
        let options = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off {}", self.port, self.settings);
        as_postgres(&format!("{PG_BIN}/pg_ctl"), &["-D", &data, "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        as_postgres(&format!("{PG_BIN}/pg_ctl"), &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.to_string_lossy().into_owned();
        let _ = run_as_postgres(&format!("{PG_BIN}/pg_ctl"), &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a PostgreSQL tool as `postgres` when we are root (initdb refuses root); panics on failure.
fn as_postgres(program: &str, args: &[&str]) {
    let status = run_as_postgres(program, args).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn run_as_postgres(program: &str, args: &[&str]) -> std::io::Result<ExitStatus> {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null()).status()
}

/// Polls `ready` every 50 ms for up to 20 s.
fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
