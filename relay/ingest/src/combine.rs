//! One relay's shard consumers share their database writes (group commit): the batches they ask to store at
//! about the same moment go to PostgreSQL as one `trackway.ingest_batch` statement, and each consumer gets
//! back exactly the statuses of its own payloads.
//!
//! Why: every transaction that announces rows takes PostgreSQL's one NOTIFY lock at commit and holds it
//! until its commit is flushed, so announcing commits are serialized cluster-wide. A sharded stream read by
//! one consumer per shard makes small batches (at 2,000 entries/s over 16 shards, 1.4 entries per batch:
//! 1,471 commits/s), and their commits queued behind each other. Combining them makes fewer, fuller
//! commits without waiting for anything: a statement takes what is queued when a place frees up.
//!
//! At most [`IN_FLIGHT`] statements run at once; a caller that finds a place free takes the queue (its own
//! request first in line, the others' after it, within the batch limits) and runs it; a caller whose request
//! was taken by another waits for that one's answer. With one consumer (a stream that is not sharded) every
//! statement holds one batch, as before.
//!
//! Answers: statuses are split back by position (each request's payloads are consecutive, in its order).
//! A refusal of a combined statement says nothing about which request caused it, so each request is then
//! sent alone and gets its own answer (the triage of each consumer splits further as before). `Unavailable`
//! and `Lost` concern the statement, hence every request in it: each consumer retries, counting its
//! attempt as unanswered for `Lost`, exactly as if it had sent its batch alone. After a `Lost` statement
//! nothing is combined for [`ALONE_AFTER_LOST`]: should a payload kill the server's backend, the batches that
//! travelled with it are retried alone, store and are settled (which clears their counts), and only the
//! killer's own batch goes on counting towards `TRACKWAY_MAX_DELIVERIES`.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, Semaphore};
use trackway_database::Pool;

use crate::{
    database::{self, IngestError, Status},
    metrics::Metrics,
};

/// Statements in flight at once per relay. Two: one may run its statement while the other waits on the
/// NOTIFY lock for its commit; more would only queue at that lock, and fewer requests would be combined.
const IN_FLIGHT: usize = 2;

/// How long statements carry one batch each after a statement got no answer.
const ALONE_AFTER_LOST: Duration = Duration::from_secs(30);

/// The answer to one request.
type Answer = Result<Vec<Status>, IngestError>;

/// A consumer's batch waiting for a statement.
struct Request {
    /// Its payloads, in its order.
    payloads: Vec<String>,
    /// Their bytes (for the combined statement's budget).
    bytes: usize,
    /// Where its answer goes. Dropped unanswered only if the statement's caller was dropped mid-way: the
    /// request then counts as sent without an answer (`Lost`).
    reply: oneshot::Sender<Answer>,
}

/// The shared writer of a relay's consumers. Cheap to clone (one per consumer).
#[derive(Clone)]
pub struct Combiner {
    inner: Arc<Inner>,
}

struct Inner {
    /// PostgreSQL connections.
    pool: Pool,
    /// Requests not yet taken by a statement, in arrival order. Unbounded by count, bounded by the
    /// consumers: each has at most one request queued.
    queue: Mutex<VecDeque<Request>>,
    /// Places for statements in flight.
    places: Semaphore,
    /// Most payloads in one statement (`TRACKWAY_BATCH_SIZE`).
    max_entries: usize,
    /// Most payload bytes in one statement (`TRACKWAY_BATCH_BYTES`; a request above it goes alone).
    max_bytes: usize,
    /// Longest wait for one answer (`TRACKWAY_INGEST_TIMEOUT_MS`).
    timeout: Duration,
    /// `statements`: one per statement sent.
    metrics: Metrics,
    /// Statements committed that stored at least one row (see [`Combiner::commits`]).
    commits: AtomicU64,
    /// Until when statements carry one batch each (set when a statement got no answer).
    alone_until: Mutex<Option<Instant>>,
}

impl Combiner {
    /// A writer over `pool`, combining up to `max_entries` payloads and `max_bytes` bytes per statement.
    pub fn new(pool: Pool, max_entries: usize, max_bytes: usize, timeout: Duration, metrics: Metrics) -> Combiner {
        Combiner {
            inner: Arc::new(Inner {
                pool,
                queue: Mutex::new(VecDeque::new()),
                places: Semaphore::new(IN_FLIGHT),
                max_entries: max_entries.max(1),
                max_bytes,
                timeout,
                metrics,
                commits: AtomicU64::new(0),
                alone_until: Mutex::new(None),
            }),
        }
    }

    /// Statements committed since the relay started that stored at least one row, whichever consumers'
    /// batches they carried: the evidence that the database accepts writes, by which the triage judges an
    /// entry refused alone (one consumer's quiet shard is judged by the others' commits). A commit that
    /// stored nothing (only invalid or duplicate payloads) proves nothing: during an outage that refuses
    /// every INSERT, a batch of invalid payloads still commits, since it inserts nothing.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Acquire)
    }

    /// Whether the database would run the ingest call now: on a pooled connection (opened if none is idle),
    /// `ingest_batch` of no payloads answers (the server takes the login, the extension is there, the relay
    /// may call it). Stores nothing; the connection goes back to the pool for the statement that follows.
    /// An error says why not; none of them can be the data's doing.
    pub async fn ready(&self) -> Result<(), IngestError> {
        let client = database::ingest::connection(&self.inner.pool).await?;
        database::ingest_batch(&self.inner.pool, client, &[], self.inner.timeout).await.map(drop)
    }

    /// Stores `payloads` (with whatever other consumers have queued); one status per payload, in order.
    pub async fn ingest(&self, payloads: &[&str]) -> Answer {
        let (reply, mut answer) = oneshot::channel();
        let bytes = payloads.iter().map(|p| p.len()).sum();
        let payloads = payloads.iter().map(|p| (*p).to_owned()).collect();
        self.inner.lock_queue().push_back(Request { payloads, bytes, reply });
        loop {
            tokio::select! {
                biased;
                answered = &mut answer => return answered.unwrap_or_else(|_| Err(abandoned())),
                place = self.inner.places.acquire() => {
                    let Ok(_place) = place else { return Err(abandoned()) };
                    let requests = self.inner.take();
                    if requests.is_empty() {
                        // Another statement took this request: its answer comes from there.
                        return answer.await.unwrap_or_else(|_| Err(abandoned()));
                    }
                    self.inner.run(requests).await;
                }
            }
        }
    }
}

impl Inner {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Request>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The requests of the next statement: the first in line, and those after it while the statement stays
    /// within the limits.
    fn take(&self) -> Vec<Request> {
        let alone = self.alone_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| Instant::now() < t);
        let mut queue = self.lock_queue();
        let Some(first) = queue.pop_front() else { return Vec::new() };
        let (mut entries, mut bytes) = (first.payloads.len(), first.bytes);
        let mut taken = vec![first];
        while let Some(next) = queue.front().filter(|_| !alone) {
            if entries + next.payloads.len() > self.max_entries || bytes + next.bytes > self.max_bytes {
                break;
            }
            entries += next.payloads.len();
            bytes += next.bytes;
            taken.extend(queue.pop_front());
        }
        taken
    }

    /// Runs one statement for `requests` and answers each.
    async fn run(&self, mut requests: Vec<Request>) {
        if requests.len() == 1 {
            let request = requests.remove(0);
            let answer = self.call(&request.payloads).await;
            let _ = request.reply.send(answer);
            return;
        }
        let all: Vec<&String> = requests.iter().flat_map(|r| &r.payloads).collect();
        match self.call(&all).await {
            Ok(statuses) => {
                let mut statuses = statuses.into_iter();
                for request in requests {
                    let own: Vec<Status> = statuses.by_ref().take(request.payloads.len()).collect();
                    let _ = request.reply.send(Ok(own));
                }
            }
            Err(IngestError::Refused { .. }) => {
                // Which request caused it is unknown: each is sent alone and answered for itself.
                for request in requests {
                    let answer = self.call(&request.payloads).await;
                    let _ = request.reply.send(answer);
                }
            }
            Err(error) => {
                for request in requests {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// One `ingest_batch` statement on a pooled connection.
    async fn call<S: AsRef<str>>(&self, payloads: &[S]) -> Answer {
        let client = database::ingest::connection(&self.pool).await?;
        self.metrics.statements.inc();
        let payloads: Vec<&str> = payloads.iter().map(AsRef::as_ref).collect();
        let answer = database::ingest_batch(&self.pool, client, &payloads, self.timeout).await;
        match &answer {
            Ok(statuses) if statuses.contains(&Status::Inserted) => {
                // Before any caller sees the answer: a refusal judged after it sees this commit counted.
                self.commits.fetch_add(1, Ordering::AcqRel);
            }
            Err(IngestError::Lost(_)) => {
                *self.alone_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + ALONE_AFTER_LOST);
            }
            _ => {}
        }
        answer
    }
}

/// A request whose statement's caller stopped before answering: it may have been sent.
fn abandoned() -> IngestError {
    IngestError::Lost("the statement carrying this batch was abandoned before its answer".to_owned())
}
