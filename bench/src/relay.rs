//! The `relay` benchmark: Redis Stream → `trackway-relay` → committed rows, against calling
//! `trackway.ingest_batch` directly with the same payloads and batch size, in one run.
//!
//! Each repetition empties the tables, then either (a) fills a fresh stream (not timed), starts the relay
//! binary and times until the consumer group has read and acknowledged every entry, or (b) sends the same
//! batches straight to `ingest_batch`. The relay's peak resident memory (VmHWM) is read from /proc before
//! it is stopped with SIGTERM.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, Config};

use crate::report::{print_table, Measurement};
use crate::{db, routes, workload::Workload};

/// Goal for end-to-end rows/s relative to calling `ingest_batch` directly.
const GOAL_RATIO: f64 = 0.8;
/// Goal for the relay's peak RSS, in MB.
const GOAL_RSS_MB: f64 = 50.0;

/// What to run.
pub struct Options {
    pub workload: Workload,
    pub bench_database: String,
    pub redis_url: String,
    pub relay_binary: Option<PathBuf>,
}

/// Creates the database, runs both routes `repetitions` times, prints the table, ratio and RSS.
pub async fn run(options: &Options) -> Result<()> {
    let binary = match &options.relay_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("trackway-relay"),
    };
    if !binary.is_file() {
        bail!("relay binary {} not found (build it: cargo build --release -p trackway-relay)", binary.display());
    }
    options
        .workload
        .with_fresh_database(&options.bench_database, |config| async move { run_in(&config, &binary, options).await })
        .await
}

async fn run_in(config: &Config, binary: &std::path::Path, options: &Options) -> Result<()> {
    let client = db::connect(config).await?;
    db::create_extension(&client).await?;
    let payloads = trackway_sim::workload(options.workload.rows, options.workload.devices, options.workload.seed);
    let batches: Vec<Vec<&str>> =
        payloads.chunks(options.workload.batch).map(|c| c.iter().map(String::as_str).collect()).collect();
    let redis = redis::Client::open(options.redis_url.as_str()).context("--redis-url")?;
    let mut conn = redis.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let database_url = crate::db::database_url(config);

    let expected = options.workload.rows as u64;
    let mut relay = Measurement::new("relay: XADDed stream -> committed rows", expected);
    let mut direct = Measurement::new("ingest_batch called directly", expected);
    let mut peak_rss_kb = 0u64;
    for rep in 1..=options.workload.repetitions {
        reset(&client).await?;
        let stream = format!("trackway-bench:{}:{rep}", std::process::id());
        fill_stream(&mut conn, &stream, &payloads).await?;
        let (elapsed, rss_kb) =
            time_relay(binary, &database_url, &options.redis_url, &stream, options.workload.batch, &mut conn).await?;
        let _: i64 = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut conn).await?;
        check_count(&client, expected).await?;
        eprintln!("run {rep}: relay {:.3}s, peak RSS {:.1} MB", elapsed.as_secs_f64(), rss_kb as f64 / 1024.0);
        relay.runs.push(elapsed);
        peak_rss_kb = peak_rss_kb.max(rss_kb);

        reset(&client).await?;
        let run = routes::ingest_batch(&client, &batches).await?;
        routes::expect_rows("ingest_batch", &run, expected)?;
        eprintln!("run {rep}: ingest_batch {:.3}s", run.elapsed.as_secs_f64());
        direct.runs.push(run.elapsed);
    }

    println!();
    print_table(&[&relay, &direct]);
    println!();
    let ratio = relay.rows_per_second() / direct.rows_per_second();
    let rss_mb = peak_rss_kb as f64 / 1024.0;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "{:<36} {:>6.3}   goal >= {GOAL_RATIO:.1}   {}",
        "relay / ingest_batch direct",
        ratio,
        verdict(ratio >= GOAL_RATIO)
    );
    println!(
        "{:<36} {:>6.1}   goal <= {GOAL_RSS_MB:.0}    {}",
        "relay peak RSS (MB)",
        rss_mb,
        verdict(rss_mb <= GOAL_RSS_MB)
    );
    Ok(())
}

async fn reset(client: &Client) -> Result<()> {
    client
        .batch_execute("TRUNCATE trackway.positions, trackway.latest_positions; CHECKPOINT")
        .await
        .context("emptying tables")
}

async fn check_count(client: &Client, expected: u64) -> Result<()> {
    let stored: i64 = client.query_one("SELECT count(*) FROM trackway.positions", &[]).await?.try_get(0)?;
    if stored != expected as i64 {
        bail!("ASSERTION FAILED: trackway.positions holds {stored} rows, expected exactly {expected}");
    }
    Ok(())
}

/// XADDs every payload (pipelined; not timed).
async fn fill_stream(conn: &mut redis::aio::MultiplexedConnection, stream: &str, payloads: &[String]) -> Result<()> {
    trackway_testkit::xadd_payloads(conn, stream, payloads).await.context("XADD")?;
    Ok(())
}

/// Starts the relay on `stream`, waits until the group has acknowledged everything, reads the peak RSS,
/// stops the relay. Returns (time to drain, peak RSS in kB).
async fn time_relay(
    binary: &std::path::Path,
    database_url: &str,
    redis_url: &str,
    stream: &str,
    batch: usize,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("TRACKWAY_STREAM", stream)
        .env("TRACKWAY_BATCH_SIZE", batch.to_string())
        .env("TRACKWAY_ADMIN_ADDR", "127.0.0.1:0")
        // The ingest side alone, as measured before the live side existed (which needs an auth setting).
        .env("TRACKWAY_LIVE_ADDR", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = started + Duration::from_secs(600);
    let elapsed = loop {
        if drained(conn, stream).await? {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait()? {
            bail!("the relay exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the relay did not drain the stream within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss_kb = peak_rss_kb(child.id()).unwrap_or(0);
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
    let status = child.wait()?;
    if !status.success() {
        bail!("the relay exited with {status} after SIGTERM");
    }
    Ok((elapsed, rss_kb))
}

/// Whether the group exists with nothing left to deliver and nothing pending.
async fn drained(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Result<bool> {
    let groups = trackway_testkit::group_counters(conn, stream).await.unwrap_or_default();
    Ok(groups.iter().any(|g| g.pending == Some(0) && g.lag == Some(0)))
}

/// VmHWM of a process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
