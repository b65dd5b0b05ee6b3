//! Every statement the relay sends to PostgreSQL, in one place: what the relay asks of the extension is
//! read here, not gathered from the files that send it. It calls only functions the extension documents
//! for it (`ingest_batch`, `current_cursor`, `authorize`, `live_rows_since`, `live_replay`,
//! `rows_since_estimate`, `live_latest`, `live_latest_of_groups`), and reads `trackway.positions` only by
//! its key (the feed's check after a reconnect).
//!
//! Nothing here is built from input. The one statement with a value written into its text,
//! [`begin_on_snapshot`], takes an id the server itself exported and checks its form first.

// The ingest path (`database::ingest`).

/// The ingest call; each batch is one statement, so it commits on its own (autocommit) when it returns.
pub const INGEST_BATCH: &str = "SELECT ord, status, error FROM trackway.ingest_batch($1::text[])";

/// Whether the server answers (`/readyz`).
pub const PING: &str = "SELECT 1";

// The live feed (`live::feed`).

/// Where the feed starts the first time: what is committed from now on is live, older rows are replays.
pub const CURRENT_CURSOR: &str = "SELECT trackway.current_cursor()";

/// Every row after a cursor, oldest first, with the groups of its device as this snapshot sees them.
pub const FEED: &str = "SELECT cursor, device_id, \"position\", group_ids, ts_us FROM trackway.live_rows_since($1, $2)";

/// A row by its key (device, time in µs since 1970), if the table holds it.
pub const ROW_BY_KEY: &str = "\
    SELECT 1 FROM trackway.positions p \
    WHERE p.device_id = $1::text AND p.ts = 'epoch'::timestamptz + $2::bigint * interval '1 microsecond'";

/// Of rows given by key in reading order, the last one the table holds: its place in the order (from 1).
pub const NEWEST_HELD: &str = "\
    SELECT k.n \
    FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS k(device_id, us, n) \
    JOIN trackway.positions p \
      ON p.device_id = k.device_id AND p.ts = 'epoch'::timestamptz + k.us * interval '1 microsecond' \
    ORDER BY k.n DESC LIMIT 1";

/// The feed's cycle with subscriptions to answer: read, then export the snapshot (read only: no
/// transaction id).
pub const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
/// The feed's snapshot, for the answer connections.
pub const EXPORT_SNAPSHOT: &str = "SELECT pg_export_snapshot()";
/// Ends a read transaction (the feed's or an answer connection's).
pub const COMMIT: &str = "COMMIT";

// The answer connections (`live::answers`).

/// Latest positions of some devices.
pub const SNAPSHOT_DEVICES: &str = "SELECT device_id, \"position\" FROM trackway.live_latest($1::text[])";

/// Latest positions of the devices of some groups.
pub const SNAPSHOT_GROUPS: &str = "SELECT group_id, \"position\" FROM trackway.live_latest_of_groups($1::text[])";

/// Rows of one target after a cursor (a group as its membership stands now).
pub const REPLAY: &str = "SELECT cursor, device_id, \"position\", ts_us FROM trackway.live_replay($1, $2, $3, $4)";

/// About how many rows of every device were stored after a cursor (what a replay from it walks).
pub const ROWS_BEHIND: &str = "SELECT trackway.rows_since_estimate($1)";

/// The first transaction id not yet handed out, as the snapshot sees it.
pub const XMAX: &str = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text";

/// Starts an answer connection's transaction on the feed's exported snapshot, and marks the savepoint
/// [`ROLLBACK_TO_ANSWER`] returns to. `SET TRANSACTION SNAPSHOT` takes no parameters, so the id is written
/// into the text: only in the form `pg_export_snapshot()` gives it (hex digits and dashes). It comes from
/// the server, never from a client; this is the belt to those braces. Any other text gets a statement the
/// server refuses with a clear error.
pub fn begin_on_snapshot(snapshot: &str) -> String {
    let id = if is_snapshot_id(snapshot) { snapshot } else { "not-a-snapshot-id" };
    format!("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{id}'; SAVEPOINT answer")
}

/// After the server refused one answer's statement (a statement timeout, say): the transaction is usable
/// again, still on the feed's snapshot (the savepoint comes after `SET TRANSACTION SNAPSHOT`; answers only
/// read, so nothing else is undone), and the batch's other answers go on.
pub const ROLLBACK_TO_ANSWER: &str = "ROLLBACK TO SAVEPOINT answer";

/// Whether `id` looks like what `pg_export_snapshot()` returns.
fn is_snapshot_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

// Authorization (`live::authorize`).

/// One statement for a whole batch of questions: each row is one call of the (replaceable) function, in
/// order.
pub const AUTHORIZE_BATCH: &str = "\
    SELECT trackway.authorize(q.claims::jsonb, q.kind, q.id) \
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(claims, kind, id, n) \
    ORDER BY q.n";

/// One question alone (after its batch failed).
pub const AUTHORIZE_ONE: &str = "SELECT trackway.authorize($1::text::jsonb, $2::text, $3::text)";

// The LISTEN connection (`live::listen`).

/// The wake-ups for the feed. (The channel name is fixed, not input.)
pub const LISTEN: &str = "LISTEN trackway_positions";

/// The LISTEN connection's liveness query, which also samples how full the NOTIFY queue is.
pub const NOTIFICATION_QUEUE_USAGE: &str = "SELECT pg_notification_queue_usage()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exported_snapshot_ids_are_written_into_sql() {
        assert!(begin_on_snapshot("00000003-0000001B-1").contains("SNAPSHOT '00000003-0000001B-1';"));
        for bad in ["", "1'; DROP TABLE x; --", &"a".repeat(65)] {
            assert!(begin_on_snapshot(bad).contains("SNAPSHOT 'not-a-snapshot-id';"), "{bad:?}");
        }
    }
}
