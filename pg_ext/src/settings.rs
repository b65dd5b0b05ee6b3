//! Settings (GUCs) of the extension.
//!
//! - `trackway.max_payload_bytes` (user): payloads above it are invalid without being parsed.
//! - `trackway.future_tolerance` (superuser): positions further ahead of the server's clock are invalid.
//! - `trackway.announce` (superuser): what NOTIFY carries: `full`, `reference` or `off`.
//! - `trackway.announce_max_rows` (superuser): a statement that inserts more rows sends one summary.
//! - `trackway.announce_queue_limit` (superuser): above this NOTIFY queue usage, one summary per statement.
//!
//! The announcement settings are a superuser's (set them with `ALTER SYSTEM` or `ALTER DATABASE`), so a
//! role that may only ingest cannot turn announcements of whole positions back on.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use trackway_wire::{FutureLimit, Limits};

use crate::{statement, time::to_unix_micros};

/// Payloads longer than this many bytes are rejected before they are parsed (`trackway.max_payload_bytes`).
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1 << 20);

/// Seconds a position's time may be ahead of the server's clock; −1 turns the check off.
pub static FUTURE_TOLERANCE: GucSetting<i32> = GucSetting::<i32>::new(86_400);

/// What announcements carry.
pub static ANNOUNCE: GucSetting<Announce> = GucSetting::<Announce>::new(Announce::Full);

/// Statements inserting more rows than this announce them with one summary (a bulk load, a restore).
pub static ANNOUNCE_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// NOTIFY queue usage (0–1) from which statements announce with one summary; from 0.99 on, not at all.
pub static ANNOUNCE_QUEUE_LIMIT: GucSetting<f64> = GucSetting::<f64>::new(0.5);

/// Queue usage above which not even a summary is sent: a full queue would fail the commit.
const QUEUE_NEARLY_FULL: f64 = 0.99;

/// The values of `trackway.announce`.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Announce {
    /// Every new row with its wire document.
    #[name = c"full"]
    Full,
    /// Every new row by reference (cursor, deviceId, timestamp): no position data on the channel.
    #[name = c"reference"]
    Reference,
    /// No announcements at all; readers poll `positions_since`.
    #[name = c"off"]
    Off,
}

/// Registers the settings; called from `_PG_init`.
pub fn register() {
    GucRegistry::define_int_guc(
        c"trackway.max_payload_bytes",
        c"Largest accepted position payload, in bytes.",
        c"Payloads above this size are reported as invalid without being parsed.",
        &MAX_PAYLOAD_BYTES,
        1024,
        64 << 20,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"trackway.future_tolerance",
        c"How far ahead of the server's clock a position's time may be.",
        c"Positions with a later time are invalid (a device with a bad clock would otherwise stay its own \
          latest position for good). -1 accepts any time.",
        &FUTURE_TOLERANCE,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_enum_guc(
        c"trackway.announce",
        c"What NOTIFY trackway_positions carries for each new row: full, reference or off.",
        c"Any role that can connect may LISTEN; 'reference' sends only cursor, deviceId and timestamp.",
        &ANNOUNCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"trackway.announce_max_rows",
        c"Statements inserting more rows send one summary announcement instead of one entry per row.",
        c"Keeps bulk loads and restores from flooding the cluster-wide NOTIFY queue.",
        &ANNOUNCE_MAX_ROWS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"trackway.announce_queue_limit",
        c"NOTIFY queue usage (0-1) from which statements send one summary announcement.",
        c"Storing never fails because of announcements: from this usage on, a statement sends one small \
          summary, and from 0.99 on none; readers catch up with trackway.positions_since.",
        &ANNOUNCE_QUEUE_LIMIT,
        0.0,
        1.0,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// The current payload limit.
pub fn max_payload_bytes() -> usize {
    usize::try_from(MAX_PAYLOAD_BYTES.get()).unwrap_or(trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES)
}

/// The limits in force now: payload size, and positions at most `trackway.future_tolerance` ahead of the
/// transaction's start (`now()`).
pub fn limits() -> Limits {
    let tolerance = FUTURE_TOLERANCE.get();
    let future = (tolerance >= 0).then(|| FutureLimit {
        now_micros: to_unix_micros(statement::transaction_start()),
        tolerance_seconds: i64::from(tolerance),
    });
    Limits { max_payload_bytes: max_payload_bytes(), future }
}

/// How a statement that inserted `rows` rows announces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One entry per row with this detail.
    Rows(trackway_wire::Detail),
    /// One summary; the reason (`bulk`, `queue`).
    Summary(&'static str),
    /// Nothing.
    Silent,
}

/// Decides how to announce `rows` new rows, from the settings and the NOTIFY queue's usage.
pub fn announce_plan(rows: usize) -> Plan {
    let detail = match ANNOUNCE.get() {
        Announce::Off => return Plan::Silent,
        Announce::Full => trackway_wire::Detail::Full,
        Announce::Reference => trackway_wire::Detail::Reference,
    };
    let usage = statement::notification_queue_usage();
    if usage >= QUEUE_NEARLY_FULL {
        pgrx::warning!(
            "trackway: NOTIFY queue is {:.0}% full; {rows} new rows are not announced (read them with trackway.positions_since)",
            usage * 100.0
        );
        return Plan::Silent;
    }
    if usage >= ANNOUNCE_QUEUE_LIMIT.get() {
        pgrx::warning!(
            "trackway: NOTIFY queue is {:.0}% full (trackway.announce_queue_limit); {rows} new rows are announced by one summary",
            usage * 100.0
        );
        return Plan::Summary("queue");
    }
    if rows > usize::try_from(ANNOUNCE_MAX_ROWS.get()).unwrap_or(usize::MAX) {
        return Plan::Summary("bulk");
    }
    Plan::Rows(detail)
}
