//! A Redis connection for one task: opened lazily, dropped after a connection-level error and opened again
//! by the next command. To one server, or to a Redis Cluster ([`Endpoint`]).
//!
//! Each link has connections of its own (a cluster link one per node): a blocking read on the reader's link
//! never delays another task's commands, also in a cluster, where redis-rs multiplexes every command to a
//! node over one connection.

use std::time::Duration;

use redis::{cluster::ClusterClient, AsyncConnectionConfig, Client, RedisError, Value};

use crate::{Connection, Endpoint};

/// Longest time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a reply on top of a blocking read's own timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(5);
/// A cluster command's retries after a redirection, a connection error or `TRYAGAIN`/`CLUSTERDOWN`, and
/// the waits between them (milliseconds, doubling): short, so that a failover is ridden out by the relay's
/// own backoff and outage reporting rather than hidden inside one call.
const CLUSTER_RETRIES: u32 = 3;
/// See [`CLUSTER_RETRIES`].
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (50, 1_000);

/// What a link connects with.
enum Target {
    /// One server.
    Node(Client, AsyncConnectionConfig),
    /// A cluster.
    Cluster(ClusterClient),
}

/// A Redis connection for one task that reconnects on demand after a failure.
pub struct Link {
    /// Where to connect, with the connection settings (the reply timeout covers the longest blocking read).
    target: Target,
    /// The live connection; dropped after a connection-level error so the next call reconnects.
    connection: Option<Connection>,
}

impl Link {
    /// A link whose replies may take up to `longest_block` plus a margin.
    pub fn new(endpoint: Endpoint, longest_block: Duration) -> Result<Link, RedisError> {
        let reply = longest_block + REPLY_MARGIN;
        let target = match endpoint {
            Endpoint::Node(info) => Target::Node(
                Client::open(info)?,
                AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(reply)),
            ),
            Endpoint::Cluster(seeds) => Target::Cluster(
                ClusterClient::builder(seeds)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(reply)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1)
                    .build()?,
            ),
        };
        Ok(Link { target, connection: None })
    }

    /// Runs `cmd`; forgets the connection after an error that is not a reply from the server.
    pub async fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let connection = self.connection().await?;
        let result = cmd.query_async(connection).await;
        self.forget_if_broken(result)
    }

    /// Runs a script invocation; same reconnect rule as [`Link::query`].
    pub(super) async fn invoke(&mut self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, RedisError> {
        let connection = self.connection().await?;
        let result = invocation.invoke_async(connection).await;
        self.forget_if_broken(result)
    }

    async fn connection(&mut self) -> Result<&mut Connection, RedisError> {
        if self.connection.is_none() {
            let connection = match &self.target {
                Target::Node(client, config) => {
                    Connection::Node(client.get_multiplexed_async_connection_with_config(config).await?)
                }
                Target::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
            };
            self.connection = Some(connection);
        }
        // Set just above when it was empty.
        self.connection.as_mut().ok_or_else(|| RedisError::from(std::io::Error::other("no connection")))
    }

    fn forget_if_broken<T>(&mut self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result {
            // A reply from the server leaves the connection usable; anything else may not.
            if !matches!(e.kind(), redis::ErrorKind::Server(_)) {
                self.connection = None;
            }
        }
        result
    }

    /// Drops the connection (the next call opens another): for a caller that gave up waiting for an answer
    /// on it, whose answer may still come, out of turn.
    pub fn forget(&mut self) {
        self.connection = None;
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// PING (in a cluster, of one node).
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        self.query(&redis::cmd("PING")).await.map(drop)
    }
}
