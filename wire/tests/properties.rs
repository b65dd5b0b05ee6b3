//! Property tests: canonical wire documents survive decode → encode unchanged, and no input makes the codec
//! panic or become unstable.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{Map, Value};
use trackway_wire::{decode_fast, encode, format_timestamp, js_number, DEFAULT_MAX_PAYLOAD_BYTES, MAX_SAFE_INTEGER};

/// 1970-01-01 to 2100-01-01, in microseconds.
const YEAR_2100_MICROS: i64 = 4_102_444_800_000_000;

/// A JSON number from its text, as `serde_json` (arbitrary precision) reads it.
fn number(text: &str) -> Value {
    json(text)
}

/// A double as a JavaScript producer writes it.
fn js(value: f64) -> Value {
    number(&js_number(value).unwrap_or_default())
}

fn sentinel(key: &str, text: String) -> Value {
    Value::Object(Map::from_iter([(key.to_owned(), Value::String(text))]))
}

/// Strings a producer may send and the database can store: any Unicode but NUL.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9 _.-]{0,12}", "[^\u{0}]{0,12}", Just("\"\\/\u{1}\u{1f}\u{7f}\u{2028}".to_owned()),]
}

/// Attribute keys: any text except the sentinel keys.
fn key() -> impl Strategy<Value = String> {
    text().prop_filter("sentinel key", |k| k != "__bigint" && k != "__buffer_b64")
}

fn safe_integer() -> impl Strategy<Value = Value> {
    prop_oneof![-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER, -1000i64..1000].prop_map(|n| number(&n.to_string()))
}

/// Integers beyond ±(2^53−1), up to 40 digits.
fn bigint() -> impl Strategy<Value = Value> {
    (any::<bool>(), "[1-9][0-9]{15,39}")
        .prop_filter("inside the safe range", |(_, digits)| {
            digits.parse::<i64>().map_or(true, |n| n > MAX_SAFE_INTEGER)
        })
        .prop_map(|(negative, digits)| sentinel("__bigint", if negative { format!("-{digits}") } else { digits }))
}

fn double() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
        -1e6f64..1e6,
        (1u64..1 << 60).prop_map(|n| n as f64 * 1024.0),
        Just(1e21),
        Just(5e-324),
        Just(f64::MAX),
        Just(-0.0),
    ]
    .prop_map(js)
}

fn buffer() -> impl Strategy<Value = Value> {
    vec(any::<u8>(), 0..48).prop_map(|bytes| sentinel("__buffer_b64", STANDARD.encode(bytes)))
}

fn attribute_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        safe_integer(),
        bigint(),
        double(),
        text().prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        buffer(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn coordinate(limit: f64) -> impl Strategy<Value = Value> {
    prop_oneof![-limit..=limit, Just(limit), Just(-limit), (-180i32..=180).prop_map(|d| f64::from(d) / 2.0)]
        .prop_map(move |f| js(f.clamp(-limit, limit)))
}

fn timestamp() -> impl Strategy<Value = Value> {
    (0..YEAR_2100_MICROS, any::<bool>()).prop_map(|(micros, whole_ms)| {
        let micros = if whole_ms { micros - micros % 1000 } else { micros };
        Value::String(format_timestamp(micros))
    })
}

/// A canonical wire document, as a JavaScript producer writes it.
fn wire_document() -> impl Strategy<Value = Value> {
    let fixed = ("[^\u{0}]{1,24}", timestamp(), coordinate(90.0), coordinate(180.0));
    let optional = (
        proptest::option::of(
            prop_oneof![any::<f64>().prop_filter("finite", |f| f.is_finite()), -500.0f64..9000.0].prop_map(js),
        ),
        proptest::option::of((0.0f64..=360.0).prop_map(js)),
        proptest::option::of(prop_oneof![0.0f64..400.0, (0u16..300).prop_map(f64::from)].prop_map(js)),
        proptest::option::of((0i16..=i16::MAX).prop_map(|n| number(&n.to_string()))),
        proptest::option::of((0i16..=3).prop_map(|n| number(&n.to_string()))),
        proptest::option::of(btree_map(key(), attribute_value(), 0..8)),
    );
    (fixed, optional).prop_map(|((device, ts, lat, lon), (alt, angle, speed, sats, prio, attrs))| {
        let mut doc = Map::new();
        doc.insert("deviceId".into(), Value::String(device));
        doc.insert("timestamp".into(), ts);
        doc.insert("latitude".into(), lat);
        doc.insert("longitude".into(), lon);
        let optional =
            [("altitude", alt), ("angle", angle), ("speed", speed), ("satellites", sats), ("priority", prio)];
        for (name, value) in optional {
            if let Some(value) = value {
                doc.insert(name.into(), value);
            }
        }
        if let Some(attrs) = attrs {
            doc.insert("attributes".into(), Value::Object(attrs.into_iter().collect()));
        }
        Value::Object(doc)
    })
}

/// Bytes that make mutations interesting for a JSON parser and for the codec's rules.
const INTERESTING: &[u8] = b"{}[]\":,\\0123456789eE.-+ _abfnrtux\x00\x7f\xc3\xff";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn canonical_documents_round_trip(doc in wire_document()) {
        let text = serde_json::to_string(&doc).unwrap_or_default();
        let position = decode(text.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES)
            .map_err(|e| TestCaseError::fail(format!("{text} refused: {e}")))?;
        // Canonical documents are what the fast path of `decode` is for: it must answer for them.
        prop_assert!(decode_fast(text.as_bytes()).is_some(), "fast path fell back: {}", text);
        let wire = encode(&position).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(json(&wire), doc, "{}", text);
        check_stable(text.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..256)) {
        check_stable(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_json(
        doc in wire_document(),
        edits in vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(INTERESTING)), 1..6),
    ) {
        let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
        apply_edits(&mut bytes, edits);
        check_stable(&bytes);
    }

    #[test]
    fn js_doubles_keep_their_value_and_their_kind(value in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let wire = js_number(value).unwrap_or_default();
        let stored = ok(&with_attributes(&format!(r#"{{"x":{wire}}}"#))).attributes.unwrap_or_default();
        let stored_number = stored.trim_start_matches(r#"{"x":"#).trim_end_matches('}');
        prop_assert!(!stored_number.contains(['e', 'E']), "{}", stored);
        prop_assert_eq!(stored_number.parse::<f64>().ok(), Some(value), "{}", stored);
        let integer = value.fract() == 0.0 && value.abs() <= MAX_SAFE_INTEGER as f64;
        prop_assert_eq!(!stored_number.contains('.'), integer, "{}", stored);
    }

    #[test]
    fn timestamps_round_trip(micros in -62_167_219_200_000_000i64..253_402_300_800_000_000) {
        let text = format_timestamp(micros);
        let p = ok(&replacing("timestamp", Some(&format!("\"{text}\""))));
        prop_assert_eq!(p.ts_micros, micros);
    }
}
