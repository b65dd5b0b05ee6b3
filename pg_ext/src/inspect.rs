//! Reading back: the normalised decode of a payload, the wire document of a stored row, cursors.

use pgrx::prelude::*;
use trackway_wire::{Cursor, Position};

use crate::time::to_unix_micros;
use crate::{errors, settings};

/// The normalised position a payload decodes to (what would be stored), for inspection. Invalid input
/// raises the same error as `trackway.ingest`.
#[pg_extern(stable, strict, parallel_safe)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn decode(payload: &str) -> pgrx::JsonB {
    let position =
        trackway_wire::decode(payload.as_bytes(), settings::max_payload_bytes()).unwrap_or_else(|e| errors::raise(&e));
    let text = trackway_wire::normalized_json(&position);
    pgrx::JsonB(serde_json::from_str(&text).unwrap_or_else(|e| error!("trackway: normalised JSON: {e}")))
}

/// The wire document of stored columns, as text. `trackway.to_wire(positions)` wraps this.
/// Once per row of every read after a cursor (the live feed, replays) and naming no SQL object, it pins
/// no `search_path`, like the other cursor functions here: a pinned one is a configuration change on
/// every call, which was a quarter of a 1,000-row read's time on PostgreSQL 15 (7 % on 17, which caches
/// search paths).
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "_wire_text")]
fn wire_text(
    device_id: &str,
    ts: TimestampWithTimeZone,
    latitude: f64,
    longitude: f64,
    altitude: Option<f64>,
    angle: Option<f64>,
    speed: Option<f64>,
    satellites: Option<i16>,
    priority: Option<i16>,
    attributes: Option<&str>,
) -> String {
    let position = Position {
        device_id: device_id.to_owned(),
        ts_micros: to_unix_micros(ts),
        latitude,
        longitude,
        altitude,
        angle,
        speed,
        satellites,
        priority,
        attributes: attributes.map(str::to_owned),
    };
    trackway_wire::encode(&position).unwrap_or_else(|e| errors::raise(&e))
}

/// The parts of a cursor: its transaction and sequence, the transactions behind it with the last sequence
/// delivered of each, and the uncertain range's start (NULLs when it has none). Raises a clear error for a
/// malformed cursor.
#[allow(clippy::type_complexity)] // pgrx reads the column names from the written-out tuple type
#[pg_extern(immutable, strict, parallel_safe, name = "_cursor_parts")]
fn cursor_parts(
    cursor: &str,
) -> TableIterator<
    'static,
    (
        name!(xid, i64),
        name!(seq, i64),
        name!(behind_xids, Vec<i64>),
        name!(behind_after, Vec<i64>),
        name!(range_xid, Option<i64>),
        name!(range_seq, Option<i64>),
    ),
> {
    let c = Cursor::parse(cursor).unwrap_or_else(|e| errors::raise(&e));
    let xids = c.behind.iter().map(|b| to_i64(b.xid)).collect();
    let after = c.behind.iter().map(|b| b.after).collect();
    TableIterator::once((to_i64(c.xid), c.seq, xids, after, c.range.map(|r| to_i64(r.xid)), c.range.map(|r| r.seq)))
}

/// The cursor of row `(xid, seq)` read under a snapshot with `snapshot_xmax` and in-progress list `in_progress`.
#[pg_extern(immutable, strict, parallel_safe, name = "_cursor")]
fn cursor(xid: i64, seq: i64, snapshot_xmax: i64, in_progress: Vec<i64>) -> String {
    let in_progress: Vec<u64> = in_progress.into_iter().filter_map(|x| u64::try_from(x).ok()).collect();
    let xid = u64::try_from(xid).unwrap_or(0);
    Cursor::from_snapshot(xid, seq, u64::try_from(snapshot_xmax).unwrap_or(0), &in_progress).to_string()
}

/// The cursor after replaying row `(xid, seq)` from cursor `after` (see `Cursor::advance`). Once per row read
/// after a cursor; pins no `search_path` (see [`wire_text`]).
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, strict, parallel_safe, name = "_cursor_after")]
fn cursor_after(
    after: &str,
    xid: i64,
    seq: i64,
    more_in_txn: bool,
    snapshot_xmax: i64,
    in_progress: Vec<i64>,
) -> String {
    let after = Cursor::parse(after).unwrap_or_else(|e| errors::raise(&e));
    let in_progress: Vec<u64> = in_progress.into_iter().filter_map(|x| u64::try_from(x).ok()).collect();
    let (xid, xmax) = (u64::try_from(xid).unwrap_or(0), u64::try_from(snapshot_xmax).unwrap_or(0));
    after.advance(xid, seq, more_in_txn, xmax, &in_progress).to_string()
}

/// Full transaction ids are 64-bit but stay far below 2^63 (epoch × 2^32); clamp rather than wrap.
fn to_i64(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}
