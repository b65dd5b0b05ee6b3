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
//! An entry with `position` carries the row's wire document (DESIGN §1). A row whose document would not fit
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
}
