//! Against the anchor (issue 16, point 13): Trackway and pg_eventserv side by side, in the same run, on the
//! same database. pg_eventserv forwards NOTIFY payloads to WebSocket clients without storing or reading
//! anything; Trackway stores every position (`trackway.ingest`, one per transaction), reads it back and
//! sends it. For each load (clients × positions per second, every client receiving every position) the
//! publisher sends each position in a transaction of its own and the time from sending it to each client's
//! receipt is measured.
//!
//! pg_eventserv is not part of this project, which neither builds nor installs it: give a binary of it
//! with `--anchor-binary`. Without it only Trackway's side runs. With `--anchor-durable` it runs a second
//! time with a publisher that also stores each payload (an `INSERT` in the same transaction), so that its
//! commit waits for the WAL flush as Trackway's does: the forwarding compared with the same wait (a figure
//! beside the goals, not a goal).

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_postgres::Config;

use super::{
    client::{self, Keys, Received},
    distinct, procfs,
    stats::{latency_header, latency_row, Goal, Percentiles},
    wait_for, Bench, DRAIN, FLEET, UNSET,
};
use crate::db;

/// The NOTIFY channel pg_eventserv forwards.
const CHANNEL: &str = "trackway_anchor";
/// Publishing connections (a transaction each takes about a millisecond).
const PUBLISHERS: usize = 4;
/// The clients' read buffer. Frames here are a few positions; tungstenite zero-fills its read buffer's
/// size before every read, and at the default 128 KiB that filling took 13 % of the machine's CPU in a
/// profile of this scenario, at 16 KiB still 10 % of the benchmark's own (the clients stand for other
/// machines: their cost must not weigh on the servers measured). A bigger frame (Trackway's snapshot)
/// takes several reads.
const READ_BUFFER: usize = 4 * 1024;

/// Options of the scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct AnchorOptions {
    /// Anchor: the pg_eventserv binary to compare with (not built by this project).
    #[arg(long)]
    pub anchor_binary: Option<PathBuf>,
    /// Anchor: loads as CLIENTSxRATE (every client gets every position), repeatable.
    #[arg(long = "anchor-load", default_values_t = ["200x500".to_owned(), "1000x100".to_owned(), "200x1000".to_owned()])]
    pub anchor_loads: Vec<String>,
    /// Anchor: seconds of load per load and server.
    #[arg(long, default_value_t = 10.0)]
    pub anchor_seconds: f64,
    /// Anchor: devices sending.
    #[arg(long, default_value_t = 100)]
    pub anchor_devices: usize,
    /// Anchor: also run pg_eventserv with a publisher that stores each payload durably (an INSERT in the
    /// same transaction as its NOTIFY), beside the goals.
    #[arg(long)]
    pub anchor_durable: bool,
}

/// Who is measured, and how its publisher sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Trackway: `trackway.ingest`, one position per transaction.
    Trackway,
    /// pg_eventserv: a NOTIFY alone.
    Anchor,
    /// pg_eventserv with a publisher that also INSERTs the payload (its commit waits for the WAL flush).
    DurableAnchor,
}

impl Side {
    /// The side's name in the latency table.
    fn name(self) -> &'static str {
        match self {
            Side::Trackway => "trackway (ingest, store, read, send)",
            Side::Anchor => "pg_eventserv (NOTIFY forwarded)",
            Side::DurableAnchor => "pg_eventserv, publisher INSERTs",
        }
    }

    /// The publisher's statement: `$1` the payload, `$2` (the anchor's) the channel.
    fn statement(self) -> &'static str {
        match self {
            Side::Trackway => "SELECT trackway.ingest($1::text)",
            Side::Anchor => "SELECT pg_notify($2, $1::text)",
            Side::DurableAnchor => {
                "WITH stored AS (INSERT INTO anchor_payloads (payload) VALUES ($1::text)) \
                 SELECT pg_notify($2, $1::text)"
            }
        }
    }
}

/// The goals for Trackway's p99 on this machine, by load.
fn fixed_goal_ms(clients: usize, rate: u32) -> Option<f64> {
    match (clients, rate) {
        (200, 500) => Some(12.0),
        (1000, 100) => Some(60.0),
        _ => None,
    }
}

impl Bench<'_> {
    /// Every load, Trackway then the anchor.
    pub(super) async fn anchor(&self) -> Result<Vec<Goal>> {
        let o = &self.options.anchor;
        let mut goals = Vec::new();
        for load in &o.anchor_loads {
            let Some((clients, rate)) = load.split_once('x') else {
                bail!("--anchor-load {load}: expected CLIENTSxRATE")
            };
            let (clients, rate): (usize, u32) = (clients.parse()?, rate.parse()?);
            println!(
                "\n== anchor: {clients} clients each receiving {rate} positions/s for {} s, publisher send -> \
                 receipt ==",
                o.anchor_seconds
            );
            println!("{}", latency_header());
            let trackway = self.side(Side::Trackway, clients, rate).await?;
            let p99 = |p: Option<Percentiles>| p.map_or(f64::NAN, |p| p.p99);
            if let Some(goal) = fixed_goal_ms(clients, rate) {
                goals.push(Goal::at_most(format!("anchor {load}: trackway p99"), p99(trackway), goal, "ms"));
            }
            if o.anchor_binary.is_some() {
                let anchor = self.side(Side::Anchor, clients, rate).await?;
                if o.anchor_durable {
                    self.side(Side::DurableAnchor, clients, rate).await?;
                }
                goals.push(Goal::at_most(
                    format!("anchor {load}: trackway p99 vs pg_eventserv's"),
                    p99(trackway),
                    p99(anchor),
                    "ms",
                ));
            } else {
                println!("  (pg_eventserv not measured: no --anchor-binary)");
            }
        }
        Ok(goals)
    }

    /// One server under one load: prints send → receipt percentiles and the two parts of that time: send →
    /// the publisher's commit answered (storing, for Trackway: the commit waits for the WAL flush; a NOTIFY
    /// alone writes nothing to wait for), and that answer → receipt (reading and sending). Returns the
    /// send → receipt percentiles.
    async fn side(&self, side: Side, clients: usize, rate: u32) -> Result<Option<Percentiles>> {
        let o = &self.options.anchor;
        let total = (f64::from(rate) * o.anchor_seconds).round() as usize;
        let payloads = trackway_sim::workload(total, o.anchor_devices, self.options.seed);
        let (keys, devices_of) = Keys::new(&payloads)?;
        let keys = Arc::new(keys);
        let anchor = side != Side::Trackway;
        let setup = self.setup(if anchor { "anchor" } else { "trackway" }, &distinct(&devices_of)).await?;
        if side == Side::DurableAnchor {
            let client = db::connect(&setup.config).await?;
            client
                .batch_execute("CREATE TABLE anchor_payloads (id bigserial PRIMARY KEY, payload text NOT NULL)")
                .await
                .context("creating the durable publisher's table")?;
        }
        let mut eventserv = None;
        let sockets = if anchor {
            let (child, url) = start_eventserv(o.anchor_binary.as_ref().expect("checked"), &setup.config).await?;
            eventserv = Some(child);
            let opened: Vec<Result<client::Socket>> =
                join_all((0..clients).map(|_| client::connect_plain(&url, READ_BUFFER))).await;
            opened.into_iter().collect::<Result<Vec<_>>>()?
        } else {
            let subscriptions: Vec<(&str, String)> = (0..clients).map(|_| ("group", FLEET.to_owned())).collect();
            self.open(&setup, &subscriptions, READ_BUFFER).await?
        };
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let receivers: Vec<_> = sockets
            .into_iter()
            .map(|s| {
                let (keys, stopped, delivered) = (keys.clone(), stopped.clone(), delivered.clone());
                if anchor {
                    tokio::spawn(client::receive_payloads(s, keys, self.t0, stopped, delivered))
                } else {
                    tokio::spawn(client::receive(s, keys, self.t0, stopped, delivered))
                }
            })
            .collect();
        // pg_eventserv LISTENs when its first client arrives: a moment for that.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let unset = || Arc::new((0..total).map(|_| AtomicU32::new(UNSET)).collect::<Vec<_>>());
        let (sent, committed) = (unset(), unset());
        let statement = side.statement();
        let times = Published { sent: sent.clone(), committed: committed.clone() };
        let server = eventserv.as_ref().and_then(tokio::process::Child::id).unwrap_or(setup.relay.pid);
        let postmaster = postmaster_of(&setup.config).await;
        let cpu_before = CpuSplit::read(server, postmaster);
        publish(&setup.config, &payloads, rate, statement, &times, self.t0).await?;
        let expected = (total * clients) as u64;
        let complete = wait_for(|| delivered.load(Ordering::Relaxed) >= expected, DRAIN).await;
        let cpu = CpuSplit::read(server, postmaster).zip(cpu_before).map(|(after, before)| after.minus(&before));
        stop.send_replace(true);
        let mut received: Vec<Received> = Vec::new();
        for task in receivers {
            received.push(task.await.context("a client")?);
        }
        if let Some(mut child) = eventserv {
            let _ = child.kill().await;
        }
        self.teardown(setup).await?;
        let at = |times: &[AtomicU32], i: u32| Some(times[i as usize].load(Ordering::Relaxed)).filter(|&t| t != UNSET);
        let (mut lags, mut after_commit) = (Vec::with_capacity(total * clients), Vec::with_capacity(total * clients));
        for r in &received {
            for &(i, received_at) in &r.deliveries {
                if let Some(sent_at) = at(&sent, i) {
                    lags.push(received_at.saturating_sub(sent_at));
                }
                if let Some(committed_at) = at(&committed, i) {
                    after_commit.push(received_at.saturating_sub(committed_at));
                }
            }
        }
        let mut storing: Vec<u32> =
            (0..total as u32).filter_map(|i| Some(at(&committed, i)?.saturating_sub(at(&sent, i)?))).collect();
        if !complete {
            println!("  ({} of {expected} deliveries within the drain time)", lags.len());
        }
        let whole = Percentiles::of_micros(&mut lags);
        println!("{}", latency_row(side.name(), whole));
        println!("{}", latency_row("  of which send -> committed", Percentiles::of_micros(&mut storing)));
        println!("{}", latency_row("  of which committed -> receipt", Percentiles::of_micros(&mut after_commit)));
        if let Some(cpu) = cpu {
            println!("{}", cpu.per_thousand(lags.len()));
        }
        Ok(whole)
    }
}

/// CPU seconds used so far by the machine, the server measured (the relay or pg_eventserv), PostgreSQL (the
/// postmaster and its processes) and this benchmark (the clients and the publisher).
#[derive(Clone, Copy)]
struct CpuSplit {
    machine: f64,
    server: f64,
    postgres: f64,
    bench: f64,
}

impl CpuSplit {
    /// `postmaster`: `None` when PostgreSQL is not a process of this machine (its part is then NaN).
    fn read(server: u32, postmaster: Option<u32>) -> Option<CpuSplit> {
        Some(CpuSplit {
            machine: procfs::machine_busy_seconds()?,
            server: procfs::cpu_seconds(server)?,
            postgres: postmaster.and_then(procfs::server_cpu_seconds).unwrap_or(f64::NAN),
            bench: procfs::cpu_seconds(std::process::id())?,
        })
    }

    fn minus(&self, before: &CpuSplit) -> CpuSplit {
        CpuSplit {
            machine: self.machine - before.machine,
            server: self.server - before.server,
            postgres: self.postgres - before.postgres,
            bench: self.bench - before.bench,
        }
    }

    /// A row: CPU milliseconds per 1,000 deliveries, by part; "other" is the rest of the machine (the
    /// kernel's network work done outside these processes, other processes).
    fn per_thousand(&self, deliveries: usize) -> String {
        let per = |seconds: f64| 1e6 * seconds / deliveries.max(1) as f64;
        let other = self.machine - self.server - self.postgres - self.bench;
        format!(
            "    CPU ms per 1,000 deliveries: server {:.1}, PostgreSQL {:.1}, clients and publisher {:.1}, \
             other {:.1}; all {:.1}",
            per(self.server),
            per(self.postgres),
            per(self.bench),
            per(other),
            per(self.machine)
        )
    }
}

/// The process id of the postmaster serving `config` (the parent of a backend of ours), when PostgreSQL runs
/// on this machine: `None` for a remote server (its backend's pid would name some other local process).
async fn postmaster_of(config: &Config) -> Option<u32> {
    let client = db::connect(config).await.ok()?;
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.ok()?.get(0);
    let backend = u32::try_from(backend).ok()?;
    let postmaster = procfs::parent_of(backend)?;
    let is_postgres =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres");
    (is_postgres(backend) && is_postgres(postmaster)).then_some(postmaster)
}

/// Starts pg_eventserv on a free port against `config`'s database; its `/listen/` URL for [`CHANNEL`].
async fn start_eventserv(binary: &PathBuf, config: &Config) -> Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = tokio::process::Command::new(binary)
        .env("DATABASE_URL", crate::db::database_url(config))
        .env("ES_HTTPHOST", "127.0.0.1")
        .env("ES_HTTPPORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("pg_eventserv did not listen on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, format!("ws://127.0.0.1:{port}/listen/{CHANNEL}")))
}

/// When each payload was sent, and when its commit was answered (µs after `t0`).
struct Published {
    sent: Arc<Vec<AtomicU32>>,
    committed: Arc<Vec<AtomicU32>>,
}

/// Sends every payload with `statement` (`$1` the payload, `$2` the channel), one transaction each, at
/// `rate` per second over [`PUBLISHERS`] connections, recording each one's send and commit time.
async fn publish(
    config: &Config,
    payloads: &[String],
    rate: u32,
    statement: &str,
    times: &Published,
    t0: Instant,
) -> Result<()> {
    let mut connections = Vec::with_capacity(PUBLISHERS);
    for _ in 0..PUBLISHERS {
        let client = db::connect(config).await?;
        let prepared = client.prepare(statement).await.context("preparing the publisher's statement")?;
        connections.push((client, prepared));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut done = 0;
    while done < payloads.len() {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize + 1).min(payloads.len());
        let batch: Vec<usize> = (done..due).collect();
        let work = connections.iter().enumerate().map(|(c, (client, prepared))| {
            let mine: Vec<usize> = batch.iter().copied().filter(|i| i % PUBLISHERS == c).collect();
            async move {
                for i in mine {
                    times.sent[i].store(client::micros_since(t0), Ordering::Relaxed);
                    let payload = payloads[i].as_str();
                    let channel = CHANNEL;
                    let result = if prepared.params().len() == 2 {
                        client.query_one(prepared, &[&payload, &channel]).await
                    } else {
                        client.query_one(prepared, &[&payload]).await
                    };
                    result.context("publishing")?;
                    times.committed[i].store(client::micros_since(t0), Ordering::Relaxed);
                }
                Ok::<(), anyhow::Error>(())
            }
        });
        for result in join_all(work).await {
            result?;
        }
        done = due;
    }
    Ok(())
}
