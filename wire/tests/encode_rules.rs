//! Encode rules: storage → wire document, key order, JavaScript number and timestamp formatting,
//! integer sentinels, and `normalized_json`.

mod common;

use common::*;
use trackway_wire::{encode, normalized_json, ErrorKind, Position};

fn position(attributes: Option<&str>) -> Position {
    Position {
        device_id: "356307042441013".into(),
        ts_micros: 1_795_774_530_123_000,
        latitude: 54.687157,
        longitude: 25.279652,
        altitude: None,
        angle: None,
        speed: None,
        satellites: None,
        priority: None,
        attributes: attributes.map(str::to_owned),
    }
}

fn wire_attributes(storage: &str) -> String {
    let wire = encode(&position(Some(storage))).unwrap_or_else(|e| panic!("{storage}: {e}"));
    let start = wire.find(",\"attributes\":").map_or(0, |at| at + ",\"attributes\":".len());
    wire.get(start..wire.len() - 1).unwrap_or_default().to_owned()
}

#[test]
fn minimal_document() {
    assert_eq!(
        encode(&position(None)),
        Ok(r#"{"deviceId":"356307042441013","timestamp":"2026-11-27T10:15:30.123Z","latitude":54.687157,"longitude":25.279652}"#.to_owned())
    );
}

#[test]
fn full_document_in_wire_order() {
    let p = Position {
        altitude: Some(112.0),
        angle: Some(270.5),
        speed: Some(0.0),
        satellites: Some(11),
        priority: Some(0),
        ts_micros: 1_795_774_530_123_456,
        device_id: "dev \"ü\"\n".into(),
        ..position(Some(r#"{"11": 18446744073709551615, "256": {"__buffer_b64": "AA=="}}"#))
    };
    assert_eq!(
        encode(&p),
        Ok(concat!(
            r#"{"deviceId":"dev \"ü\"\n","timestamp":"2026-11-27T10:15:30.123456Z","latitude":54.687157,"#,
            r#""longitude":25.279652,"altitude":112,"angle":270.5,"speed":0,"satellites":11,"priority":0,"#,
            r#""attributes":{"11":{"__bigint":"18446744073709551615"},"256":{"__buffer_b64":"AA=="}}}"#
        )
        .to_owned())
    );
}

#[test]
fn floats_print_like_javascript() {
    let p =
        Position { altitude: Some(1e21), angle: Some(-0.0), speed: Some(1.5e-7), latitude: -90.0, ..position(None) };
    let wire = encode(&p).unwrap_or_default();
    assert!(wire.contains(r#""latitude":-90,"#), "{wire}");
    assert!(wire.contains(r#""altitude":1e+21,"angle":0,"speed":1.5e-7"#), "{wire}");
}

#[test]
fn non_finite_floats_are_errors() {
    for (p, path) in [
        (Position { latitude: f64::NAN, ..position(None) }, "latitude"),
        (Position { longitude: f64::INFINITY, ..position(None) }, "longitude"),
        (Position { altitude: Some(f64::NEG_INFINITY), ..position(None) }, "altitude"),
        (Position { speed: Some(f64::NAN), ..position(None) }, "speed"),
    ] {
        let e = encode(&p).err().unwrap_or_else(|| panic!("accepted"));
        assert_eq!((e.path.as_str(), e.kind), (path, ErrorKind::OutOfRange));
    }
}

#[test]
fn integers_beyond_the_safe_range_become_bigints() {
    assert_eq!(
        wire_attributes(r#"{"a": 9007199254740991, "b": -9007199254740991, "c": 0}"#),
        r#"{"a":9007199254740991,"b":-9007199254740991,"c":0}"#
    );
    assert_eq!(wire_attributes(r#"{"a": 9007199254740992}"#), r#"{"a":{"__bigint":"9007199254740992"}}"#);
    assert_eq!(wire_attributes(r#"{"a": -9223372036854775808}"#), r#"{"a":{"__bigint":"-9223372036854775808"}}"#);
    let huge = "9".repeat(1000);
    assert_eq!(wire_attributes(&format!(r#"{{"a": [{huge}]}}"#)), format!(r#"{{"a":[{{"__bigint":"{huge}"}}]}}"#));
    assert_eq!(wire_attributes(r#"{"a": -0}"#), r#"{"a":0}"#);
}

#[test]
fn doubles_become_javascript_numbers() {
    let cases = [
        ("2.0", "2"),
        ("-2.50", "-2.5"),
        ("0.0", "0"),
        ("18446744073709551616.0", "18446744073709552000"),
        ("1000000000000000000000.0", "1e+21"),
        ("0.00000015", "1.5e-7"),
        ("1.5e-7", "1.5e-7"),
        ("1E2", "100"),
        ("0.1", "0.1"),
    ];
    for (storage, wire) in cases {
        assert_eq!(wire_attributes(&format!(r#"{{"x": {storage}}}"#)), format!(r#"{{"x":{wire}}}"#), "{storage}");
    }
}

#[test]
fn other_values_pass_through() {
    assert_eq!(
        wire_attributes(
            r#"{"s": "tëxt\t\"q\"", "b": false, "n": null, "o": {"__buffer_b64": "AAEC/w=="}, "l": [[], {}, "x"]}"#
        ),
        r#"{"b":false,"l":[[],{},"x"],"n":null,"o":{"__buffer_b64":"AAEC/w=="},"s":"tëxt\t\"q\""}"#
    );
}

#[test]
fn bad_stored_attributes_are_errors_not_panics() {
    let fail = |text: &str, path: &str, kind: ErrorKind| {
        let e = encode(&position(Some(text))).err().unwrap_or_else(|| panic!("{text:?} accepted"));
        assert_eq!((e.path.as_str(), e.kind), (path, kind), "{text:?}: {e}");
    };
    fail("", "attributes", ErrorKind::Syntax);
    fail("{", "attributes", ErrorKind::Syntax);
    fail("{} {}", "attributes", ErrorKind::Syntax);
    fail("[1]", "attributes", ErrorKind::WrongType);
    fail("null", "attributes", ErrorKind::WrongType);
    fail(r#"{"a": [1e400]}"#, "attributes.a.0", ErrorKind::OutOfRange);
    fail(&format!(r#"{{"a": {}.5}}"#, "9".repeat(400)), "attributes.a", ErrorKind::OutOfRange);
    fail(&"[".repeat(100_000), "attributes", ErrorKind::Syntax);
    fail(&format!("{{\"a\":{}", "[".repeat(100_000)), "attributes", ErrorKind::Syntax);
}

#[test]
fn timestamps_use_milliseconds_or_microseconds() {
    let at = |ts_micros| {
        let wire = encode(&Position { ts_micros, ..position(None) }).unwrap_or_default();
        json(&wire)["timestamp"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(1_795_774_530_120_000), "2026-11-27T10:15:30.120Z");
    assert_eq!(at(1_795_774_530_123_400), "2026-11-27T10:15:30.123400Z");
}

#[test]
fn normalized_json_shows_storage_form() {
    let p = Position {
        satellites: Some(3),
        ts_micros: 1_795_774_530_123_456,
        ..position(Some(r#"{"11": 18446744073709551615, "d": 2.0, "b": {"__buffer_b64": "AA=="}}"#))
    };
    assert_eq!(
        normalized_json(&p),
        concat!(
            r#"{"deviceId":"356307042441013","timestamp":"2026-11-27T10:15:30.123456Z","latitude":54.687157,"#,
            r#""longitude":25.279652,"satellites":3,"attributes":{"11":18446744073709551615,"b":{"__buffer_b64":"AA=="},"d":2.0}}"#
        )
    );
    let odd = Position { latitude: f64::NAN, ..position(Some("not json")) };
    let shown = json(&normalized_json(&odd));
    assert_eq!(shown["latitude"], serde_json::Value::Null);
    assert_eq!(shown["attributes"], serde_json::Value::String("not json".into()));
}

#[test]
fn decode_of_encode_is_stable_for_storage_forms_postgres_prints() {
    for storage in [
        r#"{"11": 18446744073709551615, "256": {"__buffer_b64": "AA=="}}"#,
        r#"{"x": 18446744073709551616.0, "y": 0.00000015, "z": [1, {"k": 2.0}]}"#,
    ] {
        let wire = encode(&position(Some(storage))).unwrap_or_default();
        check_stable(wire.as_bytes());
        let again = ok(&wire);
        assert_eq!(encode(&again).map(|w| json(&w)), Ok(json(&wire)));
    }
}
