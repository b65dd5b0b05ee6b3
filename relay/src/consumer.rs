//! The ingest loop: stream entries → `trackway.ingest_batch` → XACK, nothing lost, nothing twice.
//!
//! Order of reading: first this consumer's own pending entries (left by a crash or a lost connection),
//! then entries idle too long on other consumers (XAUTOCLAIM, when a sweep is due), then new entries.
//! Each batch is stored with one database call and acknowledged only after that call has committed; an
//! entry that cannot be stored is dead-lettered and acknowledged in one atomic Redis step. A crash at any
//! point leaves entries pending, and handling them again is harmless: stored rows come back as
//! `duplicate`, and a dead letter is written only while its entry is still pending.
//!
//! Three stages overlap so the database is never idle waiting for Redis: while batch N is stored, batch
//! N+1 is read (without blocking) and batch N−1 is acknowledged. Each stage has its own Redis connection
//! where it needs one, so a blocking read never delays an acknowledgement. When nothing was read ahead,
//! the pending acknowledgement is finished before the next blocking read.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::{BackendState, Backoff},
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

/// A batch read from the stream.
struct Batch {
    source: Source,
    entries: Vec<Entry>,
}

/// The result for one payload sent to the database.
#[derive(Clone, Debug)]
enum Stored {
    /// What `ingest_batch` said.
    Status(Status),
    /// The server refused this payload on its own (found by splitting a refused batch).
    Rejected(String),
}

/// What to tell Redis about a handled batch.
#[derive(Default)]
struct Settlement {
    /// Entries to acknowledge (stored, duplicate, or deleted from the stream).
    acks: Vec<String>,
    /// Entries to dead-letter and acknowledge.
    dead: Vec<DeadLetter>,
}

/// The consumer: three stages and the signal that stops them.
pub struct Consumer {
    /// Reads batches.
    reader: Reader,
    /// Stores payloads.
    storer: Storer,
    /// Acknowledges and dead-letters.
    settler: Settler,
    /// Stops reading; the batch in hand is finished first.
    shutdown: CancellationToken,
    /// Deliveries after which an entry is dead-lettered.
    max_deliveries: u64,
    /// Entry field holding the payload.
    payload_field: String,
    /// Counters and histograms.
    metrics: Metrics,
}

impl Consumer {
    /// A consumer for `config`; connects lazily.
    pub fn new(
        config: &Config,
        pool: Pool,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Consumer, RedisError> {
        let group = Group::new(config.names.clone());
        let redis = BackendState::new("redis");
        Ok(Consumer {
            reader: Reader {
                group: group.clone(),
                link: Link::new(config.redis.clone(), config.block)?,
                batch_size: config.batch_size,
                block: config.block,
                claim_idle: config.claim_idle,
                group_ready: false,
                pending_after: Some("0".to_owned()),
                claim_start: "0-0".to_owned(),
                next_claim: Instant::now(),
                redis: redis.clone(),
                backoff: Backoff::default(),
                metrics: metrics.clone(),
            },
            storer: Storer {
                pool,
                postgres: BackendState::new("postgres"),
                backoff: Backoff::default(),
                metrics: metrics.clone(),
            },
            settler: Settler {
                group,
                link: Link::new(config.redis.clone(), Duration::ZERO)?,
                redis,
                backoff: Backoff::default(),
                metrics: metrics.clone(),
            },
            shutdown,
            max_deliveries: config.max_deliveries,
            payload_field: config.names.payload_field.clone(),
            metrics,
        })
    }

    /// Reads, stores and acknowledges until shutdown; the batch in hand is finished first.
    pub async fn run(mut self) {
        let names = &self.reader.group.names;
        tracing::info!(stream = %names.stream, group = %names.group, consumer = %names.consumer, "consumer started");
        let mut unsettled: Option<Settlement> = None;
        let mut ahead: Option<Batch> = None;
        loop {
            let batch = match ahead.take() {
                Some(batch) => batch,
                None => {
                    if let Some(s) = unsettled.take() {
                        self.settler.settle(s, &self.shutdown).await;
                    }
                    if self.shutdown.is_cancelled() {
                        break;
                    }
                    match self.reader.next(true).await {
                        Ok(Some(batch)) => batch,
                        Ok(None) => continue,
                        Err(e) => {
                            if !self.reader.failed(e, &self.shutdown).await {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            let (mut settlement, to_store) = self.prepare(&batch).await;
            let payloads: Vec<&str> = to_store.iter().map(|(_, p)| *p).collect();
            let read_ahead = async {
                if self.shutdown.is_cancelled() {
                    return None;
                }
                match self.reader.next(false).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        // The next blocking read retries with backoff.
                        self.reader.redis.failed(&e);
                        self.reader.group_ready = false;
                        None
                    }
                }
            };
            let settle_previous = async {
                if let Some(s) = unsettled.take() {
                    self.settler.settle(s, &self.shutdown).await;
                }
            };
            let (stored, next, ()) =
                tokio::join!(self.storer.store(&payloads, &self.shutdown), read_ahead, settle_previous);
            let Some(stored) = stored else {
                tracing::info!("shutdown while PostgreSQL is unavailable; the batch stays pending");
                break;
            };
            for ((entry, _), result) in to_store.iter().zip(stored) {
                self.classify(entry, result, &mut settlement);
            }
            unsettled = Some(settlement);
            ahead = next;
        }
        if let Some(s) = unsettled.take() {
            self.settler.settle(s, &self.shutdown).await;
        }
        self.settler.leave_if_idle().await;
        tracing::info!("consumer stopped");
    }

    /// Sorts a batch: what can go to the database, and what is settled without it (deleted entries,
    /// entries without a usable payload, entries delivered too often).
    async fn prepare<'b>(&mut self, batch: &'b Batch) -> (Settlement, Vec<(&'b Entry, &'b str)>) {
        self.metrics.entries_read.with_label_values(&[batch.source.label()]).inc_by(batch.entries.len() as u64);
        self.metrics.batch_size.observe(batch.entries.len() as f64);
        let deliveries = match batch.source {
            Source::New => HashMap::new(),
            Source::Pending | Source::Claimed => self.reader.deliveries(&batch.entries).await,
        };
        let mut settlement = Settlement::default();
        let mut to_store = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            if entry.fields.is_none() {
                // Deleted from the stream while pending: nothing left to store.
                settlement.acks.push(entry.id.clone());
                continue;
            }
            if let Some(&n) = deliveries.get(&entry.id) {
                if n > self.max_deliveries {
                    let error = format!("delivered {n} times without being stored (limit {})", self.max_deliveries);
                    settlement.dead.push(dead_letter(entry, "max_deliveries", error));
                    continue;
                }
            }
            match payload_of(entry, &self.payload_field) {
                Ok(payload) => to_store.push((entry, payload)),
                Err((reason, error)) => settlement.dead.push(dead_letter(entry, reason, error)),
            }
        }
        (settlement, to_store)
    }

    /// Records the database's answer for one entry.
    fn classify(&self, entry: &Entry, result: Stored, settlement: &mut Settlement) {
        let status = match result {
            Stored::Status(Status::Inserted) => "inserted",
            Stored::Status(Status::Duplicate) => "duplicate",
            Stored::Status(Status::Invalid(error)) => {
                self.metrics.rows.with_label_values(&["invalid"]).inc();
                settlement.dead.push(dead_letter(entry, "invalid", error));
                return;
            }
            Stored::Rejected(error) => {
                settlement.dead.push(dead_letter(entry, "rejected", error));
                return;
            }
        };
        self.metrics.rows.with_label_values(&[status]).inc();
        settlement.acks.push(entry.id.clone());
    }
}

/// Reading stage: own pending entries, claim sweeps, new entries.
struct Reader {
    /// Group operations and names.
    group: Group,
    /// Connection for reads (blocking reads happen on it, so nothing else shares it).
    link: Link,
    /// Entries per read.
    batch_size: usize,
    /// Blocking read timeout.
    block: Duration,
    /// Idle time after which other consumers' entries are claimed.
    claim_idle: Duration,
    /// Whether the group is known to exist (reset after a Redis failure).
    group_ready: bool,
    /// Scan position in this consumer's pending entries; `None` once they are all handled.
    pending_after: Option<String>,
    /// Where the current XAUTOCLAIM sweep continues.
    claim_start: String,
    /// When the next XAUTOCLAIM sweep starts.
    next_claim: Instant,
    /// Redis up/down (shared with the settler), logged once per change.
    redis: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Counters.
    metrics: Metrics,
}

impl Reader {
    /// The next batch: own pending entries first, then a claim sweep when due, then new entries (waiting
    /// up to the block time only when `block`).
    async fn next(&mut self, block: bool) -> Result<Option<Batch>, RedisError> {
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
            let entries = self.group.read_pending(&mut self.link, self.batch_size, &after).await?;
            self.pending_after = entries.last().map(|e| e.id.clone());
            if !entries.is_empty() {
                return Ok(Some(Batch { source: Source::Pending, entries }));
            }
        }
        if Instant::now() >= self.next_claim {
            let claimed =
                self.group.autoclaim(&mut self.link, self.claim_idle, &self.claim_start, self.batch_size).await?;
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
        let entries = self.group.read_new(&mut self.link, self.batch_size, block).await?;
        Ok((!entries.is_empty()).then_some(Batch { source: Source::New, entries }))
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

    /// Records a failure and waits before the next attempt. Afterwards the group is checked again (it may
    /// have been lost with a Redis restart) and own pending entries are scanned again. `false` at shutdown.
    async fn failed(&mut self, error: RedisError, shutdown: &CancellationToken) -> bool {
        if error.code() == Some("NOGROUP") {
            tracing::warn!(error = %error, "consumer group missing; creating it again");
        }
        self.redis.failed(&error);
        self.group_ready = false;
        self.pending_after = Some("0".to_owned());
        self.backoff.wait(shutdown).await
    }
}

/// Storing stage: one `ingest_batch` call per batch.
struct Storer {
    /// PostgreSQL connections.
    pool: Pool,
    /// PostgreSQL up/down, logged once per change.
    postgres: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Counters and histograms.
    metrics: Metrics,
}

impl Storer {
    /// Stores the payloads; retries while the database is unavailable and splits a batch the server
    /// refuses until the refused payloads are found. `None` at shutdown during an outage.
    async fn store(&mut self, payloads: &[&str], shutdown: &CancellationToken) -> Option<Vec<Stored>> {
        let mut results: Vec<Option<Stored>> = vec![None; payloads.len()];
        let mut ranges = if payloads.is_empty() { vec![] } else { vec![(0, payloads.len())] };
        while let Some((lo, hi)) = ranges.pop() {
            loop {
                let started = Instant::now();
                match database::ingest_batch(&self.pool, &payloads[lo..hi]).await {
                    Ok(statuses) => {
                        self.metrics.ingest_seconds.observe(started.elapsed().as_secs_f64());
                        self.metrics.batches.with_label_values(&["committed"]).inc();
                        self.succeeded();
                        for (slot, status) in results[lo..hi].iter_mut().zip(statuses) {
                            *slot = Some(Stored::Status(status));
                        }
                        break;
                    }
                    Err(IngestError::Rejected(error)) if hi - lo == 1 => {
                        self.succeeded();
                        results[lo] = Some(Stored::Rejected(error));
                        break;
                    }
                    Err(IngestError::Rejected(error)) => {
                        self.succeeded();
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
                        if !self.backoff.wait(shutdown).await {
                            return None;
                        }
                    }
                }
            }
        }
        Some(results.into_iter().map(|r| r.unwrap_or_else(|| Stored::Rejected("not stored".to_owned()))).collect())
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        if self.postgres.succeeded() {
            self.metrics.reconnects.with_label_values(&["postgres"]).inc();
        }
    }
}

/// Acknowledging stage: XACK and dead letters, on a connection of its own.
struct Settler {
    /// Group operations and names.
    group: Group,
    /// Connection for acknowledgements (never blocked by a read).
    link: Link,
    /// Redis up/down (shared with the reader), logged once per change.
    redis: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Counters.
    metrics: Metrics,
}

impl Settler {
    /// Acknowledges and dead-letters, retrying while Redis is unavailable; gives up only at shutdown (the
    /// entries stay pending and come back as duplicates).
    async fn settle(&mut self, settlement: Settlement, shutdown: &CancellationToken) {
        let Settlement { acks, dead } = settlement;
        let acks: Vec<&str> = acks.iter().map(String::as_str).collect();
        loop {
            match self.group.settle(&mut self.link, &acks, &dead).await {
                Ok(settled) => {
                    self.backoff.reset();
                    if self.redis.succeeded() {
                        self.metrics.reconnects.with_label_values(&["redis"]).inc();
                    }
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
                    self.metrics.settle_failures.inc();
                    self.redis.failed(&e);
                    if !self.backoff.wait(shutdown).await {
                        tracing::info!("shutdown while Redis is unavailable; handled entries stay pending");
                        return;
                    }
                }
            }
        }
    }

    /// Leaves the group when nothing is pending on this consumer, so stopped relays do not pile up in it.
    async fn leave_if_idle(&mut self) {
        if self.redis.is_down() {
            return;
        }
        match self.group.leave_if_idle(&mut self.link).await {
            Ok(true) => tracing::debug!("left the consumer group (no pending entries)"),
            Ok(false) => tracing::info!("entries still pending on this consumer; they will be re-processed"),
            Err(e) => tracing::debug!(error = %e, "could not leave the consumer group"),
        }
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
        Entry {
            id: "1-1".into(),
            fields: Some(fields.iter().map(|(f, v)| (f.as_bytes().to_vec(), v.to_vec())).collect()),
        }
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
