//! A simulated Teltonika-like tracker: a [`Vehicle`] plus the IO elements such a device reports.
//!
//! IO elements (ids as Teltonika FMB devices use them):
//! - 239 ignition (0/1), 240 movement (0/1), 21 GSM signal (0–5), 182 HDOP (×10);
//! - 66 external voltage in mV (about 14 V with the engine running, 12.4–12.7 V parked), 67 battery voltage
//!   in mV (the tracker's own battery, about 4 V);
//! - 16 total odometer in metres (grows with the distance driven);
//! - 11 and 14 ICCID parts, 19-digit numbers beyond 2^53: `{"__bigint":"…"}`, in about one fix in four;
//! - 281 fault codes (OBD DTCs as ASCII, only devices with a fault, now and then), 385 beacon data (a
//!   header byte and 0–3 iBeacon records), 256 VIN (17 ASCII characters, rarely): `{"__buffer_b64":"…"}`;
//! - 10 now and then a nested structure with sentinels inside an array, as the sample data has.

use crate::rng::Rng;

use crate::geo::Point;
use crate::payload::{Attr, Fix};
use crate::vehicle::{uniform, Vehicle};

/// The id of device `index`: IMEI-like, `356307042441000` for the first, as the demo's group expects.
pub fn device_id(index: usize) -> String {
    format!("35630704244{:04}", 1000 + index)
}

/// A tracker: the vehicle it sits in and the state of its IO elements.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: String,
    pub vehicle: Vehicle,
    /// Its own random sequence, so its fixes do not depend on the other devices.
    pub(crate) rng: Rng,
    odometer_start_m: u64,
    iccid: u64,
    iccid2: u64,
    vin: Vec<u8>,
    /// The fault codes it reports, if it has any.
    faults: Option<Vec<u8>>,
    gsm: i64,
    satellites: i64,
    battery_mv: f64,
    ignition: bool,
}

impl Device {
    pub fn new(index: usize, seed: u64, center: Point, radius_m: f64) -> Device {
        // One generator per device, its state a hash of the run's seed and the index. (SplitMix64 steps its
        // state by a fixed constant: states that differ by multiples of it would be shifted copies of one
        // sequence, so the devices' faults and values would line up.)
        let mut rng = Rng::new(Rng::new(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64());
        let vehicle = Vehicle::new(center, radius_m, &mut rng);
        let vin: Vec<u8> = {
            const VIN_CHARS: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
            let mut v = b"WVWZZZ1JZ".to_vec();
            v.extend((0..8).map(|_| VIN_CHARS[rng.range(0, VIN_CHARS.len() as u64 - 1) as usize]));
            v
        };
        let faults = rng.chance(0.2).then(|| {
            const CODES: [&str; 6] = ["P0300", "P0171", "P0420", "P0128", "C0035", "U0100"];
            let n = rng.range(1, 2) as usize;
            (0..n).map(|_| CODES[rng.range(0, 5) as usize]).collect::<Vec<_>>().join(",").into_bytes()
        });
        Device {
            id: device_id(index),
            odometer_start_m: rng.range(1_000_000, 400_000_000),
            // Lithuanian ICCIDs: 19 digits, far beyond 2^53 and within u64.
            iccid: 8_937_000_000_000_000_000 + rng.range(0, 999_999_999_999_999),
            iccid2: 8_937_000_000_000_000_000 + rng.range(0, 999_999_999_999_999),
            vin,
            faults,
            gsm: rng.range(2, 5) as i64,
            satellites: rng.range(8, 15) as i64,
            battery_mv: uniform(&mut rng, 3_950.0, 4_150.0),
            ignition: true,
            vehicle,
            rng,
        }
    }

    /// Moves `dt_s` seconds on and reports a fix stamped `ts_ms`.
    pub fn fix(&mut self, ts_ms: i64, dt_s: f64) -> Fix {
        self.vehicle.advance(dt_s, &mut self.rng);
        let rng = &mut self.rng;
        let v = &self.vehicle;
        let ignition = !v.parked;
        let moving = v.speed_mps > 0.0;
        // An ignition change is an event: a high-priority record.
        let priority = u8::from(ignition != self.ignition);
        self.ignition = ignition;
        if rng.chance(0.1) {
            self.gsm = (self.gsm + if rng.chance(0.5) { 1 } else { -1 }).clamp(1, 5);
        }
        if rng.chance(0.1) {
            self.satellites = (self.satellites + if rng.chance(0.5) { 1 } else { -1 }).clamp(5, 18);
        }
        let external_mv = if ignition { uniform(rng, 13_900.0, 14_300.0) } else { uniform(rng, 12_400.0, 12_700.0) };
        self.battery_mv = (self.battery_mv + uniform(rng, -3.0, 3.0)).clamp(3_900.0, 4_200.0);
        let hdop = (40.0 - 2.0 * self.satellites as f64 + uniform(rng, -2.0, 2.0)).clamp(5.0, 40.0);

        let mut attributes = vec![
            (239, Attr::Int(i64::from(ignition))),
            (240, Attr::Int(i64::from(moving))),
            (21, Attr::Int(self.gsm)),
            (66, Attr::Int(external_mv.round() as i64)),
            (67, Attr::Int(self.battery_mv.round() as i64)),
            (182, Attr::Int(hdop.round() as i64)),
            (16, Attr::Int((self.odometer_start_m as f64 + v.driven_m).round() as i64)),
        ];
        if rng.chance(0.25) {
            attributes.push((11, Attr::BigInt(self.iccid)));
            attributes.push((14, Attr::BigInt(self.iccid2)));
        }
        if let Some(faults) = &self.faults {
            if ignition && rng.chance(0.05) {
                attributes.push((281, Attr::Bytes(faults.clone())));
            }
        }
        if rng.chance(0.05) {
            // Beacon data: a header byte, then per beacon a flags byte, a 20-byte iBeacon id and the RSSI.
            let mut beacons = vec![0x01];
            for _ in 0..rng.range(0, 3) {
                beacons.push(0x21);
                beacons.extend((0..20).map(|_| rng.range(0, 255) as u8));
                beacons.push(rng.range(0xB0, 0xD8) as u8);
            }
            attributes.push((385, Attr::Bytes(beacons)));
        }
        if rng.chance(0.02) {
            attributes.push((256, Attr::Bytes(self.vin.clone())));
        }
        if rng.chance(0.01) {
            attributes.push((
                10,
                Attr::Nested(vec![
                    Attr::BigInt(9_007_199_254_740_993 + rng.range(0, 1_000_000)),
                    Attr::Bytes(if rng.chance(0.3) { Vec::new() } else { vec![0, 1, 2, 255] }),
                ]),
            ));
        }
        let p = v.position;
        Fix {
            device_id: self.id.clone(),
            ts_ms,
            point: p,
            altitude_m: altitude(p) + uniform(rng, -1.5, 1.5),
            angle_deg: v.heading_deg,
            speed_kmh: v.speed_mps * 3.6,
            satellites: self.satellites as u8,
            priority,
            attributes,
        }
    }
}

/// A smooth made-up terrain: 100 to 220 m, like Vilnius's hills and valleys.
fn altitude(p: Point) -> f64 {
    160.0 + 45.0 * (p.lat * 180.0).sin() * (p.lon * 110.0).cos() + 15.0 * (p.lon * 400.0).sin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::distance_m;

    const VILNIUS: Point = Point::new(54.6872, 25.2797);

    fn int(fix: &Fix, id: u16) -> Option<i64> {
        fix.attributes.iter().find(|(i, _)| *i == id).and_then(|(_, v)| match v {
            Attr::Int(n) => Some(*n),
            _ => None,
        })
    }

    #[test]
    fn ids_follow_the_demo_scheme() {
        assert_eq!(device_id(0), "356307042441000");
        assert_eq!(device_id(9), "356307042441009");
        assert_eq!(device_id(8_999), "356307042449999");
    }

    #[test]
    fn attributes_are_plausible() {
        let (mut bigints, mut buffers, mut nested, mut parked, mut events) = (0, 0, 0, 0, 0);
        for index in 0..20 {
            let mut d = Device::new(index, 99, VILNIUS, 5_000.0);
            let mut previous: Option<Fix> = None;
            for k in 0..2_000 {
                let fix = d.fix(1_795_766_400_000 + k * 1000, 1.0);
                let ignition = int(&fix, 239).unwrap();
                let movement = int(&fix, 240).unwrap();
                assert!(ignition == 0 || ignition == 1);
                assert_eq!(movement == 1, fix.speed_kmh > 0.0);
                assert!(ignition == 1 || movement == 0, "moves only with the ignition on");
                parked += usize::from(ignition == 0);
                assert!((1..=5).contains(&int(&fix, 21).unwrap()));
                let external = int(&fix, 66).unwrap();
                assert!(if ignition == 1 {
                    (13_900..=14_300).contains(&external)
                } else {
                    (12_400..=12_700).contains(&external)
                });
                assert!((3_900..=4_200).contains(&int(&fix, 67).unwrap()));
                assert!((5..=18).contains(&fix.satellites));
                assert!((90.0..=230.0).contains(&fix.altitude_m), "{}", fix.altitude_m);
                assert!((0.0..360.0).contains(&fix.angle_deg));
                assert!(fix.speed_kmh <= 90.0 + 1e-9);
                if let Some(prev) = &previous {
                    // The odometer grows with the distance between fixes (at least; a waypoint may cut a corner).
                    let grown = int(&fix, 16).unwrap() - int(prev, 16).unwrap();
                    let direct = distance_m(prev.point, fix.point);
                    assert!(grown as f64 >= direct - 1.0, "odometer +{grown}, moved {direct}");
                    assert!(grown as f64 <= 26.0, "{grown} m in one second");
                    if int(prev, 239) != Some(ignition) {
                        assert_eq!(fix.priority, 1);
                        events += 1;
                    }
                }
                for (id, value) in &fix.attributes {
                    match value {
                        Attr::BigInt(n) => {
                            assert!(*n > 1 << 53, "{id}: {n}");
                            assert!([11, 14].contains(id));
                            bigints += 1;
                        }
                        Attr::Bytes(b) => {
                            assert!([281, 385, 256].contains(id), "{id}");
                            if *id == 256 {
                                assert_eq!(b.len(), 17);
                            }
                            buffers += 1;
                        }
                        Attr::Nested(_) => nested += 1,
                        Attr::Int(n) => assert!(n.unsigned_abs() < 1 << 53),
                    }
                }
                previous = Some(fix);
            }
        }
        assert!(bigints > 10_000 && buffers > 2_000 && nested > 100, "{bigints} {buffers} {nested}");
        assert!(parked > 100 && events > 10, "{parked} {events}");
    }
}
