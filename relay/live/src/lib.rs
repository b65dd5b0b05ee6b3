//! `trackway-live`, the relay's live side: positions committed to `trackway.positions` go out to WebSocket subscribers.
//!
//! - [`listen`] — the LISTEN connection; notifications are wake-ups only.
//! - [`feed`] — reads new rows after the relay's cursor; hands subscriptions to [`answers`] on the same
//!   snapshot.
//! - [`answers`] — snapshots and replays, read on connections of their own beside the feed.
//! - [`command`] — what sessions and answer connections ask of the feed.
//! - [`router`] — who watches which device or group.
//! - [`outbox`] — each client's bounded queue (coalescing, too-slow detection).
//! - [`server`], [`session`] — `/live` and one connection's protocol.
//! - [`page`] — the live map page (`/`), a browser client of `/live`.
//! - [`protocol`] — message parsing and frames (docs/live-protocol.md).
//! - [`auth`], [`directus`] — tokens (`jwt`, `directus`, `none`).
//! - [`authorize`] — `trackway.authorize`, asked in batches for every session waiting at the moment.
//! - [`limits`] — what one connection or one user may cost: authorize pacing, connections per user.
//! - [`metrics`] — `trackway_live_*`.
//! - [`config`] — [`LiveConfig`], what the relay's configuration hands over; [`Error`].
//!
//! Independent of the ingest side (a crate of its own, which this one never imports): the two share only
//! the database room (`trackway-database`), the runtime (`trackway-runtime`), the metrics registry and
//! the shutdown signal.

#![forbid(unsafe_code)]

pub mod answers;
pub mod auth;
pub mod authorize;
pub mod command;
pub mod config;
pub mod directus;
mod error;
pub mod feed;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod outbox;
pub mod page;
pub mod protocol;
pub mod router;
pub mod server;
pub mod session;

use std::{sync::Arc, time::Duration};

use prometheus::Registry;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;

use trackway_database as database;
use trackway_runtime::{backoff, BackendState};

pub use crate::{
    config::{AuthConfig, LiveConfig, Origins, ReplayLimits, TileUrl},
    error::Error,
};

/// Requests from sessions to the feed waiting to be applied; full means the sessions wait.
const COMMAND_QUEUE: usize = 4096;
/// How long shutdown waits for sessions to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the live side until `shutdown`: the LISTEN connection, the feed and the `/live` server. `health`
/// is down while the LISTEN connection or the feed cannot reach the database (`/readyz`).
pub async fn run(
    config: LiveConfig,
    database: tokio_postgres::Config,
    listener: TcpListener,
    registry: Registry,
    health: BackendState,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = metrics::LiveMetrics::new(&registry);
    let authenticator = auth::Authenticator::new(&config.auth).map_err(Error::Config)?;
    if !authenticator.required() {
        tracing::warn!("TRACKWAY_AUTH=none: live clients are NOT authenticated and may watch every device (demo only)");
    }
    // (Every connection opened from `database` — the pool's, the feed's, the LISTEN connection's — gets the
    // same connect timeout and keepalives: `database::connect` and `database::pool` apply them.)
    let pool = database::live_pool(&database)?;
    let wake = Arc::new(listen::Wake::default());
    let (commands, requests) = mpsc::channel(COMMAND_QUEUE);
    let feed_settings = feed::FeedSettings {
        database: database.clone(),
        poll_interval: config.poll_interval,
        replay: config.replay,
        answer_connections: config.answer_connections,
    };
    let channel = (commands.clone(), requests);
    let feed = feed::Feed::new(feed_settings, channel, wake.clone(), health.clone(), metrics.clone());
    let feed_task = tokio::spawn(feed.run(shutdown.clone()));
    let listen_task = tokio::spawn(listen::run(database, wake, health, metrics.clone(), shutdown.clone()));
    let config_limit_per_user = config.max_connections_per_user;
    let shared = Arc::new(session::Shared {
        config,
        auth: authenticator,
        authorizer: authorize::Authorizer::start(pool.clone()),
        commands,
        metrics,
        next_client: Default::default(),
        users: limits::Users::new(config_limit_per_user),
        bulk: tokio::sync::Semaphore::new(session::BULK_WRITERS),
    });
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let serving = server::serve(listener, shared, shutdown.clone(), SHUTDOWN_GRACE);
    tokio::pin!(serving);
    let (mut feed_task, mut listen_task) = (feed_task, listen_task);
    // The feed and the LISTEN connection retry database failures themselves; one that ends before
    // shutdown (a panic) ends the live side, and with it the relay (see `crate::run`).
    let stopped = tokio::select! {
        served = &mut serving => {
            shutdown.cancel();
            let _ = feed_task.await;
            let _ = listen_task.await;
            pool.close();
            return served.map_err(|source| Error::Serve { addr: addr.clone(), source });
        }
        ended = &mut feed_task => ("live feed", ended),
        ended = &mut listen_task => ("LISTEN connection", ended),
    };
    let early = !shutdown.is_cancelled();
    shutdown.cancel();
    let _ = serving.await;
    let (task, ended) = stopped;
    let _ = if task == "live feed" { listen_task.await } else { feed_task.await };
    pool.close();
    trackway_runtime::supervise::ended(task, ended.map(Ok), early)
}
