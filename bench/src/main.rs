//! `trackway-bench`: how fast positions get into PostgreSQL through `trackway.ingest_batch`, compared with
//! the two baselines a user would otherwise reach for (docs/architecture.md §6).
//!
//! `trackway-bench ingest` creates a throw-away database with the extension, generates deterministic
//! wire-format payloads with the simulator (`trackway_sim::workload`: its fleet of Teltonika-like trackers
//! around Vilnius, `__bigint` and `__buffer_b64` attributes included, without its faults) and stores the
//! same rows, in batches of one round trip and one transaction each, through:
//!
//! - **`ingest_batch`**: the product — decode and validate in Rust, insert with `ON CONFLICT DO NOTHING`,
//!   then the statement trigger keeps `latest_positions` and sends the NOTIFYs;
//! - **`COPY FROM STDIN`** of the already decoded rows into a table indexed exactly like
//!   `trackway.positions`, without a trigger: the storage limit of this machine;
//! - **plain SQL**: `INSERT … SELECT` from the JSON payloads with `ON CONFLICT DO NOTHING` into another such
//!   table, in several spellings (the fastest one counts) — what a user could write without the extension,
//!   although it does no sentinel decoding, no validation, no latest-position upkeep and no NOTIFY;
//! - **plain SQL, same work**: one statement per batch doing what `ingest_batch` does, with the fastest
//!   extraction above: the insert with the conflict check, the upsert of `latest_positions` (copies of both
//!   tables in schema `bench`, without triggers) and one `pg_notify` per ~8 kB of announced rows (on a
//!   channel nobody listens to), checked to store the same rows and latest positions as `ingest_batch`;
//! - `ingest_batch` again with every payload a duplicate (the cost of re-delivery), and optionally with the
//!   trigger disabled, to tell the trigger's share of the time.
//!
//! Only the database round trips are timed; each route runs several times on an emptied target after a
//! CHECKPOINT and the median counts. The goals: `ingest_batch` reaches at least half of COPY's rows/s, at
//! least the fastest plain-SQL route's rows/s, and at least the same-work plain-SQL route's rows/s (the
//! extension must add rules, not cost).
//!
//! `trackway-bench relay` runs the relay binary end to end against `ingest_batch` called directly;
//! `trackway-bench live` measures the live path to WebSocket clients (see [`live`]); `trackway-bench cluster`
//! the relay on one Redis node against a Redis Cluster, with one and two relays (see [`cluster`]);
//! `trackway-bench reads` the live feed's read against the previous release's (see [`reads`]).

mod cluster;
mod db;
mod ingest;
mod live;
mod reads;
mod relay;
mod report;
mod routes;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trackway-bench", about = "Trackway benchmarks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// SQL ingest: ingest_batch vs COPY vs plain SQL, in one fresh database.
    Ingest(IngestArgs),
    /// End to end: Redis Stream -> trackway-relay -> committed rows, vs ingest_batch called directly.
    Relay(RelayArgs),
    /// The live path: Redis Stream -> relay -> PostgreSQL -> NOTIFY -> /live WebSocket clients (latency,
    /// delivery, CPU, memory).
    Live(Box<live::Options>),
    /// Sharded streams: one relay on one Redis node vs one and two relays on a Redis Cluster (entries/s,
    /// XADD -> commit, RSS, Redis CPU), and the relay-count ceiling of the live feed.
    Cluster(Box<cluster::Options>),
    /// The live feed's read: this build's extension vs the previous release, by number of TimescaleDB
    /// chunks.
    Reads(reads::Options),
}

#[derive(clap::Args)]
struct RelayArgs {
    #[command(flatten)]
    workload: workload::Workload,
    /// Name of the benchmark database (dropped and re-created).
    #[arg(long, default_value = "trackway_bench_relay")]
    bench_database: String,
    /// Redis that holds the benchmark streams.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The relay binary [default: trackway-relay next to this binary].
    #[arg(long)]
    relay_binary: Option<std::path::PathBuf>,
}

impl From<RelayArgs> for relay::Options {
    fn from(a: RelayArgs) -> relay::Options {
        relay::Options {
            workload: a.workload,
            bench_database: a.bench_database,
            redis_url: a.redis_url,
            relay_binary: a.relay_binary,
        }
    }
}

#[derive(clap::Args)]
struct IngestArgs {
    #[command(flatten)]
    workload: workload::Workload,
    /// Name of the benchmark database (dropped and re-created).
    #[arg(long, default_value = "trackway_bench")]
    bench_database: String,
    /// Also time ingest_batch with the insert trigger disabled (diagnostic).
    #[arg(long)]
    without_trigger: bool,
}

impl From<IngestArgs> for ingest::Options {
    fn from(a: IngestArgs) -> ingest::Options {
        ingest::Options { workload: a.workload, bench_database: a.bench_database, without_trigger: a.without_trigger }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Ingest(args) => ingest::run(&args.into()).await,
        Command::Relay(args) => relay::run(&args.into()).await,
        Command::Live(options) => live::run(&options).await,
        Command::Cluster(options) => cluster::run(&options).await,
        Command::Reads(options) => reads::run(&options).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackway-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
