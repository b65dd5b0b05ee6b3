//! Which INSERT the insert trigger is looking at: `trackway.ingest_batch`'s own, or anybody else's.
//!
//! `ingest_batch` keeps `latest_positions` and sends the NOTIFYs for the rows of its own INSERT (it has the
//! decoded positions at hand), so the statement trigger `_positions_inserted` must skip exactly that
//! statement and no other — a plain `INSERT` or `COPY` into `trackway.positions` is still its job.
//!
//! While `ingest_batch` runs its INSERT it holds an [`OwnedByIngestBatch`] guard, which records the trigger
//! depth at which the statement runs. The trigger asks [`owned_by_ingest_batch`]; the answer is yes only
//! one trigger level below that depth, so an INSERT into `positions` made by some other trigger fired
//! *inside* that statement is still handled by the trigger. The guard is a Rust value in this backend's
//! (only) thread, reset by `Drop` also when an ERROR unwinds through `ingest_batch`, so nothing of it
//! outlives the statement, whatever the transaction does afterwards.
//!
//! It also runs code in a subtransaction ([`try_in_subtransaction`]), the way a PL/pgSQL block with an
//! `EXCEPTION` clause does, for `ingest_batch`'s optimistic insert (see `trackway_wire::StorePolicy`).
//!
//! This module holds the crate's only `unsafe` code.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

/// A polymorphic argument (`anyarray`) passed on to SPI as a parameter of the type it actually has (the
/// `trackway.positions[]` the insert trigger builds), so that the statement sees its columns.
pub fn argument_of_its_own_type(value: pgrx::AnyArray) -> DatumWithOid<'static> {
    let oid = value.oid();
    // SAFETY: `oid` is the type of the very datum: PostgreSQL resolved the polymorphic argument to it for
    // this call, and the datum lives in the caller's memory context for the whole call, through the SPI
    // statement that reads it.
    unsafe { DatumWithOid::new(value, oid) }
}

thread_local! {
    /// The trigger depth (`pg_trigger_depth()`) at which `ingest_batch`'s INSERT runs, while it runs.
    static OWNED_AT_DEPTH: Cell<Option<i32>> = const { Cell::new(None) };
}

/// Marks the statement about to run as `ingest_batch`'s own until dropped.
#[must_use = "the mark lasts as long as the guard"]
pub struct OwnedByIngestBatch {
    previous: Option<i32>,
}

impl OwnedByIngestBatch {
    /// Starts the mark at the current trigger depth.
    pub fn begin() -> OwnedByIngestBatch {
        let depth = trigger_depth();
        OwnedByIngestBatch { previous: OWNED_AT_DEPTH.with(|owned| owned.replace(Some(depth))) }
    }
}

impl Drop for OwnedByIngestBatch {
    fn drop(&mut self) {
        // Restores an outer mark: ingest_batch may be called by a trigger fired inside another ingest_batch.
        OWNED_AT_DEPTH.with(|owned| owned.set(self.previous));
    }
}

/// True when called by the insert trigger of the INSERT that `trackway.ingest_batch` is running right now:
/// that statement's rows are kept in `latest_positions` and announced by `ingest_batch` itself.
#[pg_extern(volatile, parallel_restricted, name = "_ingest_batch_statement")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn owned_by_ingest_batch() -> bool {
    let depth = trigger_depth();
    OWNED_AT_DEPTH.with(|owned| owned.get().is_some_and(|at| at.checked_add(1) == Some(depth)))
}

/// True while `trackway.ingest_batch`'s own INSERT evaluates its rows: the `WHEN` clause of the row
/// trigger `positions_assign` runs at the statement's own trigger depth (not one below, as the statement
/// trigger's body does), so `ingest_batch`'s rows, which take the column defaults, skip that trigger.
#[pg_extern(volatile, parallel_restricted, name = "_ingest_batch_row")]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn row_of_ingest_batch() -> bool {
    let depth = trigger_depth();
    OWNED_AT_DEPTH.with(|owned| owned.get() == Some(depth))
}

/// `now()`: when the current transaction started.
pub fn transaction_start() -> TimestampWithTimeZone {
    // SAFETY: reads a backend-local variable set at transaction start; we are on the backend's thread,
    // inside a transaction.
    let ts = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    TimestampWithTimeZone::try_from(ts).unwrap_or_else(|_| error!("trackway: now() is out of range"))
}

/// `pg_notification_queue_usage()`: the fraction of the cluster-wide NOTIFY queue in use.
pub fn notification_queue_usage() -> f64 {
    // SAFETY: a built-in SQL function without arguments that reads the shared queue pointers under its own
    // lock; `direct_function_call` builds a valid argument-less call frame; we are on the backend's thread.
    unsafe { pgrx::direct_function_call::<f64>(pg_sys::pg_notification_queue_usage, &[]) }.unwrap_or(0.0)
}

/// `pg_trigger_depth()`: how many triggers are executing around the current code.
fn trigger_depth() -> i32 {
    // SAFETY: `pg_trigger_depth` is a built-in SQL function without arguments that only returns a backend
    // counter; `direct_function_call` builds a valid (argument-less) call frame for it, and we are on the
    // backend's thread, inside a transaction.
    unsafe { pgrx::direct_function_call::<i32>(pg_sys::pg_trigger_depth, &[]) }.unwrap_or(0)
}

/// Runs `attempt` in a subtransaction. `Some(result)` when it finished: its work joins the transaction.
/// `None` when it raised `unique_violation`: all its work is rolled back (rows, sequence values aside) and
/// the error is gone. Any other error (or panic) is rolled back and raised again.
///
/// Memory allocated by `attempt` lives in the caller's memory context, as in PL/pgSQL. What `attempt`
/// borrows may be used again after `None`: every PostgreSQL object it touched was rolled back.
pub fn try_in_subtransaction<R>(attempt: impl FnOnce() -> R) -> Option<R> {
    // SAFETY: this is the sequence PL/pgSQL's `exec_stmt_block` uses. We are on the backend's thread,
    // inside a transaction that is not in parallel mode (every caller is `parallel_unsafe`).
    // `BeginInternalSubTransaction` switches to the subtransaction's memory context and resource owner;
    // both are restored on every path below: after `ReleaseCurrentSubTransaction` on success, and after
    // `RollbackAndReleaseCurrentSubTransaction` when an error was caught. pgrx's FFI guard has already
    // copied and flushed PostgreSQL's error state when the error reaches the catch handlers, so
    // rolling back (which releases locks, buffers, SPI tuple tables and plan references taken by
    // `attempt`) is the only cleanup left.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        let restore = move || {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(AssertUnwindSafe(|| {
            let result = attempt();
            pg_sys::ReleaseCurrentSubTransaction();
            restore();
            Some(result)
        }))
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, move |_| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            None
        })
        .catch_others(move |error| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            error.rethrow()
        })
        .execute()
    }
}

/// The full id of the current top-level transaction, or 0 while it has none (it has written nothing).
pub fn top_transaction_id() -> u64 {
    // SAFETY: reads a field of the backend's transaction state; assigns nothing. We are on the backend's
    // thread, inside a transaction.
    unsafe { pg_sys::GetTopFullTransactionIdIfAny().value }
}
