//! `trackway-sim`: simulated trackers writing wire-format positions (docs/architecture.md §1) to a Redis Stream, for
//! the demo and the benchmarks. The simulation itself does no I/O; [`cli`] paces it and XADDs its entries.
//!
//! - [`geo`]: great-circle geometry (haversine distance, bearing, destination point);
//! - [`vehicle`]: movement along a closed loop of waypoints around a centre, with smooth speed changes,
//!   stops at waypoints and parking;
//! - [`device`]: a Teltonika-like tracker on a vehicle, with its IO elements (ignition, movement, voltages,
//!   odometer, GSM signal, ICCIDs as `__bigint`, fault codes, beacons and VIN as `__buffer_b64`);
//! - [`payload`]: a fix written in the wire format, and the deliberately invalid variants of it;
//! - [`fleet`]: the devices on a simulated clock, with retransmissions, late records and invalid
//!   payloads at configurable rates, deterministic for a seed;
//! - [`rng`]: the seeded random numbers everything above draws from;
//! - [`stream`]: pipelined XADD of payloads (the tests and benchmarks use it through `trackway-testkit`);
//! - [`cli`]: the command itself (options, pacing, the group, signals, summary).

#![forbid(unsafe_code)]

pub mod cli;
pub mod device;
pub mod fleet;
pub mod geo;
pub mod payload;
pub mod rng;
pub mod stream;
pub mod vehicle;

pub use device::device_id;
pub use fleet::{workload, Config, Entry, Fleet, Kind, Tally, VILNIUS};
pub use geo::Point;
pub use payload::{Attr, Fix, Invalid};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every valid payload decodes with the wire codec to what was generated; every invalid one is refused,
    /// naming the field that is wrong.
    #[test]
    fn valid_payloads_decode_and_invalid_ones_are_refused() {
        let config = Config { devices: 25, duplicates: 0.05, late: 0.05, invalid: 0.05, ..Config::default() };
        let start = config.start_ms;
        let mut fleet = Fleet::new(config);
        let mut entries = Vec::new();
        fleet.advance_to(start + 600_000, &mut entries);
        fleet.flush(&mut entries);
        let mut tally = Tally::default();
        for e in &entries {
            tally.add(e.kind);
            let decoded = trackway_wire::decode(e.payload.as_bytes(), trackway_wire::DEFAULT_MAX_PAYLOAD_BYTES);
            match e.kind {
                Kind::Invalid(kind) => {
                    let error = decoded.expect_err(&e.payload);
                    assert_eq!(error.path, kind.field(), "{kind:?}: {error} in {}", e.payload);
                }
                _ => {
                    let p = decoded.unwrap_or_else(|err| panic!("{err}: {}", e.payload));
                    assert_eq!(p.device_id, fleet.device_ids().nth(e.device).unwrap());
                    let reference = trackway_wire::decode_reference(e.payload.as_bytes(), usize::MAX).unwrap();
                    assert_eq!(p, reference);
                    let doc: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                    assert_eq!(doc["latitude"].as_f64(), Some(p.latitude));
                    assert!(p.speed.is_some() && p.angle.is_some_and(|a| a < 360.0));
                }
            }
        }
        assert!(tally.invalid.iter().all(|n| *n > 10), "{tally:?}");
        assert!(tally.positions > 10_000 && tally.late > 300 && tally.duplicates > 300, "{tally:?}");
    }
}
