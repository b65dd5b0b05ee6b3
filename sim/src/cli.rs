//! The `trackway-sim` command: the fleet paced in real time, its entries XADDed in pipelined batches to a
//! Redis Stream. Ctrl-C or SIGTERM stops it (after sending what it held back) and prints a summary.
//! In the library so that the cross-process tests can build the same program (`tests/bin`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Config, Entry, Fleet, Invalid, Kind, Point, Tally};
use anyhow::{bail, Context, Result};
use clap::Parser;

/// How often the simulated clock is advanced and its entries sent.
const TICK: Duration = Duration::from_millis(50);
/// Entries kept while Redis is unreachable; beyond that the oldest are dropped (and counted).
const MAX_BACKLOG: usize = 1_000_000;

/// Options of `trackway-sim`.
#[derive(Parser, Debug)]
#[command(
    name = "trackway-sim",
    version,
    about = "Simulated GPS trackers writing wire-format positions to a Redis Stream"
)]
pub struct Args {
    /// Redis to write to; with `--redis-cluster`, a comma-separated list of cluster nodes to start from.
    #[arg(long, env = "REDIS_URL", hide_env_values = true, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// `REDIS_URL` names a Redis Cluster (use with `--shards`: each shard key lives in its own slot).
    #[arg(long, env = "TRACKWAY_REDIS_CLUSTER")]
    redis_cluster: bool,
    /// Stream to write to.
    #[arg(long, env = "TRACKWAY_STREAM", default_value = "positions")]
    stream: String,
    /// Field of each stream entry that holds the payload.
    #[arg(long, env = "TRACKWAY_PAYLOAD_FIELD", default_value = "payload")]
    payload_field: String,
    /// Shards of the stream (0–1024): 0 writes to the stream itself; N writes each device's positions to
    /// `<stream>:{i}`, i its shard in 0..N (`trackway_wire::shard`, README "Scaling out"), so that a
    /// device's positions stay in one shard, in order.
    #[arg(long, env = "TRACKWAY_STREAM_SHARDS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    shards: u32,
    /// Number of devices (ids 356307042441000, 356307042441001, ...).
    #[arg(long, env = "TRACKWAY_SIM_DEVICES", default_value_t = 10)]
    devices: usize,
    /// Total positions per second of all devices together (instead of --interval-ms).
    #[arg(long, env = "TRACKWAY_SIM_RATE", conflicts_with = "interval_ms")]
    rate: Option<f64>,
    /// Time between two positions of one device, in milliseconds [default: 1000].
    #[arg(long, env = "TRACKWAY_SIM_INTERVAL_MS")]
    interval_ms: Option<f64>,
    /// Stop after this many seconds (0: run until Ctrl-C or SIGTERM).
    #[arg(long, env = "TRACKWAY_SIM_SECONDS", default_value_t = 0.0)]
    seconds: f64,
    /// Seed of the simulation: the same seed gives the same routes, values and faults [default: random].
    #[arg(long, env = "TRACKWAY_SIM_SEED")]
    seed: Option<u64>,
    /// Start of the simulated clock, Unix milliseconds (with --seed: byte-identical payloads) [default: now].
    #[arg(long)]
    start_unix_ms: Option<i64>,
    /// Fraction of valid positions sent a second time, 1 to 10 s later (retransmissions).
    #[arg(long, env = "TRACKWAY_SIM_DUPLICATES", default_value_t = 0.01)]
    duplicates: f64,
    /// Fraction of positions held back and sent 3 to 13 s late (older than the device's latest).
    #[arg(long, env = "TRACKWAY_SIM_LATE", default_value_t = 0.01)]
    late: f64,
    /// Fraction of positions sent as an invalid payload (latitude out of range, broken __bigint, no
    /// deviceId, not JSON), which the relay dead-letters.
    #[arg(long, env = "TRACKWAY_SIM_INVALID", default_value_t = 0.002)]
    invalid: f64,
    /// Centre of the devices' routes: `lat,lon`.
    #[arg(long, env = "TRACKWAY_SIM_CENTER", default_value = "54.6872,25.2797", value_parser = parse_center)]
    center: Point,
    /// Radius around the centre that the routes stay within, in kilometres.
    #[arg(long, env = "TRACKWAY_SIM_RADIUS_KM", default_value_t = 5.0)]
    radius_km: f64,
    /// Put the devices into this group of trackway.device_groups (needs --database-url), so a live
    /// client can watch them.
    #[arg(long, env = "TRACKWAY_SIM_GROUP")]
    group: Option<String>,
    /// PostgreSQL with the trackway extension, for --group.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// XADDs per pipelined round trip.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// No Redis: print `<kind>\t<payload>` lines for --seconds of simulated time at once, and exit.
    #[arg(long)]
    dry_run: bool,
}

fn parse_center(text: &str) -> Result<Point, String> {
    let (lat, lon) = text.split_once(',').ok_or("expected lat,lon")?;
    let lat: f64 = lat.trim().parse().map_err(|e| format!("latitude: {e}"))?;
    let lon: f64 = lon.trim().parse().map_err(|e| format!("longitude: {e}"))?;
    if !(-85.0..=85.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err("latitude must be within ±85, longitude within ±180".into());
    }
    Ok(Point::new(lat, lon))
}

fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Args {
    /// The fleet's configuration, or why the options do not make one.
    fn config(&self) -> Result<Config> {
        if self.devices == 0 {
            bail!("--devices must be at least 1");
        }
        for (name, value) in [("--duplicates", self.duplicates), ("--late", self.late), ("--invalid", self.invalid)] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{name} is a fraction between 0 and 1, not {value}");
            }
        }
        if self.late + self.invalid > 1.0 {
            bail!("--late and --invalid together exceed 1");
        }
        if !(self.radius_km > 0.0 && self.radius_km <= 1_000.0) {
            bail!("--radius-km must be in (0, 1000]");
        }
        if !(self.seconds >= 0.0 && self.seconds.is_finite()) {
            bail!("--seconds must be 0 or more");
        }
        let interval_ms = match (self.rate, self.interval_ms) {
            (Some(rate), _) if rate > 0.0 && rate.is_finite() => self.devices as f64 * 1000.0 / rate,
            (Some(rate), _) => bail!("--rate must be a positive number of positions per second, not {rate}"),
            (None, Some(ms)) => ms,
            (None, None) => 1000.0,
        };
        if !(interval_ms >= 1.0 && interval_ms.is_finite()) {
            bail!(
                "each device would send every {interval_ms} ms: at most one position per millisecond and device \
                 (lower --rate or raise --devices)"
            );
        }
        Ok(Config {
            devices: self.devices,
            interval_us: (interval_ms * 1000.0).round() as i64,
            seed: self.seed.unwrap_or_else(|| now_unix_ms() as u64 ^ u64::from(std::process::id()) << 32),
            center: self.center,
            radius_m: self.radius_km * 1000.0,
            duplicates: self.duplicates,
            late: self.late,
            invalid: self.invalid,
            start_ms: self.start_unix_ms.unwrap_or_else(now_unix_ms),
        })
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Position => "position",
        Kind::Duplicate => "duplicate",
        Kind::Late => "late",
        Kind::Invalid(Invalid::Latitude) => "invalid-latitude",
        Kind::Invalid(Invalid::BrokenBigint) => "invalid-bigint",
        Kind::Invalid(Invalid::MissingDeviceId) => "invalid-device-id",
        Kind::Invalid(Invalid::NotJson) => "invalid-json",
    }
}

fn summary(tally: &Tally, elapsed: Duration, dropped: u64) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let invalid = Invalid::ALL.iter().zip(tally.invalid).map(|(k, n)| format!("{}: {n}", k.name())).collect::<Vec<_>>();
    format!(
        "sent {} entries in {:.1} s ({:.1}/s): {} positions on time, {} late, {} duplicates, {} invalid ({}){}",
        tally.total(),
        elapsed.as_secs_f64(),
        tally.total() as f64 / seconds,
        tally.positions,
        tally.late,
        tally.duplicates,
        tally.invalid_total(),
        invalid.join(", "),
        if dropped > 0 { format!("; {dropped} dropped while Redis was unreachable") } else { String::new() }
    )
}

/// Puts every device of the fleet into `group` (existing members are kept).
async fn join_group(database_url: &str, group: &str, fleet: &Fleet) -> Result<()> {
    let (client, connection) =
        tokio_postgres::connect(database_url, tokio_postgres::NoTls).await.context("connecting to PostgreSQL")?;
    let driver = tokio::spawn(connection);
    let ids: Vec<&str> = fleet.device_ids().collect();
    let added = client
        .execute(
            "INSERT INTO trackway.device_groups (group_id, device_id) SELECT $1, unnest($2::text[]) \
             ON CONFLICT DO NOTHING",
            &[&group, &ids],
        )
        .await
        .with_context(|| format!("adding the devices to group {group:?}"))?;
    drop(client);
    let _ = driver.await;
    eprintln!("group {group:?}: {added} devices added ({} in the fleet)", ids.len());
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints the entries of `--seconds` of simulated time.
fn dry_run(args: &Args, mut fleet: Fleet) -> Result<()> {
    use std::io::Write as _;
    if args.seconds <= 0.0 {
        bail!("--dry-run needs --seconds");
    }
    let mut out = Vec::new();
    let end = fleet.config().start_ms + (args.seconds * 1000.0) as i64;
    fleet.advance_to(end, &mut out);
    fleet.flush(&mut out);
    let mut tally = Tally::default();
    let mut stdout = std::io::stdout().lock();
    for e in &out {
        tally.add(e.kind);
        writeln!(stdout, "{}\t{}", kind_name(e.kind), e.payload)?;
    }
    eprintln!("{}", summary(&tally, Duration::from_secs_f64(args.seconds), 0));
    Ok(())
}

/// Connects to `url` (one server), or with `cluster` to the cluster whose nodes `url` lists: as the relay
/// reads them (`REDIS_URL`, `TRACKWAY_REDIS_CLUSTER`).
async fn connect(url: &str, cluster: bool) -> Result<trackway_redis::Connection> {
    let endpoint = trackway_redis::Endpoint::parse(url, cluster).context("REDIS_URL")?;
    endpoint.connect().await.with_context(|| format!("connecting to Redis ({})", endpoint.describe()))
}

/// Where each device's entries go: one stream, or the shard keys `<stream>:{i}`.
struct Shards {
    /// The stream keys, one per shard (one key when the stream is not sharded).
    keys: Vec<String>,
    /// Each device's index into `keys`, by device index.
    of_device: Vec<usize>,
}

impl Shards {
    /// The keys of `stream` in `shards` shards (0: the stream itself) and the shard of each device.
    fn new<'a>(stream: &str, shards: u32, devices: impl Iterator<Item = &'a str>) -> Shards {
        if shards == 0 {
            return Shards { keys: vec![stream.to_owned()], of_device: devices.map(|_| 0).collect() };
        }
        let keys = (0..shards).map(|i| format!("{stream}:{{{i}}}")).collect();
        let of_device = devices.map(|d| trackway_wire::shard::shard_of(d, shards) as usize).collect();
        Shards { keys, of_device }
    }

    /// For the start-up line.
    fn describe(&self) -> String {
        match self.keys.as_slice() {
            [one] => format!("stream {one:?}"),
            keys => format!("{} shards {:?} … {:?}", keys.len(), keys[0], keys[keys.len() - 1]),
        }
    }
}

/// XADDs the first `n` entries of `backlog`, each to its device's shard (in backlog order within a shard,
/// so a device's entries keep their order), and removes from `backlog` those Redis took, counted in
/// `tally`: after a failure only the entries not sent stay (none is sent twice).
async fn send(
    conn: &mut impl redis::aio::ConnectionLike,
    shards: &Shards,
    field: &str,
    backlog: &mut Vec<Entry>,
    n: usize,
    tally: &mut Tally,
) -> redis::RedisResult<()> {
    let mut sent = vec![false; n];
    let mut result = Ok(());
    for (shard, key) in shards.keys.iter().enumerate() {
        let of_shard: Vec<usize> = (0..n).filter(|&i| shards.of_device[backlog[i].device] == shard).collect();
        if of_shard.is_empty() {
            continue;
        }
        let payloads: Vec<&str> = of_shard.iter().map(|&i| backlog[i].payload.as_str()).collect();
        match crate::stream::xadd_payloads_as(conn, key, field, &payloads).await {
            Ok(_) => of_shard.iter().for_each(|&i| sent[i] = true),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let mut index = 0;
    backlog.retain(|e| {
        let keep = index >= n || !sent[index];
        if !keep {
            tally.add(e.kind);
        }
        index += 1;
        keep
    });
    result
}

/// Runs the simulator with these options until `--seconds` have passed, or Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> Result<()> {
    let config = args.config()?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let fleet = Fleet::new(config.clone());
    if args.dry_run {
        return dry_run(&args, fleet);
    }
    let mut fleet = fleet;
    let shards = Shards::new(&args.stream, args.shards, fleet.device_ids());
    if let Some(group) = &args.group {
        let url = args.database_url.as_deref().context("--group needs --database-url (or DATABASE_URL)")?;
        join_group(url, group, &fleet).await?;
    }
    let mut conn = connect(&args.redis_url, args.redis_cluster).await?;
    eprintln!(
        "{} devices writing to {} (field {:?}) every {:.1} ms each ({:.1} positions/s), seed {}, \
         duplicates {}, late {}, invalid {}{}",
        config.devices,
        shards.describe(),
        args.payload_field,
        config.interval_us as f64 / 1000.0,
        config.devices as f64 * 1e6 / config.interval_us as f64,
        config.seed,
        config.duplicates,
        config.late,
        config.invalid,
        if args.seconds > 0.0 { format!(", for {} s", args.seconds) } else { " (Ctrl-C stops)".into() }
    );

    let started = Instant::now();
    let end = (args.seconds > 0.0).then(|| Duration::from_secs_f64(args.seconds));
    let stop = stop_signal();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backlog: Vec<Entry> = Vec::new();
    let mut tally = Tally::default();
    let (mut dropped, mut failing) = (0u64, false);
    let mut stopping = false;
    loop {
        if !stopping {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = &mut stop => stopping = true,
            }
        }
        let elapsed = started.elapsed();
        let done = stopping || end.is_some_and(|end| elapsed >= end);
        let sim_elapsed = end.map_or(elapsed, |end| elapsed.min(end));
        fleet.advance_to(config.start_ms + sim_elapsed.as_millis() as i64, &mut backlog);
        if done {
            fleet.flush(&mut backlog);
        }
        if backlog.len() > MAX_BACKLOG {
            let excess = backlog.len() - MAX_BACKLOG;
            backlog.drain(..excess);
            dropped += excess as u64;
        }
        while !backlog.is_empty() {
            let n = backlog.len().min(args.batch);
            match send(&mut conn, &shards, &args.payload_field, &mut backlog, n, &mut tally).await {
                Ok(()) => {
                    if failing {
                        eprintln!("XADD works again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        eprintln!("XADD failed ({e}); retrying, {} entries waiting", backlog.len());
                        failing = true;
                    }
                    break;
                }
            }
        }
        if done {
            if !backlog.is_empty() {
                eprintln!("{} entries not sent (Redis unreachable)", backlog.len());
            }
            break;
        }
    }
    eprintln!("{}", summary(&tally, started.elapsed(), dropped));
    Ok(())
}

/// The command: parses the arguments, runs, reports an error on stderr.
pub fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trackway-sim: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Args::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackway-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let args = Args::try_parse_from(["trackway-sim", "--devices", "20", "--rate", "100", "--seed", "5"]).unwrap();
        let c = args.config().unwrap();
        assert_eq!((c.devices, c.interval_us, c.seed), (20, 200_000, 5));
        assert_eq!(c.center, Point::new(54.6872, 25.2797));
        let args = Args::try_parse_from(["trackway-sim", "--interval-ms", "250", "--center", "51.5,-0.12"]).unwrap();
        let c = args.config().unwrap();
        assert_eq!((c.interval_us, c.center), (250_000, Point::new(51.5, -0.12)));
        assert!(Args::try_parse_from(["trackway-sim", "--rate", "5", "--interval-ms", "5"]).is_err());
        assert!(Args::try_parse_from(["trackway-sim", "--center", "54"]).is_err());
        for bad in
            [&["--rate", "20000"][..], &["--late", "1.5"], &["--devices", "0"], &["--late", "0.6", "--invalid", "0.5"]]
        {
            let args = Args::try_parse_from(std::iter::once("trackway-sim").chain(bad.iter().copied())).unwrap();
            assert!(args.config().is_err(), "{bad:?}");
        }
    }
}
