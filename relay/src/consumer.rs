//! The ingest loop: stream entries → `trackway.ingest_batch` → XACK, nothing lost, nothing twice.
//!
//! Order of reading: first this consumer's own pending entries (left by a crash or a lost connection),
//! then entries idle too long on other consumers (a claim sweep, when one is due), then new entries.
//! Each batch is stored with one database call and acknowledged only after that call has committed; an
//! entry that cannot be stored is dead-lettered and acknowledged in one atomic Redis step. A crash at any
//! point leaves entries pending, and handling them again is harmless: stored rows come back as
//! `duplicate`, and a dead letter is written only while its entry is still pending.
//!
//! Nothing is blamed on the data without proof (see `Storer`): a batch the server refuses is split, an
//! entry becomes a `rejected` dead letter only when it fails alone while other writes commit, and a
//! database that refuses every write is an outage, retried with backoff. Reads are bounded by bytes
//! (`TRACKWAY_BATCH_BYTES`), and `max_deliveries` counts store attempts that got no answer (kept in
//! `<stream>:attempts`), not reads.
//!
//! Three stages overlap so the database is never idle waiting for Redis: while batch N is stored, batch
//! N+1 is read (without blocking) and batch N−1 is acknowledged. Each stage has its own Redis connection
//! where it needs one, so a blocking read never delays an acknowledgement. When nothing was read ahead,
//! the pending acknowledgement is finished before the next blocking read.

use std::{
    collections::VecDeque,
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
    redis::{DeadLetter, Entry, Group, Link},
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
    /// The server refused this payload alone, and again alone after another write had committed: the
    /// fault follows the payload, not the moment.
    Rejected(String),
    /// The server refused this payload alone and nothing has committed since, so nothing shows the
    /// database works: not judged yet. Value: [`Storer::commits`] at that refusal.
    Held(u64),
    /// Sent to the database more than `max_deliveries` times without an answer (the relay or its
    /// connection died each time): not sent again. Value: the count.
    OverLimit(u64),
}

/// One payload for [`Storer::store`].
#[derive(Clone, Copy)]
struct Item<'a> {
    /// Its stream entry id.
    id: &'a str,
    /// The payload text.
    payload: &'a str,
    /// [`Storer::commits`] when it was last refused alone (held entries), else `None`.
    refused_at: Option<u64>,
    /// Whether its store attempts are counted: it was delivered before (own pending or claimed) or an
    /// attempt got no answer. The first attempt of a new entry is not counted (no Redis call on the normal
    /// path); if the relay dies during it, the entry comes back as pending and is counted from then on.
    counted: bool,
}

/// An entry refused alone and not judged yet: it stays pending (not acknowledged) and is sent again with
/// the next batch, so a later commit can tell whether the fault follows it.
struct Held {
    /// The entry.
    entry: Entry,
    /// Its payload text.
    payload: String,
    /// [`Storer::commits`] when it was last refused alone.
    refused_at: u64,
    /// Whether its store attempts are counted (see [`Item::counted`]).
    counted: bool,
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
    /// A consumer for `config`; connects lazily.
    pub fn new(
        config: &Config,
        pool: Pool,
        postgres: BackendState,
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
                batch_bytes: config.batch_bytes,
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
                postgres,
                backoff: Backoff::default(),
                commits: 0,
                group: group.clone(),
                link: Link::new(config.redis.clone(), Duration::ZERO)?,
                max_deliveries: config.max_deliveries,
                ingest_timeout: config.ingest_timeout,
                metrics: metrics.clone(),
            },
            settler: Settler {
                group,
                link: Link::new(config.redis.clone(), Duration::ZERO)?,
                redis,
                backoff: Backoff::default(),
                metrics: metrics.clone(),
            },
            held: Vec::new(),
            shutdown,
            max_deliveries: config.max_deliveries,
            payload_field: config.names.payload_field.clone(),
            max_payload_bytes: config.max_payload_bytes,
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
            let (mut settlement, to_store) = self.prepare(&batch).await;
            let held = std::mem::take(&mut self.held);
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
                tokio::join!(self.storer.store(&items, &self.shutdown), read_ahead, settle_previous);
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
                settlement.dead.push(dead_letter(entry, "invalid", error));
                return;
            }
            Stored::Rejected(error) => {
                settlement.dead.push(dead_letter(entry, "rejected", error));
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
                settlement.dead.push(dead_letter(entry, "max_deliveries", error));
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

/// Refusals in a row, with nothing committed in between, after which the storer suspects an outage: the
/// batch and both its halves.
const OUTAGE_STREAK: u32 = 3;

/// Storing stage: one `ingest_batch` call per batch, and the rule that tells an outage from bad data.
///
/// **The fault follows the entry, not the moment.** A refused statement (`IngestError::Refused`) does not
/// say whose fault it is: a full NOTIFY queue (54000), an internal error (XX000), an operator's guard
/// trigger (P0001) or a statement timeout refuse good data too. So a refused batch is split in halves
/// (breadth first), and an entry becomes a `rejected` dead letter only when it was refused *alone*, then
/// another write committed, and then it was refused alone *again*. Evidence comes only from commits:
///
/// - When the batch and both its halves have been refused in a row ([`OUTAGE_STREAK`]) with nothing
///   committed, one random entry not yet refused alone is tried alone (a probe). If that commits, the
///   database works and the splitting goes on. If not, it is an outage: nothing is judged, the whole
///   unresolved rest is retried as one batch after a backoff (`batches_total{outcome="retried"}`, one log
///   line at the start and one at the end, `/readyz` 503 with the server's error).
/// - An entry refused alone with no commit since — above all a batch of one entry, which has no sibling to
///   prove the database works — is *held*: left pending, not acknowledged, and sent again with the next
///   batch. When anything commits after its refusal it is tried alone once more and judged. A held entry
///   with nothing else to send is retried with backoff and never judged on its own evidence, however long
///   the database refuses.
///
/// Failures that depend on the batch's size are refusals too: `statement_timeout` (57014), the relay's own
/// `TRACKWAY_INGEST_TIMEOUT_MS` (the statement is cancelled on the server: SQLSTATE `timeout`), out of
/// memory (53200), a message too large to send (`too_large`). Splitting shrinks the batch until the pieces
/// pass; a single entry that still fails is judged by the same rule as any other.
///
/// Unreachable databases and environment errors (`IngestError::Unavailable`) are retried whole with
/// backoff, without splitting. A delay in which the fault (say a guard trigger) switches on between a
/// commit and an entry's second lone refusal could still blame that entry; it takes two refusals of the
/// entry alone around a commit, which an outage that refuses everything never produces.
struct Storer {
    /// PostgreSQL connections.
    pool: Pool,
    /// PostgreSQL up/down (shared with `/readyz`), logged once per change.
    postgres: BackendState,
    /// Delay between attempts.
    backoff: Backoff,
    /// Statements committed since the relay started (the clock that orders refusals and commits).
    commits: u64,
    /// Group operations (the attempt counts).
    group: Group,
    /// Connection for counting attempts.
    link: Link,
    /// Unanswered attempts after which an entry is given up.
    max_deliveries: u64,
    /// Longest wait for one answer (then the statement is cancelled; a refusal with SQLSTATE `timeout`).
    ingest_timeout: Duration,
    /// Counters and histograms.
    metrics: Metrics,
}

/// What one statement did.
enum Attempt {
    /// Committed; one status per payload.
    Committed(Vec<Status>),
    /// Refused by the server.
    Refused(String),
    /// Not sent: these entries (index, count) already had `max_deliveries` unanswered attempts.
    OverLimit(Vec<(usize, u64)>),
}

impl Storer {
    /// Stores the payloads (see [`Storer`] for the rule). Every result is final except [`Stored::Held`].
    /// `None` at shutdown during an outage.
    ///
    /// **Attempts** (`max_deliveries`): before a counted item is sent, its count in `<stream>:attempts` goes
    /// up by one, and once the server answered (commit or refusal) it goes down again (the settle script
    /// removes it when the entry is settled). What stays counted is attempts that got no answer because
    /// the relay or its connection died with the entry in flight; more than `max_deliveries` of them and the
    /// entry is dead-lettered as `max_deliveries` instead of being sent again. Reads, restarts and outages
    /// in which nothing reaches the database (server down, login refused) count nothing.
    async fn store(&mut self, items: &[Item<'_>], shutdown: &CancellationToken) -> Option<Vec<Stored>> {
        let n = items.len();
        let commits_before = self.commits;
        let mut results: Vec<Option<Stored>> = vec![None; n];
        let mut lone: Vec<Option<u64>> = items.iter().map(|i| i.refused_at).collect();
        let mut counted: Vec<bool> = items.iter().map(|i| i.counted).collect();
        let mut queue: VecDeque<Vec<usize>> = VecDeque::new();
        if n > 0 {
            queue.push_back((0..n).collect());
        }
        let mut streak = 0;
        let mut last_error = String::new();
        // Whether this call already waited after an outage round.
        let mut waited = false;
        loop {
            while let Some(mut set) = queue.pop_front() {
                set.retain(|&i| results[i].is_none());
                if set.is_empty() {
                    continue;
                }
                match self.attempt(items, &set, &mut counted, shutdown).await? {
                    Attempt::OverLimit(over) => {
                        for (i, count) in over {
                            results[i] = Some(Stored::OverLimit(count));
                        }
                        queue.push_front(set);
                    }
                    Attempt::Committed(statuses) => {
                        streak = 0;
                        for (&i, status) in set.iter().zip(statuses) {
                            results[i] = Some(Stored::Status(status));
                        }
                    }
                    Attempt::Refused(error) => {
                        streak += 1;
                        if let [i] = set[..] {
                            match lone[i] {
                                Some(at) if at < self.commits => results[i] = Some(Stored::Rejected(error.clone())),
                                _ => lone[i] = Some(self.commits),
                            }
                        } else {
                            self.metrics.batches.with_label_values(&["split"]).inc();
                            tracing::debug!(entries = set.len(), %error, "database refused the batch; splitting it");
                            let right = set.split_off(set.len() / 2);
                            queue.push_back(set);
                            queue.push_back(right);
                        }
                        last_error = error;
                        if streak >= OUTAGE_STREAK {
                            streak = 0;
                            if !self.probe(items, &mut results, &mut lone, &mut counted, shutdown).await? {
                                // Everything tried was refused, one entry alone too: an outage.
                                let rest: Vec<usize> = (0..n).filter(|&i| results[i].is_none()).collect();
                                if rest.is_empty() {
                                    break;
                                }
                                if !self.outage(&last_error, shutdown).await {
                                    return None;
                                }
                                waited = true;
                                queue.clear();
                                if rest.iter().all(|&i| lone[i].is_some()) {
                                    // Only entries refused alone are left: give them back as held, so the
                                    // next batch can show whether the database works.
                                    break;
                                }
                                queue.push_back(rest);
                            }
                        }
                    }
                }
            }
            // Entries refused alone before the latest commit are tried alone again, and judged.
            let judge: Vec<usize> =
                (0..n).filter(|&i| results[i].is_none() && lone[i].is_some_and(|at| at < self.commits)).collect();
            if judge.is_empty() {
                break;
            }
            queue.extend(judge.into_iter().map(|i| vec![i]));
        }
        let held = results.iter().filter(|r| r.is_none()).count();
        if held > 0 && self.commits == commits_before && !waited {
            // Nothing stored: the database refused every write of this call. Wait before they come back.
            if !self.outage(&last_error, shutdown).await {
                return None;
            }
        }
        Some(results.into_iter().zip(lone).map(|(r, at)| r.unwrap_or(Stored::Held(at.unwrap_or(0)))).collect())
    }

    /// Tries one random entry that was not refused alone yet, alone. `true` when it committed.
    async fn probe(
        &mut self,
        items: &[Item<'_>],
        results: &mut [Option<Stored>],
        lone: &mut [Option<u64>],
        counted: &mut [bool],
        shutdown: &CancellationToken,
    ) -> Option<bool> {
        let candidates: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none() && lone[i].is_none()).collect();
        if candidates.is_empty() {
            return Some(false);
        }
        let i = candidates[fastrand::usize(..candidates.len())];
        match self.attempt(items, &[i], counted, shutdown).await? {
            Attempt::OverLimit(over) => {
                for (i, count) in over {
                    results[i] = Some(Stored::OverLimit(count));
                }
                Some(false)
            }
            Attempt::Committed(mut statuses) => {
                results[i] = statuses.pop().map(Stored::Status);
                Some(true)
            }
            Attempt::Refused(_) => {
                lone[i] = Some(self.commits);
                Some(false)
            }
        }
    }

    /// Sends the payloads at `set` as one statement; retries while the database is unavailable. `None` at
    /// shutdown during an outage.
    async fn attempt(
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
                    self.commits += 1;
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

    /// Records that the database refuses every write (an outage, not the data) and waits. `false` at
    /// shutdown.
    async fn outage(&mut self, error: &str, shutdown: &CancellationToken) -> bool {
        self.metrics.batches.with_label_values(&["retried"]).inc();
        self.postgres.failed(&format!("refusing every write: {error}"));
        self.backoff.wait(shutdown).await
    }
}

/// Most acknowledgements in one settle script call.
const SETTLE_MAX_IDS: usize = 5000;
/// Most dead-letter bytes in one settle script call (a larger single dead letter goes alone).
const SETTLE_MAX_BYTES: usize = 8 << 20;

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
    /// entries stay pending and come back as duplicates). One script call carries at most
    /// [`SETTLE_MAX_IDS`] acknowledgements or [`SETTLE_MAX_BYTES`] of dead letters (at least one), so a
    /// batch of large dead letters becomes several calls instead of one huge request.
    async fn settle(&mut self, settlement: Settlement, shutdown: &CancellationToken) {
        let Settlement { acks, dead } = settlement;
        let acks: Vec<&str> = acks.iter().map(String::as_str).collect();
        for part in acks.chunks(SETTLE_MAX_IDS) {
            if !self.settle_part(part, &[], shutdown).await {
                return;
            }
        }
        let mut rest = &dead[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take_while(|letter| {
                    let fits = bytes == 0 || bytes + letter.bytes() <= SETTLE_MAX_BYTES;
                    bytes += letter.bytes();
                    fits
                })
                .count()
                .clamp(1, SETTLE_MAX_IDS);
            let (part, later) = rest.split_at(take);
            if !self.settle_part(&[], part, shutdown).await {
                return;
            }
            rest = later;
        }
    }

    /// One settle script call, retried until it succeeds. `false` at shutdown.
    async fn settle_part(&mut self, acks: &[&str], dead: &[DeadLetter], shutdown: &CancellationToken) -> bool {
        loop {
            match self.group.settle(&mut self.link, acks, dead).await {
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
                    return true;
                }
                Err(e) => {
                    self.metrics.settle_failures.inc();
                    self.redis.failed(&e);
                    if !self.backoff.wait(shutdown).await {
                        tracing::info!("shutdown while Redis is unavailable; handled entries stay pending");
                        return false;
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

/// The payload text of an entry, or why it cannot be sent to the database: `(reason, error)`. A payload
/// above `limit` bytes is `invalid` here, without a round trip (the extension would say the same).
fn payload_of<'e>(entry: &'e Entry, field: &str, limit: usize) -> Result<&'e str, (&'static str, String)> {
    let bytes = entry.field(field).ok_or_else(|| ("missing_payload", format!("entry has no field {field:?}")))?;
    if bytes.len() > limit {
        return Err((
            "invalid",
            format!("payload: {} bytes, above the limit of {limit} bytes (TRACKWAY_MAX_PAYLOAD_BYTES)", bytes.len()),
        ));
    }
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
        assert_eq!(payload_of(&entry(&[("payload", b"{}")]), "payload", 10), Ok("{}"));
        assert_eq!(payload_of(&entry(&[("other", b"{}")]), "payload", 10).unwrap_err().0, "missing_payload");
        let (reason, error) = payload_of(&entry(&[("payload", b"{\xff}")]), "payload", 10).unwrap_err();
        assert_eq!((reason, error.as_str()), ("invalid", "payload: not valid UTF-8 (at byte 1)"));
        let (_, error) = payload_of(&entry(&[("payload", b"{\"a\":\"\0\"}")]), "payload", 10).unwrap_err();
        assert!(error.contains("NUL"), "{error}");
        let (reason, error) = payload_of(&entry(&[("payload", b"{\"a\":\"too long\"}")]), "payload", 10).unwrap_err();
        assert_eq!(
            (reason, error.as_str()),
            ("invalid", "payload: 16 bytes, above the limit of 10 bytes (TRACKWAY_MAX_PAYLOAD_BYTES)")
        );
    }
}
