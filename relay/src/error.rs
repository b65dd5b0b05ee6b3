//! The relay's one error type.

/// Why the relay could not start or had to stop. Failures of PostgreSQL or Redis while running are not
/// errors of this kind: the relay retries them with backoff and carries on (see `backoff`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a bad value; the message names the setting.
    #[error("{0}")]
    Config(String),
    /// The admin listener could not be bound or served.
    #[error("admin server on {addr}: {source}")]
    Admin {
        /// The address it tried.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// `REDIS_URL` names no usable Redis (the URL does not parse; not an unreachable server).
    #[error("REDIS_URL: {source}")]
    RedisUrl {
        /// What the client said.
        source: redis::RedisError,
    },
    /// The database pool could not be built (bad pool settings; not an unreachable server).
    #[error("database pool: {source}")]
    Pool {
        /// What the pool builder said.
        source: deadpool_postgres::BuildError,
    },
    /// The live listener could not be bound or served.
    #[error("live endpoint on {addr}: {source}")]
    Live {
        /// The address it tried, or served on.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The live side cannot start with its settings (the message names the setting).
    #[error("live endpoint: {0}")]
    LiveConfig(String),
    /// A task of the relay panicked or was aborted.
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A task that runs until shutdown ended before it (a panic, or a server that stopped): the relay
    /// stops rather than run on without it.
    #[error("the {task} stopped unexpectedly: {why}")]
    Stopped {
        /// Which task: `consumer`, `live side`, `admin server`, `sampler`, `live feed`, `LISTEN connection`.
        task: &'static str,
        /// How it ended.
        why: String,
    },
}
