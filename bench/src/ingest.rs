//! The `ingest` benchmark: one run, one fresh database, every route on the same rows.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio_postgres::{Client, Config};

use crate::report::{paired_ratios, print_ratios, print_table, Measurement, Ratio};
use crate::routes::{self, Run, SqlInputs, SQL_VARIANTS};
use crate::{db, payloads, workload::Workload};

/// Goal for `ingest_batch` rows/s relative to COPY into an identically indexed table.
const GOAL_VS_COPY: f64 = 0.5;
/// Goal for `ingest_batch` rows/s relative to the fastest plain-SQL route.
const GOAL_VS_PLAIN_SQL: f64 = 1.0;

const COPY_TARGET: &str = "bench.copy_target";
const SQL_TARGET: &str = "bench.sql_target";

/// What to run.
pub struct Options {
    pub workload: Workload,
    pub bench_database: String,
    pub without_trigger: bool,
}

/// Creates the benchmark database, runs every route, prints the results, drops the database.
pub async fn run(options: &Options) -> Result<()> {
    options
        .workload
        .with_fresh_database(&options.bench_database, |config| async move { run_in(&config, options).await })
        .await
}

async fn run_in(config: &Config, options: &Options) -> Result<()> {
    let client = db::connect(config).await?;
    db::create_extension(&client).await?;
    create_targets(&client).await?;

    let started = Instant::now();
    let payloads = payloads::generate(options.workload.rows, options.workload.devices, options.workload.seed);
    let batches: Vec<Vec<&str>> =
        payloads.chunks(options.workload.batch).map(|c| c.iter().map(String::as_str).collect()).collect();
    let sql_inputs = SqlInputs::new(&batches);
    let bytes: usize = payloads.iter().map(String::len).sum();
    eprintln!(
        "generated {} payloads of {} devices ({:.1} MB, {} batches) in {:.2}s (not timed)",
        payloads.len(),
        options.workload.devices,
        bytes as f64 / 1e6,
        batches.len(),
        started.elapsed().as_secs_f64()
    );
    warm_up(&client).await?;

    let expected = options.workload.rows as u64;
    let mut ingest = Measurement::new("ingest_batch", expected);
    let mut copy = Measurement::new("COPY FROM STDIN (text)", expected);
    let mut sql: Vec<Measurement> =
        SQL_VARIANTS.iter().map(|v| Measurement::new(format!("plain SQL: {}", v.name), expected)).collect();
    let mut copy_chunks: Vec<Bytes> = Vec::new();

    for rep in 1..=options.workload.repetitions {
        reset_positions(&client).await?;
        let run = timed(&client, rep, &ingest.route, routes::ingest_batch(&client, &batches)).await?;
        routes::expect_rows("ingest_batch", &run, expected)?;
        check_positions_count(&client, expected).await?;
        ingest.runs.push(run.elapsed);

        if copy_chunks.is_empty() {
            copy_chunks = routes::dump_positions(&client, options.workload.batch).await?;
        }
        truncate(&client, COPY_TARGET).await?;
        let run = timed(&client, rep, &copy.route, routes::copy_in(&client, COPY_TARGET, &copy_chunks)).await?;
        routes::expect_rows(&copy.route, &run, expected)?;
        copy.runs.push(run.elapsed);

        for (variant, measurement) in SQL_VARIANTS.iter().zip(sql.iter_mut()) {
            truncate(&client, SQL_TARGET).await?;
            let route = routes::plain_sql(&client, SQL_TARGET, variant, &sql_inputs);
            let run = timed(&client, rep, &measurement.route, route).await?;
            routes::expect_rows(&measurement.route, &run, expected)?;
            measurement.runs.push(run.elapsed);
        }
    }

    // trackway.positions still holds every row of the last ingest_batch run: re-deliver them all.
    let mut duplicates = Measurement::new("ingest_batch, all duplicates", expected);
    for rep in 1..=options.workload.repetitions {
        let run = timed(&client, rep, &duplicates.route, routes::ingest_batch(&client, &batches)).await?;
        routes::expect_rows(&duplicates.route, &run, 0)?;
        duplicates.runs.push(run.elapsed);
    }

    let mut diagnostics = vec![duplicates];
    if options.without_trigger {
        diagnostics.push(without_trigger(&client, &batches, options.workload.repetitions, expected).await?);
    }

    let facts = db::machine_facts(&client).await?;
    print_report(&facts, options, &ingest, &copy, &sql, &diagnostics);
    Ok(())
}

/// `bench.copy_target` and `bench.sql_target`, indexed and constrained exactly like `trackway.positions`.
async fn create_targets(client: &Client) -> Result<()> {
    client.batch_execute("CREATE SCHEMA bench").await.context("creating schema bench")?;
    for table in [COPY_TARGET, SQL_TARGET] {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (LIKE trackway.positions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            ))
            .await
            .with_context(|| format!("creating {table}"))?;
        check_same_indexes(client, table).await?;
    }
    Ok(())
}

/// Fails unless `table` has the indexes, unique and CHECK constraints of `trackway.positions`.
async fn check_same_indexes(client: &Client, table: &str) -> Result<()> {
    let original = index_and_constraint_definitions(client, "trackway.positions").await?;
    let copy = index_and_constraint_definitions(client, table).await?;
    if original != copy {
        bail!("{table} is not indexed like trackway.positions:\n  positions: {original:?}\n  {table}: {copy:?}");
    }
    let unique = original.iter().any(|d| d == "constraint UNIQUE (device_id, ts)");
    let indexes = original.iter().filter(|d| d.starts_with("index ")).count();
    if !unique || indexes != 3 {
        bail!("trackway.positions no longer has UNIQUE (device_id, ts) plus two indexes: {original:?}");
    }
    eprintln!("{table}: same {indexes} indexes and {} constraints as trackway.positions", original.len() - indexes);
    Ok(())
}

/// Index definitions (without their names) and unique/check constraint definitions of a table, sorted.
async fn index_and_constraint_definitions(client: &Client, table: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT 'index ' || CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END
                    || substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$')
             FROM pg_index i WHERE i.indrelid = $1::text::regclass
             UNION ALL
             SELECT 'constraint ' || pg_get_constraintdef(c.oid)
             FROM pg_constraint c WHERE c.conrelid = $1::text::regclass AND c.contype IN ('u', 'c', 'p')
             ORDER BY 1",
            &[&table],
        )
        .await
        .with_context(|| format!("reading the indexes of {table}"))?;
    rows.iter().map(|r| r.try_get::<_, String>(0).map_err(Into::into)).collect()
}

/// Loads the extension's library into this backend and plans its statement once, outside any timing.
async fn warm_up(client: &Client) -> Result<()> {
    client
        .batch_execute("SELECT count(*) FROM trackway.ingest_batch('{}'::text[])")
        .await
        .context("warming up ingest_batch")
}

/// Empties the extension's tables (the ingest sequence keeps counting).
async fn reset_positions(client: &Client) -> Result<()> {
    truncate(client, "trackway.positions, trackway.latest_positions").await
}

async fn truncate(client: &Client, tables: &str) -> Result<()> {
    client.batch_execute(&format!("TRUNCATE {tables}")).await.with_context(|| format!("truncating {tables}"))
}

/// Route a's check: the table holds exactly the generated rows, no more, no fewer.
async fn check_positions_count(client: &Client, expected: u64) -> Result<()> {
    let stored: i64 = client
        .query_one("SELECT count(*) FROM trackway.positions", &[])
        .await
        .context("counting trackway.positions")?
        .try_get(0)?;
    if stored != expected as i64 {
        bail!("ASSERTION FAILED: trackway.positions holds {stored} rows, expected exactly {expected}");
    }
    Ok(())
}

/// Runs one timed route after a CHECKPOINT (so no route pays for another's dirty pages) and logs it.
async fn timed(
    client: &Client,
    rep: usize,
    route: &str,
    work: impl std::future::Future<Output = Result<Run>>,
) -> Result<Run> {
    client.batch_execute("CHECKPOINT").await.context("CHECKPOINT before a timed run")?;
    let run = work.await?;
    eprintln!("  run {rep}: {route:<44} {:>8} rows  {:>8.3}s", run.rows, run.elapsed.as_secs_f64());
    Ok(run)
}

/// Diagnostic: `ingest_batch` with the insert trigger disabled, to split decode+insert from the trigger's work.
async fn without_trigger(
    client: &Client,
    batches: &[Vec<&str>],
    repetitions: usize,
    expected: u64,
) -> Result<Measurement> {
    let mut measurement = Measurement::new("ingest_batch, trigger disabled (diagnostic)", expected);
    for rep in 1..=repetitions {
        reset_positions(client).await?;
        set_trigger(client, false).await?;
        let run = timed(client, rep, &measurement.route, routes::ingest_batch(client, batches)).await;
        set_trigger(client, true).await?;
        let run = run?;
        routes::expect_rows(&measurement.route, &run, expected)?;
        measurement.runs.push(run.elapsed);
    }
    Ok(measurement)
}

async fn set_trigger(client: &Client, enabled: bool) -> Result<()> {
    let action = if enabled { "ENABLE" } else { "DISABLE" };
    client
        .batch_execute(&format!("ALTER TABLE trackway.positions {action} TRIGGER positions_inserted"))
        .await
        .with_context(|| format!("{action} TRIGGER positions_inserted"))
}

fn print_report(
    facts: &[String],
    options: &Options,
    ingest: &Measurement,
    copy: &Measurement,
    sql: &[Measurement],
    diagnostics: &[Measurement],
) {
    let best_sql = sql.iter().max_by(|a, b| a.rows_per_second().total_cmp(&b.rows_per_second()));
    println!();
    println!("Trackway SQL ingest benchmark");
    for fact in facts {
        println!("  {fact}");
    }
    println!(
        "  {} rows, {} devices, {} rows per round trip (one transaction each), median of {} runs, seed {}",
        options.workload.rows,
        options.workload.devices,
        options.workload.batch,
        options.workload.repetitions,
        options.workload.seed
    );
    println!();
    let mut table: Vec<&Measurement> = vec![ingest, copy];
    table.extend(sql);
    table.extend(diagnostics);
    print_table(&table);
    println!();
    let mut ratios = vec![Ratio {
        name: "ingest_batch / COPY".to_owned(),
        value: ingest.rows_per_second() / copy.rows_per_second(),
        goal: GOAL_VS_COPY,
        per_run: paired_ratios(ingest, &[copy]),
    }];
    if let Some(best) = best_sql {
        println!("fastest plain-SQL route: {}", best.route.trim_start_matches("plain SQL: "));
        ratios.push(Ratio {
            name: "ingest_batch / plain SQL (fastest)".to_owned(),
            value: ingest.rows_per_second() / best.rows_per_second(),
            goal: GOAL_VS_PLAIN_SQL,
            per_run: paired_ratios(ingest, &sql.iter().collect::<Vec<_>>()),
        });
    }
    print_ratios(&ratios);
}
