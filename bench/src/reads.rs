//! `trackway-bench reads`: what one read of the live feed costs the database, for this build's extension
//! against the previous release's, on tables of growing numbers of TimescaleDB chunks.
//!
//! The live feed reads on every wake-up with the relay's own statement (`trackway_database::sql::FEED`,
//! prepared once per connection, as the relay does); usually one or a few rows are new. Each read goes through
//! `trackway._positions_since_text`, whose planning grew with the number of chunks of a hypertable while
//! PostgreSQL planned it anew on every call (up to 0.4.0). For each chunk count, two databases of the same
//! server hold the same rows: one created at the previous release (`CREATE EXTENSION trackway VERSION …`,
//! its install script as kept in `pg_ext/sql/releases`), one at this build's version. Their reads are timed
//! alternately, in rounds, on one connection each: a read of the one newest row and a read of a page of
//! 1,000 rows. The rows are spread over 200 devices, each a member of one of ten groups (the read returns
//! every row's groups). The goals: no read slower than the previous release's, and from 10 chunks on, this
//! build's one-row read (the feed's usual wake-up) costs at most half the previous release's.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::{Client, Config};
use trackway_database::sql;

use crate::{db, report};

/// Options of `trackway-bench reads`.
#[derive(clap::Args)]
pub struct Options {
    /// Maintenance connection (the benchmark databases are created and dropped through it).
    #[arg(long, default_value = "postgres://postgres@localhost/postgres")]
    pub database_url: String,
    /// Chunk counts to measure, comma-separated (one day of rows per chunk). On a server without
    /// TimescaleDB the table is plain and only the first count is measured.
    #[arg(long, default_value = "1,10,50", value_delimiter = ',')]
    pub chunks: Vec<u32>,
    /// Rows per chunk.
    #[arg(long, default_value_t = 2_000)]
    pub rows_per_chunk: u32,
    /// How long each timing runs, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub millis: u64,
    /// Rounds per version and read (the median counts).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The release to compare with [default: the newest installed version older than this build's].
    #[arg(long)]
    pub previous: Option<String>,
    /// Keep the benchmark databases afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// The rows one read returns after its cursor: the feed's usual wake-up, and a full page.
const READS: [(&str, i64); 2] = [("1 row", 1), ("1,000 rows", 1_000)];
/// The page size the reads ask for (the relay's default feed page is larger; one page is enough here).
const MAX_ROWS: i32 = 1_000;
/// From [`MANY_CHUNKS`] chunks on, this build's one-row read must cost at most this share of the previous
/// release's.
const GOAL: f64 = 0.5;
/// See [`GOAL`].
const MANY_CHUNKS: u32 = 10;
/// Devices the rows are spread over, each a member of one of ten groups.
const DEVICES: i64 = 200;

/// Runs the benchmark and prints one line per chunk count and read, then the goal.
pub async fn run(options: &Options) -> Result<()> {
    let base: Config = options.database_url.parse().context("parsing --database-url")?;
    let maintenance = db::connect(&base).await?;
    let current =
        db::scalar(&maintenance, "SELECT default_version FROM pg_available_extensions WHERE name = 'trackway'")
            .await
            .context("is the extension installed (scripts/setup)?")?;
    let previous = match &options.previous {
        Some(v) => v.clone(),
        None => previous_release(&maintenance, &current).await?,
    };
    let timescale = timescaledb_preloaded(&maintenance).await?;
    let counts: Vec<u32> =
        if timescale { options.chunks.clone() } else { options.chunks.iter().take(1).copied().collect() };
    println!(
        "trackway-bench reads: the live feed's read (relay statement, prepared), trackway {previous} vs {current}"
    );
    println!(
        "storage: {}; {DEVICES} devices, each in one of 10 groups",
        if timescale { "TimescaleDB hypertable, one chunk per day" } else { "plain table" }
    );
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!("nproc: {cpus}; {}", db::scalar(&maintenance, "SELECT version()").await?);
    println!("{:>6}  {:<11} {:>12} {:>12} {:>7}", "chunks", "read", previous, current, "ratio");
    let (mut never_slower, mut cheaper) = (true, true);
    for &chunks in &counts {
        let rows = i64::from(chunks.max(1)) * i64::from(options.rows_per_chunk);
        let old = Side::create(&maintenance, &base, "trackway_bench_reads_previous", &previous, timescale).await?;
        let new = Side::create(&maintenance, &base, "trackway_bench_reads_current", &current, timescale).await?;
        for side in [&old, &new] {
            side.fill(chunks.max(1), options.rows_per_chunk).await?;
        }
        for (label, after_last) in READS {
            let after = after_last.min(rows - 1);
            let mut times = (Vec::new(), Vec::new());
            for _ in 0..options.rounds {
                times.0.push(old.time_reads(after, options.millis).await?);
                times.1.push(new.time_reads(after, options.millis).await?);
            }
            let (a, b) = (report::median(&times.0), report::median(&times.1));
            let ratio = b / a;
            println!("{chunks:>6}  {label:<11} {:>9.3} ms {:>9.3} ms {ratio:>7.2}", a * 1e3, b * 1e3);
            never_slower &= ratio <= 1.0;
            cheaper &= !(after_last == 1 && chunks >= MANY_CHUNKS && ratio > GOAL);
        }
        drop((old, new));
        if !options.keep {
            for name in ["trackway_bench_reads_previous", "trackway_bench_reads_current"] {
                db::drop_database(&maintenance, name).await?;
            }
        }
    }
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("goal: no read of {current} slower than {previous}'s: {}", verdict(never_slower));
    println!(
        "goal: from {MANY_CHUNKS} chunks on, {current}'s one-row read ≤ {GOAL} × {previous}'s: {}",
        verdict(cheaper)
    );
    Ok(())
}

/// One benchmark database at one version, and the connection that reads from it.
struct Side {
    client: Client,
}

impl Side {
    /// (Re-)creates database `name` with the extension at `version` (a hypertable when `timescale`).
    async fn create(maintenance: &Client, base: &Config, name: &str, version: &str, timescale: bool) -> Result<Side> {
        db::check_database_name(name)?;
        db::recreate_database(maintenance, name).await?;
        let mut config = base.clone();
        config.dbname(name);
        let client = db::connect(&config).await?;
        if timescale {
            client.batch_execute("CREATE EXTENSION timescaledb").await.context("CREATE EXTENSION timescaledb")?;
        }
        // The version is a value of pg_available_extension_versions, written as a quoted literal.
        let known: bool = client
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_available_extension_versions WHERE name = 'trackway' AND version = $1)",
                &[&version],
            )
            .await?
            .get(0);
        if !known {
            bail!("trackway {version} is not installed on this server (scripts/install-releases)");
        }
        client
            .batch_execute(&format!("CREATE EXTENSION trackway VERSION '{version}'"))
            .await
            .with_context(|| format!("CREATE EXTENSION trackway VERSION '{version}'"))?;
        Ok(Side { client })
    }

    /// Stores `per_chunk` rows on each of `chunks` days back from yesterday, oldest first, with
    /// `ingest_batch` (one transaction per day), then analyzes the table as a running server would.
    async fn fill(&self, chunks: u32, per_chunk: u32) -> Result<()> {
        let today_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let day_ms: i64 = 86_400_000;
        let yesterday = i64::try_from(today_ms)? / day_ms * day_ms - day_ms;
        for day in (0..i64::from(chunks)).rev() {
            let start = yesterday - day * day_ms;
            let payloads: Vec<String> = (0..i64::from(per_chunk))
                .map(|i| trackway_testkit::position(&device(i % DEVICES), start + i * 1_000))
                .collect();
            self.client
                .execute("SELECT count(*) FROM trackway.ingest_batch($1::text[])", &[&payloads])
                .await
                .context("storing the benchmark rows")?;
        }
        // Every device in one of ten groups, as a fleet's map would have them: the feed reads each row's
        // groups (the planner scanned the whole membership table for every row up to 0.4.0).
        self.client
            .execute(
                "INSERT INTO trackway.device_groups (group_id, device_id)
                 SELECT 'fleet-' || (d.n % 10), d.id FROM unnest($1::text[]) WITH ORDINALITY AS d(id, n)",
                &[&(0..DEVICES).map(device).collect::<Vec<_>>()],
            )
            .await
            .context("storing the group memberships")?;
        self.client.batch_execute("ANALYZE trackway.positions; ANALYZE trackway.device_groups").await?;
        Ok(())
    }

    /// Mean seconds per read of the `after` newest rows (the relay's statement, prepared), over `millis`.
    async fn time_reads(&self, after: i64, millis: u64) -> Result<f64> {
        let cursor = db::scalar(
            &self.client,
            &format!(
                "SELECT ingest_xid::text || ':' || ingest_seq FROM trackway.positions \
                 ORDER BY ingest_xid DESC, ingest_seq DESC OFFSET {after} LIMIT 1"
            ),
        )
        .await?;
        let statement = self.client.prepare(sql::FEED).await.context("preparing the feed's statement")?;
        let want = usize::try_from(after)?;
        let (started, budget) = (Instant::now(), Duration::from_millis(millis));
        let mut reads = 0u32;
        while reads == 0 || started.elapsed() < budget {
            let rows =
                self.client.query(&statement, &[&cursor, &MAX_ROWS]).await.context("reading after the cursor")?;
            if rows.len() != want.min(MAX_ROWS as usize) {
                bail!("a read after cursor {cursor} returned {} rows, expected {want}", rows.len());
            }
            reads += 1;
        }
        Ok(started.elapsed().as_secs_f64() / f64::from(reads))
    }
}

/// The name of benchmark device `i`.
fn device(i: i64) -> String {
    format!("bench-{i:03}")
}

/// The newest installed trackway version older than `current` (versions compare as numbers).
async fn previous_release(client: &Client, current: &str) -> Result<String> {
    let rows = client
        .query("SELECT version FROM pg_available_extension_versions WHERE name = 'trackway'", &[])
        .await
        .context("listing trackway versions")?;
    let key = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|v| key(v) < key(current))
        .max_by_key(|v| key(v))
        .with_context(|| format!("no trackway release older than {current} is installed (scripts/install-releases)"))
}

/// Whether this server can create TimescaleDB hypertables (installed and preloaded).
async fn timescaledb_preloaded(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb')
                    AND current_setting('shared_preload_libraries') LIKE '%timescaledb%'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
