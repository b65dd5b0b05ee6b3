//! Clients that never read (issue 16): each loops `subscribe` / `unsubscribe` of the group holding every
//! device (a snapshot of every device's latest position each time) without reading a frame, while
//! observers watch a device each. Measured: how much the relay's memory grows (sampled through the whole
//! window) and whether the observers notice (commit → receipt).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures_util::SinkExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{
    client::{self, Keys},
    distinct, mb, print_cpu, procfs,
    procfs::CpuSample,
    stats::{latency_header, latency_row, Goal, Percentiles},
    wait_for, Bench, Times, DRAIN, FLEET,
};

/// Goals (the issue's).
const GOAL_RSS_GROWTH_MB: f64 = 150.0;
const GOAL_OBSERVER_P99_MS: f64 = 50.0;

/// Options of the scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct UnreadOptions {
    /// Unread: clients that never read, each looping subscribe/unsubscribe of the group of every device.
    #[arg(long, default_value_t = 30)]
    pub unread_clients: usize,
    /// Unread: devices (all in the group; each has a position before the clients start).
    #[arg(long, default_value_t = 1_000)]
    pub unread_devices: usize,
    /// Unread: observers, each subscribed to one device.
    #[arg(long, default_value_t = 100)]
    pub unread_observers: usize,
    /// Unread: positions per second while the clients loop.
    #[arg(long, default_value_t = 500)]
    pub unread_rate: u32,
    /// Unread: seconds the clients loop.
    #[arg(long, default_value_t = 60.0)]
    pub unread_seconds: f64,
}

impl Bench<'_> {
    /// Clients that never read, and observers that must not notice.
    pub(super) async fn unread(&self) -> Result<Vec<Goal>> {
        let o = &self.options.unread;
        println!(
            "\n== unread: {} clients never read while looping subscribe/unsubscribe of group {FLEET} ({} \
             devices), {} observers on a device each, {} positions/s for {} s ==",
            o.unread_clients, o.unread_devices, o.unread_observers, o.unread_rate, o.unread_seconds
        );
        // First one position per device (the snapshots' content), then the load.
        let first = trackway_sim::workload(o.unread_devices, o.unread_devices, self.options.seed);
        let load_count = (f64::from(o.unread_rate) * o.unread_seconds).round() as usize;
        let all = trackway_sim::workload(o.unread_devices + load_count, o.unread_devices, self.options.seed);
        let (keys, devices_of) = Keys::new(&all)?;
        let keys = Arc::new(keys);
        let devices = distinct(&devices_of);
        let mut setup = self.setup("unread", &devices).await?;
        let times = Times::new(all.len());
        let listener = self.listen(&setup.config, keys.clone(), times.notify.clone()).await?;
        let seeded = super::generate_on(&mut setup.redis, &setup.stream, &all[..first.len()], 5_000, &times, self.t0);
        seeded.await?;
        let everything_committed =
            || times.notify[..first.len()].iter().all(|t| t.load(Ordering::Relaxed) != super::UNSET);
        wait_for(everything_committed, DRAIN).await;

        let observed: Vec<(&str, String)> =
            (0..o.unread_observers).map(|i| ("device", devices[i % devices.len()].clone())).collect();
        let sockets = self.open(&setup, &observed, 16 * 1024).await?;
        let (stop, stopped) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let observers: Vec<_> = sockets
            .into_iter()
            .map(|s| tokio::spawn(client::receive(s, keys.clone(), self.t0, stopped.clone(), delivered.clone())))
            .collect();
        let mut flooders = Vec::new();
        for _ in 0..o.unread_clients {
            let socket =
                client::connect(&setup.relay.live_url, &setup.token, 1024).await.context("an unread client")?;
            flooders.push(tokio::spawn(flood(socket, stopped.clone())));
        }

        let memory_before = procfs::memory_kb(setup.relay.pid).context("the relay's memory")?;
        let (relay_before, own_before) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let sampling = {
            let (pid, stopped) = (setup.relay.pid, stopped.clone());
            tokio::spawn(async move {
                let mut most = 0;
                while !*stopped.borrow() {
                    most = most.max(procfs::memory_kb(pid).map_or(0, |(rss, _)| rss));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                most
            })
        };
        let started = Instant::now();
        let generated =
            super::generate_on(&mut setup.redis, &setup.stream, &all[first.len()..], o.unread_rate, &times, self.t0)
                .await?;
        // Each observer gets every position of its device from the load (the seeded ones came before it).
        let per_device = super::count_by(&devices_of[first.len()..], &devices);
        let expected: u64 = observed.iter().map(|(_, d)| per_device.get(d).copied().unwrap_or(0)).sum();
        let complete = wait_for(|| delivered.load(Ordering::Relaxed) >= expected, DRAIN).await;
        let window = started.elapsed();
        let (relay_after, own_after) = (CpuSample::read(Some(setup.relay.pid)), CpuSample::read(None));
        let metrics = setup.relay.metrics().await;
        stop.send_replace(true);
        let most_rss = sampling.await.context("sampler")?;
        let mut received = Vec::new();
        for task in observers {
            received.push(task.await.context("observer")?);
        }
        let mut requests = 0u64;
        for task in flooders {
            requests += task.await.context("unread client")?;
        }
        listener.abort();
        self.teardown(setup).await?;

        let mut commit_to_receipt = Vec::new();
        let mut unique = 0u64;
        for r in &received {
            let mut seen = std::collections::HashSet::new();
            for &(i, at) in &r.deliveries {
                if (i as usize) >= first.len() && seen.insert(i) {
                    unique += 1;
                    if let Some(n) = times.notify_at(i) {
                        commit_to_receipt.push(at.saturating_sub(n));
                    }
                }
            }
        }
        let commit_p = Percentiles::of_micros(&mut commit_to_receipt);
        let growth = mb(most_rss.saturating_sub(memory_before.0));
        let subscribes = super::metric_sum(&metrics, "trackway_live_frames_in_total{type=\"subscribe\"}");
        let too_slow = super::metric_sum(&metrics, "trackway_live_closes_total{reason=\"too_slow\"}").abs();
        println!("  positions XADDed                   {load_count:>9}  ({:.0}/s achieved)", generated.rate);
        println!("  observers: delivered {unique} of {expected}{}", if complete { "" } else { "  (drain timed out)" });
        println!(
            "  unread clients: {requests} requests sent, {subscribes:.0} subscribes read by the relay, {too_slow:.0} \
             closed as too slow"
        );
        println!(
            "  relay memory                       VmRSS {:.1} MB before, at most {:.1} MB during ({growth:.1} MB more)",
            mb(memory_before.0),
            mb(most_rss)
        );
        println!("  load window {:.1} s", window.as_secs_f64());
        println!("{}", latency_header());
        println!("{}", latency_row("observers: commit -> receipt", commit_p));
        print_cpu(relay_before, relay_after, own_before, own_after);
        Ok(vec![
            Goal::at_most("unread: relay RSS growth", growth, GOAL_RSS_GROWTH_MB, "MB"),
            Goal::at_most(
                "unread: observers' commit->receipt p99",
                commit_p.map_or(f64::NAN, |p| p.p99),
                GOAL_OBSERVER_P99_MS,
                "ms",
            ),
            Goal::at_least("unread: observers delivered", 100.0 * unique as f64 / expected.max(1) as f64, 100.0, "%"),
        ])
    }
}

/// Sends subscribe and unsubscribe of the whole group, over and over, reading nothing, until `stop` (or
/// the relay drops the connection). Returns the requests sent.
async fn flood(socket: client::Socket, mut stop: watch::Receiver<bool>) -> u64 {
    let (mut sink, _never_read) = futures_util::StreamExt::split(socket);
    let mut sent = 0;
    loop {
        for kind in ["subscribe", "unsubscribe"] {
            let text = serde_json::json!({"type": kind, "group": FLEET}).to_string();
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return sent,
                result = sink.send(Message::text(text)) => result,
            };
            if result.is_err() {
                // Dropped by the relay: wait for the end like the others.
                let _ = stop.wait_for(|s| *s).await;
                return sent;
            }
            sent += 1;
        }
    }
}
