//! Statements over the insert trigger's rows (an array of `trackway.positions`), prepared once per backend
//! and kept: the trigger runs them for every plain `INSERT` and `COPY`, and parsing and planning them each
//! time cost a one-row `INSERT` about 4 % of its throughput.
//!
//! The array's type is the extension's own (`trackway.positions[]`), whose oid differs between databases
//! and between installs: a plan is kept with the oid it was prepared for, and prepared again for another.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::thread::LocalKey;

use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{pg_sys, PgOid};

/// A kept plan and the argument type it was prepared for. Never freed when the backend exits (freeing a
/// plan then is not worth the risk; the memory goes with the process), only when replaced.
pub type KeptForType = RefCell<Option<(pg_sys::Oid, ManuallyDrop<OwnedPreparedStatement>)>>;

/// Runs `f` with the plan of `sql` kept in `key` for an argument of type `oid` (prepared on first use, or
/// again for another type). `mutating`: the statement writes (`prepare_mut`).
pub fn with_plan_for<'conn, R>(
    key: &'static LocalKey<KeptForType>,
    client: &mut SpiClient<'conn>,
    (sql, mutating): (&'static str, bool),
    oid: pg_sys::Oid,
    f: impl FnOnce(&mut SpiClient<'conn>, &OwnedPreparedStatement) -> pgrx::spi::Result<R>,
) -> pgrx::spi::Result<R> {
    // Taken out while it runs: a nested call of the same statement (a user's trigger on latest_positions
    // inserting positions, say) prepares its own instead of sharing one in use.
    let kept = key.with(|cell| cell.borrow_mut().take());
    let plan = match kept {
        Some((kept_oid, plan)) if kept_oid == oid => plan,
        other => {
            drop(other.map(|(_, plan)| ManuallyDrop::into_inner(plan)));
            let args = [PgOid::from_untagged(oid)];
            let prepared = if mutating { client.prepare_mut(sql, &args)? } else { client.prepare(sql, &args)? };
            ManuallyDrop::new(prepared.keep())
        }
    };
    let result = f(client, &plan);
    key.with(|cell| {
        // A plan a nested call kept meanwhile is replaced (and left to the process, like every kept plan).
        *cell.borrow_mut() = Some((oid, plan));
    });
    result
}
