//! `trackway-ingest`, the relay's ingest side. The ingest loop: stream entries → `trackway.ingest_batch` → XACK, nothing lost, nothing twice.
//!
//! Order of reading: first this consumer's own pending entries (left by a crash or a lost connection),
//! then entries idle too long on other consumers (a claim sweep, when one is due), then new entries.
//! Each batch is stored with one database call and acknowledged only after that call has committed; an
//! entry that cannot be stored is dead-lettered and acknowledged in one atomic Redis step. A crash at any
//! point leaves entries pending, and handling them again is harmless: stored rows come back as
//! `duplicate`, and a dead letter is written only while its entry is still pending.
//!
//! Nothing is blamed on the data without proof (see `triage`): a batch the server refuses is split, an
//! entry becomes a `rejected` dead letter only when it fails alone while other writes store rows, and a
//! database that refuses every write is an outage, retried with backoff. Reads are bounded by bytes
//! (`TRACKWAY_BATCH_BYTES`), and `max_deliveries` counts store attempts that got no answer (kept in
//! `<stream>:attempts`), not reads.
//!
//! Three stages overlap so the database is never idle waiting for Redis: while batch N is stored, batch
//! N+1 is read (without blocking) and batch N−1 is acknowledged. Each stage has its own Redis connection
//! where it needs one, so a blocking read never delays an acknowledgement. When nothing was read ahead,
//! the pending acknowledgement is finished before the next blocking read.
//!
//! Rooms: `read` (the reader), `store` (one statement per set of payloads, the attempt counts), `combine`
//! (the relay's consumers' batches combined into shared statements: group commit), `triage`
//! (the policy that splits refused batches and judges refusals, calling the storer: `triage` uses
//! `store`, never the reverse), `settle` (acknowledgements and dead letters). Each stage owns its state
//! behind a constructor. Beside the loop: [`sampler`] (the group's lag and pending count), [`metrics`]
//! (the ingest side's Prometheus metrics), [`IngestConfig`]. Redis is `trackway-redis`'s room, PostgreSQL
//! `trackway-database`'s; the live side is never imported (a crate of its own).

#![forbid(unsafe_code)]

mod combine;
mod config;
pub mod metrics;
mod read;
pub mod sampler;
mod settle;
mod store;
mod triage;

use std::{collections::HashSet, time::Duration};

use tokio_util::sync::CancellationToken;
use trackway_database as database;
use trackway_redis::{self as redis, RedisError, StreamNames};
use trackway_runtime::backoff;

use self::{
    read::{Batch, Reader, Source},
    settle::{Settlement, Settler},
    store::{Item, Storer},
    triage::{Held, Stored, Triage},
};
use crate::{
    backoff::BackendState,
    database::Status,
    redis::{DeadLetter, DeadReason, Entry, Group, Link},
};
pub use crate::{combine::Combiner, config::IngestConfig, metrics::Metrics};

/// The consumer: three stages and the signal that stops them.
pub struct Consumer {
    /// Reads batches.
    reader: Reader,
    /// Stores payloads, splitting refused batches and judging what the refusals say.
    triage: Triage,
    /// Acknowledges and dead-letters.
    settler: Settler,
    /// Entries refused alone with nothing committed since; sent again with the next batch.
    held: Vec<Held>,
    /// Stops reading; the batch in hand is finished first.
    shutdown: CancellationToken,
    /// Deliveries after which an entry is dead-lettered.
    max_deliveries: u64,
    /// Entry field holding the payload.
    payload_field: String,
    /// Payloads above this many bytes are dead-lettered as `invalid` without being sent.
    max_payload_bytes: usize,
    /// Counters and histograms.
    metrics: Metrics,
}

impl Consumer {
    /// A consumer of one shard (`names`, one of `config.shards`) with `config`'s rules; connects lazily.
    /// It stores through `combiner`, and `postgres` and `redis` are the health of the two backends, all
    /// three shared by every consumer of the relay.
    pub fn new(
        config: &IngestConfig,
        names: StreamNames,
        combiner: Combiner,
        (postgres, redis): (BackendState, BackendState),
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Consumer, RedisError> {
        let payload_field = names.payload_field.clone();
        let group = Group::new(names);
        Ok(Consumer {
            reader: Reader::new(
                group.clone(),
                Link::new(config.redis.clone(), config.block)?,
                config,
                redis.clone(),
                metrics.clone(),
            ),
            triage: Triage::new(Storer::new(
                combiner,
                postgres,
                (group.clone(), Link::new(config.redis.clone(), Duration::ZERO)?),
                config.max_deliveries,
                metrics.clone(),
            )),
            settler: Settler::new(group, Link::new(config.redis.clone(), Duration::ZERO)?, redis, metrics.clone()),
            held: Vec::new(),
            shutdown,
            max_deliveries: config.max_deliveries,
            payload_field,
            max_payload_bytes: config.max_payload_bytes,
            metrics,
        })
    }

    /// Reads, stores and acknowledges until shutdown; the batch in hand is finished first.
    pub async fn run(mut self) {
        let names = self.reader.names();
        tracing::info!(stream = %names.stream, group = %names.group, consumer = %names.consumer, "consumer started");
        let mut unsettled: Option<Settlement> = None;
        let mut ahead: Option<Batch> = None;
        loop {
            // Supervision tests make the consumer panic here (compiled out without `failpoints`).
            fail::fail_point!("consumer");
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
                        // Nothing new, but held entries are tried again (the store waits before giving
                        // them back when nothing commits).
                        Ok(None) if !self.held.is_empty() => Batch { source: Source::New, entries: Vec::new() },
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
            let (mut settlement, mut to_store) = self.prepare(&batch).await;
            let held = std::mem::take(&mut self.held);
            // A held entry stays pending on this consumer, so a claim sweep or a re-scan of the own pending
            // list reads it again: the held copy (with its refusal) is the one sent, once.
            if !held.is_empty() {
                let held_ids: HashSet<&str> = held.iter().map(|h| h.entry.id.as_str()).collect();
                to_store.retain(|(entry, _)| !held_ids.contains(entry.id.as_str()));
            }
            let redelivered = matches!(batch.source, Source::Pending | Source::Claimed);
            let entries: Vec<&Entry> = held.iter().map(|h| &h.entry).chain(to_store.iter().map(|(e, _)| *e)).collect();
            let items: Vec<Item<'_>> = held
                .iter()
                .map(|h| Item {
                    id: &h.entry.id,
                    payload: &h.payload,
                    refused_at: Some(h.refused_at),
                    counted: h.counted,
                })
                .chain(to_store.iter().map(|(e, p)| Item {
                    id: &e.id,
                    payload: p,
                    refused_at: None,
                    counted: redelivered,
                }))
                .collect();
            let read_ahead = async {
                if self.shutdown.is_cancelled() {
                    return None;
                }
                match self.reader.next(false).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        // The next blocking read retries with backoff.
                        self.reader.lost(&e);
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
                tokio::join!(self.triage.store(&items, &self.shutdown), read_ahead, settle_previous);
            let Some(stored) = stored else {
                tracing::info!("shutdown while PostgreSQL is unavailable; the batch stays pending");
                break;
            };
            let mut still_held = Vec::new();
            for ((entry, item), result) in entries.iter().zip(&items).zip(stored) {
                match result {
                    Stored::Held(refused_at) => still_held.push(Held {
                        entry: (*entry).clone(),
                        payload: item.payload.to_owned(),
                        refused_at,
                        counted: item.counted,
                    }),
                    result => self.classify(entry, result, &mut settlement),
                }
            }
            drop(entries);
            drop(items);
            drop(held);
            self.metrics.held.set(still_held.len() as i64);
            self.held = still_held;
            unsettled = Some(settlement);
            ahead = next;
        }
        if !self.held.is_empty() {
            tracing::info!(count = self.held.len(), "entries refused alone stay pending; they are tried again later");
        }
        if let Some(s) = unsettled.take() {
            self.settler.settle(s, &self.shutdown).await;
        }
        self.settler.leave_if_idle().await;
        tracing::info!("consumer stopped");
    }

    /// Sorts a batch: what can go to the database, and what is settled without it (deleted entries,
    /// entries without a usable payload).
    async fn prepare<'b>(&mut self, batch: &'b Batch) -> (Settlement, Vec<(&'b Entry, &'b str)>) {
        // An empty batch only carries held entries again: it was not read.
        if !batch.entries.is_empty() {
            self.metrics.entries_read.with_label_values(&[batch.source.label()]).inc_by(batch.entries.len() as u64);
            self.metrics.batch_size.observe(batch.entries.len() as f64);
            let bytes = batch.entries.iter().map(Entry::bytes).sum::<usize>();
            self.metrics.batch_bytes.observe(bytes as f64);
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            if bytes > self.metrics.batch_bytes_peak.get() {
                self.metrics.batch_bytes_peak.set(bytes);
            }
        }
        let mut settlement = Settlement::default();
        let mut to_store = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            if entry.fields.is_none() {
                // Deleted from the stream while pending: nothing left to store.
                settlement.acks.push(entry.id.clone());
                continue;
            }
            match payload_of(entry, &self.payload_field, self.max_payload_bytes) {
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
                settlement.dead.push(dead_letter(entry, DeadReason::Invalid, error));
                return;
            }
            Stored::Rejected(error) => {
                settlement.dead.push(dead_letter(entry, DeadReason::Rejected, error));
                return;
            }
            // Kept by `run`, never settled.
            Stored::Held(_) => return,
            Stored::OverLimit(n) => {
                let error = format!(
                    "sent to the database {n} times without an answer (the relay or its connection died while \
                     storing it; limit {})",
                    self.max_deliveries
                );
                settlement.dead.push(dead_letter(entry, DeadReason::MaxDeliveries, error));
                return;
            }
        };
        self.metrics.rows.with_label_values(&[status]).inc();
        settlement.acks.push(entry.id.clone());
    }
}

/// A dead letter for `entry`.
fn dead_letter(entry: &Entry, reason: DeadReason, error: String) -> DeadLetter {
    DeadLetter { entry: entry.clone(), reason, error }
}

/// The payload text of an entry, or why it cannot be sent to the database: `(reason, error)`. A payload
/// above `limit` bytes is `invalid` here, without a round trip (the extension would say the same).
fn payload_of<'e>(entry: &'e Entry, field: &str, limit: usize) -> Result<&'e str, (DeadReason, String)> {
    let bytes =
        entry.field(field).ok_or_else(|| (DeadReason::MissingPayload, format!("entry has no field {field:?}")))?;
    if bytes.len() > limit {
        return Err((
            DeadReason::Invalid,
            format!("payload: {} bytes, above the limit of {limit} bytes (TRACKWAY_MAX_PAYLOAD_BYTES)", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| (DeadReason::Invalid, format!("payload: not valid UTF-8 (at byte {})", e.valid_up_to())))?;
    if let Some(at) = text.find('\0') {
        return Err((DeadReason::Invalid, format!("payload: contains a NUL character (at byte {at})")));
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
        assert_eq!(payload_of(&entry(&[("payload", b"{}")]), "payload", 10), Ok("{}"));
        assert_eq!(payload_of(&entry(&[("other", b"{}")]), "payload", 10).unwrap_err().0, DeadReason::MissingPayload);
        let (reason, error) = payload_of(&entry(&[("payload", b"{\xff}")]), "payload", 10).unwrap_err();
        assert_eq!((reason, error.as_str()), (DeadReason::Invalid, "payload: not valid UTF-8 (at byte 1)"));
        let (_, error) = payload_of(&entry(&[("payload", b"{\"a\":\"\0\"}")]), "payload", 10).unwrap_err();
        assert!(error.contains("NUL"), "{error}");
        let (reason, error) = payload_of(&entry(&[("payload", b"{\"a\":\"too long\"}")]), "payload", 10).unwrap_err();
        assert_eq!(
            (reason, error.as_str()),
            (DeadReason::Invalid, "payload: 16 bytes, above the limit of 10 bytes (TRACKWAY_MAX_PAYLOAD_BYTES)")
        );
    }
}
