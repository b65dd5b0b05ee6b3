//! The relay's one error type (each room has its own: `trackway_live::Error`, `trackway_database::DbError`
//! and `PoolBuildError`, `trackway_runtime::Ended`; this one says which part failed).

use trackway_runtime::Ended;

/// Why the relay could not start or had to stop. Failures of PostgreSQL or Redis while running are not
/// errors of this kind: the relay retries them with backoff and carries on (see `trackway_runtime::backoff`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a bad value; the message names the setting.
    #[error("{0}")]
    Config(String),
    /// The command line asks for help or the version, or does not parse (an unknown flag, a missing value):
    /// clap's own message, printed as clap prints it.
    #[error("{0}")]
    Usage(clap::Error),
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
        source: trackway_redis::RedisError,
    },
    /// The database pool could not be built (bad pool settings; not an unreachable server).
    #[error(transparent)]
    Pool(#[from] trackway_database::PoolBuildError),
    /// The live listener could not be bound.
    #[error("live endpoint on {addr}: {source}")]
    LiveBind {
        /// The address it tried.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The live side could not start, or failed while serving.
    #[error(transparent)]
    Live(trackway_live::Error),
    /// A task of the relay was aborted.
    #[error("task failed: {0}")]
    Task(tokio::task::JoinError),
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

impl From<Ended> for Error {
    fn from(ended: Ended) -> Error {
        match ended {
            Ended::Early { task, why } => Error::Stopped { task, why },
            Ended::Aborted(e) => Error::Task(e),
        }
    }
}

impl From<trackway_live::Error> for Error {
    /// A live task that ended early is the relay's [`Error::Stopped`], named by the live task.
    fn from(error: trackway_live::Error) -> Error {
        match error {
            trackway_live::Error::Ended(ended) => ended.into(),
            other => Error::Live(other),
        }
    }
}
