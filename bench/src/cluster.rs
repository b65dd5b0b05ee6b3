//! The `cluster` benchmark: one sharded workload through
//!
//! - **(a)** one relay on one Redis node,
//! - **(b)** one relay on a Redis Cluster (three primaries, three replicas),
//! - **(c)** two relays in one consumer group on that cluster,
//!
//! all on Debian's `redis-server` started by the benchmark itself (`trackway_testkit::redis_nodes`: the same
//! build and settings for the node and the cluster's nodes), the relay binary as child processes, one
//! throw-away database.
//!
//! Each repetition runs, for every setup in turn (the order rotates between repetitions):
//!
//! 1. **Throughput**: `--backlog` entries of the simulator's fleet are XADDed to the `--shards` shard keys
//!    (each device to its shard, `trackway_wire::shard`; not timed), then the relays start; the clock runs
//!    from the start of the first transaction that stores a row until every shard's group has nothing left
//!    to deliver and nothing pending: entries/s. The relays' start-up (connecting to every node, creating
//!    the groups: until that first transaction) is reported apart.
//! 2. **Latency**: with the relays running on fresh shard keys, positions are XADDed at `--rate` per second
//!    for `--seconds` (every 5 ms what is due, one pipeline per shard); the benchmark's own LISTEN
//!    connection records when each row's notification arrives, which is after its commit: XADD → commit
//!    p50/p99.
//!
//! Meanwhile it reads the relays' peak RSS and the Redis processes' CPU time from /proc, and the relays'
//! Redis connections from `INFO clients`. A throughput run's CPU is also split by part (relays, the Redis
//! servers holding the streams, the cluster's replicas, PostgreSQL): on a machine whose cores every part
//! shares, it shows what a setup's extra work is.
//!
//! With the live side on, each relay gets one live client as soon as it is ready (watching a device that
//! sends nothing): a relay serving maps has clients, and its feed reads every new row while anyone watches
//! (a feed nobody watches reads nothing).
//!
//! Then the **ceiling** of the design: every watched relay's live feed reads every new row, so each added
//! relay adds database work whatever its share of the stream. For each relay count in `--ceiling`, the latency
//! phase runs on the cluster with the live side on and again with it off (`TRACKWAY_LIVE_ADDR=off`), and
//! the PostgreSQL processes' CPU is compared: the difference is what the feeds cost.
//!
//! Goals (issue 18): (b) ≥ 0.9 × (a) entries/s; (c) ≥ (b); XADD → commit p99 ≤ 50 ms at 2,000 entries/s
//! over 16 shards on the cluster.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::{future::try_join_all, StreamExt};
use tokio_postgres::{Client, Config};
use trackway_testkit::{
    prometheus::{sample as metric_sample, sum as metric_sum},
    redis_nodes, RedisCluster, RedisNode,
};

use crate::db;
use crate::live::{
    self,
    client::{self, micros_since, Keys},
    procfs::{cpu_seconds, memory_kb},
    relay::{Launch, Relay},
    stats::{latency_header, latency_row, Goal, Percentiles},
    UNSET,
};

/// How long notifications may keep arriving after the last XADD of the latency phase.
const SETTLE: Duration = Duration::from_secs(30);
/// Longest a backlog may take to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// The relays' JWT secret (for the one watcher per relay).
const SECRET: &str = "trackway-bench-cluster-secret-not-for-production-0123456789";

/// Goals (issue 18).
const GOAL_CLUSTER_RATIO: f64 = 0.9;
const GOAL_TWO_RELAYS_RATIO: f64 = 1.0;
const GOAL_P99_MS: f64 = 50.0;

/// Options of `trackway-bench cluster`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Shard keys of the stream (`<stream>:{0}` …).
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Distinct devices sending.
    #[arg(long, default_value_t = 1_000)]
    pub devices: usize,
    /// Throughput: entries waiting in the shards when the relays start.
    #[arg(long, default_value_t = 300_000)]
    pub backlog: usize,
    /// Latency: entries per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u32,
    /// Latency: seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Latency: seconds the relays idle (no entries) before the load, their CPU measured.
    #[arg(long, default_value_t = 3.0)]
    pub idle_seconds: f64,
    /// Runs of each setup; throughput is the median, latency samples are pooled.
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Whether the relays of setups (a), (b) and (c) run their live side, each with one client watching (so
    /// that its feed reads every new row).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub live: bool,
    /// Relay counts of the ceiling measurement (comma-separated; `0` skips it).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub ceiling: Vec<usize>,
    /// Seed of the backlog's generator (the simulator's fleet).
    #[arg(long, default_value_t = 20_261_127)]
    pub seed: u64,
    /// Maintenance connection, used to create and drop the benchmark database.
    #[arg(long, default_value = "postgres://postgres@localhost/postgres")]
    pub database_url: String,
    /// Name of the benchmark database (dropped and re-created).
    #[arg(long, default_value = "trackway_bench_cluster")]
    pub bench_database: String,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The relay binary [default: trackway-relay next to this binary].
    #[arg(long)]
    pub relay_binary: Option<PathBuf>,
}

/// One way of running the relays.
#[derive(Clone, Copy)]
struct Setup {
    /// `a`, `b`, `c` (the names).
    label: &'static str,
    /// For the table.
    name: &'static str,
    /// On the cluster (else the single node).
    cluster: bool,
    /// Relays in the group.
    relays: usize,
}

const SETUPS: [Setup; 3] = [
    Setup { label: "a", name: "one relay, one Redis node", cluster: false, relays: 1 },
    Setup { label: "b", name: "one relay, Redis Cluster", cluster: true, relays: 1 },
    Setup { label: "c", name: "two relays, Redis Cluster", cluster: true, relays: 2 },
];

/// What one setup measured over every repetition.
#[derive(Default)]
struct Figures {
    /// Throughput runs: entries/s.
    entries_per_second: Vec<f64>,
    /// Throughput runs: seconds from starting the relays to the first transaction storing a row.
    startup: Vec<f64>,
    /// Throughput runs: Redis CPU seconds per 100,000 entries.
    redis_cpu_per_100k: Vec<f64>,
    /// Throughput runs: CPU seconds per 100,000 entries of each part of the machine's work (see
    /// [`CpuSplit`]): where a setup's extra cost goes.
    cpu_split_per_100k: Vec<CpuSplit>,
    /// Latency runs: XADD → commit, µs, pooled.
    latencies: Vec<u32>,
    /// Latency runs: entries/s achieved by the generator.
    rates: Vec<f64>,
    /// Latency runs: Redis CPU, % of one core.
    redis_cpu_percent: Vec<f64>,
    /// Latency runs: Redis connections the relays held.
    connections: Vec<i64>,
    /// Latency runs: the relays' CPU while no entry arrives, % of one core.
    idle_cpu_percent: Vec<f64>,
    /// Highest peak RSS of any relay, kB.
    peak_rss_kb: u64,
    /// Positions missing after a latency run (should stay 0).
    missing: usize,
}

/// The private Redis servers, and where the relays and the generator find them.
struct Servers {
    node: RedisNode,
    cluster: RedisCluster,
}

impl Servers {
    /// `REDIS_URL` for the relay (comma-separated seeds on the cluster).
    fn url(&self, cluster: bool) -> String {
        if cluster {
            self.cluster.urls().join(",")
        } else {
            self.node.url()
        }
    }

    fn pids(&self, cluster: bool) -> Vec<u32> {
        if cluster {
            self.cluster.pids()
        } else {
            vec![self.node.pid()]
        }
    }

    /// The pids of the servers holding the streams (the node, or the cluster's primaries) and of the
    /// cluster's replicas (none on the node).
    fn pids_by_role(&self, cluster: bool) -> Result<(Vec<u32>, Vec<u32>)> {
        if cluster {
            self.cluster.pids_by_role().context("the cluster's roles")
        } else {
            Ok((vec![self.node.pid()], Vec::new()))
        }
    }

    fn ports(&self, cluster: bool) -> Vec<u16> {
        if cluster {
            self.cluster.ports()
        } else {
            vec![self.node.port()]
        }
    }

    async fn connect(&self, cluster: bool) -> Result<trackway_redis::Connection> {
        let endpoint = trackway_redis::Endpoint::parse(&self.url(cluster), cluster).context("Redis address")?;
        endpoint.connect().await.with_context(|| format!("connecting to {}", endpoint.describe()))
    }

    /// Clients connected to the servers, summed (`INFO clients`).
    fn connected_clients(&self, cluster: bool) -> i64 {
        self.ports(cluster)
            .into_iter()
            .filter_map(|port| redis_nodes::cli(port, &["INFO", "clients"]))
            .filter_map(|info| {
                info.lines().find_map(|l| l.trim().strip_prefix("connected_clients:")?.parse::<i64>().ok())
            })
            .sum()
    }
}

/// The run: the binary, the database and the servers.
struct Bench<'a> {
    options: &'a Options,
    binary: PathBuf,
    config: Config,
    database_url: String,
    client: Client,
    servers: Servers,
    /// Distinguishes this run's keys.
    run: u32,
}

/// Creates the database and the servers, runs every setup `--repetitions` times and the ceiling, prints.
pub async fn run(options: &Options) -> Result<()> {
    if options.shards == 0 || options.devices == 0 || options.backlog == 0 || options.rate == 0 {
        bail!("--shards, --devices, --backlog and --rate must all be at least 1");
    }
    if options.repetitions == 0 || options.seconds.is_nan() || options.seconds <= 0.0 {
        bail!("--repetitions and --seconds must be positive");
    }
    let binary = match &options.relay_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("trackway-relay"),
    };
    if !binary.is_file() {
        bail!("relay binary {} not found (build it: cargo build --release -p trackway-relay)", binary.display());
    }
    db::check_database_name(&options.bench_database)?;
    let maintenance_config: Config = options.database_url.parse().context("parsing --database-url")?;
    let maintenance = db::connect(&maintenance_config).await?;
    db::recreate_database(&maintenance, &options.bench_database).await?;
    let mut config = maintenance_config;
    config.dbname(&options.bench_database);
    let result = run_in(options, binary, config).await;
    if options.keep {
        eprintln!("kept database {}", options.bench_database);
    } else {
        db::drop_database(&maintenance, &options.bench_database).await?;
    }
    result
}

async fn run_in(options: &Options, binary: PathBuf, config: Config) -> Result<()> {
    let client = db::connect(&config).await?;
    db::create_extension(&client).await?;
    eprintln!("starting a Redis node and a Redis Cluster (3 primaries, 3 replicas)");
    let servers = tokio::task::spawn_blocking(|| -> Result<Servers> {
        Ok(Servers { node: RedisNode::start()?, cluster: RedisCluster::start()? })
    })
    .await??;
    let database_url = db::database_url(&config);
    let mut bench = Bench { options, binary, config, database_url, client, servers, run: 0 };
    for fact in db::machine_facts(&bench.client).await? {
        println!("{fact}");
    }

    let backlog = trackway_sim::workload(options.backlog, options.devices, options.seed);
    let (_, backlog_devices) = Keys::new(&backlog)?;
    let mut figures: Vec<Figures> = SETUPS.iter().map(|_| Figures::default()).collect();
    for rep in 0..options.repetitions {
        for k in 0..SETUPS.len() {
            let i = (rep + k) % SETUPS.len();
            let setup = SETUPS[i];
            bench.throughput(setup, &backlog, &backlog_devices, &mut figures[i]).await?;
            bench.latency(setup, options.live, &mut figures[i]).await.map(|_| ())?;
            eprintln!("repetition {} of {}: setup ({}) done", rep + 1, options.repetitions, setup.label);
        }
    }
    print_setups(options, &mut figures);

    let ceiling: Vec<usize> = options.ceiling.iter().copied().filter(|&n| n > 0).collect();
    if !ceiling.is_empty() {
        let mut rows = Vec::new();
        for relays in ceiling {
            let setup = Setup { label: "ceiling", name: "", cluster: true, relays };
            let mut with = Figures::default();
            let live = bench.latency(setup, true, &mut with).await?;
            let mut without = Figures::default();
            let quiet = bench.latency(setup, false, &mut without).await?;
            rows.push((relays, with, live, without, quiet));
        }
        print_ceiling(options, &mut rows);
    }
    Ok(())
}

/// What a latency run cost outside Redis: the database server's and the relays' CPU, and the database
/// statements the relays made.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Every `postgres` process of the machine, % of one core.
    postgres: f64,
    /// The relays together, % of one core.
    relays: f64,
    /// Reads of new rows by the relays' live feeds, per second (all relays).
    feed_reads: f64,
    /// Batches committed by the relays, per second (all relays).
    commits: f64,
    /// `ingest_batch` statements the relays sent, per second (all relays; one may carry several batches).
    statements: f64,
}

/// CPU seconds of a throughput run by part of the machine: the relays, the Redis servers holding the
/// streams (the node, or the cluster's primaries), the cluster's replicas, and every `postgres` process.
#[derive(Clone, Copy, Default)]
struct CpuSplit {
    relays: f64,
    primaries: f64,
    replicas: f64,
    postgres: f64,
}

impl CpuSplit {
    fn scaled(self, factor: f64) -> CpuSplit {
        CpuSplit {
            relays: self.relays * factor,
            primaries: self.primaries * factor,
            replicas: self.replicas * factor,
            postgres: self.postgres * factor,
        }
    }

    fn total(self) -> f64 {
        self.relays + self.primaries + self.replicas + self.postgres
    }

    /// Part by part, the median over `splits`.
    fn median(splits: &[CpuSplit]) -> CpuSplit {
        let part = |f: fn(&CpuSplit) -> f64| median(&splits.iter().map(f).collect::<Vec<_>>());
        CpuSplit {
            relays: part(|s| s.relays),
            primaries: part(|s| s.primaries),
            replicas: part(|s| s.replicas),
            postgres: part(|s| s.postgres),
        }
    }
}

/// The relays' counters that explain the database's work.
#[derive(Clone, Copy, Default)]
struct Counters {
    feed_reads: f64,
    commits: f64,
    statements: f64,
}

impl Counters {
    async fn read(relays: &[Relay]) -> Counters {
        let mut counters = Counters::default();
        for relay in relays {
            let text = relay.metrics().await;
            counters.feed_reads += metric_sum(&text, "trackway_live_feed_reads_total");
            counters.statements += metric_sum(&text, "trackway_relay_statements_total");
            counters.commits += metric_sample(&text, "trackway_relay_batches_total{outcome=\"committed\"}")
                .ok()
                .flatten()
                .unwrap_or(0.0);
        }
        counters
    }
}

impl Bench<'_> {
    /// Fresh shard keys for a run.
    fn keys(&mut self, label: &str) -> (String, Vec<String>) {
        self.run += 1;
        let stream = format!("trackway-bench:{}:{label}:{}", std::process::id(), self.run);
        let keys = (0..self.options.shards).map(|i| format!("{stream}:{{{i}}}")).collect();
        (stream, keys)
    }

    async fn reset(&self) -> Result<()> {
        self.client
            .batch_execute("TRUNCATE trackway.positions, trackway.latest_positions; CHECKPOINT")
            .await
            .context("emptying tables")
    }

    /// Starts `setup.relays` relays on `stream` (consumers `relay-0` …), all at once.
    async fn start_relays(&self, setup: Setup, stream: &str, live: bool) -> Result<Vec<Relay>> {
        let url = self.servers.url(setup.cluster);
        let extra: Vec<Vec<String>> = (0..setup.relays)
            .map(|i| {
                let mut flags = vec![
                    "--stream-shards".to_owned(),
                    self.options.shards.to_string(),
                    "--consumer".to_owned(),
                    format!("relay-{i}"),
                ];
                if setup.cluster {
                    flags.push("--redis-cluster".to_owned());
                    flags.push("true".to_owned());
                }
                flags
            })
            .collect();
        let launches: Vec<Launch> = extra
            .iter()
            .map(|flags| Launch {
                binary: &self.binary,
                database_url: &self.database_url,
                redis_url: &url,
                stream,
                jwt_secret: SECRET,
                extra: flags,
                live,
            })
            .collect();
        try_join_all(launches.iter().map(Relay::start)).await
    }

    /// Throughput: fills the shards, starts the relays, times the drain.
    async fn throughput(
        &mut self,
        setup: Setup,
        payloads: &[String],
        devices: &[String],
        figures: &mut Figures,
    ) -> Result<()> {
        self.reset().await?;
        let (stream, keys) = self.keys(setup.label);
        let mut conn = self.servers.connect(setup.cluster).await?;
        let mut by_shard: Vec<Vec<&str>> = vec![Vec::new(); keys.len()];
        for (payload, device) in payloads.iter().zip(devices) {
            by_shard[trackway_wire::shard::shard_of(device, self.options.shards) as usize].push(payload);
        }
        for (key, shard) in keys.iter().zip(&by_shard) {
            trackway_testkit::xadd_payloads(&mut conn, key, shard).await.context("XADD")?;
        }
        let (primaries, replicas) = self.servers.pids_by_role(setup.cluster)?;
        let split_before = CpuSplit {
            relays: 0.0,
            primaries: total_cpu_seconds(&primaries),
            replicas: total_cpu_seconds(&replicas),
            postgres: postgres_cpu_seconds(),
        };
        let (started, spawned) = (Instant::now(), unix_seconds());
        let relays = self.start_relays(setup, &stream, self.options.live).await?;
        let _watchers = Watchers::start(&relays, self.options.live).await?;
        let deadline = started + DRAIN_LIMIT;
        while !drained(&mut conn, &keys).await? {
            if Instant::now() > deadline {
                bail!("({}) the relays did not drain {} entries within {DRAIN_LIMIT:?}", setup.label, payloads.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = unix_seconds();
        // The relays' whole lives (start-up included: they start with this run), the servers' deltas.
        let split = CpuSplit {
            relays: total_cpu_seconds(&relays.iter().map(|r| r.pid).collect::<Vec<_>>()),
            primaries: total_cpu_seconds(&primaries) - split_before.primaries,
            replicas: total_cpu_seconds(&replicas) - split_before.replicas,
            postgres: postgres_cpu_seconds() - split_before.postgres,
        };
        let redis_cpu = split.primaries + split.replicas;
        figures.peak_rss_kb = figures.peak_rss_kb.max(peak_rss_kb(&relays));
        stop_all(relays).await?;
        let stored = count_rows(&self.client).await?;
        if stored != payloads.len() as i64 {
            bail!("ASSERTION FAILED: ({}) {stored} rows stored, expected exactly {}", setup.label, payloads.len());
        }
        delete_keys(&mut conn, &keys).await?;
        // The clock runs from the start of the first transaction that stored a row (the server's and this
        // machine's clock are the same) to the drain seen settled: starting the relays (connecting to
        // every node, creating groups) is reported apart, not counted as throughput.
        let first = first_transaction(&self.client).await?;
        let (startup, elapsed) = (first - spawned, done - first);
        let rate = payloads.len() as f64 / elapsed;
        eprintln!(
            "({}) {} relay(s): first commit {startup:.3} s after start, {} entries in {elapsed:.3} s = {rate:.0}/s, \
             Redis CPU {redis_cpu:.2} s",
            setup.label,
            setup.relays,
            payloads.len()
        );
        figures.startup.push(startup);
        figures.entries_per_second.push(rate);
        figures.redis_cpu_per_100k.push(redis_cpu * 100_000.0 / payloads.len() as f64);
        figures.cpu_split_per_100k.push(split.scaled(100_000.0 / payloads.len() as f64));
        Ok(())
    }

    /// Latency: relays running, entries XADDed at `--rate`, commit seen by LISTEN.
    async fn latency(&mut self, setup: Setup, live: bool, figures: &mut Figures) -> Result<Cpu> {
        self.reset().await?;
        let (stream, keys) = self.keys(setup.label);
        let mut conn = self.servers.connect(setup.cluster).await?;
        let total = (f64::from(self.options.rate) * self.options.seconds).round().max(1.0) as usize;
        let payloads = positions(total, self.options.devices)?;
        let (index, devices) = Keys::new(&payloads)?;
        let shard_of: Vec<usize> =
            devices.iter().map(|d| trackway_wire::shard::shard_of(d, self.options.shards) as usize).collect();
        let times = Times::new(total);
        let t0 = Instant::now();
        let listener = live::listen(&self.config, Arc::new(index), times.notify.clone(), t0).await?;

        let baseline = self.servers.connected_clients(setup.cluster);
        let relays = self.start_relays(setup, &stream, live).await?;
        let _watchers = Watchers::start(&relays, live).await?;
        wait_for_groups(&mut conn, &keys).await?;
        let relay_pids: Vec<u32> = relays.iter().map(|r| r.pid).collect();
        if self.options.idle_seconds > 0.0 {
            let (before, at) = (total_cpu_seconds(&relay_pids), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(self.options.idle_seconds)).await;
            let idle = 100.0 * (total_cpu_seconds(&relay_pids) - before) / at.elapsed().as_secs_f64();
            figures.idle_cpu_percent.push(idle);
        }

        let pids = self.servers.pids(setup.cluster);
        let counters = Counters::read(&relays).await;
        let (redis_before, relays_before, pg_before) =
            (total_cpu_seconds(&pids), total_cpu_seconds(&relay_pids), postgres_cpu_seconds());
        let window = Instant::now();
        let rate = generate(&conn, &keys, &payloads, &shard_of, self.options.rate, &times, t0).await?;
        let seconds = window.elapsed().as_secs_f64();
        let percent = |after: f64, before: f64| 100.0 * (after - before) / seconds;
        let (postgres, relays_cpu) = (postgres_cpu_seconds(), total_cpu_seconds(&relay_pids));
        let counted = Counters::read(&relays).await;
        let cpu = Cpu {
            postgres: percent(postgres, pg_before),
            relays: percent(relays_cpu, relays_before),
            feed_reads: (counted.feed_reads - counters.feed_reads) / seconds,
            commits: (counted.commits - counters.commits) / seconds,
            statements: (counted.statements - counters.statements) / seconds,
        };
        let redis_cpu = percent(total_cpu_seconds(&pids), redis_before);
        // Under load every link of every consumer is open (some open on first use).
        let connections = self.servers.connected_clients(setup.cluster) - baseline;

        let settle = Instant::now() + SETTLE;
        while times.notified() < total && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        figures.peak_rss_kb = figures.peak_rss_kb.max(peak_rss_kb(&relays));
        stop_all(relays).await?;
        listener.abort();
        delete_keys(&mut conn, &keys).await?;
        let missing = total - times.notified();
        if missing > 0 {
            eprintln!("warning: ({}) {missing} of {total} positions not seen committed within {SETTLE:?}", setup.label);
        }
        figures.missing += missing;
        figures.latencies.extend(times.lags());
        figures.rates.push(rate);
        figures.redis_cpu_percent.push(redis_cpu);
        figures.connections.push(connections);
        Ok(cpu)
    }
}

/// One live client per relay, watching a device that sends nothing, reading (and dropping) what comes
/// until dropped: the relay's feed then reads every new row, as a relay serving maps does.
struct Watchers(Vec<tokio::task::JoinHandle<()>>);

impl Watchers {
    /// A watcher on each relay when `live` (none otherwise).
    async fn start(relays: &[Relay], live: bool) -> Result<Watchers> {
        let mut watchers = Watchers(Vec::new());
        if !live {
            return Ok(watchers);
        }
        let token = live::token(SECRET)?;
        for relay in relays {
            let mut socket = client::connect(&relay.live_url, &token, 4096).await?;
            client::subscribe(&mut socket, "device", "bench-watcher").await?;
            watchers.0.push(tokio::spawn(async move { while let Some(Ok(_)) = socket.next().await {} }));
        }
        Ok(watchers)
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// `total` minimal positions of `devices` devices (`bench-<i>`), each with its own time, all in the last
/// hours (so they land in a recent chunk).
fn positions(total: usize, devices: usize) -> Result<Vec<String>> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let start = now_ms - 3_600_000;
    Ok((0..total).map(|i| trackway_testkit::position(&format!("bench-{}", i % devices), start + i as i64)).collect())
}

/// XADDs `payloads` at `rate` per second: every 5 ms what is due, one pipeline per shard, the shards'
/// pipelines concurrently; records each one's XADD time. Returns the rate achieved.
async fn generate(
    conn: &trackway_redis::Connection,
    keys: &[String],
    payloads: &[String],
    shard_of: &[usize],
    rate: u32,
    times: &Times,
    t0: Instant,
) -> Result<f64> {
    let total = payloads.len();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(total);
        if due <= sent {
            continue;
        }
        let mut pipes: HashMap<usize, redis::Pipeline> = HashMap::new();
        for (i, payload) in payloads.iter().enumerate().take(due).skip(sent) {
            let shard = shard_of[i];
            pipes
                .entry(shard)
                .or_insert_with(redis::pipe)
                .cmd("XADD")
                .arg(&keys[shard])
                .arg("*")
                .arg("payload")
                .arg(payload);
        }
        let at = micros_since(t0);
        for slot in &times.xadd[sent..due] {
            slot.store(at, Ordering::Relaxed);
        }
        let sends = pipes.into_values().map(|mut pipe| {
            let mut conn = conn.clone();
            async move {
                pipe.ignore();
                pipe.query_async::<()>(&mut conn).await
            }
        });
        try_join_all(sends).await.context("XADD")?;
        sent = due;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// XADD and NOTIFY arrival times, µs after the run's `t0`.
struct Times {
    xadd: Vec<AtomicU32>,
    /// Shared with the LISTEN connection's task.
    notify: Arc<Vec<AtomicU32>>,
}

impl Times {
    fn new(n: usize) -> Times {
        let unset = || (0..n).map(|_| AtomicU32::new(UNSET)).collect::<Vec<_>>();
        Times { xadd: unset(), notify: Arc::new(unset()) }
    }

    fn notified(&self) -> usize {
        self.notify.iter().filter(|t| t.load(Ordering::Relaxed) != UNSET).count()
    }

    /// XADD → commit of every position seen committed, µs.
    fn lags(&self) -> Vec<u32> {
        self.xadd
            .iter()
            .zip(self.notify.iter())
            .filter_map(|(x, n)| {
                let (x, n) = (x.load(Ordering::Relaxed), n.load(Ordering::Relaxed));
                (x != UNSET && n != UNSET).then(|| n.saturating_sub(x))
            })
            .collect()
    }
}

/// Whether every shard's group has nothing left to deliver and nothing pending.
async fn drained(conn: &mut trackway_redis::Connection, keys: &[String]) -> Result<bool> {
    for key in keys {
        let groups = trackway_testkit::group_counters(conn, key).await.unwrap_or_default();
        if !groups.iter().any(|g| g.pending == Some(0) && g.lag == Some(0)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits until every shard's group exists (the relays have started their consumers), then a moment for
/// their first reads to be issued.
async fn wait_for_groups(conn: &mut trackway_redis::Connection, keys: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for key in keys {
        while trackway_testkit::group_counters(conn, key).await.unwrap_or_default().is_empty() {
            if Instant::now() > deadline {
                bail!("the relays did not create the group of {key} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(())
}

async fn delete_keys(conn: &mut trackway_redis::Connection, keys: &[String]) -> Result<()> {
    for key in keys {
        // One command per slot: a cluster refuses DEL over keys of several slots.
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .arg(format!("{key}:dead"))
            .arg(format!("{key}:attempts"))
            .query_async(conn)
            .await
            .context("DEL")?;
    }
    Ok(())
}

/// When the first transaction that stored a row began (`ingested_at`), in Unix seconds.
async fn first_transaction(client: &Client) -> Result<f64> {
    let row = client
        .query_one("SELECT extract(epoch FROM min(ingested_at))::float8 FROM trackway.positions", &[])
        .await
        .context("first ingested_at")?;
    Ok(row.try_get(0)?)
}

/// This machine's clock, in Unix seconds.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

async fn count_rows(client: &Client) -> Result<i64> {
    Ok(client.query_one("SELECT count(*) FROM trackway.positions", &[]).await?.try_get(0)?)
}

async fn stop_all(relays: Vec<Relay>) -> Result<()> {
    try_join_all(relays.into_iter().map(Relay::stop)).await.map(|_| ())
}

fn peak_rss_kb(relays: &[Relay]) -> u64 {
    relays.iter().filter_map(|r| memory_kb(r.pid)).map(|(_, hwm)| hwm).max().unwrap_or(0)
}

fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum()
}

/// CPU seconds of every process named `postgres` (servers and their backends: the database's whole work).
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .filter_map(cpu_seconds)
        .sum()
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_setups(options: &Options, figures: &mut [Figures]) {
    println!();
    println!(
        "== {} entries of {} devices in {} shards (throughput, median of {}); {} entries/s for {} s (latency, pooled) ==",
        options.backlog, options.devices, options.shards, options.repetitions, options.rate, options.seconds
    );
    println!(
        "  {:<30} {:>10} {:>8} {:>12} {:>8} {:>8} {:>10} {:>6} {:>8} {:>10}",
        "setup", "entries/s", "start s", "Redis CPU s", "p50 ms", "p99 ms", "Redis CPU", "conns", "RSS MB", "idle CPU"
    );
    println!(
        "  {:<30} {:>10} {:>8} {:>12} {:>8} {:>8} {:>10} {:>6} {:>8} {:>10}",
        "", "", "", "per 100k", "", "", "at rate", "", "peak", "relays"
    );
    let mut p99 = Vec::new();
    for (setup, f) in SETUPS.iter().zip(figures.iter_mut()) {
        let latency = Percentiles::of_micros(&mut f.latencies);
        p99.push(latency.map_or(f64::NAN, |p| p.p99));
        println!(
            "  ({}) {:<26} {:>10.0} {:>8.2} {:>12.2} {:>8.2} {:>8.2} {:>9.1}% {:>6} {:>8.1} {:>9.2}%",
            setup.label,
            setup.name,
            median(&f.entries_per_second),
            median(&f.startup),
            median(&f.redis_cpu_per_100k),
            latency.map_or(f64::NAN, |p| p.p50),
            latency.map_or(f64::NAN, |p| p.p99),
            median(&f.redis_cpu_percent),
            f.connections.iter().max().copied().unwrap_or(0),
            f.peak_rss_kb as f64 / 1024.0,
            median(&f.idle_cpu_percent)
        );
    }
    println!();
    println!("  CPU s per 100k entries (throughput, median)   relays  Redis: streams  replicas  postgres    total");
    for (setup, f) in SETUPS.iter().zip(figures.iter()) {
        let split = CpuSplit::median(&f.cpu_split_per_100k);
        println!(
            "  ({}) {:<40} {:>8.2} {:>15.2} {:>9.2} {:>9.2} {:>8.2}",
            setup.label,
            setup.name,
            split.relays,
            split.primaries,
            split.replicas,
            split.postgres,
            split.total()
        );
    }
    println!();
    println!("{}", latency_header());
    for (setup, f) in SETUPS.iter().zip(figures.iter_mut()) {
        let rate = median(&f.rates);
        let name = format!("({}) XADD -> commit at {rate:.0}/s", setup.label);
        println!("{}", latency_row(&name, Percentiles::of_micros(&mut f.latencies)));
    }
    println!();
    let throughput: Vec<f64> = figures.iter().map(|f| median(&f.entries_per_second)).collect();
    let missing: usize = figures.iter().map(|f| f.missing).sum();
    let goals = [
        Goal::at_least("(b) / (a) entries/s", throughput[1] / throughput[0], GOAL_CLUSTER_RATIO, "x"),
        Goal::at_least("(c) / (b) entries/s", throughput[2] / throughput[1], GOAL_TWO_RELAYS_RATIO, "x"),
        Goal::at_most("(b) XADD -> commit p99", p99[1], GOAL_P99_MS, "ms"),
        Goal::at_most("(c) XADD -> commit p99", p99[2], GOAL_P99_MS, "ms"),
        Goal::at_most("positions never seen committed", missing as f64, 0.0, ""),
    ];
    println!("goals:");
    for goal in &goals {
        println!("{}", goal.line());
    }
}

fn print_ceiling(options: &Options, rows: &mut [(usize, Figures, Cpu, Figures, Cpu)]) {
    println!();
    println!(
        "== ceiling: N relays on the cluster, {} entries/s for {} s, live side (feed) on vs off ==",
        options.rate, options.seconds
    );
    println!(
        "  {:>6} {:>10} {:>10} {:>12} {:>12} {:>12} {:>10} {:>11} {:>9} {:>12}",
        "relays",
        "p99 on ms",
        "p99 off ms",
        "postgres on",
        "postgres off",
        "feeds' share",
        "relays on",
        "feed reads/s",
        "batches/s",
        "statements/s"
    );
    for (relays, with, live, without, quiet) in rows.iter_mut() {
        let p99 = |f: &mut Figures| Percentiles::of_micros(&mut f.latencies).map_or(f64::NAN, |p| p.p99);
        println!(
            "  {:>6} {:>10.2} {:>10.2} {:>11.1}% {:>11.1}% {:>11.1}% {:>9.1}% {:>11.0} {:>9.0} {:>12.0}",
            relays,
            p99(with),
            p99(without),
            live.postgres,
            quiet.postgres,
            live.postgres - quiet.postgres,
            live.relays,
            live.feed_reads,
            live.commits,
            live.statements
        );
    }
    println!("  (% of one core; postgres: every postgres process of the machine; the machine has {} cores)", cores());
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
