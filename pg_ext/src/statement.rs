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
//! And it keeps one trackway library per backend ([`one_library_per_backend`]): from 0.3.0 on the library's
//! file is versioned (`trackway-<version>.so`), so an update can bring a second one into a session.
//!
//! This module holds the crate's only `unsafe` code.

use std::cell::Cell;
use std::ffi::{c_void, CStr};
use std::panic::AssertUnwindSafe;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

/// This library's version, as the message of a conflict names it (a C string: its address also tells this
/// library from another one loaded into the same backend).
const LIBRARY: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(version) => version,
    Err(_) => panic!("a version has no NUL byte"),
};

/// The backend's one record of which trackway library runs in it (a rendezvous variable: shared by every
/// library loaded into the backend).
const RENDEZVOUS: &CStr = c"trackway.library";

/// Called by `_PG_init` before anything else: when another trackway library already runs in this backend —
/// the session used a version that has since been updated away (each version has a file of its own), or
/// `ALTER EXTENSION trackway UPDATE` runs in a session that used the old version — the two cannot share
/// the backend (the second would define the same settings again, and PostgreSQL refuses that on every
/// call). Inside `CREATE`/`ALTER EXTENSION` it is an ERROR (the update is rolled back: run it in a new
/// session); anywhere else the session is closed (FATAL) and the client reconnects, as TimescaleDB does.
/// SQLSTATE 55000 (object not in prerequisite state): the relay counts class 55 as the environment's
/// fault, reconnects and retries, and never blames the data. Returns normally when this library is alone.
pub fn one_library_per_backend() {
    // SAFETY: `find_rendezvous_variable` returns the address of a backend-lifetime slot (created NULL on
    // first use) for this name; we read and write it only here, in the backend's one thread. A non-NULL
    // value was written by a trackway library's `_PG_init` and points to that library's `LIBRARY`, static
    // data of a shared library PostgreSQL never unloads.
    let (slot, other) = unsafe {
        let slot = pg_sys::find_rendezvous_variable(RENDEZVOUS.as_ptr());
        let held = *slot;
        let other = (!held.is_null() && held.cast_const() != LIBRARY.as_ptr().cast::<c_void>())
            .then(|| CStr::from_ptr(held.cast::<std::ffi::c_char>()).to_string_lossy().into_owned());
        (slot, other)
    };
    // A library from before 0.3.0 keeps no record, but its settings are defined (not mere placeholders).
    let other = other.or_else(|| settings_defined_elsewhere().then(|| "0.2.0 or earlier".to_owned()));
    if let Some(other) = other {
        let message = format!(
            "trackway {other} is already loaded in this session, so trackway {} cannot run in it",
            LIBRARY.to_string_lossy()
        );
        let code = PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
        // SAFETY: a plain read of a backend global that PostgreSQL sets around extension scripts.
        if unsafe { pg_sys::creating_extension } {
            ereport!(ERROR, code, message, "Run CREATE or ALTER EXTENSION trackway in a new session (psql -X).");
        }
        ereport!(FATAL, code, message, "The extension was updated while this session used it: reconnect.");
    }
    // SAFETY: as above; the value is this library's static `LIBRARY`, valid for the backend's life.
    unsafe { *slot = LIBRARY.as_ptr().cast_mut().cast::<c_void>() };
}

/// Whether `trackway.max_payload_bytes` is defined as a setting (not a placeholder for one): only a trackway
/// library defines it, so another one ran here.
fn settings_defined_elsewhere() -> bool {
    let name = c"trackway.max_payload_bytes";
    // SAFETY: both only look the name up (missing_ok: NULL or 0 when absent, no error); the value returned
    // is not kept.
    let (exists, flags) = unsafe {
        (
            !pg_sys::GetConfigOption(name.as_ptr(), true, false).is_null(),
            pg_sys::GetConfigOptionFlags(name.as_ptr(), true),
        )
    };
    // A placeholder (a value set before any library defined the setting) carries GUC_CUSTOM_PLACEHOLDER.
    let placeholder = i32::try_from(pg_sys::GUC_CUSTOM_PLACEHOLDER).unwrap_or(i32::MAX);
    exists && flags & placeholder == 0
}

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
///
/// It runs once per inserted row and names no SQL object, so it pins no `search_path`: a pinned one costs
/// a configuration change on every call (2–3 % of `ingest_batch` in a profile).
#[pg_extern(volatile, parallel_restricted, name = "_ingest_batch_row")]
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
