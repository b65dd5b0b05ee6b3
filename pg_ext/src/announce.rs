//! The NOTIFY payloads of newly inserted rows, built for the statement-level insert trigger: how to
//! announce them (settings and queue usage), one entry per row, or one summary.

use pgrx::prelude::*;
use trackway_wire::{announcements, summary, Detail, NewRow, Position};

use crate::settings::{self, Plan};
use crate::time::to_unix_micros;

/// How the trigger announces `rows` new rows: `full`, `reference` (one entry per row), `bulk`, `queue` (one
/// summary, and why) or `off`. See `settings::announce_plan`.
#[pg_extern(volatile, parallel_restricted, name = "_announce_plan")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn announce_plan(rows: i64) -> &'static str {
    match settings::announce_plan(usize::try_from(rows).unwrap_or(usize::MAX)) {
        Plan::Rows(Detail::Full) => "full",
        Plan::Rows(Detail::Reference) => "reference",
        Plan::Summary(reason) => reason,
        Plan::Silent => "off",
    }
}

/// The one payload announcing `rows` rows from `(first_xid, first_seq)` on (see `trackway_wire::summary`).
#[pg_extern(immutable, parallel_safe, name = "_announce_summary")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn announce_summary(
    rows: i64,
    reason: &str,
    snapshot_xmax: i64,
    in_progress: Vec<i64>,
    first_xid: i64,
    first_seq: i64,
) -> String {
    let in_progress: Vec<u64> = in_progress.into_iter().filter_map(|x| u64::try_from(x).ok()).collect();
    let (xmax, xid) = (u64::try_from(snapshot_xmax).unwrap_or(0), u64::try_from(first_xid).unwrap_or(0));
    summary(u64::try_from(rows).unwrap_or(0), reason, xid, first_seq, xmax, &in_progress)
}

/// The payloads announcing the rows given column by column (as the trigger aggregates its transition
/// table), with `detail` `full` or `reference`; `snapshot_xmax` and `in_progress` describe a snapshot of
/// the inserting transaction. See `trackway_wire::announce` for the format.
#[allow(clippy::too_many_arguments)]
#[pg_extern(immutable, parallel_safe, name = "_announcements")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn announcement_payloads(
    detail: &str,
    snapshot_xmax: i64,
    in_progress: Vec<i64>,
    xids: Vec<i64>,
    seqs: Vec<i64>,
    device_ids: Vec<String>,
    ts: Vec<TimestampWithTimeZone>,
    latitude: Vec<f64>,
    longitude: Vec<f64>,
    altitude: Vec<Option<f64>>,
    angle: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    satellites: Vec<Option<i16>>,
    priority: Vec<Option<i16>>,
    attributes: Vec<Option<String>>,
) -> SetOfIterator<'static, String> {
    let n = xids.len();
    let same_length = [
        seqs.len(),
        device_ids.len(),
        ts.len(),
        latitude.len(),
        longitude.len(),
        altitude.len(),
        angle.len(),
        speed.len(),
        satellites.len(),
        priority.len(),
        attributes.len(),
    ]
    .iter()
    .all(|&len| len == n);
    if !same_length {
        error!("trackway._announcements: column arrays differ in length");
    }
    let mut rows: Vec<NewRow> = Vec::with_capacity(n);
    let mut attributes = attributes.into_iter();
    for (i, device_id) in device_ids.into_iter().enumerate() {
        rows.push(NewRow {
            xid: u64::try_from(xids[i]).unwrap_or(0),
            seq: seqs[i],
            position: Position {
                device_id,
                ts_micros: to_unix_micros(ts[i]),
                latitude: latitude[i],
                longitude: longitude[i],
                altitude: altitude[i],
                angle: angle[i],
                speed: speed[i],
                satellites: satellites[i],
                priority: priority[i],
                attributes: attributes.next().flatten(),
            },
        });
    }
    let in_progress: Vec<u64> = in_progress.into_iter().filter_map(|x| u64::try_from(x).ok()).collect();
    let detail = if detail == "reference" { Detail::Reference } else { Detail::Full };
    SetOfIterator::new(announcements(&mut rows, u64::try_from(snapshot_xmax).unwrap_or(0), &in_progress, detail))
}
