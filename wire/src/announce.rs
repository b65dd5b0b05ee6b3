//! NOTIFY payloads on channel `trackway_positions`: new rows, batched, each payload under PostgreSQL's limit.
//!
//! One payload is a JSON object holding the rows of one committing statement, in insert order:
//!
//! ```json
//! {"positions":[
//!   {"cursor":"812:10045","position":{"deviceId":"356307042441013","timestamp":"2026-11-27T08:00:00.000Z", ...}},
//!   {"cursor":"812:10046","deviceId":"356307042441021","timestamp":"2026-11-27T08:00:00.000Z"}
//! ]}
//! ```
//!
//! An entry with `position` carries the row's wire document (docs/architecture.md §1). A row whose document would not fit
//! is announced *by reference* (`deviceId` and `timestamp`, no `position`); readers fetch it with
//! `trackway.positions_since` or by key. Payloads are packed greedily, so a commit of 1,000 rows sends a few
//! dozen NOTIFYs instead of 1,000. With [`Detail::Reference`] (`trackway.announce = reference`) every row is
//! announced by reference, so whole positions never reach roles that can merely LISTEN.
//!
//! A statement whose rows are not announced one by one (a bulk load or a restore, or a NOTIFY queue that is
//! filling up) sends one [`summary`] instead, so storing never fails or floods the queue because of
//! announcements; readers catch up with `trackway.positions_since`:
//!
//! ```json
//! {"positions":[],"omitted":{"rows":1000000,"reason":"bulk","resume":"812:0"}}
//! ```

use crate::cursor::Cursor;
use crate::{encode, encode_decoded, format_timestamp, DecodeError, Position};

/// PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more; stay clearly below.
pub const MAX_NOTIFY_PAYLOAD_BYTES: usize = 7_900;

const OPEN: &str = "{\"positions\":[";
const CLOSE: &str = "]}";
const CLOSE_ARRAY: &str = "]";

/// How much each announced row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The row's wire document (by reference when it does not fit in a payload).
    Full,
    /// Only `cursor`, `deviceId` and `timestamp`.
    Reference,
}

/// A newly inserted row as the announcement trigger sees it.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// `ingest_xid` of the row.
    pub xid: u64,
    /// `ingest_seq` of the row.
    pub seq: i64,
    /// The stored columns.
    pub position: Position,
}

/// The NOTIFY payloads announcing `rows`; `snapshot_xmax` and `in_progress` describe a snapshot taken by
/// the inserting transaction (see [`Cursor::from_snapshot`]). Rows are announced in `(xid, seq)` order. Never fails: a row that cannot be
/// encoded (only possible for hand-written `attributes`) is announced by reference.
pub fn announcements(rows: &mut [NewRow], snapshot_xmax: u64, in_progress: &[u64], detail: Detail) -> Vec<String> {
    let mut rows: Vec<(u64, i64, &Position)> = rows.iter().map(|r| (r.xid, r.seq, &r.position)).collect();
    announce(&mut rows, snapshot_xmax, in_progress, document(detail, encode))
}

/// The document maker for `detail`: `None` announces by reference.
fn document(detail: Detail, encoder: Encoder) -> Option<Encoder> {
    (detail == Detail::Full).then_some(encoder)
}

/// Makes a row's wire document.
type Encoder = fn(&Position) -> Result<String, DecodeError>;

/// The one payload announcing `rows` rows, the first of which is `(first_xid, first_seq)`, without listing
/// them: `resume` is a cursor just before that row (under the inserting transaction's snapshot), from which
/// `trackway.positions_since` returns them all. `reason` says why (`bulk`, `queue`).
pub fn summary(
    rows: u64,
    reason: &str,
    first_xid: u64,
    first_seq: i64,
    snapshot_xmax: u64,
    in_progress: &[u64],
) -> String {
    let resume = Cursor::from_snapshot(first_xid, first_seq.saturating_sub(1).max(0), snapshot_xmax, in_progress);
    format!(
        "{OPEN}{CLOSE_ARRAY},\"omitted\":{{\"rows\":{rows},\"reason\":{},\"resume\":\"{resume}\"}}}}",
        json_string(reason)
    )
}

/// [`announcements`] of borrowed rows `(xid, seq, position)` whose positions come straight from
/// [`decode`](crate::decode), for a caller that still holds the positions it has just inserted
/// (`trackway.ingest_batch`); documents are made with [`encode_decoded`].
pub fn announce_rows<'a>(
    rows: impl IntoIterator<Item = (u64, i64, &'a Position)>,
    snapshot_xmax: u64,
    in_progress: &[u64],
    detail: Detail,
) -> Vec<String> {
    let mut rows: Vec<(u64, i64, &Position)> = rows.into_iter().collect();
    announce(&mut rows, snapshot_xmax, in_progress, document(detail, encode_decoded))
}

/// Sorts rows by `(xid, seq)` and packs their entries, each document made by `document`.
fn announce(
    rows: &mut [(u64, i64, &Position)],
    snapshot_xmax: u64,
    in_progress: &[u64],
    document: Option<Encoder>,
) -> Vec<String> {
    rows.sort_unstable_by_key(|&(xid, seq, _)| (xid, seq));
    pack(rows.iter().map(|&(xid, seq, position)| entry(xid, seq, position, snapshot_xmax, in_progress, document)))
}

/// One row's entry: its wire document when that fits in a payload, else a reference.
fn entry(
    xid: u64,
    seq: i64,
    position: &Position,
    snapshot_xmax: u64,
    in_progress: &[u64],
    document: Option<Encoder>,
) -> String {
    let cursor = Cursor::from_snapshot(xid, seq, snapshot_xmax, in_progress).to_string();
    let budget = MAX_NOTIFY_PAYLOAD_BYTES - OPEN.len() - CLOSE.len();
    if let Some(Ok(wire)) = document.map(|encode| encode(position)) {
        let full = format!("{{\"cursor\":\"{cursor}\",\"position\":{wire}}}");
        if full.len() <= budget {
            return full;
        }
    }
    format!(
        "{{\"cursor\":\"{cursor}\",\"deviceId\":{},\"timestamp\":\"{}\"}}",
        json_string(&position.device_id),
        format_timestamp(position.ts_micros)
    )
}

/// Packs entries greedily into payloads of at most [`MAX_NOTIFY_PAYLOAD_BYTES`].
pub fn pack(entries: impl Iterator<Item = String>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::from(OPEN);
    for entry in entries {
        let separator = usize::from(current.len() > OPEN.len());
        if current.len() + separator + entry.len() + CLOSE.len() > MAX_NOTIFY_PAYLOAD_BYTES
            && current.len() > OPEN.len()
        {
            current.push_str(CLOSE);
            payloads.push(std::mem::replace(&mut current, String::from(OPEN)));
        }
        if current.len() > OPEN.len() {
            current.push(',');
        }
        current.push_str(&entry);
    }
    if current.len() > OPEN.len() {
        current.push_str(CLOSE);
        payloads.push(current);
    }
    payloads
}

/// A NOTIFY payload as a reader receives it: the inverse of [`announcements`], [`announce_rows`] and
/// [`summary`]. NOTIFY is not a trusted channel (any role that can connect may send on it), so this never
/// panics and says what is wrong with a payload it cannot read; a reader should still treat what it reads as
/// a wake-up and take the rows themselves from `trackway.positions_since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    /// The announced rows, in `(xid, seq)` order.
    pub rows: Vec<AnnouncedRow>,
    /// Rows announced only as a count (a bulk statement, a filling queue).
    pub omitted: Option<Omitted>,
}

/// One announced row.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnouncedRow {
    /// Where a reader stands after this row.
    pub cursor: Cursor,
    /// The row's device.
    pub device_id: String,
    /// The row's `timestamp`, as in the wire format.
    pub timestamp: String,
    /// The wire document, when the row was announced whole.
    pub position: Option<serde_json::Value>,
}

/// What a summary says.
#[derive(Debug, Clone, PartialEq)]
pub struct Omitted {
    /// How many rows the statement inserted.
    pub rows: u64,
    /// Why they were not listed: `bulk` or `queue`.
    pub reason: String,
    /// A cursor just before the first of them.
    pub resume: Cursor,
}

/// Reads a NOTIFY payload of channel `trackway_positions`; errors name the failing path.
pub fn parse_announcement(payload: &str) -> Result<Announcement, DecodeError> {
    let error = |path: &str, message: &str| DecodeError {
        path: path.to_owned(),
        kind: crate::ErrorKind::WrongType,
        message: message.to_owned(),
    };
    let value: serde_json::Value = serde_json::from_str(payload).map_err(|e| DecodeError {
        path: String::new(),
        kind: crate::ErrorKind::Syntax,
        message: format!("announcement is not JSON: {e}"),
    })?;
    let entries =
        value.get("positions").and_then(|p| p.as_array()).ok_or_else(|| error("positions", "expected an array"))?;
    let mut rows = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let path = |field: &str| format!("positions.{i}.{field}");
        let text = |v: Option<&serde_json::Value>, field: &str| {
            v.and_then(|v| v.as_str()).map(str::to_owned).ok_or_else(|| error(&path(field), "expected a string"))
        };
        let cursor = Cursor::parse(&text(entry.get("cursor"), "cursor")?)
            .map_err(|e| DecodeError { path: path("cursor"), ..e })?;
        let position = entry.get("position").cloned();
        let source = position.as_ref().unwrap_or(entry);
        rows.push(AnnouncedRow {
            cursor,
            device_id: text(source.get("deviceId"), "deviceId")?,
            timestamp: text(source.get("timestamp"), "timestamp")?,
            position,
        });
    }
    let omitted = match value.get("omitted") {
        None => None,
        Some(o) => Some(Omitted {
            rows: o.get("rows").and_then(|r| r.as_u64()).ok_or_else(|| error("omitted.rows", "expected a count"))?,
            reason: o
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned)
                .ok_or_else(|| error("omitted.reason", "expected a string"))?,
            resume: o
                .get("resume")
                .and_then(|r| r.as_str())
                .ok_or_else(|| error("omitted.resume", "expected a string"))
                .and_then(|c| Cursor::parse(c).map_err(|e| DecodeError { path: "omitted.resume".to_owned(), ..e }))?,
        }),
    };
    Ok(Announcement { rows, omitted })
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn row(seq: i64, device: &str, attributes: Option<String>) -> NewRow {
        NewRow {
            xid: 812,
            seq,
            position: Position {
                device_id: device.to_owned(),
                ts_micros: 1_795_680_000_000_000 + seq,
                latitude: 54.5,
                longitude: 25.25,
                altitude: Some(112.0),
                angle: None,
                speed: None,
                satellites: Some(11),
                priority: None,
                attributes,
            },
        }
    }

    fn entries_of(payloads: &[String]) -> Vec<Value> {
        payloads
            .iter()
            .flat_map(|p| {
                let v: Value = serde_json::from_str(p).expect("payload is JSON");
                v["positions"].as_array().expect("positions array").clone()
            })
            .collect()
    }

    #[test]
    fn a_thousand_rows_take_few_payloads_each_under_the_limit() {
        let mut rows: Vec<NewRow> = (0..1000)
            .rev()
            .map(|i| row(i, &format!("dev-{}", i % 7), Some(r#"{"66": 12873, "239": 1}"#.to_owned())))
            .collect();
        let payloads = announcements(&mut rows, 901, &[800, 811, 900], Detail::Full);
        assert!(payloads.len() < 1000 / 20, "{} payloads", payloads.len());
        assert!(payloads.iter().all(|p| p.len() <= MAX_NOTIFY_PAYLOAD_BYTES));
        let entries = entries_of(&payloads);
        assert_eq!(entries.len(), 1000);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e["cursor"], format!("812:{i}:800,811"), "rows in insert order with cursors");
            assert_eq!(e["position"]["deviceId"], format!("dev-{}", i % 7));
            assert_eq!(e["position"]["attributes"]["66"], 12873);
        }
    }

    #[test]
    fn oversized_rows_are_announced_by_reference() {
        let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(20_000));
        let mut rows = vec![row(1, "small", None), row(2, "huge \"one\"", Some(big)), row(3, "small", None)];
        let payloads = announcements(&mut rows, 813, &[], Detail::Full);
        assert!(payloads.iter().all(|p| p.len() <= MAX_NOTIFY_PAYLOAD_BYTES));
        let entries = entries_of(&payloads);
        assert_eq!(entries.len(), 3);
        assert!(entries[0].get("position").is_some());
        assert_eq!(entries[1].get("position"), None);
        assert_eq!(entries[1]["deviceId"], "huge \"one\"");
        assert_eq!(entries[1]["timestamp"], format_timestamp(1_795_680_000_000_002));
        assert_eq!(entries[1]["cursor"], "812:2");
        assert!(entries[2].get("position").is_some());
    }

    #[test]
    fn no_rows_no_payloads() {
        assert!(announcements(&mut [], 1, &[], Detail::Full).is_empty());
    }

    #[test]
    fn reference_detail_carries_no_position() {
        let mut rows = vec![row(1, "a", None), row(2, "b", Some(r#"{"66": 1}"#.to_owned()))];
        let entries = entries_of(&announcements(&mut rows, 813, &[], Detail::Reference));
        assert_eq!(entries.len(), 2);
        for (e, device) in entries.iter().zip(["a", "b"]) {
            assert_eq!(e.get("position"), None);
            assert_eq!(e["deviceId"], device);
        }
    }

    #[test]
    fn a_summary_resumes_just_before_its_first_row() {
        let payload = summary(1_000_000, "bulk", 812, 10_045, 813, &[800]);
        let v: Value = serde_json::from_str(&payload).expect("JSON");
        assert_eq!(v["positions"], Value::Array(vec![]));
        assert_eq!(v["omitted"]["rows"], 1_000_000);
        assert_eq!(v["omitted"]["reason"], "bulk");
        assert_eq!(v["omitted"]["resume"], "812:10044:800");
        assert!(payload.len() < MAX_NOTIFY_PAYLOAD_BYTES);
    }

    #[test]
    fn readers_parse_what_is_announced() {
        let big = format!(r#"{{"blob": "{}"}}"#, "x".repeat(20_000));
        let mut rows = vec![row(1, "a", Some(r#"{"66": 1}"#.to_owned())), row(2, "b", Some(big))];
        let payloads = announcements(&mut rows, 813, &[800], Detail::Full);
        let parsed: Vec<AnnouncedRow> =
            payloads.iter().flat_map(|p| parse_announcement(p).expect("readable").rows).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].cursor.to_string(), "812:1:800");
        assert_eq!(parsed[0].device_id, "a");
        assert_eq!(parsed[0].position.as_ref().expect("whole")["attributes"]["66"], 1);
        assert_eq!((parsed[1].device_id.as_str(), parsed[1].position.is_none()), ("b", true));
        assert_eq!(parsed[1].timestamp, format_timestamp(1_795_680_000_000_002));

        let omitted = parse_announcement(&summary(7, "queue", 812, 5, 813, &[])).expect("summary").omitted;
        let omitted = omitted.expect("omitted");
        assert_eq!(
            (omitted.rows, omitted.reason.as_str(), omitted.resume.to_string()),
            (7, "queue", "812:4".to_owned())
        );
    }

    #[test]
    fn forged_or_broken_announcements_are_clear_errors() {
        for (payload, path) in [
            ("not json", ""),
            (r#"{"rows":[]}"#, "positions"),
            (r#"{"positions":[{"cursor":"x"}]}"#, "positions.0.cursor"),
            (r#"{"positions":[{"cursor":"1:1","timestamp":"t"}]}"#, "positions.0.deviceId"),
            (r#"{"positions":[],"omitted":{"rows":-1,"reason":"bulk","resume":"1:0"}}"#, "omitted.rows"),
            (r#"{"positions":[],"omitted":{"rows":1,"reason":"bulk","resume":"1"}}"#, "omitted.resume"),
        ] {
            let error = parse_announcement(payload).expect_err(payload);
            assert_eq!(error.path, path, "{payload}: {error}");
        }
    }
}
