//! Helpers for the relay tests: the relay in this process (port 0 listener passed in) or as a child process
//! that a test may SIGKILL, and inspection of streams, groups and the admin endpoints.
//!
//! Tests that do not restart servers use the local Redis (`TRACKWAY_TEST_REDIS`, default
//! `redis://127.0.0.1:6379`) with stream names of their own.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use redis::{aio::MultiplexedConnection, AsyncCommands};
use tokio::{net::TcpListener, task::JoinHandle};
use trackway_relay::{config::Settings, Error, Shutdown};

/// URL of the shared local Redis.
pub fn redis_url() -> String {
    std::env::var("TRACKWAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Command-line flags for a relay on database `db` of the test server and stream `stream`, then `extra`.
pub fn relay_flags(db: &str, stream: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--database-url".into(),
        format!("{} dbname={db}", crate::server()),
        "--redis-url".into(),
        redis_url(),
        "--stream".into(),
        stream.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A name no other test run uses (stream names on the shared Redis): `trackway-test:<name>:<pid>:<nanos>`.
/// The first call of a test process removes the keys that test processes which are gone left behind.
pub fn unique(name: &str) -> String {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(remove_keys_of_finished_runs);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("trackway-test:{name}:{}:{nanos}", std::process::id())
}

/// Unlinks every `trackway-test:*` key (streams, dead letters, attempt counters) of a test process that no
/// longer runs: tests leave their streams behind (a failed one for inspection), and the shared Redis keeps
/// no data on disk but would otherwise grow with every run (about 50 MB a run, mostly the crash tests').
/// Keys of running processes, this one's and a concurrent run's, are left alone.
fn remove_keys_of_finished_runs() {
    let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) else {
        return; // the test that needs Redis says so itself
    };
    let keys: Vec<String> = match redis::Commands::scan_match::<_, String>(&mut conn, "trackway-test:*") {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(_) => return,
    };
    let gone: Vec<&String> = keys
        .iter()
        .filter(|key| {
            key.split(':')
                .nth(2)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for chunk in gone.chunks(500) {
        let _: redis::RedisResult<i64> = redis::cmd("UNLINK").arg(chunk).query(&mut conn);
    }
}

/// A connection to the Redis at `url`.
pub async fn redis(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Adds one entry per payload (field `payload`), pipelined; returns the ids in order.
pub async fn xadd_payloads(conn: &mut MultiplexedConnection, stream: &str, payloads: &[String]) -> Vec<String> {
    trackway_testkit::xadd_payloads(conn, stream, payloads).await.expect("XADD")
}

/// Adds one entry with the given fields; returns its id.
pub async fn xadd_fields(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (f, v) in fields {
        cmd.arg(*f).arg(*v);
    }
    cmd.query_async(conn).await.expect("XADD")
}

/// The group's pending count and lag, `None` while the group does not exist.
pub async fn group_state(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> Option<(i64, Option<i64>)> {
    let groups = trackway_testkit::group_counters(conn, stream).await.ok()?;
    let g = groups.into_iter().find(|g| g.name == group)?;
    Some((g.pending.unwrap_or(-1), g.lag))
}

/// Waits until the group has read everything and acknowledged everything.
pub async fn wait_drained(conn: &mut impl redis::aio::ConnectionLike, stream: &str, group: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let state = group_state(conn, stream, group).await;
        if state == Some((0, Some(0))) {
            return;
        }
        assert!(Instant::now() < deadline, "stream {stream} not drained after {timeout:?}: (pending, lag) = {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Entries per XRANGE page of [`read_all`]: one reply stays small however long the stream is.
pub const PAGE: usize = 1000;

/// Every entry of a stream as `(id, fields)`, read in pages of [`PAGE`] entries (each page starts after the
/// last id of the previous one), so a long stream never needs one huge reply within a client timeout.
pub async fn read_all(
    conn: &mut (impl redis::aio::ConnectionLike + Send + Sync),
    stream: &str,
) -> Vec<(String, HashMap<String, String>)> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let reply: redis::streams::StreamRangeReply =
            conn.xrange_count(stream, &start, "+", PAGE).await.unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"));
        let page = reply.ids.len();
        for e in reply.ids {
            let fields = e
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref::<String>(v).unwrap_or_default()))
                .collect();
            start = format!("({}", e.id);
            out.push((e.id, fields));
        }
        if page < PAGE {
            return out;
        }
    }
}

/// A relay running inside the test process, its admin server on a port-0 listener.
pub struct InProcess {
    /// Where `/metrics`, `/healthz`, `/readyz` answer.
    pub admin: SocketAddr,
    /// Cancels the relay.
    shutdown: Shutdown,
    /// The relay's `run`.
    task: JoinHandle<Result<(), Error>>,
}

impl InProcess {
    /// Starts a relay configured by command-line flags.
    pub async fn start(args: &[&str]) -> InProcess {
        let mut argv = vec!["trackway-relay"];
        argv.extend_from_slice(args);
        // Ingest tests run many relays at once: none of them serves the live endpoint.
        if !args.contains(&"--live-addr") {
            argv.extend(["--live-addr", "off"]);
        }
        let config = Settings::load(argv).expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let task = tokio::spawn(trackway_relay::run(
            config,
            trackway_relay::Listeners { admin: listener, live: None },
            shutdown.clone(),
        ));
        InProcess { admin, shutdown, task }
    }

    /// What `run` returned, if it returns within `within` without being asked to stop.
    pub async fn finished(self, within: Duration) -> Option<Result<(), Error>> {
        let ended = tokio::time::timeout(within, self.task).await.ok().map(|joined| joined.expect("run's task"));
        self.shutdown.cancel();
        ended
    }

    /// Whether `run` is still going.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Asks it to stop and waits for `run` to return.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30 s")
            .expect("relay task")
    }
}

/// The relay binary as a child process.
pub struct Process {
    /// The running relay.
    child: Child,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl Process {
    /// Starts the relay binary (`env!("CARGO_BIN_EXE_relay-under-test")` in a test) with flags; its log
    /// goes to `/tmp/<log_name>.log`.
    pub fn spawn(binary: &str, args: &[&str], log_name: &str) -> Process {
        Process::spawn_with_env(binary, args, &[], log_name)
    }

    /// [`Process::spawn`] with extra environment variables (for example `FAILPOINTS`).
    pub fn spawn_with_env(binary: &str, args: &[&str], env: &[(&str, &str)], log_name: &str) -> Process {
        let admin = free_port_addr();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("/tmp/{log_name}.log"))
            .expect("log file");
        let no_live: &[&str] = if args.contains(&"--live-addr") { &[] } else { &["--live-addr", "off"] };
        let child = Command::new(binary)
            .args(args)
            .args(no_live)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn relay");
        Process { child, admin }
    }

    /// Waits up to 20 s until `/healthz` answers (the relay has started and handles signals).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{}/healthz", self.admin);
        while !reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "relay at {} never became healthy", self.admin);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to 30 s for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "relay did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback address whose port was free a moment ago, for a server a test starts as another process (one
/// that cannot be handed a bound listener: PostgreSQL, Redis, Directus, the relay under SIGKILL).
///
/// The port is chosen outside the kernel's range of local ports for outgoing connections: a port from that
/// range that was free when checked was sometimes the local end of some client's connection by the time the
/// server bound it (PostgreSQL: "Address already in use"), once the suites ran side by side. Random, so that
/// test processes running at the same time rarely pick the same one.
pub fn free_port_addr() -> SocketAddr {
    let (low, high) = ephemeral_ports();
    // Below the range if there is room, else above it; the kernel's own choice only if neither.
    let candidates = if low > 12_000 {
        10_000..low
    } else if high < 63_000 {
        high + 1..u16::MAX
    } else {
        0..1
    };
    loop {
        let port = if candidates.start == 0 { 0 } else { fastrand::u16(candidates.clone()) };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("addr");
        }
    }
}

/// The kernel's range of local ports for outgoing connections (`net.ipv4.ip_local_port_range`).
fn ephemeral_ports() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = text.split_whitespace().filter_map(|n| n.parse::<u16>().ok());
    match (bounds.next(), bounds.next()) {
        (Some(low), Some(high)) => (low, high),
        _ => (32_768, 60_999),
    }
}

/// `GET http://addr/path` → (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// `GET http://addr/path` → (status, body), `None` while nothing answers there.
pub async fn http_get_opt(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.unwrap_or_default()))
}

/// The value of one sample (`name{labels} value`) in `/metrics` text. Panics when the sample is absent, so a
/// check of a metric that was removed or renamed fails instead of reading 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    metric_opt(text, sample)
        .unwrap_or_else(|| panic!("metric sample {sample} is not in /metrics (missing or renamed?):\n{text}"))
}

/// [`metric`], `None` when the sample is absent (for waits on a labelled sample that appears with its first
/// event; such a wait still fails at its deadline when the sample never comes).
pub fn metric_opt(text: &str, sample: &str) -> Option<f64> {
    trackway_testkit::prometheus::sample(text, sample).unwrap_or_else(|e| panic!("{e}"))
}
