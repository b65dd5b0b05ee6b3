//! A Redis connection for one task: opened lazily, dropped after a connection-level error and opened again
//! by the next command.

use std::time::Duration;

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, RedisError, Value};

/// Longest time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a reply on top of a blocking read's own timeout.
const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// A Redis connection for one task that reconnects on demand after a failure.
pub struct Link {
    /// Where to connect.
    client: Client,
    /// Connection settings (reply timeout covers the longest blocking read).
    config: AsyncConnectionConfig,
    /// The live connection; dropped after a connection-level error so the next call reconnects.
    connection: Option<MultiplexedConnection>,
}

impl Link {
    /// A link whose replies may take up to `longest_block` plus a margin.
    pub fn new(info: redis::ConnectionInfo, longest_block: Duration) -> Result<Link, RedisError> {
        Ok(Link {
            client: Client::open(info)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(longest_block + REPLY_MARGIN)),
            connection: None,
        })
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

    async fn connection(&mut self) -> Result<&mut MultiplexedConnection, RedisError> {
        if self.connection.is_none() {
            let c = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
            self.connection = Some(c);
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

    /// PING.
    pub async fn ping(&mut self) -> Result<(), RedisError> {
        self.query(&redis::cmd("PING")).await.map(drop)
    }
}
