//! The fleet on a simulated clock: which entries go to the stream when, including the faults of a real
//! ingestion path — retransmissions (the same payload again a few seconds later), late records (a fix held
//! back and sent seconds later, older than the device's latest) and invalid payloads.
//!
//! Everything is derived from the seed and the start time: the same [`Config`] gives the same entries in
//! the same order, however the time is advanced ([`Fleet::advance_to`] in small or large steps).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::rng::Rng;

use crate::device::Device;
use crate::geo::Point;
use crate::payload::Invalid;

/// What a fleet is made of.
#[derive(Clone, Debug)]
pub struct Config {
    pub devices: usize,
    /// Time between two fixes of one device, in microseconds (at least 1,000: one fix per millisecond).
    pub interval_us: i64,
    pub seed: u64,
    pub center: Point,
    pub radius_m: f64,
    /// Fraction of sent valid positions that are sent a second time later (retransmissions).
    pub duplicates: f64,
    /// Fraction of fixes held back and sent late.
    pub late: f64,
    /// Fraction of fixes sent as an invalid payload instead.
    pub invalid: f64,
    /// The simulated clock's start, Unix milliseconds.
    pub start_ms: i64,
}

/// Vilnius city centre.
pub const VILNIUS: Point = Point::new(54.6872, 25.2797);

impl Default for Config {
    fn default() -> Config {
        Config {
            devices: 10,
            interval_us: 1_000_000,
            seed: 1,
            center: VILNIUS,
            radius_m: 5_000.0,
            duplicates: 0.01,
            late: 0.01,
            invalid: 0.002,
            start_ms: 1_795_766_400_000,
        }
    }
}

/// What kind of entry a stream entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A position sent when it was taken.
    Position,
    /// A position sent again (the same payload as before).
    Duplicate,
    /// A position sent some seconds after it was taken, after newer ones of its device.
    Late,
    Invalid(Invalid),
}

/// One stream entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub device: usize,
    /// When it is sent, on the simulated clock (Unix milliseconds).
    pub send_ms: i64,
    pub payload: String,
}

/// Counts of entries by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub positions: u64,
    pub duplicates: u64,
    pub late: u64,
    /// By kind, in the order of [`Invalid::ALL`].
    pub invalid: [u64; 4],
}

impl Tally {
    pub fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Position => self.positions += 1,
            Kind::Duplicate => self.duplicates += 1,
            Kind::Late => self.late += 1,
            Kind::Invalid(i) => self.invalid[Invalid::ALL.iter().position(|k| *k == i).unwrap_or(0)] += 1,
        }
    }

    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }

    /// Every entry counted.
    pub fn total(&self) -> u64 {
        self.positions + self.duplicates + self.late + self.invalid_total()
    }

    /// Distinct valid positions among them (what the database should end up storing).
    pub fn distinct_valid(&self) -> u64 {
        self.positions + self.late
    }
}

/// An entry waiting to be sent: late fixes and retransmissions.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    send_us: i64,
    seq: u64,
    device: usize,
    late: bool,
    payload: String,
}

/// The fleet and its simulated clock.
pub struct Fleet {
    config: Config,
    devices: Vec<Device>,
    /// Next fix time of each device (µs since the start), smallest first.
    schedule: BinaryHeap<Reverse<(i64, usize)>>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
}

impl Fleet {
    pub fn new(config: Config) -> Fleet {
        assert!(config.interval_us >= 1_000, "at most one fix per millisecond and device");
        let devices: Vec<Device> =
            (0..config.devices).map(|i| Device::new(i, config.seed, config.center, config.radius_m)).collect();
        // Devices do not report in lockstep: each has its own phase within the interval.
        let mut phases = Rng::new(config.seed.wrapping_add(0x5EED));
        let schedule =
            (0..config.devices).map(|i| Reverse((phases.range(0, config.interval_us as u64 - 1) as i64, i))).collect();
        Fleet { config, devices, schedule, held: BinaryHeap::new(), seq: 0 }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|d| d.id.as_str())
    }

    fn start_us(&self) -> i64 {
        self.config.start_ms * 1000
    }

    /// Appends to `out`, in sending order, every entry due up to `now_ms` (Unix milliseconds).
    pub fn advance_to(&mut self, now_ms: i64, out: &mut Vec<Entry>) {
        let now_us = now_ms * 1000 - self.start_us();
        loop {
            let next_fix = self.schedule.peek().map(|Reverse((t, _))| *t).filter(|t| *t <= now_us);
            let next_held = self.held.peek().map(|Reverse(h)| h.send_us).filter(|t| *t <= now_us);
            match (next_fix, next_held) {
                (Some(f), Some(h)) if h < f => self.send_held(out),
                (Some(_), _) => self.take_fix(out),
                (None, Some(_)) => self.send_held(out),
                (None, None) => break,
            }
        }
    }

    /// Appends every entry still held back (at the end of a run: nothing is left unsent).
    pub fn flush(&mut self, out: &mut Vec<Entry>) {
        while !self.held.is_empty() {
            self.send_held(out);
        }
    }

    fn send_held(&mut self, out: &mut Vec<Entry>) {
        if let Some(Reverse(h)) = self.held.pop() {
            let kind = if h.late { Kind::Late } else { Kind::Duplicate };
            out.push(Entry {
                kind,
                device: h.device,
                send_ms: (self.start_us() + h.send_us) / 1000,
                payload: h.payload,
            });
        }
    }

    fn hold(&mut self, send_us: i64, device: usize, late: bool, payload: String) {
        self.seq += 1;
        self.held.push(Reverse(Held { send_us, seq: self.seq, device, late, payload }));
    }

    fn take_fix(&mut self, out: &mut Vec<Entry>) {
        let Some(Reverse((t_us, index))) = self.schedule.pop() else { return };
        let interval = self.config.interval_us;
        self.schedule.push(Reverse((t_us + interval, index)));
        let ts_ms = (self.start_us() + t_us).div_euclid(1000);
        let dt_s = if t_us < interval { t_us as f64 / 1e6 } else { interval as f64 / 1e6 };
        let device = &mut self.devices[index];
        let fix = device.fix(ts_ms, dt_s);
        let rng = &mut device.rng;
        let roll = rng.unit();
        let (invalid, late) = (self.config.invalid, self.config.late);
        if roll < invalid {
            let kind = Invalid::ALL[rng.range(0, Invalid::ALL.len() as u64 - 1) as usize];
            out.push(Entry {
                kind: Kind::Invalid(kind),
                device: index,
                send_ms: ts_ms,
                payload: fix.invalid_payload(kind),
            });
            return;
        }
        let payload = fix.payload();
        let mut sent_us = t_us;
        let retransmit = rng.chance(self.config.duplicates);
        // Retransmitted 1 to 10 s after it was first sent (no acknowledgement came back in time).
        let retransmit_after = rng.range(1_000_000, 10_000_000) as i64;
        if roll < invalid + late {
            // Held back at least two fixes and 3 s, so newer fixes of the device are sent before it.
            sent_us = t_us + (2 * interval).max(3_000_000) + rng.range(0, 10_000_000) as i64;
            self.hold(sent_us, index, true, payload.clone());
        } else {
            out.push(Entry { kind: Kind::Position, device: index, send_ms: ts_ms, payload: payload.clone() });
        }
        if retransmit {
            self.hold(sent_us + retransmit_after, index, false, payload);
        }
    }
}

/// The benchmarks' workload: `rows` valid positions of a fleet of `devices` (at least one) with none of
/// its faults (no retransmissions, late or invalid entries), in sending order. Every (device, time) is
/// distinct, and the first `devices` entries are one of each device.
pub fn workload(rows: usize, devices: usize, seed: u64) -> Vec<String> {
    let config =
        Config { devices: devices.max(1), seed, duplicates: 0.0, late: 0.0, invalid: 0.0, ..Config::default() };
    let step_ms = config.interval_us / 1000;
    let mut now_ms = config.start_ms;
    let mut fleet = Fleet::new(config);
    let mut entries = Vec::with_capacity(rows + devices);
    while entries.len() < rows {
        now_ms += step_ms;
        fleet.advance_to(now_ms, &mut entries);
    }
    entries.into_iter().take(rows).map(|e| e.payload).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn run(config: Config, seconds: i64, step_ms: i64) -> Vec<Entry> {
        let start = config.start_ms;
        let mut fleet = Fleet::new(config);
        let mut out = Vec::new();
        let mut t = start;
        while t < start + seconds * 1000 {
            t += step_ms;
            fleet.advance_to(t, &mut out);
        }
        fleet.flush(&mut out);
        out
    }

    fn faulty() -> Config {
        Config { devices: 12, duplicates: 0.05, late: 0.05, invalid: 0.04, ..Config::default() }
    }

    #[test]
    fn same_seed_same_entries_however_time_is_advanced() {
        let a = run(faulty(), 300, 1000);
        let b = run(faulty(), 300, 37);
        assert_eq!(a.len(), b.len());
        assert!(a == b, "same seed, same entries in the same order");
        let c = run(Config { seed: 2, ..faulty() }, 300, 1000);
        assert_ne!(a, c, "another seed, other entries");
    }

    #[test]
    fn the_workload_is_valid_distinct_and_starts_with_every_device() {
        let payloads = workload(300, 10, 1);
        assert_eq!(payloads.len(), 300);
        assert_eq!(payloads, workload(300, 10, 1), "deterministic");
        let decoded: Vec<_> = payloads
            .iter()
            .map(|p| trackway_wire::decode(p.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES).expect(p))
            .collect();
        let keys: HashSet<_> = decoded.iter().map(|p| (p.device_id.clone(), p.ts_micros)).collect();
        assert_eq!(keys.len(), 300, "no retransmissions");
        let first: HashSet<_> = decoded[..10].iter().map(|p| p.device_id.clone()).collect();
        assert_eq!(first.len(), 10, "one entry of each device first");
        assert!(payloads.iter().any(|p| p.contains("__bigint")) && payloads.iter().any(|p| p.contains("__buffer_b64")));
    }

    #[test]
    fn rates_of_each_kind() {
        let entries = run(faulty(), 600, 250);
        let mut tally = Tally::default();
        entries.iter().for_each(|e| tally.add(e.kind));
        let fixes = 12 * 600; // one per device and second (within the phase of the last one)
        assert!((fixes as u64 - 12..=fixes as u64).contains(&(tally.positions + tally.late + tally.invalid_total())));
        let share = |n: u64| n as f64 / fixes as f64;
        assert!((0.03..0.07).contains(&share(tally.late)), "{tally:?}");
        assert!((0.025..0.055).contains(&share(tally.invalid_total())), "{tally:?}");
        assert!((0.03..0.07).contains(&share(tally.duplicates)), "{tally:?}");
        assert!(tally.invalid.iter().all(|n| *n > 30), "every kind of invalid payload: {tally:?}");
        assert_eq!(tally.total(), entries.len() as u64);
    }

    /// Many devices, a low rate: the kinds of invalid payloads are still evenly spread (the devices'
    /// random sequences are independent, not shifted copies of one another).
    #[test]
    fn faults_are_spread_over_kinds_and_devices() {
        let config = Config { devices: 1_000, invalid: 0.01, ..Config::default() };
        let entries = run(config, 60, 1000);
        let mut tally = Tally::default();
        entries.iter().for_each(|e| tally.add(e.kind));
        assert!(tally.invalid.iter().all(|n| (100..200).contains(n)), "{tally:?}");
        let devices: HashSet<usize> =
            entries.iter().filter(|e| matches!(e.kind, Kind::Invalid(_))).map(|e| e.device).collect();
        assert!(devices.len() > 400, "{} devices sent invalid payloads", devices.len());
    }

    #[test]
    fn duplicates_repeat_and_late_ones_are_older_than_the_latest() {
        let entries = run(faulty(), 300, 100);
        let mut sent: HashSet<&str> = HashSet::new();
        let mut latest: HashMap<usize, String> = HashMap::new();
        let mut last_send = i64::MIN;
        for e in &entries {
            assert!(e.send_ms >= last_send, "entries come in sending order");
            last_send = e.send_ms;
            let ts = |p: &str| p.split(r#""timestamp":""#).nth(1).map(|s| s[..24].to_string());
            match e.kind {
                Kind::Position => {
                    assert!(sent.insert(&e.payload), "a first transmission is new");
                    let t = ts(&e.payload).unwrap();
                    assert!(latest.get(&e.device).is_none_or(|l| *l < t), "on-time positions advance");
                    latest.insert(e.device, t);
                }
                Kind::Late => {
                    assert!(sent.insert(&e.payload), "a late position is sent once");
                    // (Flushed at the end, it may not have been overtaken yet.)
                    let flushed = e.send_ms > Config::default().start_ms + 300_000;
                    assert!(flushed || ts(&e.payload).unwrap() < latest[&e.device], "older than the latest: {e:?}");
                }
                Kind::Duplicate => assert!(sent.contains(e.payload.as_str()), "repeats an earlier payload"),
                Kind::Invalid(_) => {}
            }
        }
    }

    #[test]
    fn interval_and_phases() {
        let config =
            Config { devices: 3, interval_us: 250_000, duplicates: 0.0, late: 0.0, invalid: 0.0, ..Config::default() };
        let entries = run(config, 10, 1000);
        assert!((117..=120).contains(&entries.len()), "{}", entries.len());
        let first: Vec<i64> = (0..3).map(|d| entries.iter().find(|e| e.device == d).unwrap().send_ms).collect();
        assert!(first.iter().all(|t| (1_795_766_400_000..1_795_766_400_250).contains(t)), "{first:?}");
    }
}
