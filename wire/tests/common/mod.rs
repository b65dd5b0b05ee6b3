//! Helpers shared by the integration tests: payload builders and assertions.
#![allow(dead_code)]

use serde_json::Value;
use trackway_wire::{
    decode_reference, encode, encode_decoded, DecodeError, ErrorKind, Position, DEFAULT_MAX_PAYLOAD_BYTES,
};

/// The fixed fields of a valid payload, as JSON members (no braces).
/// `testdata/positions-valid.jsonl`: one valid wire payload per line.
pub const VALID: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/positions-valid.jsonl"));
/// `testdata/positions-invalid.jsonl`: `{"field", "payload"}` per line.
pub const INVALID: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/positions-invalid.jsonl"));

/// Applies byte edits (insert, remove or replace `byte` at an index) to a document: the mutations the
/// property tests feed to the decoder.
pub fn apply_edits(bytes: &mut Vec<u8>, edits: Vec<(proptest::sample::Index, u8, u8)>) {
    for (at, op, byte) in edits {
        let at = at.index(bytes.len() + 1);
        match op {
            0 => bytes.insert(at, byte),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            _ if at < bytes.len() => bytes[at] = byte,
            _ => bytes.push(byte),
        }
    }
}

pub const BASE: &str =
    r#""deviceId":"356307042441013","timestamp":"2026-11-27T10:15:30.123Z","latitude":54.687157,"longitude":25.279652"#;

/// A valid payload with `extra` JSON members appended (`extra` may be empty).
pub fn payload(extra: &str) -> String {
    if extra.is_empty() {
        format!("{{{BASE}}}")
    } else {
        format!("{{{BASE},{extra}}}")
    }
}

/// A valid payload whose `attributes` member is the JSON text `attributes`.
pub fn with_attributes(attributes: &str) -> String {
    payload(&format!(r#""attributes":{attributes}"#))
}

/// A valid payload where the member `name` is replaced by the JSON text `value` (or removed when `None`).
pub fn replacing(name: &str, value: Option<&str>) -> String {
    let mut map: serde_json::Map<String, Value> = serde_json::from_str(&payload("")).unwrap_or_default();
    map.remove(name);
    let mut text = serde_json::to_string(&map).unwrap_or_default();
    if let Some(value) = value {
        text.pop();
        text.push_str(&format!(r#","{name}":{value}}}"#));
    }
    text
}

/// `trackway_wire::decode`, checked against the reference decoder: the same position or the same error
/// (path, kind and message), whatever the input. Every test decodes through this.
pub fn decode(payload: &[u8], max_payload_bytes: usize) -> Result<Position, DecodeError> {
    let fast = trackway_wire::decode(payload, max_payload_bytes);
    let reference = decode_reference(payload, max_payload_bytes);
    assert_eq!(fast, reference, "fast and reference decoders differ on {:?}", String::from_utf8_lossy(payload));
    fast
}

/// Decodes with the default limit.
pub fn dec(payload: &str) -> Result<Position, DecodeError> {
    decode(payload.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES)
}

/// Decodes, expecting success.
pub fn ok(payload: &str) -> Position {
    dec(payload).unwrap_or_else(|e| panic!("{payload} was refused: {e}"))
}

/// Decodes, expecting an error with this path and kind; returns its message.
pub fn fails(payload: &str, path: &str, kind: ErrorKind) -> String {
    match dec(payload) {
        Ok(p) => panic!("{payload} was accepted: {p:?}"),
        Err(e) => {
            assert_eq!((e.path.as_str(), e.kind), (path, kind), "{payload}: {e}");
            e.message
        }
    }
}

/// The storage form of `attributes` for a payload with these attributes.
pub fn stored(attributes: &str) -> String {
    ok(&with_attributes(attributes)).attributes.unwrap_or_default()
}

/// Parses JSON text, panicking with the text on failure.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `encode(decode(x))` parsed as a JSON value.
pub fn round_trip(payload: &str) -> Value {
    let position = ok(payload);
    let wire = encode(&position).unwrap_or_else(|e| panic!("encode failed for {payload}: {e}"));
    json(&wire)
}

/// The fuzz oracle: on success, encode must succeed, and decoding the encoding must give the same position
/// (attributes compared as the wire values they encode to).
pub fn check_stable(payload: &[u8]) {
    let Ok(first) = decode(payload, DEFAULT_MAX_PAYLOAD_BYTES) else {
        return;
    };
    let wire = encode(&first).unwrap_or_else(|e| panic!("encode failed for {first:?}: {e}"));
    // The one-pass encoder for fresh decodes gives exactly the same text.
    assert_eq!(encode_decoded(&first).as_deref(), Ok(wire.as_str()), "{first:?}");
    let second = decode(wire.as_bytes(), usize::MAX).unwrap_or_else(|e| panic!("re-decode failed for {wire}: {e}"));
    let rewire = encode(&second).unwrap_or_else(|e| panic!("re-encode failed for {second:?}: {e}"));
    assert_eq!(json(&wire), json(&rewire));
    let strip = |p: &Position| Position { attributes: None, ..p.clone() };
    assert_eq!(strip(&first), strip(&second), "{wire}");
    assert_eq!(first.attributes.is_some(), second.attributes.is_some());
}
