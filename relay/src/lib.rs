//! `trackway-relay`: moves GPS positions from a Redis Stream into PostgreSQL through the `trackway`
//! extension, and serves health and metrics endpoints.
//!
//! This crate is thin: it composes the rooms, each a crate of its own, so that the compiler keeps their
//! boundaries (the ingest and live sides never import each other):
//!
//! - `trackway-ingest`: the ingest loop (consumer group, ack after commit, dead letters, reclaiming), its
//!   metrics and the group's sampler.
//! - `trackway-redis`: the Redis connection, the consumer group's commands and scripts, and their replies.
//! - `trackway-live`: the live side (LISTEN → WebSocket subscribers at `/live`, the map page).
//! - `trackway-database`: the one room for PostgreSQL, shared by both sides.
//! - `trackway-runtime`: shutdown, backoff and backend health, supervision.
//!
//! Here: [`config`] (settings from environment variables and flags, split into each room's part),
//! [`admin`] (`/metrics`, `/healthz`, `/readyz`), [`telemetry`] (log output), [`cli`] (what the binary
//! does; `main` only calls it), [`error`], and [`run`], which starts and supervises every task.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod telemetry;

use std::sync::Arc;

use tokio::net::TcpListener;
use trackway_database as database;
use trackway_ingest::{sampler, Combiner, Consumer};
pub use trackway_ingest::{IngestConfig, Metrics};
pub use trackway_live::{self as live, LiveConfig};
use trackway_redis::{Group, Link};
pub use trackway_runtime::Shutdown;
use trackway_runtime::{supervise, BackendState};

use crate::admin::{AdminState, Readiness};
pub use crate::{config::Config, error::Error};

/// The relay's bound listeners, each with what it serves (tests bind port 0 and pass them in).
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
    /// The live side, when it runs: its settings and its listener in one value, so they cannot disagree.
    pub live: Option<LiveEndpoint>,
}

/// The live side's settings with the listener bound for them.
pub struct LiveEndpoint {
    /// What the live side does.
    pub config: LiveConfig,
    /// `/live`.
    pub listener: TcpListener,
}

impl Listeners {
    /// Binds the admin address and, when `config` has a live side, its address. The live settings move into
    /// the result (`config.live` is `None` afterwards): [`run`] takes them from there only.
    pub async fn bind(config: &mut Config) -> Result<Listeners, Error> {
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .map_err(|source| Error::Admin { addr: config.admin_addr.to_string(), source })?;
        let live = match config.live.take() {
            Some(live) => {
                let listener = TcpListener::bind(live.addr)
                    .await
                    .map_err(|source| Error::LiveBind { addr: live.addr.to_string(), source })?;
                Some(LiveEndpoint { config: live, listener })
            }
            None => None,
        };
        Ok(Listeners { admin, live })
    }
}

/// Runs the relay until `shutdown` is cancelled (the live side when `listeners` has one): live sockets are closed with 1001, the consumer finishes
/// and acknowledges the batch in flight, then the admin server and the sampler stop. Each subsystem gets a
/// child of `shutdown`. Returns an error when the relay cannot run at all, or when one of its tasks stopped
/// before shutdown ([`Error::Stopped`]; the others are stopped first).
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    let Listeners { admin, live } = listeners;
    tracing::info!(config = ?config, "starting");
    let metrics = Metrics::new();
    let pool = database::pool(&config.database)?;
    let link = |block| Link::new(config.ingest.redis.clone(), block).map_err(|source| Error::RedisUrl { source });
    let short = std::time::Duration::ZERO;

    let up = |label| metrics.backend_up.with_label_values(&[label]);
    let postgres = BackendState::new("postgres").reported(up("postgres"));
    let mut readiness = Readiness::new(pool.clone(), link(short)?, postgres.clone());
    let groups = config.ingest.shards.iter().cloned().map(Group::new).collect();
    let sampler = sampler::run(groups, link(short)?, metrics.clone(), shutdown.child_token());
    // One consumer per shard of the stream (one when it is not sharded), sharing one writer (their batches
    // combined into shared statements) and the two backends' health.
    let redis = BackendState::new("redis").reported(up("redis"));
    let ingest = &config.ingest;
    let combiner =
        Combiner::new(pool.clone(), ingest.batch_size, ingest.batch_bytes, ingest.ingest_timeout, metrics.clone());
    let consumers = config
        .ingest
        .shards
        .iter()
        .map(|names| {
            let backends = (postgres.clone(), redis.clone());
            Consumer::new(
                &config.ingest,
                names.clone(),
                combiner.clone(),
                backends,
                metrics.clone(),
                shutdown.child_token(),
            )
            .map_err(|source| Error::RedisUrl { source })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let live_task = match live {
        Some(LiveEndpoint { config: live, listener }) => {
            let health = BackendState::new("postgres (live)").reported(up("postgres_live"));
            let warning = matches!(live.auth, live::AuthConfig::None)
                .then(|| "TRACKWAY_AUTH=none: live clients are not authenticated".to_owned());
            readiness = readiness.with_live(health.clone(), warning);
            let registry = metrics.registry().clone();
            let task = live::run(live, config.database.clone(), listener, registry, health, shutdown.child_token());
            Some(tokio::spawn(async move { task.await.map_err(Error::from) }))
        }
        None => None,
    };
    let readiness = Arc::new(readiness);
    let admin_task =
        tokio::spawn(admin::serve(admin, AdminState { metrics: metrics.clone(), readiness }, shutdown.child_token()));
    let mut tasks: Vec<_> =
        consumers.into_iter().map(|c| ("consumer", tokio::spawn(supervise::until_shutdown(c.run())))).collect();
    tasks.push(("admin server", admin_task));
    tasks.push(("sampler", tokio::spawn(supervise::until_shutdown(sampler))));
    tasks.extend(live_task.map(|task| ("live side", task)));
    let result = supervise::all(tasks, &shutdown).await;
    pool.close();
    result?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The boundary the crates exist for: the ingest and live sides never depend on each other (a
    /// dependency added to either manifest fails here, before any code could use it).
    #[test]
    fn ingest_and_live_never_depend_on_each_other() {
        let ingest = include_str!("../ingest/Cargo.toml");
        let live = include_str!("../live/Cargo.toml");
        assert!(ingest.contains("name = \"trackway-ingest\"") && live.contains("name = \"trackway-live\""));
        assert!(!ingest.contains("trackway-live"), "trackway-ingest depends on trackway-live");
        assert!(!live.contains("trackway-ingest"), "trackway-live depends on trackway-ingest");
        assert!(!live.contains("trackway-redis"), "trackway-live depends on the ingest side's Redis room");
    }
}
