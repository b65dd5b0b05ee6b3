//! Simulated trackers: each drives a random walk around Vilnius and XADDs one position per tick.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;

/// Options of `trackway-demo devices`.
#[derive(clap::Args)]
pub struct Args {
    /// Redis to write to.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Stream to write to.
    #[arg(long, env = "TRACKWAY_STREAM", default_value = "positions")]
    stream: String,
    /// Number of trackers.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// Time between two positions of one tracker, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many seconds (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// One position in this many is broken on purpose (0: never), to show dead letters.
    #[arg(long, default_value_t = 50)]
    broken_every: u64,
}

/// One simulated tracker.
struct Tracker {
    id: String,
    lat: f64,
    lon: f64,
    heading: f64,
    odometer: u64,
}

impl Tracker {
    fn new(i: usize, rng: &mut fastrand::Rng) -> Tracker {
        Tracker {
            id: format!("35630704244{:04}", 1000 + i),
            lat: 54.6872 + (rng.f64() - 0.5) * 0.05,
            lon: 25.2797 + (rng.f64() - 0.5) * 0.08,
            heading: rng.f64() * 360.0,
            odometer: rng.u64(10_000..900_000),
        }
    }

    /// Moves one tick and returns the wire payload of the new position.
    fn step(&mut self, rng: &mut fastrand::Rng, now_ms: u128) -> serde_json::Value {
        self.heading = (self.heading + (rng.f64() - 0.5) * 40.0).rem_euclid(360.0);
        let speed = 20.0 + rng.f64() * 40.0; // km/h
        let metres = speed / 3.6;
        let rad = self.heading.to_radians();
        self.lat += metres * rad.cos() / 111_320.0;
        self.lon += metres * rad.sin() / (111_320.0 * self.lat.to_radians().cos());
        self.odometer += metres as u64;
        let ts = trackway_wire::format_timestamp(i64::try_from(now_ms * 1000).unwrap_or(0));
        json!({
            "deviceId": self.id,
            "timestamp": ts,
            "latitude": (self.lat * 1e7).round() / 1e7,
            "longitude": (self.lon * 1e7).round() / 1e7,
            "altitude": 110 + rng.i32(0..40),
            "angle": self.heading.round(),
            "speed": speed.round(),
            "satellites": rng.i32(6..16),
            "priority": 0,
            "attributes": {
                "16": self.odometer,
                "66": rng.i32(11_000..14_000),
                "11": {"__bigint": (u64::MAX - rng.u64(0..1_000_000)).to_string()},
                "256": {"__buffer_b64": "V1ZXWlpaMUpaWFcwMDAwMDE="}
            }
        })
    }
}

/// Writes positions until interrupted (or for `--seconds`).
pub async fn run(args: Args) -> Result<()> {
    let client = redis::Client::open(args.redis_url.as_str()).context("REDIS_URL")?;
    let mut conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    let mut rng = fastrand::Rng::new();
    let mut fleet: Vec<Tracker> = (0..args.devices).map(|i| Tracker::new(i, &mut rng)).collect();
    let mut ticks = tokio::time::interval(Duration::from_millis(args.interval_ms.max(10)));
    let started = std::time::Instant::now();
    let (mut sent, mut broken) = (0u64, 0u64);
    eprintln!(
        "{} trackers writing to stream {:?} every {} ms (Ctrl-C stops)",
        args.devices, args.stream, args.interval_ms
    );
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if args.seconds > 0 && started.elapsed() >= Duration::from_secs(args.seconds) {
            break;
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut pipe = redis::pipe();
        for tracker in &mut fleet {
            let mut position = tracker.step(&mut rng, now_ms);
            sent += 1;
            if args.broken_every > 0 && sent % args.broken_every == 0 {
                position["latitude"] = json!(123.4); // out of range: the relay dead-letters it
                broken += 1;
            }
            pipe.cmd("XADD").arg(&args.stream).arg("*").arg("payload").arg(position.to_string()).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            eprintln!("XADD failed ({e}); retrying next tick");
        }
    }
    eprintln!("sent {sent} positions ({broken} broken on purpose)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_valid_wire_documents() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut t = Tracker::new(0, &mut rng);
        let p = t.step(&mut rng, 1_795_000_000_123);
        assert_eq!(p["timestamp"], "2026-11-18T11:06:40.123Z");
        assert!(p["latitude"].as_f64().is_some_and(|l| (54.0..55.0).contains(&l)));
        assert!(p["attributes"]["11"]["__bigint"].is_string());
    }
}
