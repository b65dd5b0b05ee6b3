//! Metrics of the live side, registered on the relay's one registry (served at `/metrics`).

use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every live metric. Cheap to clone.
#[derive(Clone)]
pub struct LiveMetrics {
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// Subscriptions held (all connections).
    pub subscriptions: IntGauge,
    /// Client messages received, by `type` (`auth`, `subscribe`, `unsubscribe`, `ping`, `invalid`).
    pub frames_in: IntCounterVec,
    /// Frames sent, by `type` (`positions`, `subscribed`, `unsubscribed`, `error`, `authenticated`, `pong`).
    pub frames_out: IntCounterVec,
    /// Positions written to clients (one per client per position).
    pub delivered: IntCounter,
    /// Queued positions replaced by a newer one of their device because a client fell behind.
    pub coalesced: IntCounter,
    /// Positions dropped with a client closed as too slow.
    pub dropped: IntCounter,
    /// Connections closed by the server, by `reason` (the close code's label in docs/live-protocol.md), and
    /// by the client (`client`) or a broken connection (`gone`).
    pub closes: IntCounterVec,
    /// Refused authentications, by `reason` (`auth::AuthFailure::label`): `malformed`, `signature`,
    /// `expired`, `issuer`, `claims`, `rejected` (by Directus), `unavailable` (Directus did not answer),
    /// `timeout`, `mismatch`, `user_limit`.
    pub auth_failures: IntCounterVec,
    /// Subscription checks answered from the connection's cache (`hit`) or by `trackway.authorize` (`miss`).
    pub authorize: IntCounterVec,
    /// Times the LISTEN connection was re-established after a loss.
    pub listen_reconnects: IntCounter,
    /// Times the feed found, on reconnecting, that the database no longer holds the last rows it read (a
    /// failover to a replica that had not received them, a restore) and moved its cursor back.
    pub history_rewinds: IntCounter,
    /// Positions read again for clients, by `why`: `resume` (a `subscribe` with `since`) and `reconnect`
    /// (the first read after the LISTEN connection came back: what was committed while it was away).
    pub replayed: IntCounterVec,
    /// `subscribe`s with `since` answered `resume_too_far`, by `why`: `positions` (more than
    /// `TRACKWAY_LIVE_MAX_REPLAY` of the target), `rows_behind` (more than `TRACKWAY_LIVE_MAX_REPLAY_BEHIND`
    /// rows of every device after it) or `ahead` (a cursor the database has not reached).
    pub replays_refused: IntCounterVec,
    /// `subscribe`s answered `unavailable` because the database failed them, by `scope`: `one` (the server
    /// refused that answer's statement, a statement timeout say; the batch's other answers went on) or
    /// `batch` (the answer connection or its path failed, and every answer of its batch not given yet).
    pub answers_failed: IntCounterVec,
    /// Rows `positions_since` returned a second time (a cursor may repeat a few), not sent again.
    pub repeats_skipped: IntCounter,
    /// Reads of new rows by the feed (`positions_since` calls): rows per read is about how many positions
    /// one broadcast frame carries.
    pub feed_reads: IntCounter,
    /// Rows routed by the feed (each once, whatever the number of clients).
    pub feed_rows: IntCounter,
    /// From the notification of a commit (or the read that found it) to the frame carrying the position
    /// being written to the client's socket, seconds.
    pub notify_to_send: Histogram,
    /// Bytes of answers and replayed positions queued for clients, unread (every connection).
    pub queued_bytes: IntGauge,
    /// Answer connections running a batch of subscriptions (snapshots and replays), out of
    /// `TRACKWAY_LIVE_ANSWER_CONNECTIONS`.
    pub answer_connections_busy: IntGauge,
    /// Time one answer connection took for a batch of subscriptions, seconds.
    pub answer_seconds: Histogram,
    /// `pg_notification_queue_usage()` of the database, sampled (0–1; announcements degrade from 0.5).
    pub notification_queue_usage: Gauge,
}

impl LiveMetrics {
    /// Creates every live metric on `registry`.
    pub fn new(registry: &Registry) -> LiveMetrics {
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let m = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let notify_to_send = Histogram::with_opts(
            HistogramOpts::new(
                "trackway_live_notify_to_send_seconds",
                "From a commit's notification to the position's frame written to a client, seconds.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry.register(Box::new(notify_to_send.clone())).expect("unique metric");
        let usage = Gauge::new(
            "trackway_live_notification_queue_usage",
            "pg_notification_queue_usage() of the database (0-1), sampled every 5 s.",
        )
        .expect("valid metric");
        registry.register(Box::new(usage.clone())).expect("unique metric");
        let answer_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "trackway_live_answer_seconds",
                "Time one answer connection took for a batch of subscriptions (snapshots, replays), seconds.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry.register(Box::new(answer_seconds.clone())).expect("unique metric");
        LiveMetrics {
            connections: gauge("trackway_live_connections", "Open live WebSocket connections."),
            subscriptions: gauge("trackway_live_subscriptions", "Live subscriptions held."),
            frames_in: counter_vec("trackway_live_frames_in_total", "Client messages received, by type.", "type"),
            frames_out: counter_vec("trackway_live_frames_out_total", "Frames sent to clients, by type.", "type"),
            delivered: counter("trackway_live_positions_delivered_total", "Positions written to clients."),
            coalesced: counter(
                "trackway_live_positions_coalesced_total",
                "Queued positions replaced by a newer one of their device (client behind).",
            ),
            dropped: counter(
                "trackway_live_positions_dropped_total",
                "Positions dropped with clients closed as too slow.",
            ),
            closes: counter_vec("trackway_live_closes_total", "Live connections closed, by reason.", "reason"),
            auth_failures: counter_vec(
                "trackway_live_auth_failures_total",
                "Refused live authentications, by reason.",
                "reason",
            ),
            authorize: counter_vec(
                "trackway_live_authorize_total",
                "Subscription checks: from the connection's cache (hit) or trackway.authorize (miss).",
                "result",
            ),
            listen_reconnects: counter(
                "trackway_live_listen_reconnects_total",
                "LISTEN connection re-established after a loss.",
            ),
            history_rewinds: counter(
                "trackway_live_history_rewinds_total",
                "Feed cursor moved back on reconnecting: the database no longer held the last rows read (failover, restore).",
            ),
            replayed: counter_vec(
                "trackway_live_replayed_positions_total",
                "Positions read again for clients: resume (since) or reconnect (after a LISTEN loss).",
                "why",
            ),
            replays_refused: counter_vec(
                "trackway_live_replays_refused_total",
                "Subscriptions with since answered resume_too_far: positions, rows_behind or ahead.",
                "why",
            ),
            answers_failed: counter_vec(
                "trackway_live_answers_failed_total",
                "Subscriptions answered unavailable because the database failed them: one (its statement) or batch.",
                "scope",
            ),
            repeats_skipped: counter(
                "trackway_live_repeats_skipped_total",
                "Rows read a second time by the feed and not sent again.",
            ),
            feed_reads: counter("trackway_live_feed_reads_total", "Reads of new rows by the live feed."),
            feed_rows: counter("trackway_live_feed_rows_total", "Rows routed by the live feed (once each, whatever the clients)."),
            notify_to_send,
            answer_connections_busy: gauge(
                "trackway_live_answer_connections_busy",
                "Answer connections running a batch of subscriptions (of TRACKWAY_LIVE_ANSWER_CONNECTIONS).",
            ),
            answer_seconds,
            queued_bytes: gauge(
                "trackway_live_queued_bytes",
                "Bytes of answers and replayed positions queued for clients and not yet taken by their socket.",
            ),
            notification_queue_usage: usage,
        }
    }
}
