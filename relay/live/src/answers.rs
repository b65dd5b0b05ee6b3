//! Answers to `subscribe` — snapshots and replays — served beside the feed, on database connections of
//! their own, so that no replay however long, and no storm of resuming clients, holds back anyone's live
//! positions.
//!
//! **The hand-over (no gap, nothing twice).** The feed reads new rows in a REPEATABLE READ transaction and
//! exports its snapshot S (`pg_export_snapshot`). Before it commits, every answer connection it hands a
//! batch of subscriptions to starts a transaction on that same snapshot (`SET TRANSACTION SNAPSHOT`), and
//! the feed holds those subscriptions in the router: the rows of its later reads, which are exactly the
//! rows S does not see, wait in each subscription's hold. The answer — the latest positions as S sees them,
//! or every row of the target after `since` that S sees — is read on the answer connection, however long
//! that takes, while the feed goes on. The answer goes to the feed ([`Command::Answered`]), which queues it
//! and the held rows right after it, in one step: whatever the feed routes to the client before that (its
//! other subscriptions' positions) comes before the `subscribed` frame, never between it and the held
//! rows — a client that takes each live position after `subscribed` as this subscription's resume point
//! (docs/live-protocol.md §7.2) would otherwise skip held rows older than it.
//!
//! **One answer's failure is its own.** The server refusing one answer's statement (a statement timeout on a
//! huge group's snapshot, say) answers only the subscriptions waiting for that statement `unavailable`: the
//! transaction goes back to a savepoint set right after it took the snapshot, and the batch goes on. Only a
//! failure of the connection or its path fails the batch (every answer in it not given yet).
//!
//! **Bounded.** At most `TRACKWAY_LIVE_ANSWER_CONNECTIONS` batches run at once; every statement runs under
//! `statement_timeout`; a replay holds at most `TRACKWAY_LIVE_MAX_REPLAY` rows, and is read only when at
//! most `TRACKWAY_LIVE_MAX_REPLAY_BEHIND` rows of every device were stored after its `since` (finding a
//! target's rows walks all of them: a device's `since` from an hour back would otherwise run into the
//! statement timeout, be answered `unavailable`, and cost the same again on every retry). Subscriptions
//! that find every connection busy wait in the feed for the next free one, and the session's subscribe
//! timeout bounds that wait.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_postgres::{types::ToSql, Statement};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{
    command::{Command, Subscribe},
    config::ReplayLimits,
    metrics::LiveMetrics,
    outbox::AnswerFrame,
    protocol::{self, ErrorCode, Refusal, Snapshot, Target, Text},
};
use crate::database::{self, answered, sql, DbError, Driver};

/// The longest one statement of an answer may run: a replay or snapshot that takes longer is answered
/// `unavailable` rather than holding a connection other subscriptions wait for.
pub const STATEMENT_TIMEOUT_MS: u32 = 5_000;
/// How long the relay waits for an answer statement's reply: the server's own `statement_timeout`, and a
/// margin for when the path, not the statement, is what stopped.
const ANSWER_BOUND: Duration = database::beyond(Duration::from_millis(STATEMENT_TIMEOUT_MS as u64));
/// How long an answer connection may sit in a transaction without a statement: a relay that stopped
/// mid-batch must not hold back vacuum for long.
const IDLE_IN_TRANSACTION_MS: u32 = 60_000;

/// Whether a `since` names a transaction id the database has not handed out yet (`xmax`).
fn ahead_of(since: Option<&str>, xmax: u64) -> bool {
    since.and_then(|c| trackway_wire::Cursor::parse(c).ok()).is_some_and(|c| c.xid > xmax)
}

/// One answer connection and its prepared statements.
pub struct Answerer {
    client: tokio_postgres::Client,
    snapshot_devices: Statement,
    snapshot_groups: Statement,
    replay: Statement,
    rows_behind: Statement,
    xmax: Statement,
    /// Dropped with the connection: closes it even while its path is silent.
    _driver: Driver,
}

/// The answer connections, owned by the feed: the idle ones, and the batches running on the others.
pub struct Answers {
    /// Where to connect (with the statement and idle-transaction timeouts).
    database: tokio_postgres::Config,
    /// Most batches at once (`TRACKWAY_LIVE_ANSWER_CONNECTIONS`).
    limit: usize,
    /// Connections open and free.
    idle: Vec<Answerer>,
    /// Batches running; each gives its connection back when it ends (none when it broke).
    running: JoinSet<Option<Answerer>>,
    /// For the busy-connections gauge.
    metrics: LiveMetrics,
}

impl Answers {
    /// Up to `limit` connections to `database`, opened when first needed.
    pub fn new(database: &tokio_postgres::Config, limit: usize, metrics: LiveMetrics) -> Answers {
        let timeouts =
            format!("-c statement_timeout={STATEMENT_TIMEOUT_MS} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}");
        let database = database::with_settings(database, &timeouts);
        Answers { database, limit: limit.max(1), idle: Vec::new(), running: JoinSet::new(), metrics }
    }

    /// Connections not running a batch (open or still to open).
    pub fn free(&self) -> usize {
        self.limit.saturating_sub(self.running.len())
    }

    /// Starts `n` (at most [`Answers::free`]) transactions on the exported snapshot `snapshot`, opening
    /// connections as needed. Must be called while the exporting transaction is open.
    pub async fn begin(&mut self, n: usize, snapshot: &str) -> Result<Vec<Answerer>, DbError> {
        let begin = sql::begin_on_snapshot(snapshot);
        let mut taken = Vec::with_capacity(n);
        for _ in 0..n.min(self.free()) {
            let answerer = match self.idle.pop().filter(|a| !a.client.is_closed()) {
                Some(answerer) => answerer,
                None => self.connect().await?,
            };
            // On an error the connections taken so far are dropped (closed, their transactions with them).
            answered("BEGIN on the feed's snapshot", ANSWER_BOUND, answerer.client.batch_execute(&begin)).await?;
            taken.push(answerer);
        }
        Ok(taken)
    }

    async fn connect(&self) -> Result<Answerer, DbError> {
        let (client, driver) = database::open(&self.database, "answer").await?;
        let prepare = |text| answered("preparing an answer statement", ANSWER_BOUND, client.prepare(text));
        Ok(Answerer {
            snapshot_devices: prepare(sql::SNAPSHOT_DEVICES).await?,
            snapshot_groups: prepare(sql::SNAPSHOT_GROUPS).await?,
            replay: prepare(sql::REPLAY).await?,
            rows_behind: prepare(sql::ROWS_BEHIND).await?,
            xmax: prepare(sql::XMAX).await?,
            client,
            _driver: driver,
        })
    }

    /// Runs `batch` on its connection, beside the feed.
    pub fn spawn(&mut self, batch: Batch) {
        self.running.spawn(batch.run());
        self.metrics.answer_connections_busy.set(self.running.len() as i64);
    }

    /// Waits for a running batch to end and keeps its connection for the next one. Never resolves while
    /// none runs (for the feed's `select!`; cancel-safe).
    pub async fn finished(&mut self) {
        match self.running.join_next().await {
            Some(ended) => self.keep(ended),
            None => std::future::pending::<()>().await,
        }
    }

    /// Keeps the connections of the batches that have ended, without waiting. [`Answers::free`] counts a
    /// batch as running until it is joined, and the feed may not get to [`Answers::finished`] for a long
    /// time: while subscriptions wait, any command (a connection closing, say) ends its wait first. Without
    /// this, a steady flow of commands kept ended batches counted as running, and the waiting
    /// subscriptions were answered `unavailable` at their timeout with every connection idle.
    pub fn reap(&mut self) {
        while let Some(ended) = self.running.try_join_next() {
            self.keep(ended);
        }
    }

    /// Keeps the connection of an ended batch (none when it broke).
    fn keep(&mut self, ended: Result<Option<Answerer>, tokio::task::JoinError>) {
        match ended {
            Ok(Some(answerer)) => self.idle.push(answerer),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "an answer batch ended abnormally; its connection is dropped"),
        }
        self.metrics.answer_connections_busy.set(self.running.len() as i64);
    }
}

/// What a subscription is answered with: a `subscribed` and its `snapshot` or `positions` frames, or an
/// `error`.
struct Answer {
    frames: Vec<AnswerFrame>,
}

impl Answer {
    fn refusal(refusal: &Refusal) -> Answer {
        Answer { frames: vec![AnswerFrame::own("error", protocol::error_frame(refusal))] }
    }

    /// A `subscribed` frame of this client's own followed by shared frames of `kind`.
    fn subscribed(first: Text, kind: &'static str, rest: impl IntoIterator<Item = (Text, u64)>) -> Answer {
        let mut frames = vec![AnswerFrame { text: first, kind: "subscribed", positions: 0 }];
        frames.extend(rest.into_iter().map(|(text, positions)| AnswerFrame { text, kind, positions }));
        Answer { frames }
    }
}

/// Why a replay was not read: the answer `resume_too_far` says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TooFar {
    /// The cursor names a transaction id the database has not handed out (made before a failover or a
    /// restore, or made up): resuming from it would skip the rows of every transaction below it to come.
    Ahead,
    /// More positions of the target than a replay holds.
    Positions,
    /// About this many rows of every device stored after `since`, more than a replay may walk.
    RowsBehind(i64),
}

impl TooFar {
    /// The metric's label.
    fn label(self) -> &'static str {
        match self {
            TooFar::Ahead => "ahead",
            TooFar::Positions => "positions",
            TooFar::RowsBehind(_) => "rows_behind",
        }
    }

    /// The `resume_too_far` message.
    fn message(self, limits: ReplayLimits) -> String {
        match self {
            TooFar::Ahead => "this cursor is ahead of the database (made before a failover or a restore?): \
                              subscribe without since to start from a snapshot"
                .to_owned(),
            TooFar::Positions => format!(
                "more than {} positions after this cursor: subscribe without since to start from a snapshot",
                limits.positions
            ),
            TooFar::RowsBehind(rows) => format!(
                "about {rows} positions of all devices were stored after this cursor, more than a replay reads \
                 through ({}): subscribe without since to start from a snapshot",
                limits.rows_behind
            ),
        }
    }
}

/// What reading one target's replay from one cursor came to.
enum Replayed {
    /// Read: its frames.
    Read(Replay),
    /// Not read (`resume_too_far`).
    TooFar(TooFar),
    /// The server refused a statement of it (a statement timeout, say): `unavailable`.
    Failed,
}

/// A replay read once and framed once, for every client resuming the same target from the same cursor.
struct Replay {
    /// Positions in it.
    count: usize,
    /// Its `positions` frames and the positions in each.
    frames: Vec<(Utf8Bytes, u64)>,
}

/// A subscription handed to an answer connection, with the ticket of its hold in the router.
pub struct Job {
    /// The request.
    pub request: Subscribe,
    /// Names the hold, so that a late word about an abandoned request never releases a newer one.
    pub ticket: u64,
}

/// Subscriptions answered on one connection from the feed's snapshot.
pub struct Batch {
    /// The connection, in a transaction on the feed's snapshot.
    pub answerer: Answerer,
    /// The feed's cursor at that snapshot: a snapshot's resume point.
    pub cursor: String,
    /// What to answer.
    pub jobs: Vec<Job>,
    /// How far back a replay may reach.
    pub replay: ReplayLimits,
    /// To tell the feed each answer is queued (so the held rows follow it).
    pub commands: mpsc::Sender<Command>,
    /// Live metrics.
    pub metrics: LiveMetrics,
}

impl Batch {
    /// Answers every job; gives the connection back (none when the database failed: the jobs not answered
    /// yet are answered `unavailable`, and may be asked again).
    async fn run(mut self) -> Option<Answerer> {
        let started = Instant::now();
        let mut wanted = Vec::with_capacity(self.jobs.len());
        for job in std::mem::take(&mut self.jobs) {
            if job.request.abandoned() {
                self.conclude(job, None, false).await;
            } else {
                wanted.push(job);
            }
        }
        let (mut snapshots, replays): (Vec<Job>, Vec<Job>) =
            wanted.into_iter().partition(|j| j.request.since.is_none());
        let mut left = replays.into_iter();
        let served = match self.serve_snapshots(&mut snapshots).await {
            Err(e) => Err(e),
            Ok(()) => self.serve_replays(&mut left).await,
        };
        let connection = match served {
            Ok(()) => answered("COMMIT", ANSWER_BOUND, self.answerer.client.batch_execute(sql::COMMIT)).await,
            Err(e) => Err(e),
        };
        self.metrics.answer_seconds.observe(started.elapsed().as_secs_f64());
        match connection {
            Ok(()) => Some(self.answerer),
            Err(e) => {
                tracing::warn!(error = %e, "answering subscriptions failed; they are answered `unavailable`");
                for job in snapshots.into_iter().chain(left) {
                    self.metrics.answers_failed.with_label_values(&["batch"]).inc();
                    let refusal = Refusal::database_unavailable(job.request.id.clone());
                    self.conclude(job, Some(Answer::refusal(&refusal)), false).await;
                }
                None
            }
        }
    }

    /// Snapshots for every job without `since`: two queries for all of them. Served jobs leave `waiting`.
    async fn serve_snapshots(&self, waiting: &mut Vec<Job>) -> Result<(), DbError> {
        if waiting.is_empty() {
            return Ok(());
        }
        let ids = |kind: &str| -> Vec<&str> {
            let mut ids: Vec<&str> =
                waiting.iter().map(|j| &j.request.target).filter(|t| t.kind() == kind).map(Target::id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let (devices, groups) = (ids("device"), ids("group"));
        let a = &self.answerer;
        let mut docs: HashMap<Target, Vec<String>> = HashMap::new();
        // The kinds of target whose query the server refused: their subscriptions are answered `unavailable`.
        let mut failed: HashSet<&str> = HashSet::new();
        for (kind, ids, statement) in [("device", devices, &a.snapshot_devices), ("group", groups, &a.snapshot_groups)]
        {
            if ids.is_empty() {
                continue;
            }
            match self.isolated(self.latest(statement, &ids)).await? {
                Some(rows) => {
                    for (id, doc) in rows {
                        let target = if kind == "device" { Target::Device(id) } else { Target::Group(id) };
                        docs.entry(target).or_default().push(doc);
                    }
                }
                None => {
                    failed.insert(kind);
                }
            }
        }
        // Each target's documents are cut into frames once, shared by all its subscribers here.
        let mut snapshots: HashMap<Target, Snapshot> = HashMap::new();
        for job in std::mem::take(waiting) {
            if failed.contains(job.request.target.kind()) {
                let answer = self.failed(&job);
                self.conclude(job, Some(answer), false).await;
                continue;
            }
            let p = &job.request;
            let snapshot = snapshots.entry(p.target.clone()).or_insert_with(|| {
                Snapshot::new(&p.target, docs.get(&p.target).map(Vec::as_slice).unwrap_or_default())
            });
            let mut frames = snapshot.frames(&p.target, p.id.as_ref(), &self.cursor).into_iter();
            let first = frames.next().expect("a snapshot has its subscribed frame");
            let answer = Answer::subscribed(first, "snapshot", frames.map(|f| (f, 0)));
            self.conclude(job, Some(answer), true).await;
        }
        Ok(())
    }

    /// The latest positions of the targets `ids`, by `statement` (of devices or of groups): (target id,
    /// document) pairs.
    async fn latest(&self, statement: &Statement, ids: &[&str]) -> Result<Vec<(String, String)>, DbError> {
        let params: [&(dyn ToSql + Sync); 1] = [&ids];
        let rows = answered("snapshot", ANSWER_BOUND, self.answerer.client.query(statement, &params)).await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
    }

    /// Replays, one after the other; on an error the ones not answered stay in `left`.
    async fn serve_replays(&self, left: &mut std::vec::IntoIter<Job>) -> Result<(), DbError> {
        if left.as_slice().is_empty() {
            return Ok(());
        }
        // Where the database's transaction ids stand: a `since` past it was not made on this database's
        // history (a cursor from before a failover or a restore, or made up).
        let a = &self.answerer;
        let xmax: String = answered("xmax", ANSWER_BOUND, a.client.query_one(&a.xmax, &[])).await?.try_get(0)?;
        let xmax = xmax.parse().unwrap_or(u64::MAX);
        let mut read: HashMap<(Target, String), Replayed> = HashMap::new();
        // How far behind each cursor stands: asked once per cursor (after a restart every client of a
        // fleet resumes from the same one, whatever its target); none where the server refused to say.
        let mut behind: HashMap<String, Option<i64>> = HashMap::new();
        while let Some(job) = left.as_slice().first() {
            if job.request.abandoned() {
                let job = left.next().expect("looked at");
                self.conclude(job, None, false).await;
                continue;
            }
            if ahead_of(job.request.since.as_deref(), xmax) {
                let job = left.next().expect("looked at");
                let refusal = self.too_far(TooFar::Ahead, &job);
                self.conclude(job, Some(refusal), false).await;
                continue;
            }
            // Clients that watched the same target resume from the same cursor after a restart (the
            // last live position's): their replay is read once and its positions shared.
            let key = (job.request.target.clone(), job.request.since.clone().unwrap_or_default());
            if !read.contains_key(&key) {
                let rows_behind = match behind.get(&key.1) {
                    Some(rows) => *rows,
                    None => {
                        let rows = self.isolated(self.rows_behind(&key.1)).await?;
                        behind.insert(key.1.clone(), rows);
                        rows
                    }
                };
                let replayed = match rows_behind {
                    None => Replayed::Failed,
                    Some(rows) if rows > self.replay.rows_behind => Replayed::TooFar(TooFar::RowsBehind(rows)),
                    Some(_) => self.isolated(self.replay(&key.0, &key.1)).await?.unwrap_or(Replayed::Failed),
                };
                read.insert(key.clone(), replayed);
            }
            let job = left.next().expect("looked at");
            let answer = match read.get(&key).expect("read above") {
                Replayed::Read(replay) => {
                    let p = &job.request;
                    self.metrics.replayed.with_label_values(&["resume"]).inc_by(replay.count as u64);
                    let frame = protocol::subscribed_replay_frame(&p.target, p.id.as_ref(), &key.1, replay.count);
                    let positions = replay.frames.iter().map(|(bytes, n)| (Text::Shared(bytes.clone()), *n));
                    Answer::subscribed(Text::Own(frame), "positions", positions)
                }
                Replayed::TooFar(too_far) => self.too_far(*too_far, &job),
                Replayed::Failed => self.failed(&job),
            };
            let subscribed = answer.frames[0].kind == "subscribed";
            self.conclude(job, Some(answer), subscribed).await;
        }
        Ok(())
    }

    /// The answer `resume_too_far`, counted by why.
    fn too_far(&self, why: TooFar, job: &Job) -> Answer {
        self.metrics.replays_refused.with_label_values(&[why.label()]).inc();
        let message = why.message(self.replay);
        Answer::refusal(&Refusal { code: ErrorCode::ResumeTooFar, message, id: job.request.id.clone() })
    }

    /// The answer `unavailable` to a subscription whose own statement the server refused, counted.
    fn failed(&self, job: &Job) -> Answer {
        self.metrics.answers_failed.with_label_values(&["one"]).inc();
        Answer::refusal(&Refusal::database_unavailable(job.request.id.clone()))
    }

    /// Awaits the statements of one answer. When the server refuses one (a statement timeout, say), the
    /// transaction goes back to the savepoint set after it took the feed's snapshot and only this answer
    /// fails (`None`); a failure of the connection or its path fails the batch (`Err`).
    async fn isolated<T>(
        &self,
        part: impl std::future::Future<Output = Result<T, DbError>>,
    ) -> Result<Option<T>, DbError> {
        match part.await {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.is_server_answer() => {
                tracing::warn!(error = %e, "the database refused an answer's statement: its subscriptions are answered `unavailable`, the others go on");
                let rollback = self.answerer.client.batch_execute(sql::ROLLBACK_TO_ANSWER);
                answered("ROLLBACK TO SAVEPOINT", ANSWER_BOUND, rollback).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// About how many rows of every device were stored after `since`: what a replay from it walks. Cheap
    /// (one index probe per part of the cursor), so it is asked before the replay.
    async fn rows_behind(&self, since: &str) -> Result<i64, DbError> {
        let a = &self.answerer;
        Ok(answered("rows behind", ANSWER_BOUND, a.client.query_one(&a.rows_behind, &[&since])).await?.try_get(0)?)
    }

    /// Every row of `target` after `since`, each once, in `positions` frames; `TooFar` past the positions
    /// limit.
    async fn replay(&self, target: &Target, since: &str) -> Result<Replayed, DbError> {
        let a = &self.answerer;
        let max = self.replay.positions;
        let limit = i32::try_from(max.saturating_add(1)).unwrap_or(i32::MAX);
        let (kind, id) = (target.kind(), target.id());
        let rows = answered("replay", ANSWER_BOUND, a.client.query(&a.replay, &[&since, &kind, &id, &limit])).await?;
        if rows.len() > max {
            return Ok(Replayed::TooFar(TooFar::Positions));
        }
        let mut items = Vec::with_capacity(rows.len());
        // positions_since may return a row twice; a replay sends each once.
        let mut seen = HashSet::with_capacity(rows.len());
        for row in &rows {
            let (cursor, device, position, ts): (String, String, String, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            if !seen.insert((device, ts)) {
                self.metrics.repeats_skipped.inc();
                continue;
            }
            items.push(protocol::position_item(&cursor, &position));
        }
        let frames = protocol::positions_frames(items.iter().map(String::as_str))
            .into_iter()
            .map(|(frame, n)| (Utf8Bytes::from(frame), n as u64))
            .collect();
        Ok(Replayed::Read(Replay { count: items.len(), frames }))
    }

    /// Hands the answer (none: the request was abandoned) to the feed, which queues it with the rows held
    /// for it and then tells the session.
    async fn conclude(&self, job: Job, answer: Option<Answer>, subscribed: bool) {
        let Job { request, ticket } = job;
        let frames = answer.map(|a| a.frames);
        // The feed only stops at shutdown, when nobody waits for this any more.
        let _ = self.commands.send(Command::Answered { request, ticket, frames, subscribed }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::ahead_of;

    #[test]
    fn a_since_past_the_databases_transaction_ids_is_ahead() {
        assert!(ahead_of(Some("901:3"), 900));
        assert!(!ahead_of(Some("900:3"), 900), "a cursor at xmax was made from a snapshot: honest");
        assert!(!ahead_of(Some("12:3:7"), 900));
        assert!(!ahead_of(None, 0));
        assert!(!ahead_of(Some("not a cursor"), 0), "checked when parsed");
    }
}
