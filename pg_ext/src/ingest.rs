//! `trackway.ingest(payload)` and `trackway.ingest_batch(payloads)`: the one way positions enter the table.
//!
//! A batch is decoded in Rust ([`BatchPlan`]) and stored with one `INSERT … SELECT FROM unnest(…) ON CONFLICT
//! DO NOTHING` through SPI, so TimescaleDB routes rows to chunks and the insert trigger keeps the latest
//! positions and sends the NOTIFYs. Invalid payloads never reach the INSERT, so one bad item cannot fail the
//! others.

use pgrx::prelude::*;
use trackway_wire::{BatchPlan, Outcome, Position};

use crate::{errors, settings};

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

const INSERT_ROWS: &str = "\
INSERT INTO trackway.positions
    (device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes)
SELECT d, t, la, lo, al, an, sp, sa, pr, at::jsonb
FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::int2[], $9::int2[], $10::text[]) AS u(d, t, la, lo, al, an, sp, sa, pr, at)
ON CONFLICT (device_id, ts) DO NOTHING
RETURNING device_id, ts";

/// Stores one position. Returns `inserted` or `duplicate`; an invalid payload raises an ERROR whose
/// message starts with the path of the failing field.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn ingest(payload: Option<&str>) -> &'static str {
    let outcomes = run_batch(std::iter::once(payload));
    match outcomes.into_iter().next() {
        Some(Outcome::Invalid(error)) => errors::raise(&error),
        Some(outcome) => outcome.status(),
        None => unreachable!("one payload gives one outcome"),
    }
}

/// Stores many positions in one statement. One row per input (1-based `ord`): `inserted`, `duplicate`
/// (the key exists, or came earlier in this batch) or `invalid` with the reason in `error`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn ingest_batch(
    payloads: Option<Array<&str>>,
) -> TableIterator<'static, (name!(ord, i32), name!(status, &'static str), name!(error, Option<String>))> {
    let outcomes = match payloads {
        Some(array) => run_batch(array.iter()),
        None => Vec::new(),
    };
    TableIterator::new(outcomes.into_iter().enumerate().map(|(i, outcome)| {
        let ord = i32::try_from(i + 1).unwrap_or(i32::MAX);
        let error = match &outcome {
            Outcome::Invalid(e) => Some(e.to_string()),
            _ => None,
        };
        (ord, outcome.status(), error)
    }))
}

/// Decodes, inserts and classifies a batch of payloads (`None` = SQL NULL).
fn run_batch<'a>(payloads: impl Iterator<Item = Option<&'a str>>) -> Vec<Outcome> {
    let plan = BatchPlan::new(payloads.map(|p| p.map(str::as_bytes)), settings::max_payload_bytes());
    if plan.rows.is_empty() {
        return plan.finish(std::iter::empty());
    }
    let inserted = insert_rows(&plan.rows);
    plan.finish(inserted.iter().map(|(d, t)| (d.as_str(), *t)))
}

/// Inserts the rows; returns the keys `(device_id, unix micros)` that were new.
fn insert_rows(rows: &[Position]) -> Vec<(String, i64)> {
    let columns = Columns::from(rows);
    Spi::connect_mut(|client| {
        let table = client.update(
            INSERT_ROWS,
            None,
            &[
                columns.device_id.into(),
                columns.ts.into(),
                columns.latitude.into(),
                columns.longitude.into(),
                columns.altitude.into(),
                columns.angle.into(),
                columns.speed.into(),
                columns.satellites.into(),
                columns.priority.into(),
                columns.attributes.into(),
            ],
        )?;
        let mut keys = Vec::with_capacity(table.len());
        for row in table {
            let device_id: Option<String> = row.get(1)?;
            let ts: Option<TimestampWithTimeZone> = row.get(2)?;
            if let (Some(device_id), Some(ts)) = (device_id, ts) {
                keys.push((device_id, pg_sys::TimestampTz::from(ts) + PG_EPOCH_OFFSET_MICROS));
            }
        }
        Ok::<_, pgrx::spi::Error>(keys)
    })
    .unwrap_or_else(|e| error!("trackway: storing positions failed: {e}"))
}

/// The rows of a batch as one array per column, the shape `unnest` takes.
struct Columns {
    device_id: Vec<String>,
    ts: Vec<TimestampWithTimeZone>,
    latitude: Vec<f64>,
    longitude: Vec<f64>,
    altitude: Vec<Option<f64>>,
    angle: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    satellites: Vec<Option<i16>>,
    priority: Vec<Option<i16>>,
    attributes: Vec<Option<String>>,
}

impl From<&[Position]> for Columns {
    fn from(rows: &[Position]) -> Columns {
        let mut c = Columns {
            device_id: Vec::with_capacity(rows.len()),
            ts: Vec::with_capacity(rows.len()),
            latitude: Vec::with_capacity(rows.len()),
            longitude: Vec::with_capacity(rows.len()),
            altitude: Vec::with_capacity(rows.len()),
            angle: Vec::with_capacity(rows.len()),
            speed: Vec::with_capacity(rows.len()),
            satellites: Vec::with_capacity(rows.len()),
            priority: Vec::with_capacity(rows.len()),
            attributes: Vec::with_capacity(rows.len()),
        };
        for p in rows {
            c.device_id.push(p.device_id.clone());
            c.ts.push(to_timestamptz(p.ts_micros));
            c.latitude.push(p.latitude);
            c.longitude.push(p.longitude);
            c.altitude.push(p.altitude);
            c.angle.push(p.angle);
            c.speed.push(p.speed);
            c.satellites.push(p.satellites);
            c.priority.push(p.priority);
            c.attributes.push(p.attributes.clone());
        }
        c
    }
}

/// A decoded timestamp (Unix microseconds) as a `timestamptz`. The codec only accepts years 0–9999, all
/// of which PostgreSQL can represent.
pub fn to_timestamptz(unix_micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(unix_micros - PG_EPOCH_OFFSET_MICROS)
        .unwrap_or_else(|_| error!("trackway: timestamp {unix_micros} is out of PostgreSQL's range"))
}

/// A `timestamptz` as Unix microseconds.
pub fn to_unix_micros(ts: TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(ts) + PG_EPOCH_OFFSET_MICROS
}
