//! Storing stage: the payloads of a set go to `trackway.ingest_batch` as one statement, retried while the
//! database is unavailable, with the count of store attempts that got no answer (`max_deliveries`).

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{BackendState, Backoff},
    combine::Combiner,
    database::{IngestError, Status},
    metrics::Metrics,
    redis::{Group, Link},
};

/// Storing stage: one `ingest_batch` call per batch, and the rule that tells an outage from bad data (see
/// [`super::triage`]).
pub(super) struct Storer {
    /// Writes to PostgreSQL, shared with the relay's other consumers (one statement may carry several
    /// consumers' batches).
    combiner: Combiner,
    /// PostgreSQL up/down (shared with `/readyz`), logged once per change.
    postgres: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Group operations (the attempt counts).
    group: Group,
    /// Connection for counting attempts.
    link: Link,
    /// Unanswered attempts after which an entry is given up.
    max_deliveries: u64,
    /// Counters and histograms.
    metrics: Metrics,
}

/// One payload to store.
#[derive(Clone, Copy)]
pub(super) struct Item<'a> {
    /// Its stream entry id.
    pub(super) id: &'a str,
    /// The payload text.
    pub(super) payload: &'a str,
    /// [`Storer::commits`] when it was last refused alone (held entries), else `None`.
    pub(super) refused_at: Option<u64>,
    /// Whether its store attempts are counted: it was delivered before (own pending or claimed) or an
    /// attempt got no answer. The first attempt of a new entry is not counted (no Redis call on the normal
    /// path); if the relay dies during it, the entry comes back as pending and is counted from then on.
    pub(super) counted: bool,
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
    /// A storer writing through `combiner`, counting attempts in `group`'s attempts hash over `link`.
    pub(super) fn new(
        combiner: Combiner,
        postgres: BackendState,
        (group, link): (Group, Link),
        max_deliveries: u64,
        metrics: Metrics,
    ) -> Storer {
        Storer { combiner, postgres, backoff: Backoff::default(), group, link, max_deliveries, metrics }
    }

    /// Statements of this relay committed since it started that stored at least one row, whichever
    /// consumers' batches they carried: the clock that orders refusals and commits, and the only evidence
    /// that the database accepts writes (see [`Combiner::commits`]).
    pub(super) fn commits(&self) -> u64 {
        self.combiner.commits()
    }

    /// Counts a refused batch split in halves.
    pub(super) fn split(&self) {
        self.metrics.batches.with_label_values(&["split"]).inc();
    }

    /// Records that the database refuses every write (an outage, not the data) and waits. `false` at
    /// shutdown.
    pub(super) async fn outage(&mut self, error: &str, shutdown: &CancellationToken) -> bool {
        self.metrics.batches.with_label_values(&["retried"]).inc();
        self.postgres.failed(&format!("refusing every write: {error}"));
        self.backoff.wait(shutdown).await
    }

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
            let marked: Vec<usize> = set.iter().copied().filter(|&i| counted[i]).collect();
            let ids: Vec<&str> = marked.iter().map(|&i| items[i].id).collect();
            if !ids.is_empty() {
                // Count only once the database would run the call (an empty one answers). While it refuses
                // the login, or the call itself (extension missing, privilege revoked), nothing of this
                // batch is sent, and a relay killed between counting and taking the count back (restarted
                // again and again during the outage) would otherwise leave a count per kill: good entries
                // dead-lettered by an outage.
                if let Err(e) = self.combiner.ready().await {
                    self.unavailable(&e);
                    if !self.backoff.wait(shutdown).await {
                        return None;
                    }
                    continue;
                }
            }
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
            if let Some(hold) = held_after_counting() {
                tokio::time::sleep(hold).await;
            }
            let started = Instant::now();
            match self.combiner.ingest(&batch).await {
                Ok(statuses) => {
                    // The settle script removes the counts of settled entries.
                    self.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.batches.with_label_values(&["committed"]).inc();
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
                    // Nothing was sent (no connection, or the server could not run it): nothing counts.
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

/// Test hook: how long to wait between counting an attempt and sending it (`FAILPOINTS=store-counted=return(ms)`
/// in a relay built with `failpoints`), so that a test can kill the relay inside that window. `None` in
/// every other build.
fn held_after_counting() -> Option<std::time::Duration> {
    fail::fail_point!("store-counted", |ms: Option<String>| {
        ms.and_then(|ms| ms.parse().ok()).map(std::time::Duration::from_millis)
    });
    None
}
