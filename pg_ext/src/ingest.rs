//! `trackway.ingest(payload)` and `trackway.ingest_batch(payloads)`: the one way positions enter the table.
//!
//! A batch is decoded in Rust ([`BatchPlan`]) and stored with one SPI statement (a kept plan): an
//! `INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING` into `positions`, with the upsert of
//! `latest_positions` in the same statement (one row per device: the newest row of each device in the batch,
//! when it was inserted). Large batches first try the same statement without `ON CONFLICT` in a
//! subtransaction, and fall back when a row exists already ([`StorePolicy`] decides). The rows are announced from the positions already decoded here, once the snapshot
//! for their cursors is known. While that statement runs, the insert trigger `_positions_inserted` sees
//! [`crate::statement::owned_by_ingest_batch`] and leaves both jobs to this module; for every other `INSERT`
//! or `COPY` it does them itself. Invalid payloads never reach the INSERT, so one bad item cannot fail the
//! others.

use std::cell::{OnceCell, RefCell};
use std::mem::ManuallyDrop;
use std::thread::LocalKey;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{BuiltinOid, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use trackway_wire::{announce_rows, summary, BatchPlan, Insert, Outcome, Position, StorePolicy};

use crate::latest::keep_latest;
use crate::settings::{self, Plan};
use crate::time::{to_timestamptz, to_unix_micros};
use crate::{errors, statement};

/// The statement that stores the planned rows and keeps `latest_positions`, with `$conflict` the clause
/// after the `INSERT` into `positions`: `$1..$10` are the columns of the rows, `$11`/`$12` the keys of the
/// newest row of each device (so that only those are handed on to the rule). Returns `(ingest_seq,
/// device_id, ts)` of every row actually inserted. `latest_positions` is kept by the one statement of the
/// latest-position rule ([`keep_latest!`]), which the insert trigger runs for every other route.
macro_rules! store_rows {
    ($conflict:literal) => {
        concat!(
            "\
WITH new_rows AS (
    INSERT INTO trackway.positions
        (device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes)
    SELECT d, t, la, lo, al, an, sp, sa, pr, at::jsonb
    FROM unnest($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[], $6::float8[],
                $7::float8[], $8::int2[], $9::int2[], $10::text[]) AS u(d, t, la, lo, al, an, sp, sa, pr, at)
    ",
            $conflict,
            "
    RETURNING *
), latest AS (
    ",
            keep_latest!(
                "(SELECT r.* FROM new_rows r
      JOIN unnest($11::text[], $12::timestamptz[]) AS w(d, t) ON r.device_id = w.d AND r.ts = w.t)"
            ),
            "
)
SELECT n.ingest_seq, n.device_id, n.ts FROM new_rows n"
        )
    };
}

/// Stores rows that may exist already (duplicates are skipped).
const STORE_ROWS: &str = store_rows!("ON CONFLICT (device_id, ts) DO NOTHING");

/// Stores rows expected to be new; raises `unique_violation` if one is not (see [`Insert::Optimistic`]).
const STORE_NEW_ROWS: &str = store_rows!("");

/// Parameter types of [`STORE_ROWS`] and [`STORE_NEW_ROWS`].
const STORE_ROWS_ARGS: [BuiltinOid; 12] = [
    BuiltinOid::TEXTARRAYOID,
    BuiltinOid::TIMESTAMPTZARRAYOID,
    BuiltinOid::FLOAT8ARRAYOID,
    BuiltinOid::FLOAT8ARRAYOID,
    BuiltinOid::FLOAT8ARRAYOID,
    BuiltinOid::FLOAT8ARRAYOID,
    BuiltinOid::FLOAT8ARRAYOID,
    BuiltinOid::INT2ARRAYOID,
    BuiltinOid::INT2ARRAYOID,
    BuiltinOid::TEXTARRAYOID,
    BuiltinOid::TEXTARRAYOID,
    BuiltinOid::TIMESTAMPTZARRAYOID,
];

/// This transaction's id and a snapshot taken after its rows were inserted: what the rows' cursors are
/// made of (the same function the insert trigger uses).
const SNAPSHOT: &str = "\
SELECT pg_catalog.pg_current_xact_id()::text::int8, s.xmax, s.in_progress FROM trackway._snapshot() AS s";

/// Queues the announcements; they are delivered at commit (and dropped on rollback).
const NOTIFY: &str = "SELECT pg_catalog.pg_notify('trackway_positions', p) FROM unnest($1::text[]) AS p";

/// A statement prepared on first use and kept for the life of the backend (`SPI_keepplan`), so a batch
/// is not parsed and planned again on every call. PostgreSQL re-plans it by itself when the objects it
/// uses change (plan-cache invalidation), e.g. after `DROP EXTENSION` / `CREATE EXTENSION`.
///
/// Never dropped: freeing a plan while the backend exits is not worth the risk; the memory goes with it.
type KeptPlan = OnceCell<ManuallyDrop<OwnedPreparedStatement>>;

thread_local! {
    static STORE_ROWS_PLAN: KeptPlan = const { OnceCell::new() };
    static STORE_NEW_ROWS_PLAN: KeptPlan = const { OnceCell::new() };
    /// This backend's memory of recent batches, which decides how the next one is inserted.
    static POLICY: RefCell<StorePolicy> = RefCell::new(StorePolicy::default());
    static SNAPSHOT_PLAN: KeptPlan = const { OnceCell::new() };
    static NOTIFY_PLAN: KeptPlan = const { OnceCell::new() };
}

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

/// Raises the error `ingest` gives for a time that is not finite or too far ahead of the server's clock
/// (`trackway.future_tolerance`); for the row trigger, so plain `INSERT`/`COPY` follow the same rule.
/// Once per row of a plain `INSERT`/`COPY` and naming no SQL object, it pins no `search_path` (a pinned one
/// costs a configuration change on every call).
#[pg_extern(stable, strict, parallel_safe, name = "_check_time")]
fn check_time(ts: TimestampWithTimeZone) {
    if !ts.is_finite() {
        errors::raise(&trackway_wire::DecodeError {
            path: "timestamp".to_owned(),
            kind: trackway_wire::ErrorKind::OutOfRange,
            message: "must be a finite time, got infinity".to_owned(),
        });
    }
    if let Some(future) = settings::limits().future {
        future.check(to_unix_micros(ts)).unwrap_or_else(|e| errors::raise(&e));
    }
}

/// Decodes, inserts, announces and classifies a batch of payloads (`None` = SQL NULL).
fn run_batch<'a>(payloads: impl Iterator<Item = Option<&'a str>>) -> Vec<Outcome> {
    let plan = BatchPlan::new(payloads.map(|p| p.map(str::as_bytes)), &settings::limits());
    if plan.rows.is_empty() {
        return plan.finish_rows(std::iter::empty());
    }
    let inserted = Spi::connect_mut(|client| store_and_announce(client, &plan))
        .unwrap_or_else(|e| error!("trackway: storing positions failed: {e}"));
    plan.finish_rows(inserted)
}

/// Stores the planned rows, keeps `latest_positions`, queues the NOTIFYs of the new rows; returns the
/// indexes in `plan.rows` of the rows that were new.
fn store_and_announce(client: &mut SpiClient<'_>, plan: &BatchPlan) -> pgrx::spi::Result<Vec<usize>> {
    // (index in plan.rows, ingest_seq) of every inserted row.
    let inserted = store(client, plan)?;
    if inserted.is_empty() {
        return Ok(Vec::new());
    }
    let announce = settings::announce_plan(inserted.len());
    if announce != Plan::Silent {
        let (xid, snapshot_xmax, in_progress) = snapshot(client)?;
        let payloads = match announce {
            Plan::Rows(detail) => announce_rows(
                inserted.iter().map(|&(row, seq)| (xid, seq, &plan.rows[row])),
                snapshot_xmax,
                &in_progress,
                detail,
            ),
            Plan::Summary(reason) => {
                let first_seq = inserted.iter().map(|&(_, seq)| seq).min().unwrap_or(1);
                let rows = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
                vec![summary(rows, reason, xid, first_seq, snapshot_xmax, &in_progress)]
            }
            Plan::Silent => Vec::new(),
        };
        with_kept_plan(&NOTIFY_PLAN, client, NOTIFY, &[BuiltinOid::TEXTARRAYOID], |client, notify| {
            client.update(&**notify, None, &[payloads.into()]).map(|_| ())
        })?;
    }
    Ok(inserted.into_iter().map(|(row, _)| row).collect())
}

/// Stores the planned rows as [`StorePolicy`] says; returns `(index in plan.rows, ingest_seq)` of each
/// inserted row.
fn store(client: &mut SpiClient<'_>, plan: &BatchPlan) -> pgrx::spi::Result<Vec<(usize, i64)>> {
    let rows = &plan.rows;
    let columns = Columns::from(rows.as_slice());
    let newest: Vec<usize> = plan.newest_per_device().collect();
    let newest_device: Vec<&str> = newest.iter().map(|&i| rows[i].device_id.as_str()).collect();
    let newest_ts: Vec<TimestampWithTimeZone> = newest.iter().map(|&i| to_timestamptz(rows[i].ts_micros)).collect();
    let args = [
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
        newest_device.into(),
        newest_ts.into(),
    ];
    let insert = POLICY.with(|policy| policy.borrow().choose(rows.len(), statement::top_transaction_id()));
    let table = match insert {
        Insert::Optimistic => {
            let attempt =
                statement::try_in_subtransaction(|| run_store(client, &STORE_NEW_ROWS_PLAN, STORE_NEW_ROWS, &args));
            POLICY.with(|policy| policy.borrow_mut().attempted(statement::top_transaction_id()));
            match attempt {
                Some(table) => table?,
                // A row exists already: everything the attempt did is undone; store with ON CONFLICT.
                None => run_store(client, &STORE_ROWS_PLAN, STORE_ROWS, &args)?,
            }
        }
        Insert::OnConflict => run_store(client, &STORE_ROWS_PLAN, STORE_ROWS, &args)?,
    };
    POLICY.with(|policy| policy.borrow_mut().finished(table.len() < rows.len()));
    let mut inserted = Vec::with_capacity(table.len());
    for row in table {
        let seq: Option<i64> = row.get(1)?;
        let device_id: Option<&str> = row.get(2)?;
        let ts: Option<TimestampWithTimeZone> = row.get(3)?;
        if let (Some(seq), Some(device_id), Some(ts)) = (seq, device_id, ts) {
            if let Some(index) = plan.row_index(device_id, to_unix_micros(ts)) {
                inserted.push((index, seq));
            }
        }
    }
    Ok(inserted)
}

/// Optimistic inserts made so far in the current transaction (for tests of the cap).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn optimistic_attempts_in_this_transaction() -> u32 {
    POLICY.with(|policy| policy.borrow().attempts_in(statement::top_transaction_id()))
}

/// Runs one of the store statements (kept in `plan`) with the batch's column arrays.
fn run_store<'conn>(
    client: &mut SpiClient<'conn>,
    plan: &'static LocalKey<KeptPlan>,
    sql: &'static str,
    args: &[DatumWithOid<'_>],
) -> pgrx::spi::Result<SpiTupleTable<'conn>> {
    // The insert trigger leaves this statement's rows to us (also when an ERROR unwinds through here).
    let _owned = statement::OwnedByIngestBatch::begin();
    with_kept_plan(plan, client, sql, &STORE_ROWS_ARGS, |client, store| client.update(&**store, None, args))
}

/// Runs [`SNAPSHOT`]: `(own xid, snapshot xmax, in-progress xids)`.
fn snapshot(client: &mut SpiClient<'_>) -> pgrx::spi::Result<(u64, u64, Vec<u64>)> {
    with_kept_plan(&SNAPSHOT_PLAN, client, SNAPSHOT, &[], |client, snapshot| {
        let row = client.update(&**snapshot, Some(1), &[])?.first();
        let xid: Option<i64> = row.get(1)?;
        let xmax: Option<i64> = row.get(2)?;
        let in_progress: Option<Vec<i64>> = row.get(3)?;
        let to_u64 = |x: i64| u64::try_from(x).unwrap_or(0);
        Ok((
            xid.map_or(0, to_u64),
            xmax.map_or(0, to_u64),
            in_progress.unwrap_or_default().into_iter().filter_map(|x| u64::try_from(x).ok()).collect(),
        ))
    })
}

/// Runs `f` with the kept plan of `sql` (preparing it on first use).
fn with_kept_plan<'conn, R>(
    key: &'static LocalKey<KeptPlan>,
    client: &mut SpiClient<'conn>,
    sql: &'static str,
    args: &[BuiltinOid],
    f: impl FnOnce(&mut SpiClient<'conn>, &OwnedPreparedStatement) -> pgrx::spi::Result<R>,
) -> pgrx::spi::Result<R> {
    key.with(|cell| {
        if cell.get().is_none() {
            let args: Vec<PgOid> = args.iter().map(|&oid| PgOid::BuiltIn(oid)).collect();
            let plan = client.prepare_mut(sql, &args)?.keep();
            // Only fails if a nested call kept its own plan meanwhile; this one then stays unused.
            let _ = cell.set(ManuallyDrop::new(plan));
        }
        match cell.get() {
            Some(plan) => f(client, plan),
            None => unreachable!("the plan was just kept"),
        }
    })
}

/// The rows of a batch as one array per column, the shape `unnest` takes (strings borrowed, not copied).
struct Columns<'a> {
    device_id: Vec<&'a str>,
    ts: Vec<TimestampWithTimeZone>,
    latitude: Vec<f64>,
    longitude: Vec<f64>,
    altitude: Vec<Option<f64>>,
    angle: Vec<Option<f64>>,
    speed: Vec<Option<f64>>,
    satellites: Vec<Option<i16>>,
    priority: Vec<Option<i16>>,
    attributes: Vec<Option<&'a str>>,
}

impl<'a> From<&'a [Position]> for Columns<'a> {
    fn from(rows: &'a [Position]) -> Columns<'a> {
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
            c.device_id.push(&p.device_id);
            c.ts.push(to_timestamptz(p.ts_micros));
            c.latitude.push(p.latitude);
            c.longitude.push(p.longitude);
            c.altitude.push(p.altitude);
            c.angle.push(p.angle);
            c.speed.push(p.speed);
            c.satellites.push(p.satellites);
            c.priority.push(p.priority);
            c.attributes.push(p.attributes.as_deref());
        }
        c
    }
}
