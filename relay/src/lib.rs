//! `trackway-relay`: moves GPS positions from a Redis Stream into PostgreSQL through the `trackway`
//! extension, and serves health and metrics endpoints.
//!
//! - [`config`]: settings from environment variables and flags.
//! - [`ingest`]: the ingest loop (consumer group, ack after commit, dead letters, reclaiming): reading,
//!   storing, settling, and the triage of refused batches.
//! - [`redis`]: the Redis connection, the consumer group's commands and scripts, and their replies.
//! - [`database`]: the PostgreSQL pool and the `trackway.ingest_batch` call.
//! - [`backoff`]: retry delays and outage logging.
//! - [`admin`], [`metrics`], [`sampler`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`live`]: the live side (LISTEN → WebSocket subscribers at `/live`).
//! - [`telemetry`]: log output.
//! - [`cli`]: what the binary does (`main` only calls it).

#![forbid(unsafe_code)]

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod database;
pub mod error;
pub mod ingest;
pub mod live;
pub mod metrics;
pub mod redis;
pub mod sampler;
pub mod telemetry;

use std::sync::Arc;

use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken as Shutdown;

use crate::{
    admin::{AdminState, Readiness},
    backoff::BackendState,
    ingest::Consumer,
    redis::{Group, Link},
};
pub use crate::{config::Config, error::Error, metrics::Metrics};

/// The relay's bound listeners (tests bind port 0 and pass them in).
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: TcpListener,
    /// `/live`; required when the configuration has a live side.
    pub live: Option<TcpListener>,
}

/// Runs the relay until `shutdown` is cancelled: live sockets are closed with 1001, the consumer finishes
/// and acknowledges the batch in flight, then the admin server and the sampler stop. Each subsystem gets a
/// child of `shutdown`. Returns an error when the relay cannot run at all, or when one of its tasks stopped
/// before shutdown ([`Error::Stopped`]; the others are stopped first).
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    let Listeners { admin, live: live_listener } = listeners;
    tracing::info!(config = ?config, "starting");
    let metrics = Metrics::new();
    let pool = database::pool(&config.database)?;
    let link = |block| Link::new(config.redis.clone(), block).map_err(|source| Error::RedisUrl { source });
    let short = std::time::Duration::ZERO;

    let postgres = BackendState::new("postgres");
    let mut readiness = Readiness::new(pool.clone(), link(short)?, postgres.clone());
    let sampler = sampler::run(Group::new(config.names.clone()), link(short)?, metrics.clone(), shutdown.child_token());
    let consumer = Consumer::new(&config, pool.clone(), postgres, metrics.clone(), shutdown.child_token())
        .map_err(|source| Error::RedisUrl { source })?;
    let live_task = match (config.live.clone(), live_listener) {
        (Some(live), Some(listener)) => {
            let health = BackendState::new("postgres (live)");
            let warning = matches!(live.auth, config::AuthConfig::None)
                .then(|| "TRACKWAY_AUTH=none: live clients are not authenticated".to_owned());
            readiness = readiness.with_live(health.clone(), warning);
            let task = live::run(
                live,
                config.database.clone(),
                listener,
                metrics.registry().clone(),
                health,
                shutdown.child_token(),
            );
            Some(tokio::spawn(task))
        }
        (Some(_), None) => return Err(Error::LiveConfig("the live side is on but no live listener was given".into())),
        (None, _) => None,
    };
    let readiness = Arc::new(readiness);
    let admin_task =
        tokio::spawn(admin::serve(admin, AdminState { metrics: metrics.clone(), readiness }, shutdown.child_token()));
    let mut tasks = vec![
        ("consumer", tokio::spawn(until_shutdown(consumer.run()))),
        ("admin server", admin_task),
        ("sampler", tokio::spawn(until_shutdown(sampler))),
    ];
    tasks.extend(live_task.map(|task| ("live side", task)));
    let result = supervise(tasks, &shutdown).await;
    pool.close();
    result?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for the relay's tasks. Each runs until shutdown; one that ends before it (a panic, a server that
/// stopped) stops the relay: the others are shut down and its error is returned, so the process exits
/// non-zero and its supervisor (systemd, Kubernetes) starts it again. Failures of PostgreSQL or Redis never
/// end a task: those are retried inside it with backoff, and `/readyz` says so meanwhile.
async fn supervise(
    tasks: Vec<(&'static str, tokio::task::JoinHandle<Result<(), Error>>)>,
    shutdown: &Shutdown,
) -> Result<(), Error> {
    let (names, handles): (Vec<&'static str>, Vec<_>) = tasks.into_iter().unzip();
    let (first, index, rest) = futures_util::future::select_all(handles).await;
    let early = !shutdown.is_cancelled();
    shutdown.cancel();
    let mut result = ended(names[index], first, early);
    if let Err(e) = &result {
        tracing::error!(error = %e, "the relay stops");
    }
    let rest_names = names.iter().enumerate().filter(|&(i, _)| i != index).map(|(_, n)| *n);
    for (name, handle) in rest_names.zip(rest) {
        let outcome = ended(name, handle.await, false);
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

/// A task that returns nothing, as one that may fail (for [`supervise`]).
async fn until_shutdown(task: impl std::future::Future<Output = ()>) -> Result<(), Error> {
    task.await;
    Ok(())
}

/// What a task's end means: `early` when shutdown had not been asked for.
fn ended(
    task: &'static str,
    outcome: Result<Result<(), Error>, tokio::task::JoinError>,
    early: bool,
) -> Result<(), Error> {
    match outcome {
        Ok(Ok(())) if early => Err(Error::Stopped { task, why: "it returned before shutdown".into() }),
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(Error::Stopped { task, why: format!("it panicked: {}", panic_text(e)) }),
        Err(e) => Err(Error::Task(e)),
    }
}

/// The message of a task's panic.
fn panic_text(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
