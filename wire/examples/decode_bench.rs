//! Decode timing: `decode` (fast path, falling back to the reference) against `decode_reference`, in ns per
//! payload, on the shared sample lines and on generated fleet payloads like `bench/src/payloads.rs` makes.
//!
//! `cargo run --release -p trackway-wire --example decode_bench [rounds]` (default 15 rounds; each round
//! decodes every set once with each decoder; the median round is reported, the spread in brackets).

use std::hint::black_box;
use std::time::Instant;

use trackway_wire::{decode, decode_reference, DecodeError, Position, DEFAULT_MAX_PAYLOAD_BYTES};

const VALID: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/positions-valid.jsonl"));

type Decoder = fn(&[u8], usize) -> Result<Position, DecodeError>;

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(15);
    let shared: Vec<String> = VALID.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
    let shared: Vec<String> = shared.iter().cycle().take(shared.len() * 25).cloned().collect();
    let fleet = fleet_payloads(5_000, 100, 42);
    for (name, set) in [("testdata valid lines", &shared), ("generated fleet payloads", &fleet)] {
        let bytes: usize = set.iter().map(String::len).sum();
        println!("{name}: {} payloads, {:.0} bytes each on average", set.len(), bytes as f64 / set.len() as f64);
        for payload in set {
            let fast = decode(payload.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES);
            let reference = decode_reference(payload.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES);
            assert_eq!(fast, reference, "{payload}");
        }
        let reference = time(set, decode_reference, rounds);
        let fast = time(set, decode, rounds);
        println!("  decode_reference {:>7.0} ns/payload [{:.0}–{:.0}]", reference.0, reference.1, reference.2);
        println!(
            "  decode           {:>7.0} ns/payload [{:.0}–{:.0}]  ({:.1} % less time, {:.2}× as fast)",
            fast.0,
            fast.1,
            fast.2,
            100.0 * (1.0 - fast.0 / reference.0),
            reference.0 / fast.0
        );
    }
}

/// (median, min, max) ns per payload over `rounds` rounds, after one warm-up round.
fn time(set: &[String], decoder: Decoder, rounds: usize) -> (f64, f64, f64) {
    let round = || {
        let start = Instant::now();
        for payload in set {
            let _ = black_box(decoder(black_box(payload.as_bytes()), DEFAULT_MAX_PAYLOAD_BYTES));
        }
        start.elapsed().as_nanos() as f64 / set.len() as f64
    };
    round();
    let mut samples: Vec<f64> = (0..rounds.max(1)).map(|_| round()).collect();
    samples.sort_by(f64::total_cmp);
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0.0);
    let min = samples.first().copied().unwrap_or(0.0);
    let max = samples.last().copied().unwrap_or(0.0);
    (median, min, max)
}

/// Teltonika-like payloads of `devices` trackers around Vilnius, round-robin (the shape of
/// `bench/src/payloads.rs`: 8 integer attributes, 10 % with a `__bigint` ICCID, 5 % with a base64 VIN).
fn fleet_payloads(rows: usize, devices: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..rows)
        .map(|row| {
            let device = row % devices;
            let fix = (row / devices) as u64;
            let moving = rng.chance(0.8);
            let mut attributes = format!(
                r#"{{"239":{},"240":{},"21":{},"66":{},"67":{},"16":{},"181":{},"200":0"#,
                u8::from(moving || rng.chance(0.3)),
                u8::from(moving),
                rng.range(1, 5),
                rng.range(11_800, 14_400),
                rng.range(3_700, 4_200),
                rng.range(1_000_000, 400_000_000),
                rng.range(5, 30),
            );
            if rng.chance(0.10) {
                attributes.push_str(&format!(
                    r#","11":{{"__bigint":"{}"}}"#,
                    8_937_000_000_000_000_000 + rng.range(0, 999_999_999_999_999)
                ));
            }
            if rng.chance(0.05) {
                attributes.push_str(r#","256":{"__buffer_b64":"V1ZXWlpaMUpaWFcwMDAwMDE="}"#);
            }
            attributes.push('}');
            let seconds = 28_800 + fix * 10 + device as u64 % 10;
            format!(
                r#"{{"deviceId":"35630704{:07}","timestamp":"2026-11-27T{:02}:{:02}:{:02}.{:03}Z","latitude":{},"longitude":{},"altitude":{},"angle":{},"speed":{},"satellites":{},"priority":{},"attributes":{attributes}}}"#,
                device * 7_919 + 104_729,
                seconds / 3600 % 24,
                seconds / 60 % 60,
                seconds % 60,
                rng.range(0, 999),
                round7(54.687_157 + (rng.unit() - 0.5) * 0.3),
                round7(25.279_652 + (rng.unit() - 0.5) * 0.3),
                rng.range(90, 180),
                rng.range(0, 359),
                if moving { rng.range(3, 120) } else { 0 },
                rng.range(4, 20),
                u8::from(rng.chance(0.05)),
            )
        })
        .collect()
}

fn round7(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}
