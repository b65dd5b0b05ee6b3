//! The feed: reads every new row of `trackway.positions` after the relay's own cursor
//! (`trackway.positions_since`) when woken (a notification, a poll tick, a new subscription) and routes it
//! to the subscribers; hands `subscribe` requests to the answer connections (`answers`).
//!
//! Live clients only ever receive rows read from `trackway.positions`, never a notification's payload.
//!
//! **No gap, nothing twice.** A cycle that has subscriptions to answer runs in one REPEATABLE READ
//! transaction: it reads every row after the feed's cursor that its snapshot S sees and routes them to the
//! subscriptions in force, exports S, starts the answer connections' transactions on S, and holds the new
//! subscriptions in the router. The answers (the latest positions, or every row of the target after
//! `since`) are read from S beside the feed; the rows of the feed's later reads — exactly the rows S does not
//! see (its cursor stands at S) — wait in the holds and follow each answer once it is queued. So the
//! snapshot or replay and the live rows meet without a gap, no row the snapshot already covers comes again
//! as new, and no answer, however long, holds back the live rows of anyone else.
//!
//! **Nobody watching, nothing read.** While no client watches anything (no subscription in force or held),
//! rows read would go to nobody: the feed does not wake on notifications, and each poll only moves its
//! cursor to the present (`current_cursor`, one cheap call that also keeps checking the connection). The
//! cycle that answers the first subscription places the cursor at S itself, in S's transaction, instead of
//! reading up to S. So a relay without live clients (one that only ingests, say) costs the database nothing
//! per row, and a relay's feed reads rows only while someone is there to receive them.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_postgres::{types::ToSql, GenericClient, Statement};
use tokio_util::sync::CancellationToken;

use super::{
    answers::{Answers, Batch, Job},
    command::{Command, Subscribe},
    config::ReplayLimits,
    listen::Wake,
    metrics::LiveMetrics,
    outbox::Delivery,
    protocol::{self, ErrorCode, Refusal, Target},
    router::{Routed, Router},
};
use crate::{
    backoff::{BackendState, Backoff},
    database::{self, answered, sql, DbError, Driver},
};

/// Rows per `positions_since` call.
const PAGE: i32 = 2000;
/// Rows remembered to drop the few that `positions_since` may return twice.
const RECENT: usize = 65_536;

/// The longest a feed read (or its transaction's BEGIN, export and COMMIT) may go unanswered. It takes
/// milliseconds; this long means the path or the server stopped answering: the connection is dropped and
/// opened again, and the feed reads on from its cursor.
const READ_BOUND: Duration = Duration::from_secs(10);

/// A `Subscribe` waiting for the next cycle.
type Pending = Subscribe;

/// Settings of the feed.
pub struct FeedSettings {
    /// Where to read.
    pub database: tokio_postgres::Config,
    /// Longest time between two reads.
    pub poll_interval: Duration,

    /// How far back a replay may reach.
    pub replay: ReplayLimits,
    /// Most answer connections (batches of subscriptions answered at once beside the feed).
    pub answer_connections: usize,
}

/// The feed task's state.
pub struct Feed {
    settings: FeedSettings,
    commands: mpsc::Receiver<Command>,
    /// The same queue's sending end, for the answer batches' word back.
    to_self: mpsc::Sender<Command>,
    /// The connections answering subscriptions beside the feed.
    answers: Answers,
    /// The next hold's ticket.
    next_ticket: u64,
    wake: Arc<Wake>,
    health: BackendState,
    metrics: LiveMetrics,
    router: Router,
    /// Where the feed stands: every row before it has been routed. `None` until first connected.
    cursor: Option<String>,
    /// Subscriptions to answer in the next cycle.
    pending: Vec<Pending>,
    /// Rows routed lately, `(device, ts in µs)`, to drop repeats.
    recent: HashSet<(Arc<str>, i64)>,
    /// The same rows, oldest first (to forget them in order), each with the feed's cursor from just
    /// before it (to read again from there when a failover lost it: [`Feed::check_history`]).
    recent_order: VecDeque<Read>,
}

/// A row the feed read: its key and the cursor the feed stood at before it.
struct Read {
    /// `device_id`.
    device: Arc<str>,
    /// `ts`, µs since 1970.
    ts: i64,
    /// The feed's cursor before this row.
    before: Arc<str>,
}

/// The feed's database connection and its prepared statement.
struct Connection {
    client: tokio_postgres::Client,
    feed: Statement,
    /// Dropped with the connection: closes it even while its path is silent.
    _driver: Driver,
}

impl Feed {
    /// A feed reading with `settings`, taking commands from `commands`.
    pub fn new(
        settings: FeedSettings,
        (to_self, commands): (mpsc::Sender<Command>, mpsc::Receiver<Command>),
        wake: Arc<Wake>,
        health: BackendState,
        metrics: LiveMetrics,
    ) -> Feed {
        Feed {
            answers: Answers::new(&settings.database, settings.answer_connections, metrics.clone()),
            settings,
            commands,
            to_self,
            next_ticket: 0,
            wake,
            health,
            metrics,
            router: Router::default(),
            cursor: None,
            pending: Vec::new(),
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut connection: Option<Connection> = None;
        loop {
            // Supervision tests make the feed panic here (compiled out without `failpoints`).
            fail::fail_point!("live-feed");
            if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
                connection = match self.connect().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        self.fail(&format!("cannot connect: {e}"));
                        None
                    }
                };
            }
            let up = match connection.as_ref() {
                Some(conn) => match self.cycle(conn).await {
                    Ok(()) => {
                        self.health.succeeded();
                        backoff.reset();
                        true
                    }
                    Err(e) => {
                        self.fail(&e.to_string());
                        false
                    }
                },
                None => false,
            };
            if !up {
                connection = None;
            }
            let delay = if up { self.settings.poll_interval } else { backoff.next_delay() };
            if !self.wait(&shutdown, delay, !up).await {
                return;
            }
        }
    }

    /// Waits up to `delay` (the poll interval, or a backoff delay while the database is `down`), applying
    /// commands as they come: leaves and unsubscribes at once. While the database is up a ring (unless
    /// nobody watches anything) or a subscription to answer ends the wait; while it is down subscriptions
    /// are refused at once (`unavailable`) rather than left waiting. `false` at shutdown.
    async fn wait(&mut self, shutdown: &CancellationToken, delay: Duration, down: bool) -> bool {
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                command = self.commands.recv() => {
                    let Some(command) = command else { return false };
                    self.apply(command);
                    while let Ok(command) = self.commands.try_recv() {
                        self.apply(command);
                    }
                    if !self.pending.is_empty() {
                        if !down {
                            return true;
                        }
                        self.fail("still unavailable");
                    }
                }
                () = self.answers.finished() => {
                    // A connection is free again: the subscriptions waiting for one are answered now.
                    if !self.pending.is_empty() && !down {
                        return true;
                    }
                }
                () = self.wake.rung(), if !down && !self.router.is_idle() => return true,
                () = &mut until => return true,
            }
        }
    }

    /// Applies a command: unsubscribes and leaves at once, subscribes in the next cycle.
    fn apply(&mut self, command: Command) {
        match command {
            Command::Subscribe(request) => self.pending.push(request),
            Command::Unsubscribe { client, outbox, target, id, reason, reply } => {
                let (kind, answer) = if self.router.unsubscribe(client, &target) {
                    ("unsubscribed", protocol::unsubscribed_frame(&target, id.as_ref(), reason))
                } else {
                    let message = format!("not subscribed to {} {:?}", target.kind(), target.id());
                    ("error", protocol::error_frame(&Refusal { code: ErrorCode::NotSubscribed, message, id }))
                };
                outbox.push_answer(kind, answer);
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
                if let Some(reply) = reply {
                    let _ = reply.send(true);
                }
            }
            Command::Leave { client } => {
                self.router.leave(client);
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
            }
            Command::Answered { request: p, ticket, frames, subscribed } => {
                let claimed = frames.is_some() && p.claim();
                if let (true, Some(frames)) = (claimed, frames) {
                    p.outbox.push_answers(frames);
                }
                let subscribed = subscribed && claimed;
                let pushed = self.router.release(p.client, &p.target, ticket, subscribed);
                let _ = p.reply.send(subscribed);
                self.metrics.coalesced.inc_by(pushed.coalesced);
                self.metrics.dropped.inc_by(pushed.dropped);
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
            }
        }
    }

    /// Opens the connection, prepares the statements, and on the first connection places the cursor at
    /// the current snapshot (live clients get what is committed from now on; older rows are replays).
    async fn connect(&mut self) -> Result<Connection, DbError> {
        let (client, driver) = database::open(&self.settings.database, "live feed").await?;
        if self.cursor.is_none() {
            let row = answered("current_cursor", READ_BOUND, client.query_one(sql::CURRENT_CURSOR, &[])).await?;
            self.cursor = Some(row.try_get(0)?);
        } else {
            self.check_history(&client).await?;
        }
        let feed = answered("preparing the feed read", READ_BOUND, client.prepare(sql::FEED)).await?;
        Ok(Connection { feed, client, _driver: driver })
    }

    /// After a reconnect: does the database still hold the last row the feed read? Not after a failover to
    /// a replica that had not received it, or a restore. Then transaction ids below the feed's cursor are
    /// handed out again there, and their rows would never be read: the feed reads again from where it
    /// stood just after the newest row it read that the database does hold (found by its key,
    /// `(device_id, ts)`), or, when it holds none of them, from before the oldest row it remembers. Every
    /// row after that point there is one the feed never read (or is dropped as a repeat).
    async fn check_history(&mut self, client: &tokio_postgres::Client) -> Result<(), DbError> {
        let (Some(cursor), Some(newest)) = (self.cursor.clone(), self.recent_order.back()) else {
            return Ok(());
        };
        let (device, ts): (&str, i64) = (&newest.device, newest.ts);
        let params: [&(dyn ToSql + Sync); 2] = [&device, &ts];
        if answered("looking up the last row read", READ_BOUND, client.query_opt(sql::ROW_BY_KEY, &params))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let devices: Vec<&str> = self.recent_order.iter().map(|r| r.device.as_ref()).collect();
        let times: Vec<i64> = self.recent_order.iter().map(|r| r.ts).collect();
        let params: [&(dyn ToSql + Sync); 2] = [&devices, &times];
        let held = answered("looking up the rows read", READ_BOUND, client.query_opt(sql::NEWEST_HELD, &params));
        let held: Option<i64> = held.await?.map(|row| row.get(0));
        // Ordinality counts from 1: the row after the newest held one is at that index (from 0).
        let next = held.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let Some(from) = self.recent_order.get(next).map(|r| r.before.to_string()) else { return Ok(()) };
        tracing::warn!(
            from = %cursor,
            to = %from,
            rows_lost = self.recent_order.len() - next,
            "the database no longer holds the last rows the live feed read (failover or restore): the feed \
             reads again from just after the newest row it still holds"
        );
        self.metrics.history_rewinds.inc();
        self.cursor = Some(from);
        Ok(())
    }

    /// The database failed: refuse the waiting subscriptions (they may ask again) and record the outage.
    fn fail(&mut self, why: &str) {
        self.health.failed(&format_args!("live feed: {why}"));
        self.refuse_pending();
    }

    /// One read to the end; the waiting subscriptions, when an answer connection is free, handed to the
    /// answer connections on the same snapshot (see the module header).
    async fn cycle(&mut self, conn: &Connection) -> Result<(), DbError> {
        let noticed = self.wake.take_first().unwrap_or_else(Instant::now);
        let reconnected = self.wake.take_reconnected();
        self.pending.retain(|p| !p.abandoned());
        self.answers.reap();
        let idle = self.router.is_idle();
        if self.pending.is_empty() || self.answers.free() == 0 {
            if idle {
                return self.skip_to_present(&conn.client).await;
            }
            let read = self.read_to_end(&conn.client, &conn.feed, noticed).await?;
            self.count_replayed(reconnected, read);
            return Ok(());
        }
        // Read only: no transaction id.
        answered("BEGIN", READ_BOUND, conn.client.batch_execute(sql::BEGIN_READ)).await?;
        if idle {
            // The first statement of the transaction: the cursor stands at S, the snapshot exported below.
            self.skip_to_present(&conn.client).await?;
        } else {
            let read = self.read_to_end(&conn.client, &conn.feed, noticed).await?;
            self.count_replayed(reconnected, read);
        }
        let exported = answered("exporting the snapshot", READ_BOUND, conn.client.query_one(sql::EXPORT_SNAPSHOT, &[]));
        let snapshot: String = exported.await?.try_get(0)?;
        // Each replay (of a distinct target and cursor) may take a connection of its own; the snapshots
        // are two queries for all of them.
        let replays =
            self.pending.iter().filter_map(|p| Some((&p.target, p.since.as_deref()?))).collect::<HashSet<_>>().len();
        let answerers = match self.answers.begin(replays.clamp(1, self.answers.free()), &snapshot).await {
            Ok(answerers) => answerers,
            Err(e) => {
                answered("COMMIT", READ_BOUND, conn.client.batch_execute(sql::COMMIT)).await?;
                tracing::warn!(error = %e, "cannot open an answer connection: subscriptions answered `unavailable`");
                self.refuse_pending();
                return Ok(());
            }
        };
        // The answer connections hold the snapshot now; the feed's own transaction may end.
        answered("COMMIT", READ_BOUND, conn.client.batch_execute(sql::COMMIT)).await?;
        let cursor = self.cursor.clone().unwrap_or_default();
        let mut batches: Vec<Vec<Job>> = answerers.iter().map(|_| Vec::new()).collect();
        // Replays of the same target from the same cursor go to the same connection (read once there).
        let mut replay_slots: std::collections::HashMap<(Target, String), usize> = Default::default();
        for request in std::mem::take(&mut self.pending) {
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            self.router.hold(request.client, &request.outbox, request.target.clone(), ticket);
            let slot = match &request.since {
                Some(since) => {
                    let next = replay_slots.len() % batches.len();
                    *replay_slots.entry((request.target.clone(), since.clone())).or_insert(next)
                }
                None => 0,
            };
            batches[slot].push(Job { request, ticket });
        }
        for (answerer, jobs) in answerers.into_iter().zip(batches) {
            self.answers.spawn(Batch {
                answerer,
                cursor: cursor.clone(),
                jobs,
                replay: self.settings.replay,
                commands: self.to_self.clone(),
                metrics: self.metrics.clone(),
            });
        }
        Ok(())
    }

    /// Nobody watches anything: instead of reading rows that would go to nobody, the cursor moves to the
    /// present (the caller's snapshot inside a transaction). The rows remembered for repeats and failovers
    /// are from before it and are forgotten: after a failover the feed now reads on from this cursor, as it
    /// does from the one it starts with.
    async fn skip_to_present(&mut self, client: &tokio_postgres::Client) -> Result<(), DbError> {
        let row = answered("current_cursor", READ_BOUND, client.query_one(sql::CURRENT_CURSOR, &[])).await?;
        self.cursor = Some(row.try_get(0)?);
        self.recent.clear();
        self.recent_order.clear();
        Ok(())
    }

    /// Answers the waiting subscriptions `unavailable` (they may ask again), the feed itself being fine.
    fn refuse_pending(&mut self) {
        for p in self.pending.drain(..).filter(Subscribe::claim) {
            let refusal = Refusal::database_unavailable(p.id);
            p.outbox.push_answer("error", protocol::error_frame(&refusal));
            let _ = p.reply.send(false);
        }
    }

    fn count_replayed(&self, reconnected: bool, rows: u64) {
        if reconnected {
            self.metrics.replayed.with_label_values(&["reconnect"]).inc_by(rows);
        }
    }

    /// Reads and routes pages until a short one. Returns the rows routed.
    async fn read_to_end(
        &mut self,
        client: &impl GenericClient,
        statement: &Statement,
        noticed: Instant,
    ) -> Result<u64, DbError> {
        let mut total = 0;
        loop {
            let Some(cursor) = self.cursor.clone() else { return Ok(total) };
            let rows = answered("feed read", READ_BOUND, client.query(statement, &[&cursor, &PAGE])).await?;
            let mut routed = Vec::with_capacity(rows.len());
            let mut before: Arc<str> = cursor.into();
            for row in &rows {
                let cursor: String = row.try_get(0)?;
                let device: String = row.try_get(1)?;
                let position: String = row.try_get(2)?;
                let groups: Vec<String> = row.try_get(3)?;
                let ts: i64 = row.try_get(4)?;
                self.cursor = Some(cursor.clone());
                let device: Arc<str> = device.into();
                let new = self.remember(&device, ts, &before);
                before = cursor.as_str().into();
                if !new {
                    self.metrics.repeats_skipped.inc();
                    continue;
                }
                let item = protocol::position_item(&cursor, &position);
                routed.push(Routed { delivery: Arc::new(Delivery { device, item, ts, noticed }), groups });
            }
            total += routed.len() as u64;
            self.metrics.feed_reads.inc();
            self.metrics.feed_rows.inc_by(routed.len() as u64);
            let pushed = self.router.route(&routed);
            self.metrics.coalesced.inc_by(pushed.coalesced);
            self.metrics.dropped.inc_by(pushed.dropped);
            if pushed.dropped > 0 {
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
            }
            if rows.len() < PAGE as usize {
                return Ok(total);
            }
        }
    }

    /// `true` when the row is new; remembers it, and the cursor from `before` it.
    fn remember(&mut self, device: &Arc<str>, ts: i64, before: &Arc<str>) -> bool {
        if !self.recent.insert((device.clone(), ts)) {
            return false;
        }
        self.recent_order.push_back(Read { device: device.clone(), ts, before: before.clone() });
        if self.recent_order.len() > RECENT {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&(old.device, old.ts));
            }
        }
        true
    }
}
