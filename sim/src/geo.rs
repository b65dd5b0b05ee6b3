//! Great-circle geometry on a spherical Earth: distance (haversine), initial bearing, and the point reached
//! from a start point after a distance along a bearing. Angles are in degrees, distances in metres.

/// Mean Earth radius (IUGG), in metres.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// A point on the Earth: degrees north and east.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

impl Point {
    pub const fn new(lat: f64, lon: f64) -> Point {
        Point { lat, lon }
    }
}

/// Great-circle distance between two points (haversine formula), in metres.
pub fn distance_m(a: Point, b: Point) -> f64 {
    let (phi1, phi2) = (a.lat.to_radians(), b.lat.to_radians());
    let dphi = phi2 - phi1;
    let dlambda = (b.lon - a.lon).to_radians();
    let h = (dphi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (dlambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// Initial true bearing of the great circle from `a` to `b`, in degrees in `[0, 360)`.
pub fn bearing_deg(a: Point, b: Point) -> f64 {
    let (phi1, phi2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlambda = (b.lon - a.lon).to_radians();
    let y = dlambda.sin() * phi2.cos();
    let x = phi1.cos() * phi2.sin() - phi1.sin() * phi2.cos() * dlambda.cos();
    normalize_deg(y.atan2(x).to_degrees())
}

/// The point reached from `start` after `distance_m` metres along the great circle of initial bearing
/// `bearing_deg`.
pub fn destination(start: Point, bearing_deg: f64, distance_m: f64) -> Point {
    let delta = distance_m / EARTH_RADIUS_M;
    let theta = bearing_deg.to_radians();
    let phi1 = start.lat.to_radians();
    let lambda1 = start.lon.to_radians();
    let sin_phi2 = phi1.sin() * delta.cos() + phi1.cos() * delta.sin() * theta.cos();
    let phi2 = sin_phi2.clamp(-1.0, 1.0).asin();
    let y = theta.sin() * delta.sin() * phi1.cos();
    let x = delta.cos() - phi1.sin() * sin_phi2;
    let lambda2 = lambda1 + y.atan2(x);
    Point::new(phi2.to_degrees(), normalize_lon(lambda2.to_degrees()))
}

/// Difference `b - a` between two bearings, in `(-180, 180]` degrees.
pub fn bearing_difference(a: f64, b: f64) -> f64 {
    let d = (b - a).rem_euclid(360.0);
    if d > 180.0 {
        d - 360.0
    } else {
        d
    }
}

/// An angle in `[0, 360)`.
pub fn normalize_deg(deg: f64) -> f64 {
    let d = deg.rem_euclid(360.0);
    if d >= 360.0 {
        0.0
    } else {
        d
    }
}

/// A longitude in `[-180, 180]`.
fn normalize_lon(lon: f64) -> f64 {
    (lon + 540.0).rem_euclid(360.0) - 180.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const VILNIUS: Point = Point::new(54.6872, 25.2797);

    #[test]
    fn known_distance() {
        // Vilnius to Kaunas: about 92.1 km on the sphere.
        let kaunas = Point::new(54.8985, 23.9036);
        let d = distance_m(VILNIUS, kaunas);
        assert!((91_000.0..93_000.0).contains(&d), "{d}");
        // One degree of latitude is about 111.2 km.
        let d = distance_m(Point::new(0.0, 0.0), Point::new(1.0, 0.0));
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn cardinal_bearings() {
        let p = VILNIUS;
        assert!(bearing_deg(p, Point::new(p.lat + 0.01, p.lon)).abs() < 1e-9);
        assert!((bearing_deg(p, Point::new(p.lat, p.lon + 0.01)) - 90.0).abs() < 0.01);
        assert!((bearing_deg(p, Point::new(p.lat - 0.01, p.lon)) - 180.0).abs() < 1e-9);
        assert!((bearing_deg(p, Point::new(p.lat, p.lon - 0.01)) - 270.0).abs() < 0.01);
    }

    #[test]
    fn destination_is_at_that_distance_and_bearing() {
        for bearing in (0..360).step_by(15) {
            for distance in [1.0, 13.9, 250.0, 5_000.0, 40_000.0] {
                let to = destination(VILNIUS, f64::from(bearing), distance);
                let d = distance_m(VILNIUS, to);
                assert!((d - distance).abs() <= distance * 1e-6, "{bearing}° {distance} m: {d}");
                let b = bearing_deg(VILNIUS, to);
                assert!(bearing_difference(f64::from(bearing), b).abs() < 1e-6, "{bearing}° {distance} m: {b}");
            }
        }
    }

    #[test]
    fn bearing_differences() {
        assert_eq!(bearing_difference(350.0, 10.0), 20.0);
        assert_eq!(bearing_difference(10.0, 350.0), -20.0);
        assert_eq!(bearing_difference(0.0, 180.0), 180.0);
        assert_eq!(normalize_deg(-90.0), 270.0);
        assert_eq!(normalize_deg(720.0), 0.0);
        assert_eq!(normalize_lon(181.0), -179.0);
    }
}
