//! `trackway-wire`: the wire-format codec of Trackway GPS positions (docs/architecture.md §1).
//!
//! JavaScript producers write one position per JSON document. [`decode`] validates such a payload and turns it
//! into a typed [`Position`] whose `attributes` are in *storage form* (the JSON text the database keeps in a
//! `jsonb` column); [`encode`] turns a stored position back into the wire format, so that
//! wire → database → wire gives an equal document in JavaScript semantics.
//!
//! Storage form of `attributes`:
//! - `{"__bigint":"<decimal>"}` becomes a plain JSON integer with those exact digits;
//! - `{"__buffer_b64":"<base64>"}` stays an object, with canonical padded base64;
//! - a JS Number that is not a safe integer (a fraction, an exponent, or an integer literal beyond ±(2^53−1))
//!   is written in positional notation with a fractional part (`2.0`, `0.00000015`,
//!   `18446744073709551616.0`), so that PostgreSQL's `numeric` still shows it is a double;
//! - everything else is kept as it is.
//!
//! The codec never panics and never recurses deeper than `serde_json`'s recursion limit, whatever the input.
//!
//! Modules:
//! - `error`: [`DecodeError`] and [`ErrorKind`], the one error type;
//! - `decode`: payload → [`Position`] (top-level fields), the reference path;
//! - `fast`: the fast path of [`decode`] for valid payloads (one pass, no `Value` tree);
//! - `attributes`: wire attributes → storage form (sentinels, JS numbers);
//! - `encode`: [`Position`] → wire document, and [`normalized_json`];
//! - `number`: JavaScript number formatting and the storage form of doubles;
//! - `timestamp`: ISO-8601 parsing and `toISOString`-style formatting;
//! - `json`: small helpers that write compact JSON text;
//! - [`cursor`]: live cursors (where a reader of new rows stands) and their text form;
//! - [`announce`]: NOTIFY payloads announcing new rows;
//! - `batch`: planning one `ingest_batch` call (decode, de-duplicate, order);
//! - `store`: [`StorePolicy`], whether a batch is inserted optimistically or with `ON CONFLICT`;
//! - `limits`: [`Limits`], the size and future-time limits set by the server;
//! - [`shard`]: the shard of a device in a sharded stream (producers compute the same function);
//! - `sql`: [`keep_latest_sql!`], the latest-position rule as SQL text (the extension's and the
//!   benchmark's).

#![forbid(unsafe_code)]

pub mod announce;
mod attributes;
mod batch;
pub mod cursor;
mod decode;
mod encode;
mod error;
mod fast;
mod json;
mod limits;
mod number;
pub mod shard;
mod sql;
mod store;
mod timestamp;

pub use announce::{
    announce_rows, announcements, parse_announcement, summary, AnnouncedRow, Announcement, Detail, NewRow, Omitted,
    MAX_NOTIFY_PAYLOAD_BYTES,
};
pub use attributes::decode_b64;
pub use batch::{checked as decode_checked, BatchPlan, Outcome};
pub use cursor::Cursor;
pub use decode::{decode, decode_fast, decode_reference};
pub use encode::{encode, encode_decoded, normalized_json};
pub use error::{DecodeError, ErrorKind};
pub use limits::{FutureLimit, Limits};
pub use number::{js_number, MAX_SAFE_INTEGER};
pub use store::{Insert, StorePolicy, MAX_OPTIMISTIC_PER_TRANSACTION, MIN_OPTIMISTIC_ROWS};
pub use timestamp::format_timestamp;

/// The default upper bound on the size of one payload, in bytes (1 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The upper bound on the length of `deviceId`, in bytes of UTF-8.
pub const MAX_DEVICE_ID_BYTES: usize = 256;

/// The upper bound on the number of digits of a `{"__bigint": ...}` sentinel.
pub const MAX_BIGINT_DIGITS: usize = 1000;

/// A decoded position, ready for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// The tracker's identifier: non-empty, at most [`MAX_DEVICE_ID_BYTES`] bytes, no NUL character.
    pub device_id: String,
    /// Microseconds since 1970-01-01T00:00:00Z (UTC).
    pub ts_micros: i64,
    /// Degrees north, in [-90, 90].
    pub latitude: f64,
    /// Degrees east, in [-180, 180].
    pub longitude: f64,
    /// Altitude (any finite number).
    pub altitude: Option<f64>,
    /// Heading in degrees, in [0, 360].
    pub angle: Option<f64>,
    /// Speed, at least 0.
    pub speed: Option<f64>,
    /// Number of satellites in view, 0..=32767.
    pub satellites: Option<i16>,
    /// Record priority, 0..=32767.
    pub priority: Option<i16>,
    /// `attributes` in storage form as compact JSON text, `None` when the payload had none.
    pub attributes: Option<String>,
}
