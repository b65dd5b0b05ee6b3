//! The `ingest` benchmark: one run, one fresh database, every route on the same rows.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio_postgres::{Client, Config};

use crate::report::{paired_ratios, print_ratios, print_table, Measurement, Ratio};
use crate::routes::{self, Run, SqlInputs, SAME_WORK_LATEST, SAME_WORK_POSITIONS, SAME_WORK_VARIANT, SQL_VARIANTS};
use crate::{db, workload::Workload};

/// Goal for `ingest_batch` rows/s relative to COPY into an identically indexed table.
const GOAL_VS_COPY: f64 = 0.5;
/// Goal for `ingest_batch` rows/s relative to the fastest plain-SQL route.
const GOAL_VS_PLAIN_SQL: f64 = 1.0;
/// Goal for `ingest_batch` rows/s relative to plain SQL doing the same work: the extension must add rules,
/// not cost.
const GOAL_VS_SAME_WORK: f64 = 1.0;

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
    let payloads = trackway_sim::workload(options.workload.rows, options.workload.devices, options.workload.seed);
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
    let mut same_work = Measurement::new(format!("plain SQL, same work: {}", SAME_WORK_VARIANT.name), expected);
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

        truncate(&client, &format!("{SAME_WORK_POSITIONS}, {SAME_WORK_LATEST}")).await?;
        let route = routes::same_work(&client, SAME_WORK_VARIANT, &sql_inputs);
        let run = timed(&client, rep, &same_work.route, route).await?;
        eprintln!(
            "         {:<44} {:>8} rows announced in {} NOTIFYs, {:.1} MB",
            "",
            run.announced,
            run.notifies,
            run.notify_bytes as f64 / 1e6
        );
        routes::expect_rows(&same_work.route, &run.run, expected)?;
        check_same_work(&client, &run, expected).await?;
        same_work.runs.push(run.run.elapsed);
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
    print_report(&facts, options, &ingest, &copy, &sql, &same_work, &diagnostics);
    Ok(())
}

/// The benchmark's own tables and what each copies, without triggers: `bench.copy_target` and
/// `bench.sql_target` (also without `latest_positions`), and the same-work route's two tables.
const TARGETS: [(&str, &str); 4] = [
    (COPY_TARGET, "trackway.positions"),
    (SQL_TARGET, "trackway.positions"),
    (SAME_WORK_POSITIONS, "trackway.positions"),
    (SAME_WORK_LATEST, "trackway.latest_positions"),
];

/// Copies the storage parameters (`reloptions`: fillfactor, autovacuum settings) of each original in
/// [`TARGETS`] to its copy, which `CREATE TABLE … (LIKE …)` does not do.
const COPY_STORAGE_PARAMETERS: &str = "\
DO $$
DECLARE
    target record;
BEGIN
    FOR target IN
        SELECT c.oid::regclass AS copy, o.reloptions
        FROM (VALUES ('bench.copy_target', 'trackway.positions'),
                     ('bench.sql_target', 'trackway.positions'),
                     ('bench.same_work_positions', 'trackway.positions'),
                     ('bench.same_work_latest', 'trackway.latest_positions')) AS t(copy, original)
        JOIN pg_class c ON c.oid = t.copy::regclass
        JOIN pg_class o ON o.oid = t.original::regclass
        WHERE o.reloptions IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE %s SET (%s)', target.copy, array_to_string(target.reloptions, ', '));
    END LOOP;
END
$$";

/// The tables of [`TARGETS`], indexed, constrained and with the storage parameters of their originals.
async fn create_targets(client: &Client) -> Result<()> {
    client.batch_execute("CREATE SCHEMA bench").await.context("creating schema bench")?;
    for (table, original) in TARGETS {
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (LIKE {original} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES \
                 INCLUDING STORAGE)"
            ))
            .await
            .with_context(|| format!("creating {table}"))?;
    }
    client.batch_execute(COPY_STORAGE_PARAMETERS).await.context("copying the storage parameters")?;
    check_positions_indexes(client).await?;
    for (table, original) in TARGETS {
        check_same_table(client, table, original).await?;
    }
    Ok(())
}

/// Fails unless `trackway.positions` still has the unique key and two indexes the routes assume.
async fn check_positions_indexes(client: &Client) -> Result<()> {
    let original = index_and_constraint_definitions(client, "trackway.positions").await?;
    let unique = original.iter().any(|d| d == "constraint UNIQUE (device_id, ts)");
    let indexes = original.iter().filter(|d| d.starts_with("index ")).count();
    if !unique || indexes != 3 {
        bail!("trackway.positions no longer has UNIQUE (device_id, ts) plus two indexes: {original:?}");
    }
    Ok(())
}

/// Fails unless `table` has the indexes, unique, primary-key and CHECK constraints and the storage
/// parameters of `original`, and no trigger.
async fn check_same_table(client: &Client, table: &str, original: &str) -> Result<()> {
    let expected = index_and_constraint_definitions(client, original).await?;
    let copy = index_and_constraint_definitions(client, table).await?;
    if expected != copy {
        bail!("{table} is not indexed like {original}:\n  {original}: {expected:?}\n  {table}: {copy:?}");
    }
    let row = client
        .query_one(
            "SELECT o.reloptions::text[] IS NOT DISTINCT FROM c.reloptions::text[], coalesce(o.reloptions::text, '{}'),
                    coalesce(c.reloptions::text, '{}'),
                    (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid)
             FROM pg_class o, pg_class c WHERE o.oid = $1::text::regclass AND c.oid = $2::text::regclass",
            &[&original, &table],
        )
        .await
        .with_context(|| format!("reading the storage parameters of {original} and {table}"))?;
    let (same, options): (bool, String) = (row.try_get(0)?, row.try_get(1)?);
    if !same {
        bail!("{table} has storage parameters {:?}, {original} has {options:?}", row.try_get::<_, String>(2)?);
    }
    let triggers: i64 = row.try_get(3)?;
    if triggers != 0 {
        bail!("{table} has {triggers} triggers; the benchmark's tables must have none");
    }
    let indexes = expected.iter().filter(|d| d.starts_with("index ")).count();
    eprintln!(
        "{table}: same {indexes} indexes, {} constraints and storage parameters {options} as {original}, no trigger",
        expected.len() - indexes,
    );
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
async fn timed<T: AsRef<Run>>(
    client: &Client,
    rep: usize,
    route: &str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    client.batch_execute("CHECKPOINT").await.context("CHECKPOINT before a timed run")?;
    let result = work.await?;
    let run = result.as_ref();
    eprintln!("  run {rep}: {route:<44} {:>8} rows  {:>8.3}s", run.rows, run.elapsed.as_secs_f64());
    Ok(result)
}

/// The same-work route's checks: it announced every row it inserted, its positions are exactly the rows
/// `ingest_batch` stored (same keys), and its latest table equals `trackway.latest_positions` (same
/// device -> ts), so it cannot have done less work than `ingest_batch`.
async fn check_same_work(client: &Client, run: &routes::SameWorkRun, expected: u64) -> Result<()> {
    if run.announced != run.run.rows || run.notifies == 0 {
        bail!(
            "ASSERTION FAILED: the same-work route announced {} rows in {} NOTIFYs, inserted {}",
            run.announced,
            run.notifies,
            run.run.rows
        );
    }
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM bench.same_work_positions),
                    (SELECT count(*) FROM (SELECT device_id, ts FROM bench.same_work_positions
                                           EXCEPT SELECT device_id, ts FROM trackway.positions) AS d),
                    (SELECT count(*) FROM trackway.latest_positions),
                    (SELECT count(*) FROM ((SELECT device_id, ts FROM bench.same_work_latest
                                            EXCEPT SELECT device_id, ts FROM trackway.latest_positions)
                                           UNION ALL
                                           (SELECT device_id, ts FROM trackway.latest_positions
                                            EXCEPT SELECT device_id, ts FROM bench.same_work_latest)) AS d)",
            &[],
        )
        .await
        .context("comparing the same-work route's tables with ingest_batch's")?;
    let (stored, not_in_positions, devices, latest_differences): (i64, i64, i64, i64) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    if stored != expected as i64 || not_in_positions != 0 {
        bail!(
            "ASSERTION FAILED: {SAME_WORK_POSITIONS} holds {stored} rows ({not_in_positions} not in \
             trackway.positions), expected exactly the {expected} rows of ingest_batch"
        );
    }
    if devices == 0 || latest_differences != 0 {
        bail!(
            "ASSERTION FAILED: {SAME_WORK_LATEST} differs from trackway.latest_positions ({devices} devices) in \
             {latest_differences} (device_id, ts) pairs"
        );
    }
    Ok(())
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
    same_work: &Measurement,
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
    table.push(same_work);
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
    ratios.push(Ratio {
        name: "ingest_batch / plain SQL, same work".to_owned(),
        value: ingest.rows_per_second() / same_work.rows_per_second(),
        goal: GOAL_VS_SAME_WORK,
        per_run: paired_ratios(ingest, &[same_work]),
    });
    print_ratios(&ratios);
}
