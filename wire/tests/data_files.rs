//! The project's sample payloads (`testdata/`, its own copies of the team's shared sample set): every valid line
//! decodes and round-trips, every invalid line fails at the field it names.

mod common;

use common::*;
use serde_json::Value;
use trackway_wire::{encode, DEFAULT_MAX_PAYLOAD_BYTES};

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(i, line)| (i + 1, line))
}

#[test]
fn every_valid_line_decodes_and_round_trips() {
    let mut count = 0;
    for (number, line) in lines(VALID) {
        let position =
            decode(line.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES).unwrap_or_else(|e| panic!("line {number} refused: {e}"));
        let wire = encode(&position).unwrap_or_else(|e| panic!("line {number} not encodable: {e}"));
        assert_eq!(json(&wire), json(line), "line {number}");
        check_stable(line.as_bytes());
        count += 1;
    }
    assert!(count >= 200, "only {count} valid lines");
}

#[test]
fn valid_lines_store_exact_integers_and_canonical_buffers() {
    let first = lines(VALID).next().map(|(_, line)| ok(line)).and_then(|p| p.attributes).unwrap_or_default();
    let stored = json(&first);
    assert_eq!(stored["11"].to_string(), "18446744073709551615");
    assert_eq!(stored["14"].to_string(), "-9223372036854775808");
    assert_eq!(stored["10"]["nested"][0].to_string(), "9007199254740993");
    assert_eq!(stored["385"]["__buffer_b64"], Value::String(String::new()));
}

#[test]
fn every_invalid_line_fails_at_its_field() {
    let mut count = 0;
    for (number, line) in lines(INVALID) {
        let case = json(line);
        let field = case["field"].as_str().unwrap_or_else(|| panic!("line {number}: no field"));
        let payload = case["payload"].as_str().unwrap_or_else(|| panic!("line {number}: no payload"));
        match decode(payload.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES) {
            Ok(p) => panic!("line {number} accepted: {p:?}"),
            Err(e) => assert_eq!(e.path, field, "line {number}: {e}"),
        }
        count += 1;
    }
    assert!(count >= 15, "only {count} invalid lines");
}
