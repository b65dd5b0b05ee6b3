//! Wire-format payloads (DESIGN.md §1) and the timestamp text they carry: [`position`], a minimal valid
//! position for tests that only need many distinct rows; [`generate`], a deterministic fleet of
//! Teltonika-like trackers around Vilnius for the benchmarks.
//!
//! Everything [`generate`] makes comes from one seeded SplitMix64 generator and a fixed start time, so a
//! given `(rows, devices, seed)` always gives byte-identical payloads. Rows are emitted the way a busy stream
//! delivers them: round-robin over the devices, each device's timestamp advancing by about ten seconds per
//! row, so `(deviceId, timestamp)` is unique by construction.

use base64::Engine as _;

/// 2026-11-27T08:00:00Z in Unix milliseconds: the first fix of every device (plus its own offset).
const START_UNIX_MS: i64 = 1_795_766_400_000;
/// Milliseconds between two fixes of one device.
const FIX_INTERVAL_MS: i64 = 10_000;
/// Vilnius city centre.
const HOME: (f64, f64) = (54.687_157, 25.279_652);
/// How far a device may wander from [`HOME`], in degrees.
const MAX_DRIFT_DEG: f64 = 0.15;
/// Share of payloads carrying an ICCID beyond 2^53 as `{"__bigint": ...}`.
const BIGINT_SHARE: f64 = 0.10;
/// Share of payloads carrying a VIN as `{"__buffer_b64": ...}`.
const BUFFER_SHARE: f64 = 0.05;

/// SplitMix64: tiny, fast, and good enough to make test data look random.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// What a device carries from one fix to the next.
struct Device {
    id: String,
    /// Milliseconds added to every timestamp of this device, so devices do not report in lockstep.
    offset_ms: i64,
    latitude: f64,
    longitude: f64,
    odometer: u64,
    iccid: u64,
    vin: String,
}

impl Device {
    fn new(index: usize, rng: &mut Rng) -> Device {
        Device {
            id: imei(index),
            offset_ms: rng.range(0, 9_999) as i64,
            latitude: HOME.0 + (rng.unit() - 0.5) * MAX_DRIFT_DEG,
            longitude: HOME.1 + (rng.unit() - 0.5) * MAX_DRIFT_DEG,
            odometer: rng.range(1_000_000, 400_000_000),
            // Lithuanian ICCIDs: 19 digits, far beyond 2^53 (and within i64).
            iccid: 8_937_000_000_000_000_000 + rng.range(0, 999_999_999_999_999),
            vin: vin(rng),
        }
    }

    /// Moves the device a few metres and returns its next payload.
    fn next_payload(&mut self, fix: i64, rng: &mut Rng) -> String {
        let moving = rng.chance(0.8);
        if moving {
            self.latitude = wander(self.latitude, HOME.0, rng);
            self.longitude = wander(self.longitude, HOME.1, rng);
            self.odometer += rng.range(10, 400);
        }
        let speed = if moving { rng.range(3, 120) } else { 0 };
        let ts = timestamp(START_UNIX_MS + self.offset_ms + fix * FIX_INTERVAL_MS);
        let mut attributes = format!(
            r#"{{"239":{ign},"240":{mov},"21":{gsm},"66":{ext},"67":{bat},"16":{odo},"181":{pdop},"200":0"#,
            ign = u8::from(moving || rng.chance(0.3)),
            mov = u8::from(moving),
            gsm = rng.range(1, 5),
            ext = rng.range(11_800, 14_400),
            bat = rng.range(3_700, 4_200),
            odo = self.odometer,
            pdop = rng.range(5, 30),
        );
        if rng.chance(BIGINT_SHARE) {
            attributes.push_str(&format!(r#","11":{{"__bigint":"{}"}}"#, self.iccid));
        }
        if rng.chance(BUFFER_SHARE) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(self.vin.as_bytes());
            attributes.push_str(&format!(r#","256":{{"__buffer_b64":"{b64}"}}"#));
        }
        attributes.push('}');
        format!(
            r#"{{"deviceId":"{id}","timestamp":"{ts}","latitude":{lat},"longitude":{lon},"altitude":{alt},"angle":{ang},"speed":{speed},"satellites":{sat},"priority":{pri},"attributes":{attributes}}}"#,
            id = self.id,
            lat = round7(self.latitude),
            lon = round7(self.longitude),
            alt = rng.range(90, 180),
            ang = rng.range(0, 359),
            sat = rng.range(4, 20),
            pri = u8::from(rng.chance(0.05)),
        )
    }
}

/// `rows` payloads of `devices` devices, round-robin, in delivery order.
pub fn generate(rows: usize, devices: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut fleet: Vec<Device> = (0..devices).map(|i| Device::new(i, &mut rng)).collect();
    (0..rows)
        .map(|row| {
            let fix = (row / devices) as i64;
            fleet[row % devices].next_payload(fix, &mut rng)
        })
        .collect()
}

/// A 15-digit IMEI (TAC 35630704, a serial, the Luhn check digit), distinct for every index below 10^6.
fn imei(index: usize) -> String {
    let body = format!("35630704{:06}", (index * 7_919 + 104_729) % 1_000_000);
    format!("{body}{}", luhn_check_digit(&body))
}

fn luhn_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { (d * 2) / 10 + (d * 2) % 10 } else { d })
        .sum();
    (10 - sum % 10) % 10
}

/// A 17-character vehicle identification number.
fn vin(rng: &mut Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
    (0..17).map(|_| ALPHABET[rng.range(0, ALPHABET.len() as u64 - 1) as usize] as char).collect()
}

/// One random-walk step of about ±50 m, pulled back towards `home` when it strays too far.
fn wander(value: f64, home: f64, rng: &mut Rng) -> f64 {
    let step = (rng.unit() - 0.5) * 0.001;
    let next = value + step;
    if (next - home).abs() > MAX_DRIFT_DEG {
        value - step
    } else {
        next
    }
}

/// Seven decimals (about a centimetre), as GPS trackers report them.
fn round7(x: f64) -> f64 {
    (x * 1e7).round() / 1e7
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (JavaScript's `toISOString`), the wire format's own
/// formatting.
pub fn timestamp(unix_ms: i64) -> String {
    trackway_wire::format_timestamp(unix_ms * 1000)
}

/// A minimal valid position of `device` at `unix_ms` (no attributes; a fixed point in Vilnius).
pub fn position(device: &str, unix_ms: i64) -> String {
    let ts = timestamp(unix_ms);
    format!(r#"{{"deviceId":"{device}","timestamp":"{ts}","latitude":54.7,"longitude":25.3}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn timestamps_are_iso_8601() {
        assert_eq!(timestamp(START_UNIX_MS), "2026-11-27T08:00:00.000Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn positions_are_minimal_and_valid() {
        let text = position("d-1", START_UNIX_MS + 3_723_004);
        assert_eq!(
            text,
            r#"{"deviceId":"d-1","timestamp":"2026-11-27T09:02:03.004Z","latitude":54.7,"longitude":25.3}"#
        );
        trackway_wire::decode(text.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES).expect("valid");
    }

    #[test]
    fn imeis_are_15_digits_with_a_valid_check_digit() {
        let ids: HashSet<String> = (0..1_000).map(imei).collect();
        assert_eq!(ids.len(), 1_000);
        for id in &ids {
            assert_eq!(id.len(), 15);
            assert_eq!(luhn_check_digit(&id[..14]), id[14..].parse::<u32>().unwrap_or(99));
        }
        assert_eq!(luhn_check_digit("49015420323751"), 8);
    }

    #[test]
    fn payloads_are_deterministic_valid_and_unique_per_device_and_time() {
        let payloads = generate(5_000, 100, 7);
        assert_eq!(payloads, generate(5_000, 100, 7));
        let mut keys = HashSet::new();
        let (mut bigints, mut buffers) = (0, 0);
        for text in &payloads {
            let position = trackway_wire::decode(text.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES)
                .unwrap_or_else(|e| panic!("invalid payload {text}: {e}"));
            assert!(keys.insert((position.device_id, position.ts_micros)), "repeated key in {text}");
            bigints += usize::from(text.contains("__bigint"));
            buffers += usize::from(text.contains("__buffer_b64"));
        }
        assert!((400..600).contains(&bigints), "{bigints} bigints");
        assert!((180..320).contains(&buffers), "{buffers} buffers");
    }
}
