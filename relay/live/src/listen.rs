//! The one LISTEN connection on `trackway_positions`. A notification is only a wake-up for the feed
//! (NOTIFY is not a trusted channel: any role that can connect may send one): its payload is never read.
//! When the connection drops (PostgreSQL restart, failover) it reconnects with backoff and wakes the feed,
//! which reads everything after its cursor, so nothing committed meanwhile is missed. It also samples
//! `pg_notification_queue_usage()`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::metrics::LiveMetrics;
use crate::{
    backoff::{BackendState, Backoff},
    database::{self, answered, sql, DbError},
};

/// How often the NOTIFY queue usage is sampled. The sample is also the connection's liveness check: a
/// LISTEN connection only receives, so without it a silent path would go unnoticed for good (the feed's
/// poll still reads, but only every poll interval). Unanswered within [`database::QUICK`], the connection
/// is dropped and opened again.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Wake-ups for the feed, coalesced: however many notifications arrive during a read, one more read
/// follows. Remembers when the first unread one came (the start of the commit→send lag).
#[derive(Default)]
pub struct Wake {
    notify: Notify,
    first: Mutex<Option<Instant>>,
    /// Set when the LISTEN connection came back after a loss: the next read replays what came meanwhile.
    reconnected: AtomicBool,
}

impl Wake {
    /// Records a reason to read now.
    pub fn ring(&self) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(Instant::now);
        drop(first);
        self.notify.notify_one();
    }

    /// Waits for a ring (returns at once when one came since the last wait).
    pub async fn rung(&self) {
        self.notify.notified().await;
    }

    /// When the earliest ring since the last call came, if any.
    pub fn take_first(&self) -> Option<Instant> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether the LISTEN connection came back since the last call.
    pub fn take_reconnected(&self) -> bool {
        self.reconnected.swap(false, Ordering::AcqRel)
    }
}

/// Keeps a LISTEN connection open until shutdown.
pub async fn run(
    config: tokio_postgres::Config,
    wake: Arc<Wake>,
    health: BackendState,
    metrics: LiveMetrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut connected_before = false;
    while !shutdown.is_cancelled() {
        let failure = listen(&config, &wake, &health, &metrics, &shutdown, &mut connected_before, &mut backoff).await;
        let Err(error) = failure else { return };
        health.failed(&format_args!("LISTEN connection: {error}"));
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// One connection's life: connect, LISTEN, ring on every notification. `Ok` only at shutdown.
async fn listen(
    config: &tokio_postgres::Config,
    wake: &Arc<Wake>,
    health: &BackendState,
    metrics: &LiveMetrics,
    shutdown: &CancellationToken,
    connected_before: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), DbError> {
    let (client, mut connection) = database::connect(config).await?;
    let driver_wake = wake.clone();
    // The connection must be polled for the client to work; notifications come out of the same poll.
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => driver_wake.ring(),
                Ok(_) => {}
                Err(e) => return DbError::from(e),
            }
        }
        DbError::Closed
    });
    let result = async {
        answered("LISTEN", database::QUICK, client.batch_execute(sql::LISTEN)).await?;
        if std::mem::replace(connected_before, true) {
            metrics.listen_reconnects.inc();
            wake.reconnected.store(true, Ordering::Release);
        }
        health.succeeded();
        backoff.reset();
        // Anything committed while we were not listening is read now.
        wake.ring();
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // (A driver that panicked is a connection gone all the same.)
                ended = &mut driver => return Err(ended.unwrap_or(DbError::Closed)),
                _ = sample.tick() => {
                    // Supervision tests make this task panic here (compiled out without `failpoints`).
                    fail::fail_point!("live-listen");
                    let row = answered("the NOTIFY queue sample", database::QUICK, client.query_one(sql::NOTIFICATION_QUEUE_USAGE, &[]));
                    let row = row.await;
                    metrics.notification_queue_usage.set(row?.try_get::<_, f64>(0)?);
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
