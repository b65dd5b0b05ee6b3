//! The `live` benchmark: Redis Stream → `trackway-relay` → PostgreSQL → NOTIFY → the relay's `/live`
//! WebSocket → clients, all on this machine, load generator included.
//!
//! Per scenario: a fresh database (all devices in group `fleet`), a fresh stream, the release relay as a
//! child (`--auth jwt`, a random secret, free ports). The benchmark signs its own HS256 tokens (Directus's
//! claims, `admin_access` true), opens the clients, waits until every subscription is answered, then
//! XADDs generated positions at a fixed rate (every 5 ms, what is due, in one pipeline) and records:
//!
//! - the XADD time of each position (just before its pipeline is sent);
//! - its commit time: when the benchmark's own LISTEN connection on `trackway_positions` gets the
//!   notification carrying it (the database announces at commit; `trackway.announce = full` or
//!   `reference` both carry `deviceId` and `timestamp`);
//! - its receipt time at every client.
//!
//! Scenarios: `notify` (no clients: XADD→NOTIFY alone), `routed`, `broadcast`, `idle` (connections held
//! open, memory only), `storm` (clients reconnecting at once to resume, `storm.rs`), `unread` (clients
//! that never read while asking for snapshot after snapshot, `unread.rs`), `forged` (an honest and a forged
//! `since` side by side, `forged.rs`); and, only when asked for, `anchor` (Trackway against pg_eventserv,
//! `anchor.rs`). CPU is utime+stime from /proc over the load window, in % of one core.

mod anchor;
pub(crate) mod client;
mod forged;
pub(crate) mod procfs;
pub(crate) mod relay;
pub(crate) mod stats;
mod storm;
mod unread;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use self::{
    client::{Keys, Received},
    procfs::CpuSample,
    relay::{Launch, Relay},
    stats::{latency_header, latency_row, Goal, Percentiles},
};
use crate::db;
use trackway_testkit::prometheus::sum as metric_sum;

/// Group holding every device.
const FLEET: &str = "fleet";
/// Not yet recorded (XADD or NOTIFY time).
pub(crate) const UNSET: u32 = u32::MAX;
/// Connections opened at once (the relay's accept queue and the machine stay comfortable).
const CONNECT_CONCURRENCY: usize = 100;
/// How long deliveries may keep arriving after the last XADD.
const DRAIN: Duration = Duration::from_secs(15);

/// Goals (the issue's).
const GOAL_COMMIT_P99_MS: f64 = 20.0;
const GOAL_XADD_P99_MS: f64 = 50.0;
const GOAL_IDLE_RSS_MB: f64 = 150.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// XADD→NOTIFY alone (no clients), then routed, broadcast and idle.
    All,
    Notify,
    Routed,
    Broadcast,
    Idle,
    Storm,
    Unread,
    Forged,
    /// Trackway against pg_eventserv (not part of `all`: give --anchor-binary).
    Anchor,
}

/// Options of `trackway-bench live`.
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Routed: clients, each subscribed to one device.
    #[arg(long, default_value_t = 1_000)]
    pub routed_clients: usize,
    /// Routed: devices sending (clients are spread over them evenly).
    #[arg(long, default_value_t = 100)]
    pub routed_devices: usize,
    /// Routed (and notify): positions per second.
    #[arg(long, default_value_t = 2_000)]
    pub routed_rate: u32,
    /// Routed: seconds of load.
    #[arg(long, default_value_t = 30.0)]
    pub routed_seconds: f64,
    /// Broadcast: clients, all subscribed to the group holding every device.
    #[arg(long, default_value_t = 200)]
    pub broadcast_clients: usize,
    /// Broadcast: devices sending.
    #[arg(long, default_value_t = 100)]
    pub broadcast_devices: usize,
    /// Broadcast: positions per second.
    #[arg(long, default_value_t = 1_000)]
    pub broadcast_rate: u32,
    /// Broadcast: seconds of load.
    #[arg(long, default_value_t = 20.0)]
    pub broadcast_seconds: f64,
    /// Idle: authenticated connections held open.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Idle: also subscribe each connection to one device.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub idle_subscribe: bool,
    /// Notify: seconds of load at --routed-rate without clients (XADD→NOTIFY alone).
    #[arg(long, default_value_t = 10.0)]
    pub notify_seconds: f64,
    /// The storm scenario's settings.
    #[command(flatten)]
    pub storm: storm::StormOptions,
    /// The unread scenario's settings.
    #[command(flatten)]
    pub unread: unread::UnreadOptions,
    /// The forged scenario's settings.
    #[command(flatten)]
    pub forged: forged::ForgedOptions,
    /// The anchor scenario's settings.
    #[command(flatten)]
    pub anchor: anchor::AnchorOptions,
    /// Extra flag for the relay, repeatable (e.g. --relay-arg=--batch-size=200).
    #[arg(long = "relay-arg", allow_hyphen_values = true)]
    pub relay_args: Vec<String>,
    /// A setting for every session of the benchmark database, repeatable (ALTER DATABASE … SET; e.g.
    /// --database-setting jit=off).
    #[arg(long = "database-setting", value_name = "NAME=VALUE")]
    pub database_settings: Vec<String>,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 20_261_127)]
    pub seed: u64,
    /// Maintenance connection, used to create and drop the benchmark database.
    #[arg(long, default_value = "postgres://postgres@localhost/postgres")]
    pub database_url: String,
    /// Name of the benchmark database (dropped and re-created per scenario).
    #[arg(long, default_value = "trackway_bench_live")]
    pub bench_database: String,
    /// Redis that holds the benchmark streams.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The relay binary [default: trackway-relay next to this binary].
    #[arg(long)]
    pub relay_binary: Option<PathBuf>,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the chosen scenarios and prints a section per scenario and the goals.
pub async fn run(options: &Options) -> Result<()> {
    let binary = match &options.relay_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("trackway-relay"),
    };
    if !binary.is_file() {
        bail!("relay binary {} not found (build it: cargo build --release -p trackway-relay)", binary.display());
    }
    db::check_database_name(&options.bench_database)?;
    let wanted_fds = options.idle_connections as u64 + 1_024;
    let fds = procfs::raise_fd_limit(wanted_fds);
    if fds < wanted_fds {
        eprintln!("warning: open-file limit {fds} < {wanted_fds}: the idle scenario may fail (ulimit -n)");
    }
    let bench = Bench { options, binary, t0: Instant::now() };
    let mut goals = Vec::new();
    let all = options.scenario == Scenario::All;
    println!(
        "trackway-bench live (relay flags: {}; database settings: {})",
        describe_flags(&options.relay_args),
        describe_flags(&options.database_settings)
    );
    if all || options.scenario == Scenario::Notify {
        bench.notify_alone().await?;
    }
    if all || options.scenario == Scenario::Routed {
        goals.extend(bench.routed().await?);
    }
    if all || options.scenario == Scenario::Broadcast {
        goals.extend(bench.broadcast().await?);
    }
    if all || options.scenario == Scenario::Idle {
        goals.extend(bench.idle().await?);
    }
    if all || options.scenario == Scenario::Storm {
        goals.extend(bench.storm().await?);
    }
    if all || options.scenario == Scenario::Unread {
        goals.extend(bench.unread().await?);
    }
    if all || options.scenario == Scenario::Forged {
        goals.extend(bench.forged().await?);
    }
    if options.scenario == Scenario::Anchor {
        goals.extend(bench.anchor().await?);
    }
    if !goals.is_empty() {
        println!("\n== goals ==");
        for goal in &goals {
            println!("{}", goal.line());
        }
        let missed = goals.iter().filter(|g| !g.met()).count();
        println!("  {} of {} goals met", goals.len() - missed, goals.len());
    }
    Ok(())
}

fn describe_flags(flags: &[String]) -> String {
    if flags.is_empty() {
        "defaults".to_owned()
    } else {
        flags.join(" ")
    }
}

/// A load scenario: who subscribes to what, how fast positions come.
struct Load {
    name: &'static str,
    clients: usize,
    devices: usize,
    rate: u32,
    seconds: f64,
    /// Client `i` subscribes to the device of index `i % devices`; `false`: to group [`FLEET`].
    per_device: bool,
}

struct Bench<'a> {
    options: &'a Options,
    binary: PathBuf,
    /// Every time is recorded in µs after this.
    t0: Instant,
}

/// A fresh database and relay for one scenario.
struct Setup {
    config: Config,
    relay: Relay,
    token: String,
    redis: redis::aio::MultiplexedConnection,
    stream: String,
}

impl Bench<'_> {
    /// Re-creates the database with every device in group `fleet`, and starts a relay on a fresh stream.
    async fn setup(&self, scenario: &str, devices: &[String]) -> Result<Setup> {
        let o = self.options;
        let maintenance_config: Config = o.database_url.parse().context("parsing --database-url")?;
        let maintenance = db::connect(&maintenance_config).await?;
        db::recreate_database(&maintenance, &o.bench_database).await?;
        let mut config = maintenance_config;
        config.dbname(&o.bench_database);
        for setting in &o.database_settings {
            let Some((name, value)) = setting.split_once('=') else {
                bail!("--database-setting {setting:?}: expected NAME=VALUE");
            };
            let value = value.replace('\'', "''");
            let sql = format!("ALTER DATABASE {} SET {name} = '{value}'", o.bench_database);
            maintenance.batch_execute(&sql).await.with_context(|| sql.clone())?;
        }
        let client = db::connect(&config).await?;
        db::create_extension(&client).await?;
        client
            .execute(
                "INSERT INTO trackway.device_groups (group_id, device_id) SELECT $1, unnest($2::text[])",
                &[&FLEET, &devices],
            )
            .await
            .context("inserting device_groups")?;
        let announce =
            db::scalar(&client, "SELECT current_setting('trackway.announce', true)").await.unwrap_or_default();
        if announce != "full" && announce != "reference" {
            bail!("trackway.announce is {announce:?}: the benchmark needs notifications (full or reference)");
        }
        let redis = redis::Client::open(o.redis_url.as_str()).context("--redis-url")?;
        let mut conn = redis.get_multiplexed_async_connection().await.context("connecting to Redis")?;
        let stream = format!("trackway-bench-live:{}:{scenario}", std::process::id());
        let _: i64 = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut conn).await?;
        let secret = random_secret()?;
        let database_url = crate::db::database_url(&config);
        let launch = Launch {
            binary: &self.binary,
            database_url: &database_url,
            redis_url: &o.redis_url,
            stream: &stream,
            jwt_secret: &secret,
            extra: &o.relay_args,
            live: true,
        };
        let relay = Relay::start(&launch).await?;
        Ok(Setup { config, relay, token: token(&secret)?, redis: conn, stream })
    }

    /// Stops the relay, deletes the stream, drops the database (unless --keep).
    async fn teardown(&self, mut setup: Setup) -> Result<()> {
        setup.relay.stop().await?;
        let stream = &setup.stream;
        let _: i64 = redis::cmd("DEL")
            .arg(stream)
            .arg(format!("{stream}:dead"))
            .arg(format!("{stream}:attempts"))
            .query_async(&mut setup.redis)
            .await?;
        if self.options.keep {
            eprintln!("kept database {}", self.options.bench_database);
            return Ok(());
        }
        let maintenance_config: Config = self.options.database_url.parse()?;
        let maintenance = db::connect(&maintenance_config).await?;
        db::drop_database(&maintenance, &self.options.bench_database).await
    }

    /// XADD→NOTIFY without any client: where the time before the relay's live side goes.
    async fn notify_alone(&self) -> Result<()> {
        let o = self.options;
        let total = (f64::from(o.routed_rate) * o.notify_seconds).round() as usize;
        println!(
            "\n== notify: XADD -> NOTIFY alone, {} positions/s for {} s, {} devices, no clients ==",
            o.routed_rate, o.notify_seconds, o.routed_devices
        );
        let payloads = trackway_sim::workload(total, o.routed_devices, o.seed);
        let (keys, devices) = Keys::new(&payloads)?;
        let keys = Arc::new(keys);
        let mut setup = self.setup("notify", &distinct(&devices)).await?;
        let times = Times::new(total);
        let listener = self.listen(&setup.config, keys.clone(), times.notify.clone()).await?;
        let (relay_before, own_before) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let generated = self.generate(&mut setup, &payloads, o.routed_rate, &times).await?;
        let committed = wait_for(|| times.notified() >= total, DRAIN).await;
        let (relay_after, own_after) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let metrics = setup.relay.metrics().await;
        self.teardown(setup).await?;
        listener.abort();
        println!("  positions XADDed                   {total:>9}  ({:.0}/s achieved)", generated.rate);
        println!(
            "  committed (seen by LISTEN)         {:>9}{}",
            times.notified(),
            if committed { "" } else { "  (NOT all)" }
        );
        println!("{}", latency_header());
        println!("{}", latency_row("XADD -> commit (NOTIFY arrival)", times.xadd_to_commit()));
        println!(
            "{}",
            latency_row("XADD pipeline round trip", Percentiles::of_micros(&mut generated.round_trips.clone()))
        );
        print_cpu(relay_before, relay_after, own_before, own_after);
        print_ingest_metrics(&metrics);
        Ok(())
    }

    async fn routed(&self) -> Result<Vec<Goal>> {
        let o = self.options;
        let load = Load {
            name: "routed",
            clients: o.routed_clients,
            devices: o.routed_devices,
            rate: o.routed_rate,
            seconds: o.routed_seconds,
            per_device: true,
        };
        self.latency_scenario(&load).await
    }

    async fn broadcast(&self) -> Result<Vec<Goal>> {
        let o = self.options;
        let load = Load {
            name: "broadcast",
            clients: o.broadcast_clients,
            devices: o.broadcast_devices,
            rate: o.broadcast_rate,
            seconds: o.broadcast_seconds,
            per_device: false,
        };
        self.latency_scenario(&load).await
    }

    /// Clients, load, and every position's way from XADD to each client.
    async fn latency_scenario(&self, load: &Load) -> Result<Vec<Goal>> {
        let total = (f64::from(load.rate) * load.seconds).round() as usize;
        let target = if load.per_device {
            format!("one of {} devices each", load.devices)
        } else {
            format!("group {FLEET} ({} devices)", load.devices)
        };
        println!(
            "\n== {}: {} clients on {target}, {} positions/s for {} s ==",
            load.name, load.clients, load.rate, load.seconds
        );
        let payloads = trackway_sim::workload(total, load.devices, self.options.seed);
        let (keys, devices_of) = Keys::new(&payloads)?;
        let keys = Arc::new(keys);
        let devices = distinct(&devices_of);
        let mut setup = self.setup(load.name, &devices).await?;
        let times = Times::new(total);
        let listener = self.listen(&setup.config, keys.clone(), times.notify.clone()).await?;

        // Clients: connect, authenticate, subscribe; all answered before the first XADD.
        let opened = Instant::now();
        let read_buffer = if load.per_device { 8 * 1024 } else { 128 * 1024 };
        let subscriptions: Vec<(&str, String)> = (0..load.clients)
            .map(|i| {
                if load.per_device {
                    ("device", devices[i % devices.len()].clone())
                } else {
                    ("group", FLEET.to_owned())
                }
            })
            .collect();
        let sockets = self.open(&setup, &subscriptions, read_buffer).await?;
        println!("  {} clients connected and subscribed in {:.1} s", sockets.len(), opened.elapsed().as_secs_f64());
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = sockets
            .into_iter()
            .map(|s| tokio::spawn(client::receive(s, keys.clone(), self.t0, stopped.clone(), delivered.clone())))
            .collect();
        // What each client must get: every position of its target (all inserted after it subscribed).
        let per_device_count = count_by(&devices_of, &devices);
        let expected_of = |sub: &(&str, String)| -> u64 {
            if sub.0 == "device" {
                per_device_count.get(&sub.1).copied().unwrap_or(0)
            } else {
                total as u64
            }
        };
        let expected: u64 = subscriptions.iter().map(expected_of).sum();

        let (relay_before, own_before) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let started = Instant::now();
        let generated = self.generate(&mut setup, &payloads, load.rate, &times).await?;
        let complete = wait_for(|| delivered.load(Ordering::Relaxed) >= expected, DRAIN).await;
        let window = started.elapsed();
        let (relay_after, own_after) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let memory = procfs::memory_kb(setup.relay.pid);
        // A moment for stragglers (duplicates would show up now), then stop the clients.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let metrics = setup.relay.metrics().await;
        stop.send_replace(true);
        let mut received = Vec::with_capacity(tasks.len());
        for task in tasks {
            received.push(task.await.context("client task")?);
        }
        listener.abort();
        self.teardown(setup).await?;

        let tally = Tally::of(&received, &subscriptions, &devices_of, total);
        let delivered_pct = if expected > 0 { 100.0 * tally.unique as f64 / expected as f64 } else { f64::NAN };
        println!("  positions XADDed                   {total:>9}  ({:.0}/s achieved)", generated.rate);
        println!("  committed (seen by LISTEN)         {:>9}", times.notified());
        println!(
            "  delivered                          {:>9} of {expected} expected ({delivered_pct:.3} %){}",
            tally.unique,
            if complete { "" } else { "  (drain timed out)" }
        );
        println!(
            "  duplicates {}, unknown items {}, clients missing positions {}, connections ended early {}",
            tally.duplicates, tally.unknown, tally.short_clients, tally.ended
        );
        if let Some(why) = &tally.first_end {
            println!("  first early end: {why}");
        }
        println!(
            "  load window {:.1} s ({:.0} deliveries/s)",
            window.as_secs_f64(),
            tally.unique as f64 / window.as_secs_f64()
        );
        let mut commit_to_receipt = Vec::with_capacity(tally.deliveries.len());
        let mut xadd_to_receipt = Vec::with_capacity(tally.deliveries.len());
        let mut before_notify = 0u64;
        for &(i, at) in &tally.deliveries {
            let (x, n) = (times.xadd_at(i), times.notify_at(i));
            if let Some(x) = x {
                xadd_to_receipt.push(at.saturating_sub(x));
            }
            if let Some(n) = n {
                if at < n {
                    before_notify += 1;
                }
                commit_to_receipt.push(at.saturating_sub(n));
            }
        }
        let commit_p = Percentiles::of_micros(&mut commit_to_receipt);
        let xadd_p = Percentiles::of_micros(&mut xadd_to_receipt);
        println!("{}", latency_header());
        println!("{}", latency_row("XADD -> commit (NOTIFY arrival)", times.xadd_to_commit()));
        println!("{}", latency_row("commit -> receipt", commit_p));
        println!("{}", latency_row("XADD -> receipt", xadd_p));
        println!(
            "{}",
            latency_row("XADD pipeline round trip", Percentiles::of_micros(&mut generated.round_trips.clone()))
        );
        if before_notify > 0 {
            println!("  ({before_notify} receipts came before the benchmark's own NOTIFY: counted as 0 ms)");
        }
        print_cpu(relay_before, relay_after, own_before, own_after);
        if let Some((rss, hwm)) = memory {
            println!("  relay memory                       VmRSS {:.1} MB, VmHWM {:.1} MB", mb(rss), mb(hwm));
        }
        print_ingest_metrics(&metrics);
        print_live_metrics(&metrics);

        let name = load.name;
        let mut goals = vec![
            Goal::at_least(format!("{name}: delivered"), delivered_pct, 100.0, "%"),
            Goal::at_most(
                format!("{name}: commit->receipt p99"),
                commit_p.map_or(f64::NAN, |p| p.p99),
                GOAL_COMMIT_P99_MS,
                "ms",
            ),
        ];
        if load.per_device {
            goals.push(Goal::at_most(
                format!("{name}: XADD->receipt p99"),
                xadd_p.map_or(f64::NAN, |p| p.p99),
                GOAL_XADD_P99_MS,
                "ms",
            ));
        }
        Ok(goals)
    }

    /// Connections held open: the relay's memory per connection.
    async fn idle(&self) -> Result<Vec<Goal>> {
        let o = self.options;
        println!(
            "\n== idle: {} authenticated connections held open{} ==",
            o.idle_connections,
            if o.idle_subscribe { ", one device subscription each" } else { "" }
        );
        let payloads = trackway_sim::workload(o.routed_devices, o.routed_devices, o.seed);
        let (_, devices_of) = Keys::new(&payloads)?;
        let devices = distinct(&devices_of);
        let setup = self.setup("idle", &devices).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = procfs::memory_kb(setup.relay.pid).context("reading the relay's memory")?;
        let subscriptions: Vec<(&str, String)> =
            (0..o.idle_connections).map(|i| ("device", devices[i % devices.len()].clone())).collect();
        let opened = Instant::now();
        let (relay_before, own_before) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let sockets = if o.idle_subscribe {
            self.open(&setup, &subscriptions, 1024).await?
        } else {
            self.open(&setup, &[], 1024).await?
        };
        let took = opened.elapsed();
        let (relay_after, own_after) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let keys = Arc::new(Keys::new(&[])?.0);
        let count = sockets.len();
        let tasks: Vec<_> = sockets
            .into_iter()
            .map(|s| tokio::spawn(client::receive(s, keys.clone(), self.t0, stopped.clone(), delivered.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = procfs::memory_kb(setup.relay.pid).context("reading the relay's memory")?;
        stop.send_replace(true);
        let mut ended = 0;
        for task in tasks {
            ended += usize::from(task.await.context("client task")?.ended.is_some());
        }
        self.teardown(setup).await?;
        let per_connection = (after.0.saturating_sub(before.0) * 1024) as f64 / count.max(1) as f64;
        println!(
            "  connections open                   {count:>9}  (opened in {:.1} s; {ended} ended early)",
            took.as_secs_f64()
        );
        println!("  relay VmRSS before                 {:>9.1} MB", mb(before.0));
        println!("  relay VmRSS with the connections   {:>9.1} MB  (VmHWM {:.1} MB)", mb(after.0), mb(after.1));
        println!("  per connection                     {:>9.0} bytes", per_connection);
        println!(
            "  CPU while connecting: relay {:.0} % of one core, benchmark {:.0} %",
            cpu(relay_before, relay_after),
            cpu(own_before, own_after)
        );
        Ok(vec![Goal::at_most(format!("idle: relay RSS at {count} connections"), mb(after.0), GOAL_IDLE_RSS_MB, "MB")])
    }

    /// Opens one connection per subscription, in that order (or --idle-connections unsubscribed ones when
    /// `subscriptions` is empty), CONNECT_CONCURRENCY at a time.
    async fn open(
        &self,
        setup: &Setup,
        subscriptions: &[(&str, String)],
        read_buffer: usize,
    ) -> Result<Vec<client::Socket>> {
        let url = setup.relay.live_url.as_str();
        let token = setup.token.as_str();
        let count = if subscriptions.is_empty() { self.options.idle_connections } else { subscriptions.len() };
        let results: Vec<Result<(usize, client::Socket)>> = stream::iter(0..count)
            .map(|i| async move {
                let mut socket =
                    client::connect(url, token, read_buffer).await.with_context(|| format!("client {i}"))?;
                if let Some((kind, id)) = subscriptions.get(i) {
                    client::subscribe(&mut socket, kind, id).await.with_context(|| format!("client {i}"))?;
                }
                Ok((i, socket))
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
        // They finish in any order; socket i is the one of subscription i.
        let mut sockets = results.into_iter().collect::<Result<Vec<_>>>()?;
        sockets.sort_unstable_by_key(|(i, _)| *i);
        Ok(sockets.into_iter().map(|(_, s)| s).collect())
    }

    /// The benchmark's LISTEN connection: records when each position's notification arrives.
    async fn listen(
        &self,
        config: &Config,
        keys: Arc<Keys>,
        notify: Arc<Vec<AtomicU32>>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        listen(config, keys, notify, self.t0).await
    }

    /// XADDs `payloads` at `rate` per second: every 5 ms, what is due, in one pipeline.
    async fn generate(&self, setup: &mut Setup, payloads: &[String], rate: u32, times: &Times) -> Result<Generated> {
        generate_on(&mut setup.redis, &setup.stream, payloads, rate, times, self.t0).await
    }
}

/// A LISTEN connection on `trackway_positions`: records in `notify[i]` when the notification of position `i`
/// of `keys` arrives (µs after `t0`; the first arrival counts), which is after its commit.
pub(crate) async fn listen(
    config: &Config,
    keys: Arc<Keys>,
    notify: Arc<Vec<AtomicU32>>,
    t0: Instant,
) -> Result<tokio::task::JoinHandle<()>> {
    let (client, mut connection) = config.connect(NoTls).await.context("LISTEN connection")?;
    let driver = tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        let mut omitted = 0u64;
        while let Some(message) = messages.next().await {
            let Ok(AsyncMessage::Notification(n)) = message else { continue };
            let at = client::micros_since(t0);
            let payload = n.payload().as_bytes();
            if payload.windows(10).any(|w| w == b"\"omitted\":") {
                omitted += 1;
                eprintln!("warning: a summary notification ({omitted}): some commit times are unknown");
            }
            client::scan_keys(payload, |d, t| {
                if let Some(i) = keys.get(d, t) {
                    let _ = notify[i as usize].compare_exchange(UNSET, at, Ordering::Relaxed, Ordering::Relaxed);
                }
            });
        }
    });
    client.batch_execute("LISTEN trackway_positions").await.context("LISTEN")?;
    // The client must live as long as the connection: keep it in a task that ends with the driver.
    Ok(tokio::spawn(async move {
        let _client = client;
        let _ = driver.await;
    }))
}

/// XADDs `payloads` to `stream` at `rate` per second (every 5 ms, what is due, in one pipeline), recording
/// each one's XADD time in `times` (µs after `t0`).
async fn generate_on(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    payloads: &[String],
    rate: u32,
    times: &Times,
    t0: Instant,
) -> Result<Generated> {
    let total = payloads.len();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    let mut round_trips = Vec::new();
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(total);
        if due <= sent {
            continue;
        }
        let mut pipe = redis::pipe();
        for p in &payloads[sent..due] {
            pipe.cmd("XADD").arg(stream).arg("*").arg("payload").arg(p).ignore();
        }
        let at = client::micros_since(t0);
        for slot in &times.xadd[sent..due] {
            slot.store(at, Ordering::Relaxed);
        }
        let _: () = pipe.query_async(redis).await.context("XADD")?;
        round_trips.push(client::micros_since(t0).saturating_sub(at));
        sent = due;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Generated { rate: total as f64 / elapsed, round_trips })
}

/// What the load generator did.
struct Generated {
    /// Positions per second achieved.
    rate: f64,
    /// Each pipeline's round trip, µs.
    round_trips: Vec<u32>,
}

/// XADD and NOTIFY times of each position, µs after the benchmark's start ([`UNSET`] until known).
struct Times {
    xadd: Arc<Vec<AtomicU32>>,
    notify: Arc<Vec<AtomicU32>>,
}

impl Times {
    fn new(n: usize) -> Times {
        let unset = || Arc::new((0..n).map(|_| AtomicU32::new(UNSET)).collect::<Vec<_>>());
        Times { xadd: unset(), notify: unset() }
    }

    fn xadd_at(&self, i: u32) -> Option<u32> {
        Some(self.xadd[i as usize].load(Ordering::Relaxed)).filter(|&t| t != UNSET)
    }

    fn notify_at(&self, i: u32) -> Option<u32> {
        Some(self.notify[i as usize].load(Ordering::Relaxed)).filter(|&t| t != UNSET)
    }

    fn notified(&self) -> usize {
        self.notify.iter().filter(|t| t.load(Ordering::Relaxed) != UNSET).count()
    }

    fn xadd_to_commit(&self) -> Option<Percentiles> {
        let mut lags: Vec<u32> = (0..self.xadd.len() as u32)
            .filter_map(|i| Some(self.notify_at(i)?.saturating_sub(self.xadd_at(i)?)))
            .collect();
        Percentiles::of_micros(&mut lags)
    }
}

/// Deliveries checked against what each client should have received.
struct Tally {
    /// Every first receipt `(position, µs)` of every client.
    deliveries: Vec<(u32, u32)>,
    unique: u64,
    duplicates: u64,
    unknown: u64,
    /// Clients that got fewer positions than expected.
    short_clients: usize,
    /// Connections that ended before they were stopped.
    ended: usize,
    first_end: Option<String>,
}

impl Tally {
    fn of(received: &[Received], subscriptions: &[(&str, String)], devices_of: &[String], total: usize) -> Tally {
        let mut tally = Tally {
            deliveries: Vec::new(),
            unique: 0,
            duplicates: 0,
            unknown: 0,
            short_clients: 0,
            ended: 0,
            first_end: None,
        };
        let mut seen = vec![false; total];
        for (r, (kind, id)) in received.iter().zip(subscriptions) {
            seen.iter_mut().for_each(|s| *s = false);
            let mut unique = 0u64;
            for &(i, at) in &r.deliveries {
                let watched = *kind == "group" || devices_of[i as usize] == *id;
                if !watched {
                    tally.unknown += 1;
                } else if std::mem::replace(&mut seen[i as usize], true) {
                    tally.duplicates += 1;
                } else {
                    unique += 1;
                    tally.deliveries.push((i, at));
                }
            }
            let expected = if *kind == "group" { total } else { devices_of.iter().filter(|d| *d == id).count() };
            if (unique as usize) < expected {
                tally.short_clients += 1;
            }
            tally.unique += unique;
            tally.unknown += r.unknown;
            if let Some(why) = &r.ended {
                tally.ended += 1;
                tally.first_end.get_or_insert_with(|| why.clone());
            }
        }
        tally
    }
}

/// The distinct values, in first-seen order.
fn distinct(values: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    values.iter().filter(|v| seen.insert(v.as_str())).cloned().collect()
}

fn count_by(values: &[String], keys: &[String]) -> std::collections::HashMap<String, u64> {
    let mut counts: std::collections::HashMap<String, u64> = keys.iter().map(|k| (k.clone(), 0)).collect();
    for v in values {
        *counts.entry(v.clone()).or_default() += 1;
    }
    counts
}

/// Polls `done` every 10 ms for up to `limit`; whether it became true.
async fn wait_for(done: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn cpu(before: Option<CpuSample>, after: Option<CpuSample>) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) => b.percent_until(&a),
        _ => f64::NAN,
    }
}

fn print_cpu(
    relay_before: Option<CpuSample>,
    relay_after: Option<CpuSample>,
    own_before: Option<CpuSample>,
    own_after: Option<CpuSample>,
) {
    println!(
        "  CPU over the load window           relay {:.0} % of one core; benchmark (generator + LISTEN + clients) {:.0} %",
        cpu(relay_before, relay_after),
        cpu(own_before, own_after)
    );
}

/// A few of the relay's own ingest figures, from /metrics.
fn print_ingest_metrics(metrics: &str) {
    let sum = |name: &str| metric_sum(metrics, name);
    let (batches, rows) = (sum("trackway_relay_batch_size_count"), sum("trackway_relay_batch_size_sum"));
    let (ingest_sum, ingest_count) =
        (sum("trackway_relay_ingest_duration_seconds_sum"), sum("trackway_relay_ingest_duration_seconds_count"));
    if batches > 0.0 && ingest_count > 0.0 {
        println!(
            "  relay ingest: {batches:.0} batches, {:.1} entries per batch, ingest_batch {:.2} ms per call on average",
            rows / batches,
            1000.0 * ingest_sum / ingest_count
        );
    }
}

/// The relay's commit->send histogram (its notification to its socket write), from /metrics.
fn print_live_metrics(metrics: &str) {
    let sum = metric_sum(metrics, "trackway_live_notify_to_send_seconds_sum");
    let count = metric_sum(metrics, "trackway_live_notify_to_send_seconds_count");
    if count > 0.0 {
        println!("  relay's own notify->send mean     {:>9.2} ms over {count:.0} deliveries", 1000.0 * sum / count);
    }
    let (reads, rows) =
        (metric_sum(metrics, "trackway_live_feed_reads_total"), metric_sum(metrics, "trackway_live_feed_rows_total"));
    let frames = metric_sum(metrics, "trackway_live_frames_out_total{type=\"positions\"}");
    let delivered = metric_sum(metrics, "trackway_live_positions_delivered_total");
    if reads > 0.0 && frames > 0.0 {
        println!(
            "  relay's feed                       {reads:.0} reads, {:.1} rows each; {frames:.0} positions frames, {:.1} positions each",
            rows / reads,
            delivered / frames
        );
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// 32 random bytes from /dev/urandom, hex.
fn random_secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An HS256 token with Directus's claims: an administrator, valid for two hours.
pub(crate) fn token(secret: &str) -> Result<String> {
    let claims = serde_json::json!({
        "id": "0b7c3c8e-7f55-4c1a-9d1e-6a3b5be3a001",
        "role": "0b7c3c8e-7f55-4c1a-9d1e-6a3b5be3a002",
        "app_access": true,
        "admin_access": true,
    });
    trackway_testkit::directus_token(secret, claims, 7_200).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_unique_duplicate_and_missing_deliveries() {
        let devices_of: Vec<String> = ["a", "b", "a", "b"].map(String::from).to_vec();
        let subscriptions = vec![("device", "a".to_owned()), ("group", FLEET.to_owned())];
        let received = vec![
            Received { deliveries: vec![(0, 10), (2, 20), (2, 25), (1, 30)], unknown: 0, ended: None },
            Received { deliveries: vec![(0, 11), (1, 12), (3, 13)], unknown: 1, ended: Some("gone".into()) },
        ];
        let tally = Tally::of(&received, &subscriptions, &devices_of, 4);
        assert_eq!((tally.unique, tally.duplicates, tally.unknown), (5, 1, 2));
        assert_eq!((tally.short_clients, tally.ended), (1, 1));
        assert_eq!(tally.deliveries.len(), 5);
        assert_eq!(count_by(&devices_of, &distinct(&devices_of)).get("a"), Some(&2));
    }
}
