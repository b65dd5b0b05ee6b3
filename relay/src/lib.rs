//! `trackway-relay`: moves GPS positions from a Redis Stream into PostgreSQL through the `trackway`
//! extension, and serves health and metrics endpoints.
//!
//! - [`config`]: settings from environment variables and flags.
//! - [`consumer`]: the ingest loop (consumer group, ack after commit, dead letters, reclaiming).
//! - [`stream`]: the Redis commands and their replies.
//! - [`database`]: the PostgreSQL pool and the `trackway.ingest_batch` call.
//! - [`backoff`]: retry delays and outage logging.
//! - [`admin`], [`metrics`], [`sampler`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: log output.
//! - [`cli`]: what the binary does (`main` only calls it).

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod database;
pub mod error;
pub mod live;
pub mod metrics;
pub mod sampler;
pub mod stream;
pub mod telemetry;

use std::sync::Arc;

use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken as Shutdown;

use crate::{
    admin::{AdminState, Readiness},
    backoff::BackendState,
    consumer::Consumer,
    stream::{Group, Link},
};
pub use crate::{config::Config, error::Error, metrics::Metrics};

/// Runs the relay until `shutdown` is cancelled: the consumer finishes and acknowledges the batch in
/// flight, then the admin server and the sampler stop. `admin` is the already-bound admin listener (tests
/// bind port 0). Returns an error only when the relay cannot run at all.
pub async fn run(config: Config, admin: TcpListener, shutdown: Shutdown) -> Result<(), Error> {
    tracing::info!(config = ?config, "starting");
    let metrics = Metrics::new();
    let pool = database::pool(&config.database)?;
    let link = |block| Link::new(config.redis.clone(), block).map_err(|e| Error::Config(format!("REDIS_URL: {e}")));
    let short = std::time::Duration::ZERO;

    let postgres = BackendState::new("postgres");
    let readiness = Arc::new(Readiness::new(pool.clone(), link(short)?, postgres.clone()));
    let admin_task =
        tokio::spawn(admin::serve(admin, AdminState { metrics: metrics.clone(), readiness }, shutdown.clone()));
    let sampler_task =
        tokio::spawn(sampler::run(Group::new(config.names.clone()), link(short)?, metrics.clone(), shutdown.clone()));
    let consumer = Consumer::new(&config, pool.clone(), postgres, metrics, shutdown.clone())
        .map_err(|e| Error::Config(format!("REDIS_URL: {e}")))?;

    let consumed = tokio::spawn(consumer.run()).await;
    // The consumer only returns at shutdown; make sure the other tasks stop too.
    shutdown.cancel();
    let served = admin_task.await;
    sampler_task.await?;
    pool.close();
    consumed?;
    served??;
    tracing::info!("stopped");
    Ok(())
}
