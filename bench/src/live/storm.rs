//! The reconnect storm (issue 16): while positions flow, many clients reconnect at once, each resuming a
//! group from a cursor some seconds back (a relay restart or a deploy makes every client do this), and
//! clients that stayed connected must not notice.
//!
//! Devices are split into groups of [`GROUP_SIZE`]. Observers stay subscribed to a group each for the
//! whole load. A few seconds into the load the benchmark takes a cursor (`trackway.current_cursor()`, what
//! a client holds), and later opens the storm's connections all at once, each subscribing to a group with
//! that cursor as `since`: each replays every position of its group committed in between. Measured: the
//! observers' commit → receipt latency and their longest silence (the longest gap between two receipts of
//! one observer during the load), and for the storm each replay's completion, errors and closes.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{
    client::{self, Keys},
    distinct, print_cpu, print_live_metrics, procfs,
    procfs::CpuSample,
    stats::{latency_header, latency_row, Goal, Percentiles},
    wait_for, Bench, Times, DRAIN,
};
use crate::db;

/// Devices per group.
const GROUP_SIZE: usize = 100;
/// Goals (the issue's).
const GOAL_OBSERVER_P99_MS: f64 = 50.0;
const GOAL_SILENCE_MS: f64 = 1_000.0;

/// Options of the storm.
#[derive(clap::Args, Clone, Debug)]
pub struct StormOptions {
    /// Storm: clients that reconnect at once, each resuming one group.
    #[arg(long, default_value_t = 1_000)]
    pub storm_clients: usize,
    /// Storm: clients that stay connected (one group each) and must not notice.
    #[arg(long, default_value_t = 100)]
    pub storm_observers: usize,
    /// Storm: devices sending (in groups of 100).
    #[arg(long, default_value_t = 1_000)]
    pub storm_devices: usize,
    /// Storm: positions per second.
    #[arg(long, default_value_t = 2_000)]
    pub storm_rate: u32,
    /// Storm: seconds from the resume cursor to the storm (each client replays what its group got
    /// meanwhile: rate / groups × this; 1,000 positions with the defaults).
    #[arg(long, default_value_t = 5.0)]
    pub storm_behind_seconds: f64,
    /// Storm: seconds of load in all.
    #[arg(long, default_value_t = 25.0)]
    pub storm_seconds: f64,
}

/// How one storm client's resume went.
#[derive(Default)]
struct Resumed {
    /// Positions the `subscribed` frame announced.
    replay: u64,
    /// Positions received after it (replayed first, then live).
    received: u64,
    /// From the storm's start to the last replayed position, µs (`None`: not all came).
    done_after: Option<u32>,
    /// The error or close that ended it early.
    failed: Option<String>,
}

impl Bench<'_> {
    /// The reconnect storm.
    pub(super) async fn storm(&self) -> Result<Vec<Goal>> {
        let o = &self.options.storm;
        let total = (f64::from(o.storm_rate) * o.storm_seconds).round() as usize;
        let groups = o.storm_devices.div_ceil(GROUP_SIZE).max(1);
        println!(
            "\n== storm: {} clients resume one of {groups} groups of {GROUP_SIZE} devices at once ({} s of \
             positions behind), while {} observers watch, {} positions/s for {} s ==",
            o.storm_clients, o.storm_behind_seconds, o.storm_observers, o.storm_rate, o.storm_seconds
        );
        let payloads = trackway_sim::workload(total, o.storm_devices, self.options.seed);
        let (keys, devices_of) = Keys::new(&payloads)?;
        let keys = Arc::new(keys);
        let devices = distinct(&devices_of);
        let setup = self.setup("storm", &devices).await?;
        // Device i is in group g-(i mod groups).
        let group_ids: Vec<String> = (0..devices.len()).map(|i| format!("g-{}", i % groups)).collect();
        let admin = db::connect(&setup.config).await?;
        admin
            .execute(
                "INSERT INTO trackway.device_groups SELECT * FROM unnest($1::text[], $2::text[])",
                &[&group_ids, &devices],
            )
            .await
            .context("groups")?;
        let times = Times::new(total);
        let listener = self.listen(&setup.config, keys.clone(), times.notify.clone()).await?;
        let observed: Vec<(&str, String)> =
            (0..o.storm_observers).map(|i| ("group", format!("g-{}", i % groups))).collect();
        // Small frames: a small read buffer (tungstenite zero-fills its size before every read).
        let sockets = self.open(&setup, &observed, 16 * 1024).await?;
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let observers: Vec<_> = sockets
            .into_iter()
            .map(|s| tokio::spawn(client::receive(s, keys.clone(), self.t0, stopped.clone(), delivered.clone())))
            .collect();

        let (relay_before, own_before) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let memory_before = procfs::memory_kb(setup.relay.pid);
        let started = Instant::now();
        // The load runs in its own task; the storm is timed against its start.
        let (load_payloads, rate) = (payloads.clone(), o.storm_rate);
        let generating = {
            let times = Times { xadd: times.xadd.clone(), notify: times.notify.clone() };
            let mut redis = setup.redis.clone();
            let stream = setup.stream.clone();
            let t0 = self.t0;
            tokio::spawn(async move { super::generate_on(&mut redis, &stream, &load_payloads, rate, &times, t0).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let since: String = admin.query_one("SELECT trackway.current_cursor()", &[]).await?.get(0);
        tokio::time::sleep(Duration::from_secs_f64(o.storm_behind_seconds)).await;
        let storm_start = client::micros_since(self.t0);
        // The storm's clients stand for other machines: they run on threads of their own, so that reading
        // their replays here does not delay the observers' reads in this process's scheduler (the relay's
        // isolation is what is measured, not the benchmark's). The machine's cores are still shared.
        let storm_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("storm-clients")
            .enable_all()
            .build()
            .context("the storm clients' runtime")?;
        let url = setup.relay.live_url.clone();
        let token = setup.token.clone();
        let resumes: Vec<_> = (0..o.storm_clients)
            .map(|i| {
                let (url, token, since) = (url.clone(), token.clone(), since.clone());
                let group = format!("g-{}", i % groups);
                let (t0, stopped) = (self.t0, stopped.clone());
                storm_runtime.spawn(async move { resume(&url, &token, &group, &since, t0, stopped).await })
            })
            .collect();
        let generated = generating.await.context("load task")??;
        // Each observer gets every position of its group.
        let group_index: std::collections::HashMap<&str, &str> =
            devices.iter().map(String::as_str).zip(group_ids.iter().map(String::as_str)).collect();
        let mut per_group: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for device in &devices_of {
            *per_group.entry(group_index[device.as_str()]).or_default() += 1;
        }
        let expected: u64 = observed.iter().map(|(_, g)| per_group.get(g.as_str()).copied().unwrap_or(0)).sum();
        let complete = wait_for(|| delivered.load(Ordering::Relaxed) >= expected, DRAIN).await;
        let window = started.elapsed();
        let (relay_after, own_after) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let memory_after = procfs::memory_kb(setup.relay.pid);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let metrics = setup.relay.metrics().await;
        stop.send_replace(true);
        let mut received = Vec::new();
        for task in observers {
            received.push(task.await.context("observer")?);
        }
        let mut resumed = Vec::new();
        for task in resumes {
            resumed.push(task.await.context("storm client")?);
        }
        storm_runtime.shutdown_background();
        listener.abort();
        drop(admin);
        self.teardown(setup).await?;

        // Observers: latency and longest silence while the load ran.
        let mut commit_to_receipt = Vec::new();
        // The same, by when the position was committed: before the storm, while replays were still
        // being answered, and after the last one (every client then live).
        let storm_end = resumed.iter().filter_map(|r| r.done_after).max().unwrap_or(storm_start);
        let mut phases: [Vec<u32>; 3] = Default::default();
        let mut longest_silence = 0u32;
        let mut unique = 0u64;
        let mut ended = 0usize;
        for r in &received {
            let mut seen = std::collections::HashSet::new();
            let mut arrivals = Vec::with_capacity(r.deliveries.len());
            for &(i, at) in &r.deliveries {
                if seen.insert(i) {
                    unique += 1;
                    arrivals.push(at);
                    if let Some(n) = times.notify_at(i) {
                        commit_to_receipt.push(at.saturating_sub(n));
                        let phase = if n < storm_start {
                            0
                        } else if n <= storm_end {
                            1
                        } else {
                            2
                        };
                        phases[phase].push(at.saturating_sub(n));
                    }
                }
            }
            arrivals.sort_unstable();
            let gaps = arrivals.windows(2).map(|w| w[1] - w[0]);
            longest_silence = longest_silence.max(gaps.max().unwrap_or(0));
            ended += usize::from(r.ended.is_some());
        }
        let commit_p = Percentiles::of_micros(&mut commit_to_receipt);
        // The storm.
        let mut done: Vec<u32> =
            resumed.iter().filter_map(|r| r.done_after.map(|d| d.saturating_sub(storm_start))).collect();
        let completed = done.len();
        let replayed: u64 = resumed.iter().map(|r| r.replay).sum();
        let live_after: u64 = resumed.iter().map(|r| r.received.saturating_sub(r.replay)).sum();
        let failures: Vec<&String> = resumed.iter().filter_map(|r| r.failed.as_ref()).collect();
        // (`abs`: an empty sum of f64 is -0.)
        let silent = super::metric_sum(&metrics, "trackway_live_closes_total{reason=\"silent\"}").abs();
        let done_p = Percentiles::of_micros(&mut done);

        println!("  positions XADDed                   {total:>9}  ({:.0}/s achieved)", generated.rate);
        println!(
            "  observers: delivered {unique} of {expected}{}; connections ended early {ended}",
            if complete { "" } else { "  (drain timed out)" }
        );
        println!(
            "  storm: {completed} of {} replays complete, {replayed} positions replayed (about {:.0} each), \
             {live_after} live positions after them; {} failed{}",
            resumed.len(),
            replayed as f64 / resumed.len().max(1) as f64,
            failures.len(),
            failures.first().map(|f| format!(" (first: {f})")).unwrap_or_default()
        );
        println!("  load window {:.1} s; 4009 closes: {silent}", window.as_secs_f64());
        println!("{}", latency_header());
        println!("{}", latency_row("observers: commit -> receipt", commit_p));
        for (name, lags) in ["  before the storm", "  while replays were answered", "  after the last replay"]
            .into_iter()
            .zip(phases.iter_mut())
        {
            println!("{}", latency_row(name, Percentiles::of_micros(lags)));
        }
        println!("{}", latency_row("storm: reconnect -> replay complete", done_p));
        println!("  observers' longest silence         {:>9.1} ms", f64::from(longest_silence) / 1000.0);
        print_cpu(relay_before, relay_after, own_before, own_after);
        if let (Some(before), Some(after)) = (memory_before, memory_after) {
            println!(
                "  relay memory                       VmRSS {:.1} -> {:.1} MB, VmHWM {:.1} MB",
                super::mb(before.0),
                super::mb(after.0),
                super::mb(after.1)
            );
        }
        print_live_metrics(&metrics);
        Ok(vec![
            Goal::at_most(
                "storm: observers' commit->receipt p99",
                commit_p.map_or(f64::NAN, |p| p.p99),
                GOAL_OBSERVER_P99_MS,
                "ms",
            ),
            Goal::at_most(
                "storm: observers' longest silence",
                f64::from(longest_silence) / 1000.0,
                GOAL_SILENCE_MS,
                "ms",
            ),
            Goal::at_least(
                "storm: replays complete",
                100.0 * completed as f64 / resumed.len().max(1) as f64,
                100.0,
                "%",
            ),
            Goal::at_most("storm: 4009 closes", silent, 0.0, ""),
        ])
    }
}

/// One storm client: connects, resumes `group` from `since`, reads the replay, then reads on (a client
/// that stops reading would be a slow client, another scenario) until `stop`.
async fn resume(
    url: &str,
    token: &str,
    group: &str,
    since: &str,
    t0: Instant,
    mut stop: watch::Receiver<bool>,
) -> Resumed {
    let mut resumed = Resumed::default();
    // tungstenite zero-fills its read buffer's size before every read: 16 KiB, not the 256 KiB of a
    // frame (a frame takes several reads; filling 256 KiB per read took a third of this process's CPU).
    let mut socket = match client::connect(url, token, 16 * 1024).await {
        Ok(socket) => socket,
        Err(e) => {
            resumed.failed = Some(format!("{e:#}"));
            return resumed;
        }
    };
    let request = serde_json::json!({"type": "subscribe", "group": group, "since": since, "id": 1}).to_string();
    if let Err(e) = socket.send(Message::text(request)).await {
        resumed.failed = Some(e.to_string());
        return resumed;
    }
    let mut answered = false;
    loop {
        let message = tokio::select! {
            biased;
            message = socket.next() => message,
            _ = stop.wait_for(|s| *s) => break,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let text = text.as_str();
                if !answered {
                    let frame: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    match frame["type"].as_str() {
                        Some("subscribed") => {
                            answered = true;
                            resumed.replay = frame["replay"].as_u64().unwrap_or(0);
                            if resumed.replay == 0 {
                                resumed.done_after = Some(client::micros_since(t0));
                            }
                        }
                        Some("error") => {
                            resumed.failed = Some(frame["code"].as_str().unwrap_or("error").to_owned());
                            break;
                        }
                        _ => {}
                    }
                    continue;
                }
                if text.starts_with("{\"type\":\"positions\"") {
                    let before = resumed.received;
                    client::scan_keys(text.as_bytes(), |_, _| resumed.received += 1);
                    if before < resumed.replay && resumed.received >= resumed.replay {
                        resumed.done_after = Some(client::micros_since(t0));
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => {
                resumed.failed = Some(format!("closed: {frame:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                resumed.failed = Some(e.to_string());
                break;
            }
            None => {
                resumed.failed = Some("connection ended".into());
                break;
            }
        }
    }
    if !answered && resumed.failed.is_none() {
        resumed.failed = Some("no answer".into());
    }
    resumed
}
