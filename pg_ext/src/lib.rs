//! `trackway`: a PostgreSQL extension that stores GPS positions sent as JSON by JavaScript producers.
//!
//! Table of contents:
//! - `sql/schema.sql` — tables `trackway.positions`, `trackway.latest_positions`, `trackway.device_groups`;
//! - [`ingest`] — `trackway.ingest(text)` and `trackway.ingest_batch(text[])`: store, keep latest positions,
//!   announce;
//! - [`latest`] — the latest-position rule, stated once (`ingest_batch` embeds it, the insert trigger calls
//!   `trackway._keep_latest`);
//! - [`rows_plan`] — the trigger's statements over its rows, prepared once per backend;
//! - [`statement`] — tells the insert trigger which INSERT is `ingest_batch`'s own (the only `unsafe` code);
//! - [`inspect`] — `trackway.decode(text)`, the wire document of a stored row, cursors;
//! - [`announce`] — the NOTIFY payloads built by the insert trigger (plain `INSERT`/`COPY`);
//! - [`errors`] — wire-codec errors as PostgreSQL errors with a data-exception SQLSTATE;
//! - [`settings`] — the `trackway.max_payload_bytes` setting;
//! - [`time`] — Unix microseconds (the codec's) to and from `timestamptz`;
//! - `sql/api.sql` — SQL-language functions, the insert trigger, roles and grants, the TimescaleDB hookup.
//!
//! Every `#[pg_extern]` here only converts types and calls the plain-Rust crate `trackway-wire`, which
//! `cargo test` covers without a database.

use pgrx::prelude::*;

mod announce;
mod errors;
mod ingest;
mod inspect;
mod latest;
mod rows_plan;
mod settings;
mod statement;
mod time;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../../sql/api.sql", name = "api", finalize);

/// Called once when PostgreSQL loads the library into a backend.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Another trackway version already in this backend: ERROR or FATAL here, before anything is defined.
    statement::one_library_per_backend();
    settings::register();
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    /// One-off set-up when the test cluster starts.
    pub fn setup(_options: Vec<&str>) {}

    /// postgresql.conf settings the tests need.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
