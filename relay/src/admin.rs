//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (the process answers), `/readyz`
//! (Redis and PostgreSQL both reachable, and the consumer not in an outage — e.g. the database refusing
//! every write; the answer is cached briefly so probes cannot load the backends).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::{net::TcpListener, sync::Mutex};
use trackway_database::Pool;
use trackway_runtime::Shutdown;

use trackway_ingest::Metrics;
use trackway_redis::Link;
use trackway_runtime::BackendState;

use crate::error::Error;

/// How long a readiness answer is reused.
const READY_CACHE: Duration = Duration::from_secs(1);
/// Longest time one readiness check may take per backend.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Encoded on every `/metrics` request.
    pub metrics: Metrics,
    /// Checked by `/readyz`.
    pub readiness: Arc<Readiness>,
}

/// The readiness check and its cached answer.
pub struct Readiness {
    /// PostgreSQL connections (shared with the consumer).
    pool: Pool,
    /// A Redis connection of its own, so a blocking read never delays a probe.
    redis: Mutex<Link>,
    /// The consumer's view of PostgreSQL: down while it cannot store (unreachable, or refusing every write).
    postgres: BackendState,
    /// The live side's view of PostgreSQL (its LISTEN connection and feed), when the live side runs.
    live: Option<BackendState>,
    /// Said with every answer (e.g. that live authentication is off).
    warning: Option<String>,
    /// The last answer and when it was computed; the lock also stops concurrent probes from checking twice.
    cached: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// A check of `pool`, the Redis behind `redis`, and the consumer's `postgres` state.
    pub fn new(pool: Pool, redis: Link, postgres: BackendState) -> Readiness {
        Readiness { pool, redis: Mutex::new(redis), postgres, live: None, warning: None, cached: Mutex::new(None) }
    }

    /// Also requires the live side's database connections to work; `warning` is added to every answer.
    pub fn with_live(mut self, live: BackendState, warning: Option<String>) -> Readiness {
        self.live = Some(live);
        self.warning = warning;
        self
    }

    /// The warning to show with every answer.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// `Ok` when both backends answered within the last second and the consumer can store, else the first
    /// problem.
    pub async fn check(&self) -> Result<(), String> {
        let mut cached = self.cached.lock().await;
        if let Some((at, answer)) = cached.as_ref() {
            if at.elapsed() < READY_CACHE {
                return answer.clone();
            }
        }
        let answer = self.check_now().await;
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn check_now(&self) -> Result<(), String> {
        let mut redis = self.redis.lock().await;
        match tokio::time::timeout(READY_TIMEOUT, redis.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("redis: {e}")),
            Err(_) => {
                // Its answer may still come, out of turn; and a silent path must not keep probes failing
                // after it works again.
                redis.forget();
                return Err("redis: no answer within 2 s".to_owned());
            }
        }
        drop(redis);
        // Bounded inside, so that a connection that did not answer in time is dropped, not pooled again.
        if let Err(e) = crate::database::ping(&self.pool, READY_TIMEOUT).await {
            return Err(format!("postgres: {e}"));
        }
        if let Some(why) = self.postgres.down_reason() {
            return Err(format!("postgres: cannot store: {why}"));
        }
        match self.live.as_ref().and_then(BackendState::down_reason) {
            Some(why) => Err(format!("live: {why}")),
            None => Ok(()),
        }
    }
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: Shutdown) -> Result<(), Error> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // Supervision tests make the server end at once here (compiled out without `failpoints`).
    fail::fail_point!("admin-server", |_| Ok(()));
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|source| Error::Admin { addr, source })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], state.metrics.encode())
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let warning = state.readiness.warning().map(|w| format!("warning: {w}\n")).unwrap_or_default();
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, format!("ready\n{warning}")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n{warning}")),
    }
}
