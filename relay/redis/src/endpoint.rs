//! Where the relay's Redis is: one server, or a Redis Cluster found from seed nodes.

use redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    ConnectionInfo, IntoConnectionInfo, RedisError, Value,
};

/// One Redis server, or a Redis Cluster. `Debug` shows no password (redis redacts its own).
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A single server (or a proxy in front of several).
    Node(ConnectionInfo),
    /// A Redis Cluster: any of these nodes tells the client the rest; commands go to the node serving
    /// their key's slot, following `MOVED` and `ASK`, and the topology is read again after a failover or a
    /// slot migration.
    Cluster(Vec<ConnectionInfo>),
}

impl Endpoint {
    /// `url` (`REDIS_URL`) as one server, or with `cluster` as a comma-separated list of cluster nodes.
    pub fn parse(url: &str, cluster: bool) -> Result<Endpoint, RedisError> {
        if !cluster {
            return url.into_connection_info().map(Endpoint::Node);
        }
        let seeds = url.split(',').map(str::trim).filter(|s| !s.is_empty());
        let seeds: Vec<ConnectionInfo> =
            seeds.map(IntoConnectionInfo::into_connection_info).collect::<Result<_, _>>()?;
        if seeds.is_empty() {
            return Err(RedisError::from(std::io::Error::other("no cluster node given")));
        }
        Ok(Endpoint::Cluster(seeds))
    }

    /// A connection with the client's default settings (the relay's links set their own timeouts): for
    /// producers and tools, such as the simulator, that write where the relay reads.
    pub async fn connect(&self) -> Result<Connection, RedisError> {
        Ok(match self {
            Endpoint::Node(info) => {
                Connection::Node(redis::Client::open(info.clone())?.get_multiplexed_async_connection().await?)
            }
            Endpoint::Cluster(seeds) => {
                Connection::Cluster(ClusterClient::new(seeds.clone())?.get_async_connection().await?)
            }
        })
    }

    /// The addresses, for logs.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Node(info) => info.addr().to_string(),
            Endpoint::Cluster(seeds) => {
                let nodes: Vec<String> = seeds.iter().map(|s| s.addr().to_string()).collect();
                format!("cluster via {}", nodes.join(", "))
            }
        }
    }
}

/// An open connection to one server or to a cluster (commands go to the node of their key's slot). A clone
/// shares the same connections (both kinds are multiplexed): commands of several tasks travel together.
#[derive(Clone)]
pub enum Connection {
    /// To one server.
    Node(MultiplexedConnection),
    /// To every node of a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Connection::Node(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_or_a_list_of_cluster_nodes() {
        assert!(matches!(Endpoint::parse("redis://127.0.0.1:6379", false), Ok(Endpoint::Node(_))));
        let cluster = Endpoint::parse("redis://10.0.0.1:7000, redis://10.0.0.2:7000,", true).expect("two seeds");
        assert!(matches!(&cluster, Endpoint::Cluster(seeds) if seeds.len() == 2), "{cluster:?}");
        assert_eq!(cluster.describe(), "cluster via 10.0.0.1:7000, 10.0.0.2:7000");
        assert!(Endpoint::parse("", true).is_err());
        assert!(Endpoint::parse("redis://a:1,http://b", true).is_err());
        let secret = Endpoint::parse("redis://:sekrit@10.0.0.1:7000", true).expect("seed with a password");
        assert!(!format!("{secret:?}").contains("sekrit"), "{secret:?}");
    }
}
