//! The latest-position rule, stated once (its text: [`trackway_wire::keep_latest_sql!`]): every route
//! into `trackway.positions` keeps `trackway.latest_positions` with the statement [`keep_latest!`] writes.
//! `ingest` and `ingest_batch` embed it in their own statement, over the rows they just inserted; the
//! insert trigger (`sql/api.sql`, for every plain `INSERT` and `COPY`) hands its transition table's rows
//! to `trackway._keep_latest` ([`keep_latest_of`]).

use pgrx::prelude::*;
use pgrx::AnyArray;

use crate::rows_plan::{self, KeptForType};
use crate::statement;

/// The rule's statement into `trackway.latest_positions` from `$source` (see [`trackway_wire::keep_latest_sql!`]).
macro_rules! keep_latest {
    ($source:literal) => {
        trackway_wire::keep_latest_sql!("trackway.latest_positions", $source)
    };
}
pub(crate) use keep_latest;

/// The rule over an array of rows (the trigger's route).
const KEEP_LATEST_OF_ARRAY: &str = keep_latest!("unnest($1::trackway.positions[])");

thread_local! {
    /// [`KEEP_LATEST_OF_ARRAY`], prepared once per backend.
    static KEEP_LATEST_PLAN: KeptForType = const { std::cell::RefCell::new(None) };
}

/// Keeps `latest_positions` from `rows`, an array of `trackway.positions` rows: the insert trigger's call
/// for every `INSERT` and `COPY` that is not `ingest_batch`'s own. Not granted to anyone: the trigger runs
/// as the extension's owner.
#[pg_extern(volatile, parallel_unsafe, name = "_keep_latest")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn keep_latest_of(rows: AnyArray) -> Result<(), pgrx::spi::Error> {
    let oid = rows.oid();
    let rows = statement::argument_of_its_own_type(rows);
    Spi::connect_mut(|client| {
        rows_plan::with_plan_for(&KEEP_LATEST_PLAN, client, (KEEP_LATEST_OF_ARRAY, true), oid, |client, plan| {
            client.update(plan, None, &[rows]).map(drop)
        })
    })
}
