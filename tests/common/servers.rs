//! Private PostgreSQL and Redis servers for tests that stop, crash and restart them without disturbing
//! other tests: a Redis with an append-only file, and a PostgreSQL cluster from the binaries the extension
//! is installed for (so it is available in it).
//!
//! Those binaries are PostgreSQL 15's (`/usr/lib/postgresql/15/bin`) unless `TRACKWAY_TEST_PG_BIN` names
//! others; with `TRACKWAY_TEST_PG_ROOT` set they belong to the system under that directory (the Debian 13
//! root of `scripts/pg17`, whose binaries cannot run on this machine's own libraries) and run chrooted into
//! it, their data directories in its `/tmp`.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{relay::free_port_addr, Storage};

/// Server settings that load TimescaleDB (it must be preloaded to be created in a database).
pub const TIMESCALEDB_PRELOAD: &str = "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off";

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

/// A private PostgreSQL cluster (same binaries, so the installed extension is available) that a test may
/// stop and start without disturbing other tests.
pub struct PgCluster {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its data directory, as the server sees it (inside `TRACKWAY_TEST_PG_ROOT` when that is set).
    dir: PathBuf,
    /// Extra server settings (`-c name=value …`).
    settings: String,
}

/// Directory of the PostgreSQL server binaries: `TRACKWAY_TEST_PG_BIN`, by default PostgreSQL 15's (Debian).
pub fn pg_bin() -> String {
    std::env::var("TRACKWAY_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned())
}

/// The system root the binaries run chrooted into (`TRACKWAY_TEST_PG_ROOT`), if any.
pub fn pg_root() -> Option<PathBuf> {
    std::env::var_os("TRACKWAY_TEST_PG_ROOT").filter(|r| !r.is_empty()).map(PathBuf::from)
}

/// `path` as seen by the binaries, here on this machine (under the root when there is one).
pub fn pg_host_path(path: &std::path::Path) -> PathBuf {
    match pg_root() {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

/// A directory for temporary files that the binaries and this process both reach, as the binaries see it.
pub fn pg_temp_dir() -> PathBuf {
    if pg_root().is_some() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// Whether extension `name` is installed for the binaries (its control file in `pg_config --sharedir`).
pub fn pg_extension_installed(name: &str) -> bool {
    let output = pg_command(&format!("{}/pg_config", pg_bin()), false)
        .arg("--sharedir")
        .output()
        .unwrap_or_else(|e| panic!("pg_config: {e}"));
    assert!(output.status.success(), "pg_config --sharedir: {}", output.status);
    let sharedir = String::from_utf8(output.stdout).expect("pg_config output");
    pg_host_path(&PathBuf::from(sharedir.trim()).join(format!("extension/{name}.control"))).exists()
}

/// A command running PostgreSQL client `program` (pg_dump, pg_restore) for the tested server: from `PATH`,
/// or from `TRACKWAY_TEST_PG_BIN` (in [`pg_root`]) when that is set.
pub fn pg_client(program: &str) -> Command {
    if std::env::var_os("TRACKWAY_TEST_PG_BIN").is_some() {
        pg_command(&format!("{}/{program}", pg_bin()), false)
    } else {
        Command::new(program)
    }
}

/// A command running PostgreSQL's `program` (chrooted into [`pg_root`] when set); as `postgres` when
/// `as_postgres` and this process is root (initdb refuses root).
pub fn pg_command(program: &str, as_postgres: bool) -> Command {
    let root_user = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let mut argv: Vec<std::ffi::OsString> = Vec::new();
    if let Some(root) = pg_root() {
        argv.extend(["chroot".into(), root.into_os_string()]);
    }
    if as_postgres && root_user {
        argv.extend(["runuser", "-u", "postgres", "--"].map(Into::into));
    }
    argv.push(program.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

impl PgCluster {
    /// Creates and starts a new cluster.
    pub fn start() -> PgCluster {
        PgCluster::start_with("")
    }

    /// Creates and starts a new cluster with extra server settings, e.g. `-c fsync=on`. On the hypertable
    /// route ([`crate::storage`]) every cluster preloads TimescaleDB, so its fresh databases are made as the
    /// run's other ones.
    pub fn start_with(settings: &str) -> PgCluster {
        let settings = match crate::storage() {
            Storage::Hypertable => format!("{TIMESCALEDB_PRELOAD} {settings}"),
            Storage::Plain => settings.to_owned(),
        };
        let port = free_port_addr().port();
        let dir = pg_temp_dir().join(format!("trackway-pg-{port}"));
        let _ = std::fs::remove_dir_all(pg_host_path(&dir));
        let data = dir.to_string_lossy().into_owned();
        as_postgres(
            &format!("{}/initdb", pg_bin()),
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        );
        PgCluster { port, dir, settings }.first_start()
    }

    /// Creates and starts a hot standby of `primary` (streaming replication from a base backup).
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let port = free_port_addr().port();
        let dir = pg_temp_dir().join(format!("trackway-pg-{port}"));
        let _ = std::fs::remove_dir_all(pg_host_path(&dir));
        let data = dir.to_string_lossy().into_owned();
        let primary_port = primary.port.to_string();
        as_postgres(
            &format!("{}/pg_basebackup", pg_bin()),
            &["-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres", "-D", &data, "-R", "-X", "stream", "-cfast"],
        );
        PgCluster { port, dir, settings: primary.settings.clone() }.first_start()
    }

    /// Starts a new cluster; should its port have been taken since it was chosen (by a test process running
    /// beside this one), on another free port.
    fn first_start(mut self) -> PgCluster {
        for attempt in 1.. {
            match self.try_start() {
                Ok(()) => break,
                Err(log) if attempt < 3 && log.contains("could not bind") => self.port = free_port_addr().port(),
                Err(log) => panic!("PostgreSQL did not start on port {}; its log ends:\n{log}", self.port),
            }
        }
        self
    }

    /// libpq key=value form without dbname.
    pub fn server(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// Starts the server (again, on the same port) and waits until it accepts connections.
    pub fn restart(&self) {
        if let Err(log) = self.try_start() {
            panic!("PostgreSQL did not start again on port {}; its log ends:\n{log}", self.port);
        }
    }

    /// `pg_ctl start -w`; on failure the last lines of the server's log.
    fn try_start(&self) -> Result<(), String> {
        let data = self.dir.to_string_lossy().into_owned();
        let log = format!("{data}.log");
        let options = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off {}", self.port, self.settings);
        let status =
            run_as_postgres(&format!("{}/pg_ctl", pg_bin()), &["-D", &data, "-l", &log, "-o", &options, "-w", "start"])
                .unwrap_or_else(|e| panic!("pg_ctl: {e}"));
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(pg_host_path(std::path::Path::new(&log))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        Err(lines[lines.len().saturating_sub(10)..].join("\n"))
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        as_postgres(&format!("{}/pg_ctl", pg_bin()), &["-D", &data, "-w", "promote"]);
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let data = self.dir.to_string_lossy().into_owned();
        as_postgres(&format!("{}/pg_ctl", pg_bin()), &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.to_string_lossy().into_owned();
        let _ = run_as_postgres(&format!("{}/pg_ctl", pg_bin()), &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(pg_host_path(&self.dir));
    }
}

/// Runs a PostgreSQL tool as `postgres` when we are root (initdb refuses root); panics on failure.
fn as_postgres(program: &str, args: &[&str]) {
    let status = run_as_postgres(program, args).unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn run_as_postgres(program: &str, args: &[&str]) -> std::io::Result<ExitStatus> {
    pg_command(program, true).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status()
}

/// Polls `ready` every 50 ms for up to 20 s.
fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
