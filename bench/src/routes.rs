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
}
