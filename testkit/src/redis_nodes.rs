//! Private Redis servers from Debian's `redis-server`, on loopback ports, nothing kept on disk:
//!
//! - [`RedisCluster`]: three primaries and three replicas made with `redis-cli --cluster create`, each
//!   test or benchmark its own (so a test may kill a primary or move a slot without disturbing others).
//!   Nodes use a short `cluster-node-timeout` (2 s): a replica takes over about 4 s after its primary dies.
//! - [`RedisNode`]: one server started the same way without cluster mode, so a benchmark compares the
//!   cluster with a single node of the same build and settings.
//!
//! Both are stopped (killed, files removed) when dropped. Each exposes its processes' ids, so a benchmark
//! can read their CPU time.

use std::{
    fmt,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Primaries, each with one replica.
const PRIMARIES: usize = 3;
/// Milliseconds a node may be unreachable before the others count it failed.
const NODE_TIMEOUT_MS: &str = "2000";

/// What went wrong starting or driving a private Redis (a command that failed, a state never reached).
#[derive(Debug)]
pub struct RedisNodeError(String);

impl fmt::Display for RedisNodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedisNodeError {}

/// Results of this module.
pub type Result<T> = std::result::Result<T, RedisNodeError>;

fn error(message: impl Into<String>) -> RedisNodeError {
    RedisNodeError(message.into())
}

/// One `redis-server` of a cluster.
struct Node {
    /// Its client port on 127.0.0.1 (its bus port is this plus 10,000).
    port: u16,
    /// The running server.
    child: Option<Child>,
}

/// A running cluster; stopped (every node killed, its files removed) when dropped.
pub struct RedisCluster {
    /// The nodes, in the order `redis-cli --cluster create` was given them.
    nodes: Vec<Node>,
    /// Node directories (one per port) below this.
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes and makes them a cluster; returns once every slot is served and every replica
    /// has synchronised with its primary. Blocks (run it with `spawn_blocking` from async code).
    pub fn start() -> Result<RedisCluster> {
        let ports = free_port_pairs(2 * PRIMARIES)?;
        let dir = std::env::temp_dir().join(format!("trackway-cluster-{}", ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for port in ports {
            let child = spawn(&cluster.dir.join(port.to_string()), port, true)?;
            cluster.nodes.push(Node { port, child: Some(child) });
        }
        for node in &cluster.nodes {
            wait_until(&format!("node {} to answer", node.port), || ping(node.port))?;
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| error(format!("redis-cli --cluster create: {e}")))?;
        if !created.status.success() {
            return Err(error(format!("cluster create: {}", String::from_utf8_lossy(&created.stderr))));
        }
        cluster.wait_until_healthy()?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node (any of them is a seed).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// The process ids of the nodes still running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// The process ids of the running primaries serving slots, and of the other running nodes (the
    /// replicas): what each role costs, apart.
    pub fn pids_by_role(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let primaries = self.primaries()?;
        let running = self.nodes.iter().filter_map(|n| Some((n.port, n.child.as_ref()?.id())));
        let (serving, others): (Vec<_>, Vec<_>) = running.partition(|(port, _)| primaries.contains(port));
        let pids = |nodes: Vec<(u16, u32)>| nodes.into_iter().map(|(_, pid)| pid).collect();
        Ok((pids(serving), pids(others)))
    }

    /// The ports of the nodes still running.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// Waits until every node says `cluster_state:ok` and every replica's link to its primary is up.
    pub fn wait_until_healthy(&self) -> Result<()> {
        wait_until("the cluster to be healthy", || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let state = cli(n.port, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"));
                let replication = cli(n.port, &["INFO", "replication"]).unwrap_or_default();
                let synced = !replication.contains("role:slave") || replication.contains("master_link_status:up");
                state && synced
            })
        })
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> Result<u16> {
        let port = self.any_port()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| error(format!("CLUSTER KEYSLOT {key}")))?;
        let nodes = cli(port, &["CLUSTER", "NODES"]).ok_or_else(|| error("CLUSTER NODES"))?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if serves {
                return node_port(fields[1]).ok_or_else(|| error(format!("no port in {line}")));
            }
        }
        Err(error(format!("no primary serves slot {slot}:\n{nodes}")))
    }

    /// SIGKILL of the node on `port` (a crash); its replica takes over after the node timeout.
    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.nodes.iter_mut().find(|n| n.port == port).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection through which commands reach the node serving their key's slot.
    pub async fn connection(&self) -> Result<redis::cluster_async::ClusterConnection> {
        let client = redis::cluster::ClusterClient::builder(self.urls())
            .retries(10)
            .min_retry_wait(100)
            .max_retry_wait(1_000)
            .build()
            .map_err(|e| error(format!("cluster client: {e}")))?;
        client.get_async_connection().await.map_err(|e| error(format!("cluster connection: {e}")))
    }

    /// The ports of the primaries serving slots.
    pub fn primaries(&self) -> Result<Vec<u16>> {
        let nodes = cli(self.any_port()?, &["CLUSTER", "NODES"]).ok_or_else(|| error("CLUSTER NODES"))?;
        let mut ports: Vec<u16> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .filter_map(|f| node_port(f[1]))
            .collect();
        ports.sort_unstable();
        Ok(ports)
    }

    /// Moves the slot of `key` (with every key in it) from its primary to the primary on `to`, as
    /// `redis-cli --cluster reshard` does for a range: the destination imports, the source migrates,
    /// `MIGRATE` moves the keys in small steps (clients meanwhile get `ASK` for moved keys, `TRYAGAIN`
    /// for commands over keys on both sides), then every primary learns the new owner.
    pub fn migrate_slot_of(&self, key: &str, to: u16) -> Result<()> {
        let from = self.primary_of(key)?;
        if from == to {
            return Err(error(format!("{key} is on {to} already")));
        }
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key]).ok_or_else(|| error("CLUSTER KEYSLOT"))?;
        let slot = slot.trim();
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).map(|s| s.trim().to_owned()).ok_or_else(|| error("MYID"));
        let (from_id, to_id) = (id(from)?, id(to)?);
        let ok = |reply: Option<String>, what: &str| {
            let reply = reply.unwrap_or_default();
            match reply.trim() {
                "OK" | "NOKEY" => Ok(()),
                other => Err(error(format!("{what}: {other}"))),
            }
        };
        ok(cli(to, &["CLUSTER", "SETSLOT", slot, "IMPORTING", &from_id]), "IMPORTING")?;
        ok(cli(from, &["CLUSTER", "SETSLOT", slot, "MIGRATING", &to_id]), "MIGRATING")?;
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", slot, "10"]).ok_or_else(|| error("GETKEYSINSLOT"))?;
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(&keys);
            ok(cli(from, &migrate), "MIGRATE")?;
        }
        for port in self.primaries()? {
            ok(cli(port, &["CLUSTER", "SETSLOT", slot, "NODE", &to_id]), "SETSLOT NODE")?;
        }
        wait_until(&format!("slot {slot} served by {to}"), || self.primary_of(key).is_ok_and(|p| p == to))
    }

    /// The port of some running node.
    fn any_port(&self) -> Result<u16> {
        self.nodes.iter().find(|n| n.child.is_some()).map(|n| n.port).ok_or_else(|| error("no node is running"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server, not in cluster mode, started like a cluster node (same build, same settings).
pub struct RedisNode {
    /// Its port on 127.0.0.1.
    port: u16,
    /// The running server.
    child: Child,
    /// Its directory.
    dir: PathBuf,
}

impl RedisNode {
    /// Starts a new, empty server and waits until it answers. Blocks.
    pub fn start() -> Result<RedisNode> {
        let port = free_port_pairs(1)?[0];
        let dir = std::env::temp_dir().join(format!("trackway-redis-node-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        let child = spawn(&dir, port, false)?;
        let node = RedisNode { port, child, dir };
        wait_until(&format!("node {port} to answer"), || ping(port))?;
        Ok(node)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `redis-server` on `port` in a fresh directory `dir`, in cluster mode or not, keeping nothing on
/// disk.
fn spawn(dir: &std::path::Path, port: u16, cluster: bool) -> Result<Child> {
    std::fs::create_dir_all(dir).map_err(|e| error(format!("{}: {e}", dir.display())))?;
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"]);
    if cluster {
        command.args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]);
        command.args(["--cluster-node-timeout", NODE_TIMEOUT_MS]);
    }
    command
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| error(format!("redis-server (Debian's redis-server package): {e}")))
}

/// `redis-cli -p <port> <args>`'s output, or `None` when the node does not answer.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output =
        Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The client port of a `CLUSTER NODES` address field (`ip:port@busport`).
fn node_port(address: &str) -> Option<u16> {
    address.split('@').next()?.rsplit(':').next()?.parse().ok()
}

/// Whether the node on `port` answers PING.
fn ping(port: u16) -> bool {
    cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG")
}

/// `count` ports whose bus ports (plus 10,000) are free too, from 20,000–29,999 (below the kernel's
/// ephemeral range, so outgoing connections do not take them meanwhile).
fn free_port_pairs(count: usize) -> Result<Vec<u16>> {
    let start = 20_000 + fastrand::u16(..9_000);
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    let ports: Vec<u16> =
        (start..30_000).chain(20_000..start).filter(|&p| free(p) && free(p + 10_000)).take(count).collect();
    if ports.len() != count {
        return Err(error(format!("only {} free port pairs in 20000–29999, {count} needed", ports.len())));
    }
    Ok(ports)
}

/// Polls `ready` every 100 ms for up to 30 s.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            return Err(error(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
