//! A fix rendered in the wire format (docs/architecture.md §1), and the deliberately invalid variants of it.
//!
//! The JSON text is written by hand, the way a JavaScript producer writes it: fixed fields first, numbers
//! as JavaScript prints them, integers beyond 2^53 as `{"__bigint":"…"}` and byte strings as
//! `{"__buffer_b64":"…"}`. Every text written here is plain ASCII (digits, base64, fixed keys), so it needs
//! no escaping.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::geo::Point;

/// One IO attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// A safe integer (|n| ≤ 2^53 − 1): a plain JSON number.
    Int(i64),
    /// An integer beyond 2^53: `{"__bigint":"<decimal>"}`.
    BigInt(u64),
    /// A byte string: `{"__buffer_b64":"<base64>"}`.
    Bytes(Vec<u8>),
    /// Sentinels one level down, as some producers nest them: `{"nested":[…]}`.
    Nested(Vec<Attr>),
}

/// Everything one position says.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    pub device_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub point: Point,
    /// Metres above sea level.
    pub altitude_m: f64,
    /// True bearing of the movement, degrees.
    pub angle_deg: f64,
    /// Kilometres per hour.
    pub speed_kmh: f64,
    pub satellites: u8,
    /// 0 low, 1 high (an event such as the ignition switching), 2 panic.
    pub priority: u8,
    /// IO elements by id, in the order they are written.
    pub attributes: Vec<(u16, Attr)>,
}

/// The kinds of deliberately invalid payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invalid {
    /// `latitude` out of range (123.x).
    Latitude,
    /// A broken sentinel: `"11":{"__bigint":"…a"}` (not an integer).
    BrokenBigint,
    /// No `deviceId`.
    MissingDeviceId,
    /// Not JSON: the text cut off half-way, as a dropped connection leaves it.
    NotJson,
}

impl Invalid {
    pub const ALL: [Invalid; 4] =
        [Invalid::Latitude, Invalid::BrokenBigint, Invalid::MissingDeviceId, Invalid::NotJson];

    /// A short name, as the summary prints it.
    pub fn name(self) -> &'static str {
        match self {
            Invalid::Latitude => "latitude out of range",
            Invalid::BrokenBigint => "broken __bigint",
            Invalid::MissingDeviceId => "missing deviceId",
            Invalid::NotJson => "not JSON",
        }
    }

    /// The field a decoder's error names (empty: the payload as a whole).
    pub fn field(self) -> &'static str {
        match self {
            Invalid::Latitude => "latitude",
            Invalid::BrokenBigint => "attributes.11",
            Invalid::MissingDeviceId => "deviceId",
            Invalid::NotJson => "",
        }
    }
}

/// Rounds to `decimals` decimal places (what a tracker reports: 1e-7 degrees, about 1 cm).
fn round_to(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

/// A JavaScript-style number: integers without a fraction, others in the shortest form that reads back.
fn js_number(out: &mut String, x: f64) {
    if x == x.trunc() && x.abs() < 1e15 {
        let _ = write!(out, "{}", x as i64);
    } else {
        let _ = write!(out, "{x}");
    }
}

fn write_attr(out: &mut String, value: &Attr, broken_bigint: bool) {
    match value {
        Attr::Int(n) => {
            let _ = write!(out, "{n}");
        }
        Attr::BigInt(n) if broken_bigint => {
            // The last digit garbled into a letter.
            let digits = n.to_string();
            let _ = write!(out, r#"{{"__bigint":"{}a"}}"#, &digits[..digits.len() - 1]);
        }
        Attr::BigInt(n) => {
            let _ = write!(out, r#"{{"__bigint":"{n}"}}"#);
        }
        Attr::Bytes(bytes) => {
            let _ = write!(out, r#"{{"__buffer_b64":"{}"}}"#, base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Attr::Nested(items) => {
            out.push_str(r#"{"nested":["#);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_attr(out, item, false);
            }
            out.push_str("]}");
        }
    }
}

impl Fix {
    /// The wire-format payload of this fix.
    pub fn payload(&self) -> String {
        self.render(None)
    }

    /// The payload spoiled in the way `kind` says.
    pub fn invalid_payload(&self, kind: Invalid) -> String {
        match kind {
            Invalid::NotJson => {
                let mut text = self.render(None);
                text.truncate(text.len() / 2);
                text
            }
            _ => self.render(Some(kind)),
        }
    }

    fn render(&self, spoil: Option<Invalid>) -> String {
        let mut out = String::with_capacity(400);
        out.push('{');
        if spoil != Some(Invalid::MissingDeviceId) {
            let _ = write!(out, r#""deviceId":"{}","#, self.device_id);
        }
        let _ = write!(out, r#""timestamp":"{}","latitude":"#, trackway_wire::format_timestamp(self.ts_ms * 1000));
        let latitude = round_to(self.point.lat, 1e7);
        // Out of range, with the digits of the real one: what a corrupted fix looks like.
        js_number(
            &mut out,
            if spoil == Some(Invalid::Latitude) { round_to(123.0 + latitude.fract().abs(), 1e7) } else { latitude },
        );
        out.push_str(r#","longitude":"#);
        js_number(&mut out, round_to(self.point.lon, 1e7));
        let angle = self.angle_deg.round() as i64 % 360;
        let _ = write!(
            out,
            r#","altitude":{},"angle":{angle},"speed":{},"satellites":{},"priority":{},"attributes":{{"#,
            self.altitude_m.round() as i64,
            self.speed_kmh.round() as i64,
            self.satellites,
            self.priority
        );
        let mut broken = spoil == Some(Invalid::BrokenBigint);
        let mut first = true;
        for (id, value) in &self.attributes {
            if !first {
                out.push(',');
            }
            first = false;
            let _ = write!(out, r#""{id}":"#);
            let spoil_this = broken && *id == 11;
            write_attr(&mut out, value, spoil_this);
            broken &= !spoil_this;
        }
        if broken {
            // No ICCID in this fix: add a broken one.
            if !first {
                out.push(',');
            }
            out.push_str(r#""11":{"__bigint":"12a"}"#);
        }
        out.push_str("}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix() -> Fix {
        Fix {
            device_id: "356307042441000".into(),
            ts_ms: 1_795_766_400_123,
            point: Point::new(54.687_212_345, 25.279_7),
            altitude_m: 112.4,
            angle_deg: 359.7,
            speed_kmh: 45.2,
            satellites: 11,
            priority: 0,
            attributes: vec![
                (239, Attr::Int(1)),
                (11, Attr::BigInt(8_937_012_345_678_901_234)),
                (281, Attr::Bytes(b"P0300".to_vec())),
                (10, Attr::Nested(vec![Attr::BigInt(9_007_199_254_740_993), Attr::Bytes(vec![0, 1, 2, 255])])),
            ],
        }
    }

    #[test]
    fn renders_the_wire_format() {
        assert_eq!(
            fix().payload(),
            r#"{"deviceId":"356307042441000","timestamp":"2026-11-27T08:00:00.123Z","latitude":54.6872123,"longitude":25.2797,"altitude":112,"angle":0,"speed":45,"satellites":11,"priority":0,"attributes":{"239":1,"11":{"__bigint":"8937012345678901234"},"281":{"__buffer_b64":"UDAzMDA="},"10":{"nested":[{"__bigint":"9007199254740993"},{"__buffer_b64":"AAEC/w=="}]}}}"#
        );
    }

    #[test]
    fn invalid_variants() {
        let f = fix();
        assert!(f.invalid_payload(Invalid::Latitude).contains(r#""latitude":123.6872123,"#));
        assert!(f.invalid_payload(Invalid::BrokenBigint).contains(r#""11":{"__bigint":"893701234567890123a"}"#));
        assert!(!f.invalid_payload(Invalid::MissingDeviceId).contains("deviceId"));
        assert!(serde_json::from_str::<serde_json::Value>(&f.invalid_payload(Invalid::NotJson)).is_err());
        let mut without_iccid = fix();
        without_iccid.attributes.retain(|(id, _)| *id != 11);
        assert!(without_iccid.invalid_payload(Invalid::BrokenBigint).ends_with(r#","11":{"__bigint":"12a"}}}"#));
        without_iccid.attributes.clear();
        assert!(without_iccid
            .invalid_payload(Invalid::BrokenBigint)
            .ends_with(r#""attributes":{"11":{"__bigint":"12a"}}}"#));
    }
}
