//! The ingest loop: stream entries → `trackway.ingest_batch` → XACK, nothing lost, nothing twice.
//!
//! Order of work: first this consumer's own pending entries (left by a crash or a lost connection), then
//! entries idle too long on other consumers (XAUTOCLAIM, when a sweep is due), then new entries with a
//! blocking read. Each batch is stored with one database call and acknowledged only after that call has
//! committed; an entry that cannot be stored is dead-lettered and acknowledged in one atomic Redis step.
//! A crash at any point leaves the entries pending, and handling them again is harmless: stored rows come
//! back as `duplicate`, and a dead letter is written only while its entry is still pending.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{Backoff, BackendState},
    config::Config,
    database::{self, IngestError, Status},
    metrics::Metrics,
    stream::{DeadLetter, Entry, Group, Link},
};

/// Where a batch came from (the `source` label of `entries_read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Never delivered before.
    New,
    /// Already delivered to this consumer and not acknowledged.
    Pending,
    /// Taken over from another consumer.
    Claimed,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::New => "new",
            Source::Pending => "pending",
            Source::Claimed => "claimed",
        }
    }
}

/// The result for one payload sent to the database.
#[derive(Clone, Debug)]
enum Stored {
    /// What `ingest_batch` said.
    Status(Status),
    /// The server refused this payload on its own (found by splitting a refused batch).
    Rejected(String),
}

/// The consumer and everything it needs; runs until shutdown.
pub struct Consumer {
    /// Group operations and names.
    group: Group,
    /// This task's Redis connection (blocking reads happen on it, so nothing else shares it).
    link: Link,
    /// PostgreSQL connections.
    pool: Pool,
    /// Counters and histograms.
    metrics: Metrics,
    /// Stops the loop after the batch in flight.
    shutdown: CancellationToken,
    /// Entries per read and per database call.
    batch_size: usize,
    /// Blocking read timeout.
    block: Duration,
    /// Deliveries after which an entry is dead-lettered.
    max_deliveries: u64,
    /// Idle time after which other consumers' entries are claimed.
    claim_idle: Duration,
    /// Redis up/down, logged once per change.
    redis: BackendState,
    /// PostgreSQL up/down, logged once per change.
    postgres: BackendState,
    /// Delay between Redis attempts.
    redis_backoff: Backoff,
    /// Delay between PostgreSQL attempts.
    postgres_backoff: Backoff,
    /// Whether the group is known to exist (reset when Redis says NOGROUP).
    group_ready: bool,
    /// Scan position in this consumer's pending entries; `None` once they are all handled.
    pending_after: Option<String>,
    /// Where the current XAUTOCLAIM sweep continues.
    claim_start: String,
    /// When the next XAUTOCLAIM sweep starts.
    next_claim: Instant,
}

/// A batch read from the stream.
struct Batch {
    source: Source,
    entries: Vec<Entry>,
}

impl Consumer {
    /// A consumer for `config`; connects lazily.
    pub fn new(config: &Config, pool: Pool, metrics: Metrics, shutdown: CancellationToken) -> Result<Consumer, RedisError> {
        Ok(Consumer {
            group: Group::new(config.names.clone()),
            link: Link::new(config.redis.clone(), config.block)?,
            pool,
            metrics,
            shutdown,
            batch_size: config.batch_size,
            block: config.block,
            max_deliveries: config.max_deliveries,
            claim_idle: config.claim_idle,
            redis: BackendState::new("redis"),
            postgres: BackendState::new("postgres"),
            redis_backoff: Backoff::default(),
            postgres_backoff: Backoff::default(),
            group_ready: false,
            pending_after: Some("0".to_owned()),
            claim_start: "0-0".to_owned(),
            next_claim: Instant::now(),
        })
    }

    /// Reads, stores and acknowledges until shutdown; the batch in flight is finished first.
    pub async fn run(mut self) {
        tracing::info!(stream = %self.group.names.stream, group = %self.group.names.group,
                       consumer = %self.group.names.consumer, "consumer started");
        while !self.shutdown.is_cancelled() {
            match self.next_batch().await {
                Ok(Some(batch)) => {
                    self.redis_ok();
                    self.handle(batch).await;
                }
                Ok(None) => self.redis_ok(),
                Err(e) => {
                    if !self.redis_failed(e).await {
                        break;
                    }
                }
            }
        }
        if !self.redis.is_down() {
            match self.group.leave_if_idle(&mut self.link).await {
                Ok(true) => tracing::debug!("left the consumer group (no pending entries)"),
                Ok(false) => tracing::info!("entries still pending on this consumer; they will be re-processed"),
                Err(e) => tracing::debug!(error = %e, "could not leave the consumer group"),
            }
        }
        tracing::info!("consumer stopped");
    }

    /// The next batch: own pending entries first, then a claim sweep when due, then new entries.
    async fn next_batch(&mut self) -> Result<Option<Batch>, RedisError> {
        if !self.group_ready {
            self.group.ensure(&mut self.link).await?;
            self.group_ready = true;
        }
        if let Some(after) = self.pending_after.clone() {
            let entries = self.group.read_pending(&mut self.link, self.batch_size, &after).await?;
            self.pending_after = entries.last().map(|e| e.id.clone());
            if !entries.is_empty() {
                return Ok(Some(Batch { source: Source::Pending, entries }));
            }
        }
        if Instant::now() >= self.next_claim {
            let claimed = self.group.autoclaim(&mut self.link, self.claim_idle, &self.claim_start, self.batch_size).await?;
            if claimed.next == "0-0" {
                self.next_claim = Instant::now() + (self.claim_idle / 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
            }
            self.claim_start = claimed.next;
            if claimed.deleted > 0 {
                tracing::warn!(count = claimed.deleted, "pending entries were deleted from the stream before being stored");
            }
            if !claimed.entries.is_empty() {
                self.metrics.reclaimed.inc_by(claimed.entries.len() as u64);
                tracing::info!(count = claimed.entries.len(), "claimed entries idle on other consumers");
                return Ok(Some(Batch { source: Source::Claimed, entries: claimed.entries }));
            }
        }
        let entries = self.group.read_new(&mut self.link, self.batch_size, self.block).await?;
        Ok((!entries.is_empty()).then_some(Batch { source: Source::New, entries }))
    }

    /// Stores one batch and acknowledges it. Returns early only at shutdown during an outage, leaving the
    /// entries pending.
    async fn handle(&mut self, batch: Batch) {
        let Batch { source, entries } = batch;
        self.metrics.entries_read.with_label_values(&[source.label()]).inc_by(entries.len() as u64);
        self.metrics.batch_size.observe(entries.len() as f64);
        let deliveries = match source {
            Source::New => HashMap::new(),
            Source::Pending | Source::Claimed => self.deliveries(&entries).await,
        };

        let mut acks: Vec<&str> = Vec::new();
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut to_store: Vec<(&Entry, &str)> = Vec::new();
        let payload_field = self.group.names.payload_field.clone();
        for entry in &entries {
            if entry.fields.is_none() {
                // Deleted from the stream while pending: nothing left to store.
                acks.push(&entry.id);
                continue;
            }
            if let Some(&n) = deliveries.get(&entry.id) {
                if n > self.max_deliveries {
                    dead.push(dead_letter(entry, "max_deliveries",
                        format!("delivered {n} times without being stored (limit {})", self.max_deliveries)));
                    continue;
                }
            }
            match payload_of(entry, &payload_field) {
                Ok(payload) => to_store.push((entry, payload)),
                Err((reason, error)) => dead.push(dead_letter(entry, reason, error)),
            }
        }

        let payloads: Vec<&str> = to_store.iter().map(|(_, p)| *p).collect();
        let Some(results) = self.store(&payloads).await else { return };
        for ((entry, _), result) in to_store.iter().zip(results) {
            match result {
                Stored::Status(Status::Inserted) => {
                    self.metrics.rows.with_label_values(&["inserted"]).inc();
                    acks.push(&entry.id);
                }
                Stored::Status(Status::Duplicate) => {
                    self.metrics.rows.with_label_values(&["duplicate"]).inc();
                    acks.push(&entry.id);
                }
                Stored::Status(Status::Invalid(error)) => {
                    self.metrics.rows.with_label_values(&["invalid"]).inc();
                    dead.push(dead_letter(entry, "invalid", error));
                }
                Stored::Rejected(error) => dead.push(dead_letter(entry, "rejected", error)),
            }
        }
        self.settle(&acks, &dead).await;
    }

    /// Delivery counts of redelivered entries (empty when Redis cannot tell now; checked again next time).
    async fn deliveries(&mut self, entries: &[Entry]) -> HashMap<String, u64> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return HashMap::new() };
        match self.group.deliveries(&mut self.link, &first.id, &last.id, entries.len()).await {
            Ok(counts) => counts.into_iter().collect(),
            Err(e) => {
                tracing::debug!(error = %e, "could not read delivery counts");
                HashMap::new()
            }
        }
    }

    /// Stores the payloads, one database call per batch; retries while the database is unavailable and
    /// splits a batch the server refuses until the refused payloads are found. `None` at shutdown.
    async fn store(&mut self, payloads: &[&str]) -> Option<Vec<Stored>> {
        let mut results: Vec<Option<Stored>> = vec![None; payloads.len()];
        let mut ranges = if payloads.is_empty() { vec![] } else { vec![(0, payloads.len())] };
        while let Some((lo, hi)) = ranges.pop() {
            loop {
                let started = Instant::now();
                match database::ingest_batch(&self.pool, &payloads[lo..hi]).await {
                    Ok(statuses) => {
                        self.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
                        self.metrics.batches.with_label_values(&["committed"]).inc();
                        self.postgres_ok();
                        for (slot, status) in results[lo..hi].iter_mut().zip(statuses) {
                            *slot = Some(Stored::Status(status));
                        }
                        break;
                    }
                    Err(IngestError::Rejected(error)) if hi - lo == 1 => {
                        self.postgres_ok();
                        results[lo] = Some(Stored::Rejected(error));
                        break;
                    }
                    Err(IngestError::Rejected(error)) => {
                        self.postgres_ok();
                        self.metrics.batches.with_label_values(&["split"]).inc();
                        tracing::warn!(entries = hi - lo, %error, "database refused the batch; splitting it to find the cause");
                        let mid = lo + (hi - lo) / 2;
                        ranges.push((mid, hi));
                        ranges.push((lo, mid));
                        break;
                    }
                    Err(IngestError::Unavailable(error)) => {
                        self.metrics.batches.with_label_values(&["retried"]).inc();
                        self.postgres.failed(&error);
                        if !self.postgres_backoff.wait(&self.shutdown).await {
                            tracing::info!("shutdown while PostgreSQL is unavailable; the batch stays pending");
                            return None;
                        }
                    }
                }
            }
        }
        Some(results.into_iter().map(|r| r.unwrap_or_else(|| Stored::Rejected("not stored".to_owned()))).collect())
    }

    /// Acknowledges stored entries and writes dead letters, retrying while Redis is unavailable.
    async fn settle(&mut self, acks: &[&str], dead: &[DeadLetter]) {
        loop {
            match self.group.settle(&mut self.link, acks, dead).await {
                Ok(settled) => {
                    self.redis_ok();
                    self.metrics.acks.inc_by(settled.acked);
                    for (letter, written) in dead.iter().zip(&settled.written) {
                        if *written {
                            self.metrics.dead_letters.with_label_values(&[letter.reason]).inc();
                            tracing::debug!(id = %letter.entry.id, reason = letter.reason, error = %letter.error, "dead-lettered");
                        }
                    }
                    if let Some(first) = dead.first() {
                        tracing::info!(count = dead.len(), first_id = %first.entry.id, first_error = %first.error,
                                       "entries dead-lettered");
                    }
                    return;
                }
                Err(e) => {
                    if !self.redis_failed(e).await {
                        tracing::info!("shutdown while Redis is unavailable; stored entries stay pending and will come back as duplicates");
                        return;
                    }
                }
            }
        }
    }

    fn redis_ok(&mut self) {
        self.redis_backoff.reset();
        if self.redis.succeeded() {
            self.metrics.reconnects.with_label_values(&["redis"]).inc();
        }
    }

    fn postgres_ok(&mut self) {
        self.postgres_backoff.reset();
        if self.postgres.succeeded() {
            self.metrics.reconnects.with_label_values(&["postgres"]).inc();
        }
    }

    /// Records a Redis failure and waits before the next attempt. After it, the consumer re-checks the
    /// group (it may have been lost with a Redis restart) and re-scans its own pending entries. Returns
    /// `false` when shutdown came first.
    async fn redis_failed(&mut self, error: RedisError) -> bool {
        if error.code() == Some("NOGROUP") {
            tracing::warn!(error = %error, "consumer group missing; creating it again");
        }
        self.redis.failed(&error);
        self.group_ready = false;
        self.pending_after = Some("0".to_owned());
        self.redis_backoff.wait(&self.shutdown).await
    }
}

/// A dead letter for `entry`.
fn dead_letter(entry: &Entry, reason: &'static str, error: String) -> DeadLetter {
    DeadLetter { entry: entry.clone(), reason, error }
}

/// The payload text of an entry, or why it cannot be sent to the database: `(reason, error)`.
fn payload_of<'e>(entry: &'e Entry, field: &str) -> Result<&'e str, (&'static str, String)> {
    let bytes = entry.field(field).ok_or_else(|| ("missing_payload", format!("entry has no field {field:?}")))?;
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ("invalid", format!("payload: not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    if let Some(at) = text.find('\0') {
        return Err(("invalid", format!("payload: contains a NUL character (at byte {at})")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[(&str, &[u8])]) -> Entry {
        Entry { id: "1-1".into(), fields: Some(fields.iter().map(|(f, v)| (f.as_bytes().to_vec(), v.to_vec())).collect()) }
    }

    #[test]
    fn payload_checks_name_the_problem() {
        assert_eq!(payload_of(&entry(&[("payload", b"{}")]), "payload"), Ok("{}"));
        assert_eq!(payload_of(&entry(&[("other", b"{}")]), "payload").unwrap_err().0, "missing_payload");
        let (reason, error) = payload_of(&entry(&[("payload", b"{\xff}")]), "payload").unwrap_err();
        assert_eq!((reason, error.as_str()), ("invalid", "payload: not valid UTF-8 (at byte 1)"));
        let (_, error) = payload_of(&entry(&[("payload", b"{\"a\":\"\0\"}")]), "payload").unwrap_err();
        assert!(error.contains("NUL"), "{error}");
    }
}
