//! The NOTIFY payloads of newly inserted rows, built for the statement-level insert trigger: how to
//! announce them (settings and queue usage), one entry per row, or one summary.

use pgrx::prelude::*;
use trackway_wire::{announcements, summary, Detail, NewRow, Position};

use crate::rows_plan::{self, KeptForType};
use crate::settings::{self, Plan};
use crate::statement;
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

/// The rows of an array of `trackway.positions` rows, as the announcements need them: the cursor columns
/// and the position columns (the one place a statement lists them for announcing).
const ROWS_OF_ARRAY: &str = "\
    SELECT r.ingest_xid::pg_catalog.text::pg_catalog.int8, r.ingest_seq, r.device_id, r.ts, r.latitude, \
           r.longitude, r.altitude, r.angle, r.speed, r.satellites, r.priority, r.attributes::pg_catalog.text \
    FROM pg_catalog.unnest($1::trackway.positions[]) AS r";

thread_local! {
    /// [`ROWS_OF_ARRAY`], prepared once per backend.
    static ROWS_OF_ARRAY_PLAN: KeptForType = const { std::cell::RefCell::new(None) };
}

/// The payloads announcing `rows`, an array of `trackway.positions` rows (the insert trigger passes its
/// transition table's rows, the same array it keeps the latest positions from), with `detail` `full` or
/// `reference`; `snapshot_xmax` and `in_progress` describe a snapshot of the inserting transaction. See
/// `trackway_wire::announce` for the format.
#[pg_extern(stable, parallel_safe, name = "_announcements")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn announcement_payloads(
    detail: &str,
    snapshot_xmax: i64,
    in_progress: Vec<i64>,
    rows: pgrx::AnyArray,
) -> Result<SetOfIterator<'static, String>, pgrx::spi::Error> {
    let oid = rows.oid();
    let rows = statement::argument_of_its_own_type(rows);
    let mut new_rows = Spi::connect_mut(|client| {
        let table =
            rows_plan::with_plan_for(&ROWS_OF_ARRAY_PLAN, client, (ROWS_OF_ARRAY, false), oid, |client, plan| {
                client.select(plan, None, &[rows])
            })?;
        let mut new_rows: Vec<NewRow> = Vec::with_capacity(table.len());
        for row in table {
            new_rows.push(NewRow {
                xid: row.get::<i64>(1)?.and_then(|x| u64::try_from(x).ok()).unwrap_or(0),
                seq: row.get::<i64>(2)?.unwrap_or(0),
                position: Position {
                    device_id: row.get::<String>(3)?.unwrap_or_default(),
                    ts_micros: row.get::<TimestampWithTimeZone>(4)?.map_or(0, to_unix_micros),
                    latitude: row.get::<f64>(5)?.unwrap_or(0.0),
                    longitude: row.get::<f64>(6)?.unwrap_or(0.0),
                    altitude: row.get(7)?,
                    angle: row.get(8)?,
                    speed: row.get(9)?,
                    satellites: row.get(10)?,
                    priority: row.get(11)?,
                    attributes: row.get(12)?,
                },
            });
        }
        Ok::<_, pgrx::spi::Error>(new_rows)
    })?;
    let in_progress: Vec<u64> = in_progress.into_iter().filter_map(|x| u64::try_from(x).ok()).collect();
    let detail = if detail == "reference" { Detail::Reference } else { Detail::Full };
    let xmax = u64::try_from(snapshot_xmax).unwrap_or(0);
    Ok(SetOfIterator::new(announcements(&mut new_rows, xmax, &in_progress, detail)))
}
