//! Time between the codec and PostgreSQL: the codec counts microseconds since the Unix epoch, a
//! `timestamptz` counts them since 2000-01-01. Every module that crosses between the two uses these.

use pgrx::prelude::*;

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

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
