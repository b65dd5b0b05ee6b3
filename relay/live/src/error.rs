//! The live side's one error type: why it could not start, or had to stop.

use trackway_database::PoolBuildError;
use trackway_runtime::Ended;

/// Why the live side could not start or stopped. Database failures while it runs are not errors of this
/// kind: the feed, the LISTEN connection and the sessions retry them, and `/readyz` says so meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The live listener failed while serving.
    #[error("live endpoint on {addr}: {source}")]
    Serve {
        /// The address it served on.
        addr: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The live side cannot start with its settings (the message names the setting).
    #[error("live endpoint: {0}")]
    Config(String),
    /// Its database pool could not be built.
    #[error(transparent)]
    Pool(#[from] PoolBuildError),
    /// Its feed or LISTEN task ended before shutdown.
    #[error(transparent)]
    Ended(#[from] Ended),
}
