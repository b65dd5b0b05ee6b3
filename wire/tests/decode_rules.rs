//! Decode rules of the wire format (docs/architecture.md §1): every field's checks, error kinds, paths and messages.

mod common;

use common::*;
use trackway_wire::{decode_b64, ErrorKind, Position, MAX_DEVICE_ID_BYTES};

#[test]
fn example_payload_decodes() {
    let p = ok(
        r#"{"deviceId":"356307042441013","timestamp":"2026-11-27T10:15:30.123Z","latitude":54.687157,"longitude":25.279652,"altitude":112,"angle":270,"speed":45,"satellites":11,"priority":0,"attributes":{"239":1,"66":12873,"11":{"__bigint":"18446744073709551615"},"281":{"__buffer_b64":"UDAzMDA="}}}"#,
    );
    assert_eq!(
        p,
        Position {
            device_id: "356307042441013".into(),
            ts_micros: 1_795_774_530_123_000,
            latitude: 54.687157,
            longitude: 25.279652,
            altitude: Some(112.0),
            angle: Some(270.0),
            speed: Some(45.0),
            satellites: Some(11),
            priority: Some(0),
            attributes: Some(
                r#"{"11":18446744073709551615,"239":1,"281":{"__buffer_b64":"UDAzMDA="},"66":12873}"#.into()
            ),
        }
    );
}

#[test]
fn minimal_payload_has_no_optional_fields() {
    let p = ok(&payload(""));
    assert_eq!((p.altitude, p.angle, p.speed, p.satellites, p.priority), (None, None, None, None, None));
    assert_eq!(p.attributes, None);
}

#[test]
fn null_optional_fields_are_absent() {
    let p = ok(&payload(
        r#""altitude":null,"angle":null,"speed":null,"satellites":null,"priority":null,"attributes":null"#,
    ));
    assert_eq!(p, ok(&payload("")));
}

#[test]
fn unknown_top_level_keys_are_ignored() {
    let p = ok(&payload(r#""odometer":12,"extra":{"__bigint":"nonsense"},"x":[null]"#));
    assert_eq!(p, ok(&payload("")));
}

#[test]
fn size_limit_is_checked_before_parsing() {
    let e = decode(b"not even json", 5).err();
    let e = e.unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::TooLarge));
    assert_eq!(e.message, "payload is 13 bytes, above the limit of 5");
    assert_eq!(e.to_string(), "payload is 13 bytes, above the limit of 5");
    let exact = payload("");
    assert!(decode(exact.as_bytes(), exact.len()).is_ok());
    assert!(decode(exact.as_bytes(), exact.len() - 1).is_err());
}

#[test]
fn syntax_errors() {
    for bad in [
        "",
        "{",
        "{\"deviceId\":\"x\",\"timestamp\":",
        "{} x",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "{\"a\":-Infinity}",
        "{'a':1}",
        "{\"a\":01}",
    ] {
        let message = fails(bad, "", ErrorKind::Syntax);
        assert!(message.starts_with("payload is not valid JSON: "), "{bad}: {message}");
    }
    for not_object in ["[]", "5", "\"text\"", "null", "true", "[{}]"] {
        assert_eq!(fails(not_object, "", ErrorKind::Syntax), "payload is not a JSON object");
    }
}

#[test]
fn invalid_utf8_is_a_syntax_error() {
    let mut bytes = payload("").into_bytes();
    bytes.splice(2..2, [0xff, 0xfe]);
    let e = decode(&bytes, 1 << 20).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::Syntax));
    let inside_string = br#"{"deviceId":"ab\xc3","timestamp":"2026-11-27T10:15:30Z","latitude":1,"longitude":2}"#;
    let e = decode(inside_string, 1 << 20).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::Syntax));
    assert!(e.message.starts_with("payload is not valid JSON: "));
}

#[test]
fn lone_surrogates_are_refused() {
    for bad in [r#""\ud800""#, r#""\udc00x""#, r#""a\ud800\u0041""#] {
        fails(&replacing("deviceId", Some(bad)), "", ErrorKind::Syntax);
        fails(&with_attributes(&format!(r#"{{"k":{bad}}}"#)), "", ErrorKind::Syntax);
    }
    // A proper pair is fine.
    assert_eq!(ok(&replacing("deviceId", Some(r#""\ud83d\ude80""#))).device_id, "🚀");
}

#[test]
fn duplicate_keys_last_wins() {
    let p = ok(&payload(r#""latitude":-10.5,"deviceId":"second""#));
    assert_eq!((p.latitude, p.device_id.as_str()), (-10.5, "second"));
    assert_eq!(stored(r#"{"a":1,"a":{"__bigint":"x"},"a":2}"#), r#"{"a":2}"#);
}

#[test]
fn device_id_rules() {
    assert_eq!(fails(&replacing("deviceId", None), "deviceId", ErrorKind::Missing), "required field is missing");
    fails(&replacing("deviceId", Some("null")), "deviceId", ErrorKind::Missing);
    assert_eq!(
        fails(&replacing("deviceId", Some("42")), "deviceId", ErrorKind::WrongType),
        "must be a string, got a number"
    );
    assert_eq!(fails(&replacing("deviceId", Some("\"\"")), "deviceId", ErrorKind::OutOfRange), "must not be empty");
    let longest = "é".repeat(MAX_DEVICE_ID_BYTES / 2);
    assert_eq!(ok(&replacing("deviceId", Some(&format!("\"{longest}\"")))).device_id, longest);
    let too_long = format!("\"{}x\"", longest);
    assert_eq!(
        fails(&replacing("deviceId", Some(&too_long)), "deviceId", ErrorKind::OutOfRange),
        "is 257 bytes, above the limit of 256"
    );
    assert_eq!(
        fails(&replacing("deviceId", Some(r#""ab\u0000c""#)), "deviceId", ErrorKind::Unsupported),
        "NUL characters (\\u0000) cannot be stored"
    );
    assert_eq!(ok(&replacing("deviceId", Some(r#""tab\there ünï""#))).device_id, "tab\there ünï");
}

#[test]
fn timestamp_rules() {
    fails(&replacing("timestamp", None), "timestamp", ErrorKind::Missing);
    assert_eq!(
        fails(&replacing("timestamp", Some("1795774530123")), "timestamp", ErrorKind::WrongType),
        "must be a string, got a number"
    );
    let message = fails(&replacing("timestamp", Some("\"yesterday\"")), "timestamp", ErrorKind::Syntax);
    assert!(message.contains("2026-11-27T10:15:30.123Z") && message.ends_with("got \"yesterday\""), "{message}");
    let at = |text: &str| ok(&replacing("timestamp", Some(&format!("\"{text}\"")))).ts_micros;
    assert_eq!(at("2026-11-27T10:15:30.123Z"), 1_795_774_530_123_000);
    assert_eq!(at("2026-11-27T12:15:30.123+02:00"), 1_795_774_530_123_000);
    assert_eq!(at("2026-11-27T10:15:30.123456Z"), 1_795_774_530_123_456);
    assert_eq!(at("2026-11-27T10:15:30.123456000Z"), 1_795_774_530_123_456);
    assert_eq!(at("2026-11-27T10:15:30Z"), 1_795_774_530_000_000);
    assert_eq!(
        fails(&replacing("timestamp", Some("\"2026-11-27T10:15:30.1234567Z\"")), "timestamp", ErrorKind::Unsupported),
        "sub-microsecond precision is not supported"
    );
    fails(&replacing("timestamp", Some("\"2026-11-27\"")), "timestamp", ErrorKind::Syntax);
    fails(&replacing("timestamp", Some("\"2026-11-27T10:15:30\"")), "timestamp", ErrorKind::Syntax);
    fails(&replacing("timestamp", Some("\"2026-02-30T10:15:30Z\"")), "timestamp", ErrorKind::OutOfRange);
}

#[test]
fn latitude_and_longitude_rules() {
    for (name, limit) in [("latitude", 90.0), ("longitude", 180.0)] {
        fails(&replacing(name, None), name, ErrorKind::Missing);
        assert_eq!(
            fails(&replacing(name, Some("\"54.6\"")), name, ErrorKind::WrongType),
            "must be a number, got a string"
        );
        fails(&replacing(name, Some("[1]")), name, ErrorKind::WrongType);
        fails(&replacing(name, Some("true")), name, ErrorKind::WrongType);
        let edge = |text: &str| -> f64 {
            let p = ok(&replacing(name, Some(text)));
            if name == "latitude" {
                p.latitude
            } else {
                p.longitude
            }
        };
        assert_eq!(edge(&format!("{limit}")), limit);
        assert_eq!(edge(&format!("-{limit}")), -limit);
        assert_eq!(edge("0"), 0.0);
        assert_eq!(edge("1e-400"), 0.0);
        let above = format!("{limit}.0001");
        let message = fails(&replacing(name, Some(&above)), name, ErrorKind::OutOfRange);
        assert_eq!(message, format!("must be between -{limit} and {limit}, got {above}"));
        fails(&replacing(name, Some(&format!("-{limit}.0001"))), name, ErrorKind::OutOfRange);
        assert_eq!(
            fails(&replacing(name, Some("1e400")), name, ErrorKind::OutOfRange),
            "must be a finite number, got \"1e+400\"" // serde_json writes exponents with a sign
        );
    }
}

#[test]
fn optional_number_rules() {
    let p = ok(&payload(r#""altitude":-1e300,"angle":360,"speed":0"#));
    assert_eq!((p.altitude, p.angle, p.speed), (Some(-1e300), Some(360.0), Some(0.0)));
    assert_eq!(ok(&payload(r#""angle":0,"speed":1e300"#)).speed, Some(1e300));
    fails(&payload(r#""altitude":"112""#), "altitude", ErrorKind::WrongType);
    fails(&payload(r#""altitude":-1e999"#), "altitude", ErrorKind::OutOfRange);
    assert_eq!(
        fails(&payload(r#""angle":360.5"#), "angle", ErrorKind::OutOfRange),
        "must be between 0 and 360, got 360.5"
    );
    fails(&payload(r#""angle":-0.1"#), "angle", ErrorKind::OutOfRange);
    assert_eq!(fails(&payload(r#""speed":-1"#), "speed", ErrorKind::OutOfRange), "must be at least 0, got -1");
    fails(&payload(r#""speed":{}"#), "speed", ErrorKind::WrongType);
}

#[test]
fn small_integer_rules() {
    for name in ["satellites", "priority"] {
        let get = |text: &str| {
            let p = ok(&payload(&format!(r#""{name}":{text}"#)));
            if name == "satellites" {
                p.satellites
            } else {
                p.priority
            }
        };
        assert_eq!(get("11"), Some(11));
        assert_eq!(get("11.0"), Some(11));
        assert_eq!(get("1.1e1"), Some(11));
        assert_eq!(get("0"), Some(0));
        assert_eq!(get("-0"), Some(0));
        assert_eq!(get("32767"), Some(32767));
        let fail = |text: &str, kind| fails(&payload(&format!(r#""{name}":{text}"#)), name, kind);
        assert_eq!(fail("11.5", ErrorKind::WrongType), "must be an integer, got 11.5");
        assert_eq!(fail("32768", ErrorKind::OutOfRange), "must be between 0 and 32767, got 32768");
        fail("-1", ErrorKind::OutOfRange);
        fail("1e30", ErrorKind::OutOfRange);
        fail("1e400", ErrorKind::OutOfRange);
        fail("\"11\"", ErrorKind::WrongType);
    }
}

#[test]
fn attributes_must_be_an_object() {
    assert_eq!(
        fails(&with_attributes("[1,2,3]"), "attributes", ErrorKind::WrongType),
        "must be an object, got an array"
    );
    fails(&with_attributes("\"{}\""), "attributes", ErrorKind::WrongType);
    fails(&with_attributes("12"), "attributes", ErrorKind::WrongType);
    assert_eq!(stored("{}"), "{}");
}

#[test]
fn attributes_keep_plain_values() {
    assert_eq!(
        stored(r#"{"s":"tëxt \"q\" \\ \n","b":true,"f":false,"n":null,"o":{"x":[1,"2",[],{}]}}"#),
        r#"{"b":true,"f":false,"n":null,"o":{"x":[1,"2",[],{}]},"s":"tëxt \"q\" \\ \n"}"#
    );
}

#[test]
fn bigint_sentinels() {
    assert_eq!(stored(r#"{"11":{"__bigint":"18446744073709551615"}}"#), r#"{"11":18446744073709551615}"#);
    assert_eq!(stored(r#"{"a":{"__bigint":"-9223372036854775808"}}"#), r#"{"a":-9223372036854775808}"#);
    assert_eq!(stored(r#"{"a":{"__bigint":"0007"}}"#), r#"{"a":7}"#);
    assert_eq!(stored(r#"{"a":{"__bigint":"-0"}}"#), r#"{"a":0}"#);
    assert_eq!(stored(r#"{"a":{"__bigint":"-000"}}"#), r#"{"a":0}"#);
    assert_eq!(stored(r#"{"a":{"__bigint":"-0012"}}"#), r#"{"a":-12}"#);
    let max = "9".repeat(1000);
    assert_eq!(stored(&format!(r#"{{"a":{{"__bigint":"{max}"}}}}"#)), format!(r#"{{"a":{max}}}"#));
    let message =
        fails(&with_attributes(&format!(r#"{{"a":{{"__bigint":"-{max}9"}}}}"#)), "attributes.a", ErrorKind::OutOfRange);
    assert_eq!(message, "__bigint has 1001 digits, above the limit of 1000");
    for bad in ["12.5", "0x10", "+1", "1e5", " 1", "1 ", "", "-", "--1", "١٢", "1_000"] {
        let message =
            fails(&with_attributes(&format!(r#"{{"11":{{"__bigint":"{bad}"}}}}"#)), "attributes.11", ErrorKind::Syntax);
        assert!(message.starts_with("__bigint is not an integer"), "{bad}: {message}");
    }
    assert_eq!(
        fails(&with_attributes(r#"{"11":{"__bigint":12}}"#), "attributes.11", ErrorKind::WrongType),
        "__bigint must be a string"
    );
    fails(&with_attributes(r#"{"11":{"__bigint":null}}"#), "attributes.11", ErrorKind::WrongType);
}

#[test]
fn sentinel_objects_have_exactly_one_key() {
    assert_eq!(
        fails(&with_attributes(r#"{"1":{"__bigint":"1","extra":2}}"#), "attributes.1", ErrorKind::WrongType),
        "an object with __bigint must have no other key"
    );
    assert_eq!(
        fails(&with_attributes(r#"{"1":{"__buffer_b64":"","a":2}}"#), "attributes.1", ErrorKind::WrongType),
        "an object with __buffer_b64 must have no other key"
    );
    fails(&with_attributes(r#"{"1":{"__buffer_b64":"","__bigint":"1"}}"#), "attributes.1", ErrorKind::WrongType);
    // Only the exact key names are sentinels.
    assert_eq!(stored(r#"{"1":{"__bigint2":"1","x":2}}"#), r#"{"1":{"__bigint2":"1","x":2}}"#);
}

#[test]
fn buffer_sentinels() {
    assert_eq!(stored(r#"{"281":{"__buffer_b64":"UDAzMDA="}}"#), r#"{"281":{"__buffer_b64":"UDAzMDA="}}"#);
    assert_eq!(stored(r#"{"281":{"__buffer_b64":"UDAzMDA"}}"#), r#"{"281":{"__buffer_b64":"UDAzMDA="}}"#);
    assert_eq!(stored(r#"{"b":{"__buffer_b64":"AA"}}"#), r#"{"b":{"__buffer_b64":"AA=="}}"#);
    assert_eq!(stored(r#"{"b":{"__buffer_b64":""}}"#), r#"{"b":{"__buffer_b64":""}}"#);
    assert_eq!(stored(r#"{"b":{"__buffer_b64":"AAEC/w=="}}"#), r#"{"b":{"__buffer_b64":"AAEC/w=="}}"#);
    for bad in ["not base64!", "AAEC_w==", "A", "AB=", "====", "AAEC/w==AA", "AB==", " AA=="] {
        let message = fails(
            &with_attributes(&format!(r#"{{"256":{{"__buffer_b64":"{bad}"}}}}"#)),
            "attributes.256",
            ErrorKind::Syntax,
        );
        assert!(message.starts_with("__buffer_b64 is not valid base64: "), "{bad}: {message}");
    }
    assert_eq!(
        fails(&with_attributes(r#"{"256":{"__buffer_b64":[1]}}"#), "attributes.256", ErrorKind::WrongType),
        "__buffer_b64 must be a string"
    );
}

#[test]
fn sentinels_at_any_depth() {
    assert_eq!(
        stored(r#"{"10":{"nested":[{"__bigint":"9007199254740993"},{"__buffer_b64":"AAEC/w=="}]}}"#),
        r#"{"10":{"nested":[9007199254740993,{"__buffer_b64":"AAEC/w=="}]}}"#
    );
    assert_eq!(stored(r#"{"a":[[[{"__bigint":"1"}]]]}"#), r#"{"a":[[[1]]]}"#);
    fails(&with_attributes(r#"{"10":{"nested":[{"__bigint":"x"}]}}"#), "attributes.10.nested.0", ErrorKind::Syntax);
    fails(
        &with_attributes(r#"{"10":{"nested":[1,{"__buffer_b64":"!"}]}}"#),
        "attributes.10.nested.1",
        ErrorKind::Syntax,
    );
    fails(&with_attributes(r#"{"a":[[0,[0,0,{"__bigint":"1","b":1}]]]}"#), "attributes.a.0.1.2", ErrorKind::WrongType);
    fails(&with_attributes(r#"{"a":{"b":{"c":{"__bigint":true}}}}"#), "attributes.a.b.c", ErrorKind::WrongType);
}

#[test]
fn nul_characters_in_stored_strings_and_keys() {
    let message = fails(&with_attributes(r#"{"a\u0000b":1}"#), "attributes.a\\u0000b", ErrorKind::Unsupported);
    assert_eq!(message, "NUL characters (\\u0000) cannot be stored");
    fails(&with_attributes(r#"{"s":"x\u0000"}"#), "attributes.s", ErrorKind::Unsupported);
    fails(&with_attributes(r#"{"o":{"k":["ok","\u0000"]}}"#), "attributes.o.k.1", ErrorKind::Unsupported);
    fails(&with_attributes(r#"{"o":{"\u0000":null}}"#), "attributes.o.\\u0000", ErrorKind::Unsupported);
    // Unknown top-level keys are not stored, so a NUL there does not matter.
    ok(&payload(r#""note\u0000":"\u0000""#));
}

#[test]
fn safe_integers_stay_integers() {
    assert_eq!(
        stored(r#"{"a":1,"b":-0,"c":9007199254740991,"d":-9007199254740991,"e":0}"#),
        r#"{"a":1,"b":0,"c":9007199254740991,"d":-9007199254740991,"e":0}"#
    );
}

#[test]
fn other_js_numbers_keep_a_fractional_part() {
    let cases = [
        ("9007199254740992", "9007199254740992.0"),
        ("-9007199254740992", "-9007199254740992.0"),
        ("18446744073709551616", "18446744073709551616.0"),
        ("2.0", "2.0"),
        ("2.50", "2.5"),
        ("-0.0", "0.0"),
        ("0.1", "0.1"),
        ("1e21", "1000000000000000000000.0"),
        ("1E21", "1000000000000000000000.0"),
        ("1e+21", "1000000000000000000000.0"),
        ("1.5e-7", "0.00000015"),
        ("1e2", "100.0"),
        ("123.456e1", "1234.56"),
        ("1e-400", "0.0"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("0.3000000000000000444", "0.30000000000000004"),
    ];
    for (wire, storage) in cases {
        assert_eq!(stored(&format!(r#"{{"x":{wire}}}"#)), format!(r#"{{"x":{storage}}}"#), "{wire}");
    }
}

#[test]
fn numbers_beyond_doubles_are_refused() {
    for wire in ["1e400", "-1e400", "1e309", &format!("1{}", "0".repeat(400))] {
        let message = fails(&with_attributes(&format!(r#"{{"x":[{wire}]}}"#)), "attributes.x.0", ErrorKind::OutOfRange);
        assert!(message.ends_with("is beyond the range of a JavaScript number"), "{message}");
    }
    // The largest double is fine, in either notation.
    let max_digits = format!("17976931348623157{}", "0".repeat(292));
    assert_eq!(stored(&format!(r#"{{"x":{max_digits}}}"#)), format!(r#"{{"x":{max_digits}.0}}"#));
    assert_eq!(stored(r#"{"x":1.7976931348623157e308}"#), format!(r#"{{"x":{max_digits}.0}}"#));
}

#[test]
fn first_failing_field_is_reported() {
    let p = r#"{"deviceId":"","timestamp":"yesterday","latitude":91}"#;
    fails(p, "deviceId", ErrorKind::OutOfRange);
    let p = r#"{"deviceId":"d","latitude":91}"#;
    fails(p, "timestamp", ErrorKind::Missing);
}

#[test]
fn error_display_names_the_path() {
    let e = dec(&with_attributes(r#"{"11":{"__bigint":"12.5"}}"#)).err().unwrap_or_else(|| panic!("accepted"));
    assert!(e.to_string().starts_with("attributes.11: __bigint is not an integer"), "{e}");
}

#[test]
fn decode_b64_helper() {
    assert_eq!(decode_b64("AAEC/w=="), Ok(vec![0, 1, 2, 255]));
    assert_eq!(decode_b64("AAEC/w"), Ok(vec![0, 1, 2, 255]));
    assert_eq!(decode_b64(""), Ok(vec![]));
    let e = decode_b64("***").err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::Syntax));
    assert!(e.message.starts_with("__buffer_b64 is not valid base64: "));
}

#[test]
fn objects_disguised_as_numbers_by_serde_json_private_keys_are_refused() {
    // serde_json (arbitrary_precision) builds the number 54.1 from this object; it must not pass as one.
    let disguised = r#"{"$serde_json::private::Number":"54.1"}"#;
    let escaped = r#"{"\u0024serde_json::private::Number":"54.1"}"#;
    for payload in [
        replacing("latitude", Some(disguised)),
        replacing("latitude", Some(escaped)),
        with_attributes(&format!(r#"{{"66":{disguised}}}"#)),
        with_attributes(r#"{"66":{"$serde_json::private::Number":"abc"}}"#),
        payload(&format!(r#""unknown":{disguised}"#)),
    ] {
        let message = fails(&payload, "", ErrorKind::Syntax);
        assert!(message.contains("$serde_json::private::"), "{payload}: {message}");
    }
    // The same text as a string value, or inside a longer key, is ordinary data.
    assert_eq!(
        stored(r#"{"note":"$serde_json::private::Number","x$serde_json::private::Number":1}"#),
        r#"{"note":"$serde_json::private::Number","x$serde_json::private::Number":1}"#
    );
}
