//! The routes into the database being compared, each timed over all of its batches.
//!
//! Every route sends one batch per round trip and commits it on its own (autocommit), the way the relay
//! calls `ingest_batch`. Statements are prepared and data is encoded before the clock starts; only the
//! loop of round trips is timed.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, StreamExt};
use tokio_postgres::Client;

/// The stored columns a producer supplies; the other three (`ingested_at`, `ingest_xid`, `ingest_seq`)
/// come from their defaults on every route.
pub const COLUMNS: &str =
    "device_id, ts, latitude, longitude, altitude, angle, speed, satellites, priority, attributes";

/// What one timed run did.
pub struct Run {
    pub rows: u64,
    pub elapsed: Duration,
}

impl AsRef<Run> for Run {
    fn as_ref(&self) -> &Run {
        self
    }
}

/// Route a: the extension. Returns how many payloads it reported `inserted`.
pub async fn ingest_batch(client: &Client, batches: &[Vec<&str>]) -> Result<Run> {
    let statement = client
        .prepare("SELECT count(*) FILTER (WHERE status = 'inserted') FROM trackway.ingest_batch($1::text[])")
        .await
        .context("preparing the ingest_batch call")?;
    let start = Instant::now();
    let mut rows = 0;
    for (i, batch) in batches.iter().enumerate() {
        let row = client
            .query_one(&statement, &[batch])
            .await
            .with_context(|| format!("trackway.ingest_batch, batch {}", i + 1))?;
        rows += u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
    }
    Ok(Run { rows, elapsed: start.elapsed() })
}

/// The rows `ingest_batch` stored, in insert order, in COPY text format, as chunks of `per_chunk` lines.
pub async fn dump_positions(client: &Client, per_chunk: usize) -> Result<Vec<Bytes>> {
    let sql = format!("COPY (SELECT {COLUMNS} FROM trackway.positions ORDER BY ingest_seq) TO STDOUT");
    let stream = client.copy_out(sql.as_str()).await.context("starting COPY ... TO STDOUT")?;
    pin_mut!(stream);
    let mut text = Vec::new();
    while let Some(data) = stream.next().await {
        text.extend_from_slice(&data.context("reading COPY ... TO STDOUT")?);
    }
    Ok(chunk_lines(&text, per_chunk))
}

/// Splits COPY text (one row per line; newlines inside values are escaped) into chunks of whole lines.
fn chunk_lines(text: &[u8], per_chunk: usize) -> Vec<Bytes> {
    let text = Bytes::copy_from_slice(text);
    let mut chunks = Vec::new();
    let (mut start, mut lines) = (0, 0);
    for (i, &byte) in text.iter().enumerate() {
        if byte == b'\n' {
            lines += 1;
            if lines == per_chunk {
                chunks.push(text.slice(start..=i));
                (start, lines) = (i + 1, 0);
            }
        }
    }
    if start < text.len() {
        chunks.push(text.slice(start..));
    }
    chunks
}

/// Route b: `COPY table FROM STDIN`, one chunk per COPY. Returns the rows COPY reported.
pub async fn copy_in(client: &Client, table: &str, chunks: &[Bytes]) -> Result<Run> {
    let statement = client
        .prepare(&format!("COPY {table} ({COLUMNS}) FROM STDIN"))
        .await
        .with_context(|| format!("preparing COPY {table}"))?;
    let start = Instant::now();
    let mut rows = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let context = || format!("COPY {table}, chunk {}", i + 1);
        let sink = client.copy_in::<_, Bytes>(&statement).await.with_context(context)?;
        pin_mut!(sink);
        sink.send(chunk.clone()).await.with_context(context)?;
        rows += sink.finish().await.with_context(context)?;
    }
    Ok(Run { rows, elapsed: start.elapsed() })
}

/// How a plain-SQL variant takes its batch.
#[derive(Clone, Copy)]
pub enum Param {
    /// One JSON array of all payloads of the batch, as `text` (cast to `json`/`jsonb` by the statement).
    JsonArray,
    /// The payloads as `text[]`, exactly what `ingest_batch` takes.
    TextArray,
}

/// A way a user could store the payloads with plain SQL: no sentinel decoding, no validation beyond the
/// casts and the table's CHECKs, no latest-position upkeep, no NOTIFY.
pub struct SqlVariant {
    pub name: &'static str,
    pub param: Param,
    /// `SELECT` list and `FROM` clause producing the ten columns of [`COLUMNS`].
    pub select: &'static str,
}

/// The ten columns taken out of a `jsonb` value `p` with `->>` and casts.
macro_rules! fields_of_p {
    () => {
        "p->>'deviceId', (p->>'timestamp')::timestamptz, (p->>'latitude')::float8, \
         (p->>'longitude')::float8, (p->>'altitude')::float8, (p->>'angle')::float8, (p->>'speed')::float8, \
         (p->>'satellites')::int2, (p->>'priority')::int2, p->'attributes'"
    };
}

/// The ten columns of a record `r` typed by [`record_type!`].
macro_rules! fields_of_r {
    () => {
        "r.\"deviceId\", r.\"timestamp\", r.latitude, r.longitude, r.altitude, r.angle, r.speed, \
         r.satellites, r.priority, r.attributes"
    };
}

/// The column definition list of `json[b]_to_recordset`: the wire fields with their stored types.
macro_rules! record_type {
    () => {
        "r(\"deviceId\" text, \"timestamp\" timestamptz, latitude float8, longitude float8, altitude float8, \
         angle float8, speed float8, satellites int2, priority int2, attributes jsonb)"
    };
}

pub const SQL_VARIANTS: [SqlVariant; 4] = [
    SqlVariant {
        name: "jsonb_array_elements($1::jsonb)",
        param: Param::JsonArray,
        select: concat!("SELECT ", fields_of_p!(), " FROM jsonb_array_elements($1::text::jsonb) AS p"),
    },
    SqlVariant {
        name: "unnest($1::text[]::jsonb[])",
        param: Param::TextArray,
        select: concat!("SELECT ", fields_of_p!(), " FROM unnest($1::text[]::jsonb[]) AS p"),
    },
    SqlVariant {
        name: "jsonb_to_recordset($1::jsonb)",
        param: Param::JsonArray,
        select: concat!("SELECT ", fields_of_r!(), " FROM jsonb_to_recordset($1::text::jsonb) AS ", record_type!()),
    },
    SqlVariant {
        name: "json_to_recordset($1::json)",
        param: Param::JsonArray,
        select: concat!("SELECT ", fields_of_r!(), " FROM json_to_recordset($1::text::json) AS ", record_type!()),
    },
];

/// The batches as the variants take them, built once before any clock starts.
pub struct SqlInputs<'a> {
    pub json_arrays: Vec<String>,
    pub text_arrays: &'a [Vec<&'a str>],
}

impl<'a> SqlInputs<'a> {
    pub fn new(batches: &'a [Vec<&'a str>]) -> SqlInputs<'a> {
        let json_arrays = batches.iter().map(|b| format!("[{}]", b.join(","))).collect();
        SqlInputs { json_arrays, text_arrays: batches }
    }
}

/// Route c: `INSERT INTO table … SELECT … ON CONFLICT (device_id, ts) DO NOTHING`, one batch per statement.
pub async fn plain_sql(client: &Client, table: &str, variant: &SqlVariant, inputs: &SqlInputs<'_>) -> Result<Run> {
    let sql = format!("INSERT INTO {table} ({COLUMNS}) {} ON CONFLICT (device_id, ts) DO NOTHING", variant.select);
    let statement = client.prepare(&sql).await.with_context(|| format!("preparing {sql}"))?;
    let batches = match variant.param {
        Param::JsonArray => inputs.json_arrays.len(),
        Param::TextArray => inputs.text_arrays.len(),
    };
    let start = Instant::now();
    let mut rows = 0;
    for i in 0..batches {
        let result = match variant.param {
            Param::JsonArray => client.execute(&statement, &[&inputs.json_arrays[i]]).await,
            Param::TextArray => client.execute(&statement, &[&inputs.text_arrays[i]]).await,
        };
        rows += result.with_context(|| format!("plain SQL {}, batch {}", variant.name, i + 1))?;
    }
    Ok(Run { rows, elapsed: start.elapsed() })
}

/// The extraction the same-work route uses: the fastest of [`SQL_VARIANTS`] in the recorded runs
/// (README "Benchmarks": 56,004 rows/s against 50,086–52,620 for the other three).
pub const SAME_WORK_VARIANT: &SqlVariant = &SQL_VARIANTS[0];

/// Where the same-work route stores: copies of `trackway.positions` and `trackway.latest_positions`.
pub const SAME_WORK_POSITIONS: &str = "bench.same_work_positions";
pub const SAME_WORK_LATEST: &str = "bench.same_work_latest";

/// The latest-position rule, the extension's own statement on the copy of the latest table (the literal
/// must be [`SAME_WORK_LATEST`]; a test checks it).
const SAME_WORK_KEEP_LATEST: &str = trackway_wire::keep_latest_sql!("bench.same_work_latest", "new_rows");

/// The channel the same-work route notifies: nobody listens, queueing the payloads is the cost measured.
pub const SAME_WORK_CHANNEL: &str = "trackway_bench";

/// NOTIFY payloads must stay below 8,000 bytes; `ingest_batch` packs up to 7,900 (`MAX_NOTIFY_PAYLOAD_BYTES`).
pub const SAME_WORK_MAX_PAYLOAD_BYTES: i32 = 7_900;

/// Route d, plain SQL doing `ingest_batch`'s work in one statement per batch: the INSERT with the conflict
/// check, the upsert of the newest inserted row per device into the latest table (in device order, only
/// when newer), and the announcement of every inserted row — an entry `{"cursor":"<xid>:<seq>",
/// "position":{<the ten columns under their wire names>}}` — packed in insert order into payloads of
/// `{"positions":[…]}` of at most [`SAME_WORK_MAX_PAYLOAD_BYTES`], one `pg_notify` each.
///
/// Entries are made with `row_to_json`, which writes no blanks (`json_build_object` writes `" : "` and
/// `", "`: 10 % more bytes and, measured on 1,000 rows, 30 % more time), so the route queues about as many
/// bytes as `ingest_batch` (≈ 330 kB per 1,000 rows of this workload).
///
/// Packing: entry `i` goes to payload `(end_i - 1) / (room - longest)`, where `end_i` is the running sum of
/// the entry lengths plus separators and `room` the payload limit less the `{"positions":[` … `]}` wrapper;
/// a payload then holds at most `room - longest + its first entry` ≤ `room` bytes, so it always fits, and is
/// filled almost as well as `ingest_batch`'s greedy packing when entries are small (here ≈ 330 bytes: 45
/// payloads per 1,000 rows, where `ingest_batch` sent 42 in a check with `LISTEN`).
///
/// Returns one row: rows inserted, rows announced, payloads sent, payload bytes.
pub fn same_work_sql(variant: &SqlVariant) -> String {
    format!(
        "\
WITH new_rows AS (
    INSERT INTO {SAME_WORK_POSITIONS} ({COLUMNS})
    {select}
    ON CONFLICT (device_id, ts) DO NOTHING
    RETURNING *
), latest AS (
    {keep_latest}
), entries AS (
    SELECT ingest_xid, ingest_seq, entry, octet_length(entry) AS bytes
    FROM (
        SELECT n.ingest_xid, n.ingest_seq, row_to_json(e)::text
        FROM new_rows n,
             LATERAL (SELECT n.ingest_xid || ':' || n.ingest_seq AS cursor, p AS position
                      FROM (SELECT n.device_id AS \"deviceId\", n.ts AS \"timestamp\", n.latitude, n.longitude,
                                   n.altitude, n.angle, n.speed, n.satellites, n.priority, n.attributes) AS p) AS e
    ) AS d(ingest_xid, ingest_seq, entry)
), packed AS (
    SELECT ingest_xid, ingest_seq, entry, bytes,
           (sum(bytes + 1) OVER (ORDER BY ingest_xid, ingest_seq) - 1)
               / greatest({room} - max(bytes) OVER (), 1) AS payload_no
    FROM entries
), payloads AS (
    SELECT '{{\"positions\":[' || string_agg(entry, ',' ORDER BY ingest_xid, ingest_seq) || ']}}' AS payload,
           count(*) AS entries
    FROM packed
    GROUP BY payload_no
), sent AS (
    SELECT entries, octet_length(payload) AS bytes, pg_notify('{SAME_WORK_CHANNEL}', payload) AS notified
    FROM payloads
)
SELECT (SELECT count(*) FROM new_rows),
       (SELECT coalesce(sum(entries), 0)::bigint FROM sent),
       (SELECT count(notified) FROM sent),
       (SELECT coalesce(sum(bytes), 0)::bigint FROM sent)",
        select = variant.select,
        keep_latest = SAME_WORK_KEEP_LATEST,
        room = SAME_WORK_MAX_PAYLOAD_BYTES - 16,
    )
}

/// What a same-work run did besides storing rows.
pub struct SameWorkRun {
    pub run: Run,
    /// Rows carried by the NOTIFY payloads (must equal the rows inserted).
    pub announced: u64,
    pub notifies: u64,
    pub notify_bytes: u64,
}

impl AsRef<Run> for SameWorkRun {
    fn as_ref(&self) -> &Run {
        &self.run
    }
}

/// Route d: [`same_work_sql`], one batch per statement.
pub async fn same_work(client: &Client, variant: &SqlVariant, inputs: &SqlInputs<'_>) -> Result<SameWorkRun> {
    let sql = same_work_sql(variant);
    let statement = client.prepare(&sql).await.with_context(|| format!("preparing {sql}"))?;
    let batches = match variant.param {
        Param::JsonArray => inputs.json_arrays.len(),
        Param::TextArray => inputs.text_arrays.len(),
    };
    let start = Instant::now();
    let mut totals = [0u64; 4];
    for i in 0..batches {
        let result = match variant.param {
            Param::JsonArray => client.query_one(&statement, &[&inputs.json_arrays[i]]).await,
            Param::TextArray => client.query_one(&statement, &[&inputs.text_arrays[i]]).await,
        };
        let row = result.with_context(|| format!("plain SQL, same work, batch {}", i + 1))?;
        for (k, total) in totals.iter_mut().enumerate() {
            *total += u64::try_from(row.try_get::<_, i64>(k)?).unwrap_or(0);
        }
    }
    let elapsed = start.elapsed();
    let [rows, announced, notifies, notify_bytes] = totals;
    Ok(SameWorkRun { run: Run { rows, elapsed }, announced, notifies, notify_bytes })
}

/// Fails unless a run stored exactly `expected` rows.
pub fn expect_rows(route: &str, run: &Run, expected: u64) -> Result<()> {
    if run.rows != expected {
        bail!("ASSERTION FAILED: {route} stored {} rows, expected exactly {expected}", run.rows);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_is_split_on_whole_lines() {
        let chunks = chunk_lines(b"a\nb\nc\nd\ne\n", 2);
        let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_ref()).collect();
        assert_eq!(chunks, [&b"a\nb\n"[..], b"c\nd\n", b"e\n"]);
        assert!(chunk_lines(b"", 2).is_empty());
    }

    #[test]
    fn same_work_statement_uses_the_variant_and_wraps_payloads_like_ingest_batch() {
        let sql = same_work_sql(SAME_WORK_VARIANT);
        assert!(sql.contains(SAME_WORK_VARIANT.select));
        assert!(sql.contains(&format!("INSERT INTO {SAME_WORK_LATEST} AS l")), "the rule keeps the copy: {sql}");
        assert!(sql.contains(r#"'{"positions":[' || string_agg(entry, ','"#), "{sql}");
        assert!(sql.contains(r#"|| ']}' AS payload"#), "{sql}");
        assert!(sql.contains("pg_notify('trackway_bench', payload)"), "{sql}");
        // Room for entries: the payload limit less the 16 bytes of `{"positions":[` and `]}`.
        assert_eq!(r#"{"positions":[]}"#.len(), 16);
        assert!(sql.contains("greatest(7884 - max(bytes) OVER (), 1)"), "{sql}");
    }
}
