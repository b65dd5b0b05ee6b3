//! The feed: reads every new row of `trackway.positions` after the relay's own cursor
//! (`trackway.positions_since`) when woken (a notification, a poll tick, a new subscription) and routes it
//! to the subscribers; serves `subscribe` requests with their snapshot or replay.
//!
//! Live clients only ever receive rows read from `trackway.positions`, never a notification's payload.
//!
//! **No gap, nothing twice.** A cycle that has subscriptions to serve runs in one REPEATABLE READ
//! transaction: it first reads every row after the feed's cursor that its snapshot S sees and routes
//! them to the *existing* subscribers, then answers the new ones from the same S — the latest positions
//! (`subscribed` with a `snapshot`), or every row of the target after `since` (a replay) — and only then
//! adds them to the router. From then on they get the rows of later reads, which are exactly the rows S
//! does not see (the feed's cursor stands at S). So the snapshot or replay and the live rows meet without a
//! gap, and no row the snapshot already covers comes again as new.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{GenericClient, NoTls, Statement};
use tokio_util::sync::CancellationToken;

use super::{
    listen::Wake,
    metrics::LiveMetrics,
    outbox::{Delivery, Outbox},
    protocol::{self, ErrorCode, Refusal, Target},
    router::{ClientId, Routed, Router},
};
use crate::backoff::{BackendState, Backoff};

/// Rows per `positions_since` call.
const PAGE: i32 = 2000;
/// Rows remembered to drop the few that `positions_since` may return twice.
const RECENT: usize = 65_536;

/// Every row after a cursor, oldest first, with the groups of its device as this snapshot sees them.
const FEED: &str = "\
    SELECT s.cursor, s.device_id, s.position, \
           ARRAY(SELECT g.group_id FROM trackway.device_groups g WHERE g.device_id = s.device_id), \
           (extract(epoch FROM s.ts) * 1000000)::bigint \
    FROM trackway._positions_since_text($1, NULL, $2) WITH ORDINALITY AS s(cursor, device_id, ts, position, n) \
    ORDER BY s.n";
/// Latest positions of some devices.
const SNAPSHOT_DEVICES: &str = "\
    SELECT l.device_id, trackway._wire_text(l.device_id, l.ts, l.latitude, l.longitude, l.altitude, l.angle, \
           l.speed, l.satellites, l.priority, l.attributes::text) \
    FROM trackway.latest_positions l WHERE l.device_id = ANY($1::text[])";
/// Latest positions of the devices of some groups.
const SNAPSHOT_GROUPS: &str = "\
    SELECT g.group_id, trackway._wire_text(l.device_id, l.ts, l.latitude, l.longitude, l.altitude, l.angle, \
           l.speed, l.satellites, l.priority, l.attributes::text) \
    FROM trackway.device_groups g JOIN trackway.latest_positions l ON l.device_id = g.device_id \
    WHERE g.group_id = ANY($1::text[]) ORDER BY g.group_id, l.device_id";
/// Rows of one target after a cursor (a group as its membership stands now).
const REPLAY: &str = "\
    SELECT s.cursor, s.device_id, s.position, (extract(epoch FROM s.ts) * 1000000)::bigint \
    FROM trackway._positions_since_text($1, \
           CASE WHEN $2::text = 'device' THEN ARRAY[$3::text] \
                ELSE ARRAY(SELECT d.device_id FROM trackway.device_groups d WHERE d.group_id = $3::text) END, \
           $4) WITH ORDINALITY AS s(cursor, device_id, ts, position, n) \
    ORDER BY s.n";

/// The first transaction id not yet handed out, as the statement's snapshot sees it.
const XMAX: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text";

/// Whether a `since` names a transaction id the database has not handed out yet (`xmax`).
fn ahead_of(since: Option<&str>, xmax: u64) -> bool {
    since.and_then(|c| trackway_wire::Cursor::parse(c).ok()).is_some_and(|c| c.xid > xmax)
}

/// A row by its key (device, time in µs since 1970), if the table holds it.
const ROW_BY_KEY: &str = "\
    SELECT 1 FROM trackway.positions p \
    WHERE p.device_id = $1::text AND p.ts = 'epoch'::timestamptz + $2::bigint * interval '1 microsecond'";
/// Of rows given by key in reading order, the last one the table holds: its place in the order (from 1).
const NEWEST_HELD: &str = "\
    SELECT k.n \
    FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(device_id, us, n) \
    JOIN trackway.positions p \
      ON p.device_id = k.device_id AND p.ts = 'epoch'::timestamptz + k.us * interval '1 microsecond' \
    ORDER BY k.n DESC LIMIT 1";

/// What sessions ask of the feed. The channel is bounded; senders wait when it is full.
pub enum Command {
    /// Answer with a snapshot (or a replay after `since`) and add the subscription.
    Subscribe(Subscribe),
    /// Remove a subscription and answer `unsubscribed` after the positions already queued.
    Unsubscribe {
        /// The connection.
        client: ClientId,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// What to stop watching.
        target: Target,
        /// The request's id, echoed.
        id: Option<Value>,
        /// `requested`; `forbidden` when a renewed or re-checked token no longer allows it; `unavailable`
        /// when the database could not check it again.
        reason: &'static str,
        /// Told once the answer is queued (a client's own `unsubscribe` waits for it, so that answers keep
        /// the order of requests).
        reply: Option<oneshot::Sender<bool>>,
    },
    /// The connection ended.
    Leave {
        /// The connection.
        client: ClientId,
    },
}

/// A subscription request; it waits in the feed for the next cycle.
pub struct Subscribe {
    /// The connection.
    pub client: ClientId,
    /// Its outbox (the answer and then the positions go there).
    pub outbox: Arc<Outbox>,
    /// What it wants to watch.
    pub target: Target,
    /// Resume point (already checked to parse).
    pub since: Option<String>,
    /// The request's id, echoed.
    pub id: Option<Value>,
    /// `true` once subscribed, `false` when refused (the refusal is in the outbox).
    pub reply: oneshot::Sender<bool>,
    /// Set by whichever decides first: the feed, just before it queues its answer ([`Subscribe::claim`]),
    /// or the session, when it gives up waiting (then the feed drops the request, unanswered).
    pub decided: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscribe {
    /// `true` when the feed may answer (and the session will wait for it); `false` when the session has
    /// given up and answered the client itself.
    fn claim(&self) -> bool {
        !self.decided.swap(true, std::sync::atomic::Ordering::AcqRel)
    }
}

/// A `Subscribe` waiting for the next cycle.
type Pending = Subscribe;

/// Settings of the feed.
pub struct FeedSettings {
    /// Where to read.
    pub database: tokio_postgres::Config,
    /// Longest time between two reads.
    pub poll_interval: Duration,
    /// Most rows a replay may hold.
    pub max_replay: usize,
}

/// The feed task's state.
pub struct Feed {
    settings: FeedSettings,
    commands: mpsc::Receiver<Command>,
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

/// The feed's database connection and its prepared statements.
struct Connection {
    client: tokio_postgres::Client,
    feed: Statement,
    snapshot_devices: Statement,
    snapshot_groups: Statement,
    replay: Statement,
}

impl Feed {
    /// A feed reading with `settings`, taking commands from `commands`.
    pub fn new(
        settings: FeedSettings,
        commands: mpsc::Receiver<Command>,
        wake: Arc<Wake>,
        health: BackendState,
        metrics: LiveMetrics,
    ) -> Feed {
        Feed {
            settings,
            commands,
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
    /// commands as they come: leaves and unsubscribes at once. While the database is up a ring or a
    /// subscription to answer ends the wait; while it is down subscriptions are refused at once
    /// (`unavailable`) rather than left waiting. `false` at shutdown.
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
                () = self.wake.rung(), if !down => return true,
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
                outbox.push_answer_and_replay(kind, answer, Vec::new());
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
                if let Some(reply) = reply {
                    let _ = reply.send(true);
                }
            }
            Command::Leave { client } => {
                self.router.leave(client);
                self.metrics.subscriptions.set(self.router.subscriptions() as i64);
            }
        }
    }

    /// Opens the connection, prepares the statements, and on the first connection places the cursor at
    /// the current snapshot (live clients get what is committed from now on; older rows are replays).
    async fn connect(&mut self) -> Result<Connection, tokio_postgres::Error> {
        let (client, connection) = self.settings.database.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "feed connection ended");
            }
        });
        if self.cursor.is_none() {
            let row = client.query_one("SELECT trackway.current_cursor()", &[]).await?;
            self.cursor = Some(row.try_get(0)?);
        } else {
            self.check_history(&client).await?;
        }
        Ok(Connection {
            feed: client.prepare(FEED).await?,
            snapshot_devices: client.prepare(SNAPSHOT_DEVICES).await?,
            snapshot_groups: client.prepare(SNAPSHOT_GROUPS).await?,
            replay: client.prepare(REPLAY).await?,
            client,
        })
    }

    /// After a reconnect: does the database still hold the last row the feed read? Not after a failover to
    /// a replica that had not received it, or a restore. Then transaction ids below the feed's cursor are
    /// handed out again there, and their rows would never be read: the feed reads again from where it
    /// stood just after the newest row it read that the database does hold (found by its key,
    /// `(device_id, ts)`), or, when it holds none of them, from before the oldest row it remembers. Every
    /// row after that point there is one the feed never read (or is dropped as a repeat).
    async fn check_history(&mut self, client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let (Some(cursor), Some(newest)) = (self.cursor.clone(), self.recent_order.back()) else {
            return Ok(());
        };
        if client.query_opt(ROW_BY_KEY, &[&newest.device.as_ref(), &newest.ts]).await?.is_some() {
            return Ok(());
        }
        let devices: Vec<&str> = self.recent_order.iter().map(|r| r.device.as_ref()).collect();
        let times: Vec<i64> = self.recent_order.iter().map(|r| r.ts).collect();
        let held: Option<i64> = client.query_opt(NEWEST_HELD, &[&devices, &times]).await?.map(|row| row.get(0));
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
        for p in self.pending.drain(..).filter(Subscribe::claim) {
            let refusal = Refusal {
                code: ErrorCode::Unavailable,
                message: "the database is unavailable; subscribe again later".into(),
                id: p.id,
            };
            p.outbox.push_answer_and_replay("error", protocol::error_frame(&refusal), Vec::new());
            let _ = p.reply.send(false);
        }
    }

    /// One read to the end, and the waiting subscriptions answered from the same snapshot.
    async fn cycle(&mut self, conn: &Connection) -> Result<(), tokio_postgres::Error> {
        let noticed = self.wake.take_first().unwrap_or_else(Instant::now);
        let reconnected = self.wake.take_reconnected();
        if self.pending.is_empty() {
            let read = self.read_to_end(&conn.client, &conn.feed, noticed).await?;
            self.count_replayed(reconnected, read);
            return Ok(());
        }
        // One snapshot for the read and the answers (see the module header). Read only: no transaction id.
        conn.client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let read = self.read_to_end(&conn.client, &conn.feed, noticed).await?;
        self.count_replayed(reconnected, read);
        let pending = std::mem::take(&mut self.pending);
        if let Err((unanswered, error)) = self.serve(&conn.client, conn, pending).await {
            // The connection is dropped after an error; the unanswered are refused by `fail`.
            self.pending = unanswered;
            return Err(error);
        }
        conn.client.batch_execute("COMMIT").await
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
    ) -> Result<u64, tokio_postgres::Error> {
        let mut total = 0;
        loop {
            let Some(cursor) = self.cursor.clone() else { return Ok(total) };
            let rows = client.query(statement, &[&cursor, &PAGE]).await?;
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

    /// Answers the waiting subscriptions from the transaction's snapshot, then adds them to the router.
    /// On a database error the unanswered ones are handed back.
    async fn serve(
        &mut self,
        client: &impl GenericClient,
        conn: &Connection,
        pending: Vec<Pending>,
    ) -> Result<(), (Vec<Pending>, tokio_postgres::Error)> {
        let cursor = self.cursor.clone().unwrap_or_default();
        let (mut snapshots, replays): (Vec<Pending>, Vec<Pending>) =
            pending.into_iter().filter(|p| p.outbox.closed().is_none()).partition(|p| p.since.is_none());
        if let Err(e) = self.serve_snapshots(client, conn, &cursor, &mut snapshots).await {
            snapshots.extend(replays);
            return Err((snapshots, e));
        }
        // Where the database's transaction ids stand: a `since` past it was not made on this database's
        // history (a cursor from before a failover or a restore, or made up).
        let xmax = match replays.is_empty() {
            true => 0,
            false => match client.query_one(XMAX, &[]).await.and_then(|row| row.try_get::<_, String>(0)) {
                Ok(text) => text.parse().unwrap_or(u64::MAX),
                Err(e) => return Err((replays, e)),
            },
        };
        let mut replays = replays.into_iter();
        while let Some(p) = replays.next() {
            if ahead_of(p.since.as_deref(), xmax) {
                self.refuse_ahead(p);
                continue;
            }
            if let Err((p, e)) = self.serve_replay(client, conn, p).await {
                return Err((std::iter::once(p).chain(replays).collect(), e));
            }
        }
        Ok(())
    }

    /// Answers a `since` the database has not reached with `resume_too_far`: resuming from it would skip
    /// the rows of the transactions still to come below it.
    fn refuse_ahead(&mut self, p: Pending) {
        if !p.claim() {
            return; // the session gave up waiting and answered the client itself
        }
        let refusal = Refusal {
            code: ErrorCode::ResumeTooFar,
            message: "this cursor is ahead of the database (made before a failover or a restore?): subscribe \
                      without since to start from a snapshot"
                .into(),
            id: p.id.clone(),
        };
        p.outbox.push_answer_and_replay("error", protocol::error_frame(&refusal), Vec::new());
        let _ = p.reply.send(false);
    }

    /// Snapshots for every waiting subscription without `since`, two queries for all of them.
    async fn serve_snapshots(
        &mut self,
        client: &impl GenericClient,
        conn: &Connection,
        cursor: &str,
        waiting: &mut Vec<Pending>,
    ) -> Result<(), tokio_postgres::Error> {
        if waiting.is_empty() {
            return Ok(());
        }
        let ids = |kind: &str| -> Vec<&str> {
            let mut ids: Vec<&str> =
                waiting.iter().filter(|p| p.target.kind() == kind).map(|p| p.target.id()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let (devices, groups) = (ids("device"), ids("group"));
        let mut docs: std::collections::HashMap<Target, Vec<String>> = std::collections::HashMap::new();
        if !devices.is_empty() {
            for row in client.query(&conn.snapshot_devices, &[&devices]).await? {
                docs.entry(Target::Device(row.try_get(0)?)).or_default().push(row.try_get(1)?);
            }
        }
        if !groups.is_empty() {
            for row in client.query(&conn.snapshot_groups, &[&groups]).await? {
                docs.entry(Target::Group(row.try_get(0)?)).or_default().push(row.try_get(1)?);
            }
        }
        for p in waiting.drain(..).filter(Subscribe::claim) {
            let snapshot = docs.get(&p.target).map(Vec::as_slice).unwrap_or_default();
            let frame = protocol::subscribed_snapshot_frame(&p.target, p.id.as_ref(), cursor, snapshot);
            p.outbox.push_answer_and_replay("subscribed", frame, Vec::new());
            self.add(p);
        }
        Ok(())
    }

    /// Every row of the target after `since`, or `resume_too_far` past the replay limit.
    async fn serve_replay(
        &mut self,
        client: &impl GenericClient,
        conn: &Connection,
        p: Pending,
    ) -> Result<(), (Pending, tokio_postgres::Error)> {
        let since = p.since.clone().unwrap_or_default();
        let limit = i32::try_from(self.settings.max_replay.saturating_add(1)).unwrap_or(i32::MAX);
        let rows = match client.query(&conn.replay, &[&since, &p.target.kind(), &p.target.id(), &limit]).await {
            Ok(rows) => rows,
            Err(e) => return Err((p, e)),
        };
        if rows.len() > self.settings.max_replay {
            if !p.claim() {
                return Ok(()); // the session gave up waiting and answered the client itself
            }
            let refusal = Refusal {
                code: ErrorCode::ResumeTooFar,
                message: format!(
                    "more than {} positions after this cursor: subscribe without since to start from a snapshot",
                    self.settings.max_replay
                ),
                id: p.id.clone(),
            };
            p.outbox.push_answer_and_replay("error", protocol::error_frame(&refusal), Vec::new());
            let _ = p.reply.send(false);
            return Ok(());
        }
        let noticed = Instant::now();
        let mut replay = Vec::with_capacity(rows.len());
        // positions_since may return a row twice; a replay sends each once.
        let mut seen = HashSet::with_capacity(rows.len());
        for row in &rows {
            let parts = (row.try_get::<_, String>(0), row.try_get::<_, String>(1), row.try_get::<_, String>(2));
            let (cursor, device, position, ts) = match (parts, row.try_get::<_, i64>(3)) {
                ((Ok(c), Ok(d), Ok(p)), Ok(ts)) => (c, d, p, ts),
                ((Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)), _) | (_, Err(e)) => return Err((p, e)),
            };
            if !seen.insert((device.clone(), ts)) {
                self.metrics.repeats_skipped.inc();
                continue;
            }
            let item = protocol::position_item(&cursor, &position);
            replay.push(Arc::new(Delivery { device: device.into(), item, ts, noticed }));
        }
        if !p.claim() {
            return Ok(()); // the session gave up waiting and answered the client itself
        }
        self.metrics.replayed.with_label_values(&["resume"]).inc_by(replay.len() as u64);
        let frame = protocol::subscribed_replay_frame(&p.target, p.id.as_ref(), &since, replay.len());
        p.outbox.push_answer_and_replay("subscribed", frame, replay);
        self.add(p);
        Ok(())
    }

    /// Adds an answered subscription to the router.
    fn add(&mut self, p: Pending) {
        self.router.subscribe(p.client, &p.outbox, p.target);
        self.metrics.subscriptions.set(self.router.subscriptions() as i64);
        let _ = p.reply.send(true);
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
