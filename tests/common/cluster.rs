//! A private Redis Cluster from Debian's `redis-server`: three primaries and three replicas on loopback
//! ports, made with `redis-cli --cluster create`, each test its own (so a test may kill a primary or move a
//! slot without disturbing others). Nodes use a short `cluster-node-timeout` (2 s): a replica takes over
//! about 4 s after its primary dies.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Primaries, each with one replica.
const PRIMARIES: usize = 3;
/// Milliseconds a node may be unreachable before the others count it failed.
const NODE_TIMEOUT_MS: &str = "2000";

/// One `redis-server` of the cluster.
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
    /// has synchronised with its primary.
    pub fn start() -> RedisCluster {
        let ports = free_port_pairs(2 * PRIMARIES);
        let dir = std::env::temp_dir().join(format!("trackway-cluster-{}", ports[0]));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = RedisCluster { nodes: Vec::new(), dir };
        for port in ports {
            let child = cluster.spawn(port);
            cluster.nodes.push(Node { port, child: Some(child) });
        }
        for node in &cluster.nodes {
            wait_until(&format!("node {} to answer", node.port), || ping(node.port));
        }
        let addresses: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli --cluster create");
        assert!(created.status.success(), "cluster create: {}", String::from_utf8_lossy(&created.stderr));
        cluster.wait_until_healthy();
        cluster
    }

    /// `redis://127.0.0.1:<port>` of every node (any of them is a seed).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// Waits until every node says `cluster_state:ok` and every replica's link to its primary is up.
    pub fn wait_until_healthy(&self) {
        wait_until("the cluster to be healthy", || {
            self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let state = cli(n.port, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"));
                let replication = cli(n.port, &["INFO", "replication"]).unwrap_or_default();
                let synced = !replication.contains("role:slave") || replication.contains("master_link_status:up");
                state && synced
            })
        });
    }

    /// The port of the primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.nodes.iter().find(|n| n.child.is_some()).map(|n| n.port).expect("a running node");
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key]).and_then(|s| s.trim().parse().ok()).expect("slot");
        let nodes = cli(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
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
                let address = fields[1].split('@').next().unwrap_or_default();
                return address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
            }
        }
        panic!("no primary serves slot {slot}:\n{nodes}");
    }

    /// SIGKILL of the node on `port` (a crash); its replica takes over after the node timeout.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection through which commands reach the node serving their key's slot.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        let client = redis::cluster::ClusterClient::builder(self.urls())
            .retries(10)
            .min_retry_wait(100)
            .max_retry_wait(1_000)
            .build()
            .expect("cluster client");
        client.get_async_connection().await.expect("cluster connection")
    }

    /// The ports of the primaries serving slots.
    pub fn primaries(&self) -> Vec<u16> {
        let port = self.nodes.iter().find(|n| n.child.is_some()).map(|n| n.port).expect("a running node");
        let nodes = cli(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        let mut ports: Vec<u16> = nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .filter_map(|f| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Moves the slot of `key` (with every key in it) from its primary to the primary on `to`, as
    /// `redis-cli --cluster reshard` does for a range: the destination imports, the source migrates,
    /// `MIGRATE` moves the keys in small steps (clients meanwhile get `ASK` for moved keys, `TRYAGAIN`
    /// for commands over keys on both sides), then every primary learns the new owner.
    pub fn migrate_slot_of(&self, key: &str, to: u16) {
        let from = self.primary_of(key);
        assert_ne!(from, to, "{key} is on {to} already");
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key]).expect("slot").trim().to_owned();
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).expect("MYID").trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let ok = |reply: Option<String>, what: &str| {
            let reply = reply.unwrap_or_default();
            assert!(reply.trim() == "OK" || reply.trim() == "NOKEY", "{what}: {reply}");
        };
        ok(cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]), "IMPORTING");
        ok(cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]), "MIGRATING");
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "10"]).expect("GETKEYSINSLOT");
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(&keys);
            ok(cli(from, &migrate), "MIGRATE");
        }
        for port in self.primaries() {
            ok(cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "SETSLOT NODE");
        }
        wait_until(&format!("slot {slot} served by {to}"), || self.primary_of(key) == to);
    }

    /// Starts `redis-server` for `port` in cluster mode, with a fresh directory.
    fn spawn(&self, port: u16) -> Child {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).expect("node dir");
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS, "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)")
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

/// `redis-cli -p <port> <args>`'s output, or `None` when the node does not answer.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let output =
        Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the node on `port` answers PING.
fn ping(port: u16) -> bool {
    cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG")
}

/// `count` ports whose bus ports (plus 10,000) are free too, from 20,000–29,999 (below the kernel's
/// ephemeral range, so outgoing connections do not take them meanwhile).
fn free_port_pairs(count: usize) -> Vec<u16> {
    let start = 20_000 + fastrand::u16(..9_000);
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    let ports: Vec<u16> =
        (start..30_000).chain(20_000..start).filter(|&p| free(p) && free(p + 10_000)).take(count).collect();
    assert_eq!(ports.len(), count, "free port pairs in 20000–29999");
    ports
}

/// Polls `ready` every 100 ms for up to 30 s.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
