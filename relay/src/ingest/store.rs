//! Storing stage: the payloads of a set go to `trackway.ingest_batch` as one statement, retried while the
//! database is unavailable, with the count of store attempts that got no answer (`max_deliveries`).

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::triage::Item;
use crate::{
    backoff::{BackendState, Backoff},
    database::{self, IngestError, Status},
    metrics::Metrics,
    redis::{Group, Link},
};

/// Storing stage: one `ingest_batch` call per batch, and the rule that tells an outage from bad data (see
/// [`super::triage`]).
pub(super) struct Storer {
    /// PostgreSQL connections.
    pub(super) pool: Pool,
    /// PostgreSQL up/down (shared with `/readyz`), logged once per change.
    pub(super) postgres: BackendState,
    /// Delay between attempts.
    pub(super) backoff: Backoff,
    /// Statements committed since the relay started that stored at least one row: the clock that orders
    /// refusals and commits, and the only evidence that the database accepts writes. A commit that stored
    /// nothing (only invalid or duplicate payloads) proves nothing: during an outage that refuses every
    /// INSERT, a batch of invalid payloads still commits, since it inserts nothing.
    pub(super) commits: u64,
    /// Group operations (the attempt counts).
    pub(super) group: Group,
    /// Connection for counting attempts.
    pub(super) link: Link,
    /// Unanswered attempts after which an entry is given up.
    pub(super) max_deliveries: u64,
    /// Longest wait for one answer (then the statement is cancelled; a refusal with SQLSTATE `timeout`).
    pub(super) ingest_timeout: Duration,
    /// Counters and histograms.
    pub(super) metrics: Metrics,
}

/// What one statement did.
pub(super) enum Attempt {
    /// Committed; one status per payload.
    Committed(Vec<Status>),
    /// Refused by the server.
    Refused(String),
    /// Not sent: these entries (index, count) already had `max_deliveries` unanswered attempts.
    OverLimit(Vec<(usize, u64)>),
}

impl Storer {
    /// Sends the payloads at `set` as one statement; retries while the database is unavailable. `None` at
    /// shutdown during an outage.
    pub(super) async fn attempt(
        &mut self,
        items: &[Item<'_>],
        set: &[usize],
        counted: &mut [bool],
        shutdown: &CancellationToken,
    ) -> Option<Attempt> {
        let batch: Vec<&str> = set.iter().map(|&i| items[i].payload).collect();
        loop {
            let client = match database::connection(&self.pool).await {
                Ok(client) => client,
                Err(e) => {
                    // Nothing was sent: nothing counts.
                    self.unavailable(&e);
                    if !self.backoff.wait(shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            let marked: Vec<usize> = set.iter().copied().filter(|&i| counted[i]).collect();
            let ids: Vec<&str> = marked.iter().map(|&i| items[i].id).collect();
            match self.group.count_attempts(&mut self.link, &ids, 1).await {
                Ok(counts) => {
                    let over: Vec<(usize, u64)> =
                        marked.iter().copied().zip(counts).filter(|&(_, n)| n > self.max_deliveries).collect();
                    if !over.is_empty() {
                        let unsent: Vec<&str> = marked
                            .iter()
                            .filter(|i| !over.iter().any(|(o, _)| o == *i))
                            .map(|&i| items[i].id)
                            .collect();
                        self.uncount(&unsent).await;
                        return Some(Attempt::OverLimit(over));
                    }
                }
                // Redis is down (the settle stage retries); storing need not wait for the count.
                Err(e) => tracing::debug!(error = %e, "could not count a store attempt"),
            }
            let started = Instant::now();
            match database::ingest_batch(client, &batch, self.ingest_timeout).await {
                Ok(statuses) => {
                    // The settle script removes the counts of settled entries.
                    self.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.with_label_values(&["committed"]).inc();
                    if statuses.iter().any(|s| matches!(s, Status::Inserted)) {
                        self.commits += 1;
                    }
                    self.backoff.reset();
                    if self.postgres.succeeded() {
                        self.metrics.reconnects.with_label_values(&["postgres"]).inc();
                    }
                    return Some(Attempt::Committed(statuses));
                }
                Err(IngestError::Refused { sqlstate, message }) => {
                    self.uncount(&ids).await;
                    self.metrics.refusals.with_label_values(&[&sqlstate]).inc();
                    return Some(Attempt::Refused(message));
                }
                Err(e @ IngestError::Unavailable(_)) => {
                    self.uncount(&ids).await;
                    self.unavailable(&e);
                }
                Err(e @ IngestError::Lost(_)) => {
                    // Sent without an answer: the count stays, and from now on every entry of the set counts.
                    for &i in set {
                        counted[i] = true;
                    }
                    self.unavailable(&e);
                }
            }
            if !self.backoff.wait(shutdown).await {
                return None;
            }
        }
    }

    /// Takes back the count of attempts that were answered (or not sent).
    async fn uncount(&mut self, ids: &[&str]) {
        if let Err(e) = self.group.count_attempts(&mut self.link, ids, -1).await {
            tracing::debug!(error = %e, "could not take back a store attempt");
        }
    }

    /// Records an unavailable database (the whole batch is retried).
    fn unavailable(&mut self, error: &IngestError) {
        self.metrics.batches.with_label_values(&["retried"]).inc();
        self.postgres.failed(error);
    }
}
