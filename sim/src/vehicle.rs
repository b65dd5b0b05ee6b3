//! One vehicle's movement: a closed loop of waypoints around a centre, driven leg by leg along great
//! circles. The speed changes smoothly (bounded acceleration and braking), the vehicle brakes to a stop at
//! each waypoint, waits there (now and then parked with the ignition off), then sets off for the next one.

use crate::rng::Rng;

use crate::geo::{bearing_deg, destination, distance_m, Point};

/// Longest integration step, in seconds: a fix interval is split into steps no longer than this.
const MAX_STEP_S: f64 = 0.25;
/// Closer than this to a waypoint, in metres, counts as arrived.
const ARRIVED_M: f64 = 0.05;

/// A uniform float in `[lo, hi)`.
pub(crate) fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.unit()
}

/// Where a vehicle is and what it is doing.
#[derive(Clone, Debug)]
pub struct Vehicle {
    /// The closed loop of waypoints it drives.
    route: Vec<Point>,
    /// Index in `route` of the waypoint it drives to.
    target: usize,
    pub position: Point,
    /// Current speed, metres per second.
    pub speed_mps: f64,
    /// True bearing of the last movement, degrees in `[0, 360)`.
    pub heading_deg: f64,
    /// The speed it cruises at on this leg, metres per second.
    cruise_mps: f64,
    /// Acceleration and braking of this vehicle, metres per second squared.
    accel: f64,
    brake: f64,
    /// Seconds left standing at the current waypoint (0 when driving).
    dwell_s: f64,
    /// Standing with the ignition off.
    pub parked: bool,
    /// Metres driven since the simulation started.
    pub driven_m: f64,
}

impl Vehicle {
    /// A vehicle on a loop of 5 to 9 waypoints within `radius_m` of `center`, starting part-way along its
    /// first leg at cruising speed (so a short demo shows movement at once).
    pub fn new(center: Point, radius_m: f64, rng: &mut Rng) -> Vehicle {
        let n = rng.range(5, 9) as usize;
        let step = 360.0 / n as f64;
        let start = uniform(rng, 0.0, 360.0);
        let clockwise = rng.chance(0.5);
        // A star-shaped polygon around the centre: increasing bearings, varying distances, so legs never cross.
        let route: Vec<Point> = (0..n)
            .map(|k| {
                let k = if clockwise { k as f64 } else { -(k as f64) };
                let bearing = start + k * step + uniform(rng, -0.3, 0.3) * step;
                destination(center, bearing, radius_m * uniform(rng, 0.25, 1.0))
            })
            .collect();
        let from = route[0];
        let to = route[1];
        let along = distance_m(from, to) * uniform(rng, 0.05, 0.6);
        let heading = bearing_deg(from, to);
        let mut vehicle = Vehicle {
            position: destination(from, heading, along),
            route,
            target: 1,
            speed_mps: 0.0,
            heading_deg: heading,
            cruise_mps: 0.0,
            accel: uniform(rng, 1.0, 2.5),
            brake: uniform(rng, 1.5, 3.0),
            dwell_s: 0.0,
            parked: false,
            driven_m: 0.0,
        };
        vehicle.cruise_mps = vehicle.pick_cruise(rng);
        vehicle.heading_deg = bearing_deg(vehicle.position, to);
        vehicle.speed_mps = vehicle.cruise_mps.min((2.0 * 0.7 * vehicle.brake * vehicle.remaining_m()).sqrt());
        vehicle
    }

    /// The waypoints of its loop.
    pub fn route(&self) -> &[Point] {
        &self.route
    }

    /// Metres left on the current leg.
    pub fn remaining_m(&self) -> f64 {
        distance_m(self.position, self.route[self.target])
    }

    /// Standing at a waypoint.
    pub fn stopped(&self) -> bool {
        self.dwell_s > 0.0
    }

    /// A cruising speed for the next leg: 25 to 60 km/h in town, up to 90 km/h on long legs.
    fn pick_cruise(&self, rng: &mut Rng) -> f64 {
        let leg = distance_m(self.position, self.route[self.target]);
        let top_kmh = if leg > 3_000.0 { 90.0 } else { 60.0 };
        uniform(rng, 25.0, top_kmh) / 3.6
    }

    /// Moves `dt_s` seconds forward.
    pub fn advance(&mut self, dt_s: f64, rng: &mut Rng) {
        let mut left = dt_s;
        while left > 1e-9 {
            let h = left.min(MAX_STEP_S);
            left -= h;
            self.step(h, rng);
        }
    }

    fn step(&mut self, h: f64, rng: &mut Rng) {
        if self.dwell_s > 0.0 {
            self.dwell_s -= h;
            if self.dwell_s <= 0.0 {
                self.dwell_s = 0.0;
                self.parked = false;
                self.target = (self.target + 1) % self.route.len();
                self.cruise_mps = self.pick_cruise(rng);
            }
            return;
        }
        // Traffic: the cruising speed drifts a little.
        if rng.chance(h / 8.0) {
            self.cruise_mps = (self.cruise_mps * uniform(rng, 0.85, 1.15)).clamp(15.0 / 3.6, 90.0 / 3.6);
        }
        let target = self.route[self.target];
        let remaining = distance_m(self.position, target);
        // The fastest speed from which it stops at the waypoint braking at 70 % of what it can: the margin
        // lets it keep to that curve, step by step.
        let allowed = self.cruise_mps.min((2.0 * 0.7 * self.brake * remaining).sqrt());
        let v0 = self.speed_mps;
        let v1 = if v0 < allowed { (v0 + self.accel * h).min(allowed) } else { (v0 - self.brake * h).max(allowed) };
        let travel = (v0 + v1) / 2.0 * h;
        if travel + ARRIVED_M >= remaining {
            // Arrives: stands for a while, now and then parked with the ignition off.
            if remaining > 0.0 {
                self.heading_deg = bearing_deg(self.position, target);
            }
            self.position = target;
            self.driven_m += remaining;
            self.speed_mps = 0.0;
            self.parked = rng.chance(0.15);
            self.dwell_s = if self.parked { uniform(rng, 60.0, 300.0) } else { uniform(rng, 5.0, 40.0) };
            return;
        }
        let bearing = bearing_deg(self.position, target);
        self.position = destination(self.position, bearing, travel);
        self.heading_deg = bearing;
        self.speed_mps = v1;
        self.driven_m += travel;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::bearing_difference;

    const VILNIUS: Point = Point::new(54.6872, 25.2797);

    #[test]
    fn route_is_a_loop_within_the_radius() {
        let mut rng = Rng::new(7);
        for _ in 0..50 {
            let v = Vehicle::new(VILNIUS, 5_000.0, &mut rng);
            assert!((5..=9).contains(&v.route().len()));
            for p in v.route() {
                let d = distance_m(VILNIUS, *p);
                assert!((1_249.0..=5_001.0).contains(&d), "{d}");
            }
            assert!(distance_m(VILNIUS, v.position) <= 5_001.0);
            assert!(v.speed_mps > 0.0, "starts moving");
        }
    }

    /// Second by second: the distance moved is the mean of the speeds at both ends times the time (constant
    /// speed: speed × time) within 1 %, the heading is the bearing of the movement, and the speed never
    /// jumps by more than the vehicle's acceleration allows.
    #[test]
    fn distance_speed_and_bearing_agree() {
        let mut rng = Rng::new(42);
        let mut checked_cruise = 0;
        let mut checked = 0;
        for _ in 0..20 {
            let mut v = Vehicle::new(VILNIUS, 5_000.0, &mut rng);
            for _ in 0..1_200 {
                let (before, v0, target, driven) = (v.position, v.speed_mps, v.target, v.driven_m);
                v.advance(1.0, &mut rng);
                let moved = distance_m(before, v.position);
                // At most 3 m/s² of braking, and the last step onto the waypoint (≤ 2 × 0.7 × 3 × 0.25 m/s).
                assert!((v.speed_mps - v0).abs() <= 4.1, "{v0} -> {}", v.speed_mps);
                assert!(v.speed_mps <= 90.0 / 3.6 + 1e-9);
                if v.target != target || v.stopped() || v0 == 0.0 || v.speed_mps == 0.0 {
                    continue; // a waypoint in between: not one great-circle segment
                }
                // The position moved by the distance driven (the speed integrated over the second), which
                // is close to the mean of the speeds at both ends (exact at constant acceleration).
                assert!(
                    (moved - (v.driven_m - driven)).abs() <= moved * 0.01,
                    "moved {moved} m, drove {}",
                    v.driven_m - driven
                );
                let mean = (v0 + v.speed_mps) / 2.0;
                assert!((moved - mean).abs() <= mean * 0.01 + 0.5, "moved {moved} m at {v0}..{} m/s", v.speed_mps);
                if (v.speed_mps - v0).abs() < 1e-9 {
                    assert!((moved - v.speed_mps).abs() <= v.speed_mps * 0.01, "{moved} m at {} m/s", v.speed_mps);
                    checked_cruise += 1;
                }
                if moved > 1.0 {
                    let b = bearing_deg(before, v.position);
                    assert!(bearing_difference(b, v.heading_deg).abs() < 0.5, "bearing {b}, heading {}", v.heading_deg);
                }
                checked += 1;
            }
        }
        assert!(checked > 10_000 && checked_cruise > 1_000, "{checked} {checked_cruise}");
    }

    #[test]
    fn stops_at_waypoints_and_goes_on() {
        let mut rng = Rng::new(3);
        let mut v = Vehicle::new(VILNIUS, 3_000.0, &mut rng);
        let (mut stops, mut parked, mut was_stopped) = (0, 0, false);
        for _ in 0..(6 * 3600) {
            v.advance(1.0, &mut rng);
            if v.stopped() && !was_stopped {
                stops += 1;
                assert_eq!(v.speed_mps, 0.0);
                assert!(v.route().contains(&v.position), "stops on a waypoint");
                parked += usize::from(v.parked);
            }
            was_stopped = v.stopped();
        }
        assert!(stops > 20, "{stops}");
        assert!(parked >= 1 && parked < stops, "{parked} of {stops}");
        // The odometer matches the distance covered along the route in each leg (checked above); here: it
        // grew, at a plausible average speed including the stops.
        let average_kmh = v.driven_m / (6.0 * 3600.0) * 3.6;
        assert!((10.0..70.0).contains(&average_kmh), "{average_kmh}");
    }
}
