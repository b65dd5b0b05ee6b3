//! Fuzz target: `decode` never panics; on success `encode` succeeds and decoding the encoding gives the same
//! position (attributes compared as the JSON values both encodings hold).
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackway_wire::{decode, encode, Position, DEFAULT_MAX_PAYLOAD_BYTES};

fn parsed(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("encode produced invalid JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(first) = decode(data, DEFAULT_MAX_PAYLOAD_BYTES) else {
        return;
    };
    let wire = encode(&first).expect("a decoded position must encode");
    let second = decode(wire.as_bytes(), usize::MAX).expect("an encoded position must decode");
    let rewire = encode(&second).expect("a re-decoded position must encode");
    assert_eq!(parsed(&wire), parsed(&rewire), "attributes changed: {wire}");
    let without_attributes = |p: &Position| Position { attributes: None, ..p.clone() };
    assert_eq!(without_attributes(&first), without_attributes(&second), "fields changed: {wire}");
    assert_eq!(first.attributes.is_some(), second.attributes.is_some());
});
