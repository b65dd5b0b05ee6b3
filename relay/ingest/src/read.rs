//! Reading stage: which entries come next (own pending entries, a claim sweep when one is due, new
//! entries) and the batch they come in.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{BackendState, Backoff},
    config::IngestConfig,
    metrics::Metrics,
    redis::{Entry, Group, Link, RedisError, StreamNames},
};

/// Where a batch came from (the `source` label of `entries_read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Never delivered before.
    New,
    /// Already delivered to this consumer and not acknowledged.
    Pending,
    /// Taken over from another consumer.
    Claimed,
}

impl Source {
    pub(super) fn label(self) -> &'static str {
        match self {
            Source::New => "new",
            Source::Pending => "pending",
            Source::Claimed => "claimed",
        }
    }
}

/// A batch read from the stream.
pub(super) struct Batch {
    pub(super) source: Source,
    pub(super) entries: Vec<Entry>,
}

/// Reading stage: own pending entries, claim sweeps, new entries.
pub(super) struct Reader {
    /// Group operations and names.
    group: Group,
    /// Connection for reads (blocking reads happen on it, so nothing else shares it).
    link: Link,
    /// Entries per read.
    batch_size: usize,
    /// Bytes per read (plus one entry).
    batch_bytes: usize,
    /// Blocking read timeout.
    block: Duration,
    /// Idle time after which other consumers' entries are claimed.
    claim_idle: Duration,
    /// Whether the group is known to exist (reset after a Redis failure).
    group_ready: bool,
    /// Scan position in this consumer's pending entries; `None` once they are all handled.
    pending_after: Option<String>,
    /// Where the current claim sweep continues.
    claim_start: String,
    /// When the next claim sweep starts.
    next_claim: Instant,
    /// Redis up/down (shared with the settler), logged once per change.
    redis: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Counters.
    metrics: Metrics,
}

impl Reader {
    /// A reader of `group` over `link` (blocking reads happen on it, so nothing else may share it).
    pub(super) fn new(
        group: Group,
        link: Link,
        config: &IngestConfig,
        redis: BackendState,
        metrics: Metrics,
    ) -> Reader {
        Reader {
            group,
            link,
            batch_size: config.batch_size,
            batch_bytes: config.batch_bytes,
            block: config.block,
            claim_idle: config.claim_idle,
            group_ready: false,
            pending_after: Some("0".to_owned()),
            claim_start: "0-0".to_owned(),
            next_claim: Instant::now(),
            redis,
            backoff: Backoff::default(),
            metrics,
        }
    }

    /// The stream, group and consumer names.
    pub(super) fn names(&self) -> &StreamNames {
        &self.group.names
    }

    /// The next batch: own pending entries first, then a claim sweep when due, then new entries (waiting
    /// up to the block time only when `block`).
    pub(super) async fn next(&mut self, block: bool) -> Result<Option<Batch>, RedisError> {
        let batch = self.try_next(block).await?;
        self.backoff.reset();
        if self.redis.succeeded() {
            self.metrics.reconnects.with_label_values(&["redis"]).inc();
        }
        Ok(batch)
    }

    async fn try_next(&mut self, block: bool) -> Result<Option<Batch>, RedisError> {
        if !self.group_ready {
            self.group.ensure(&mut self.link).await?;
            self.group_ready = true;
        }
        if let Some(after) = self.pending_after.clone() {
            let entries = self.group.read_pending(&mut self.link, self.batch_size, self.batch_bytes, &after).await?;
            self.pending_after = entries.last().map(|e| e.id.clone());
            if !entries.is_empty() {
                return Ok(Some(Batch { source: Source::Pending, entries }));
            }
        }
        if Instant::now() >= self.next_claim {
            let claimed = self
                .group
                .autoclaim(&mut self.link, self.claim_idle, &self.claim_start, self.batch_size, self.batch_bytes)
                .await?;
            if claimed.next == "0-0" {
                let pause = (self.claim_idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
                self.next_claim = Instant::now() + pause;
            }
            self.claim_start = claimed.next;
            if claimed.deleted > 0 {
                tracing::warn!(
                    count = claimed.deleted,
                    "pending entries were deleted from the stream before being stored"
                );
            }
            if !claimed.entries.is_empty() {
                self.metrics.reclaimed.inc_by(claimed.entries.len() as u64);
                tracing::info!(count = claimed.entries.len(), "claimed entries idle on other consumers");
                return Ok(Some(Batch { source: Source::Claimed, entries: claimed.entries }));
            }
        }
        let block = if block { Some(self.block) } else { None };
        let entries = self.group.read_new(&mut self.link, self.batch_size, self.batch_bytes, block).await?;
        Ok((!entries.is_empty()).then_some(Batch { source: Source::New, entries }))
    }

    /// Records a failure and waits before the next attempt. Afterwards the group is checked again (it may
    /// have been lost with a Redis restart) and own pending entries are scanned again. `false` at shutdown.
    pub(super) async fn failed(&mut self, error: RedisError, shutdown: &CancellationToken) -> bool {
        self.lost(&error);
        self.backoff.wait(shutdown).await
    }

    /// Records a failed read without waiting (a read ahead: the next blocking read waits). The group is
    /// checked again, and own pending entries are scanned again: a read whose reply was lost may have put
    /// entries in this consumer's pending list that it never saw.
    pub(super) fn lost(&mut self, error: &RedisError) {
        if error.code() == Some("NOGROUP") {
            tracing::warn!(error = %error, "consumer group missing; creating it again");
        }
        self.redis.failed(error);
        self.group_ready = false;
        self.pending_after = Some("0".to_owned());
    }
}
