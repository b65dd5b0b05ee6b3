//! Fuzz target: the fast path of `decode` against its oracle, the reference decoder.
//!
//! For every input:
//! - when `decode_fast` answers `Some(p)`, `decode_reference` (no size limit) accepts the input with a position
//!   equal to `p`, and `encode_decoded(&p)` is byte for byte `encode(&p)` (both succeed);
//! - `decode` and `decode_reference` (default size limit) give the same result: equal positions, or errors equal
//!   in path, kind and message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackway_wire::{decode, decode_fast, decode_reference, encode, encode_decoded, DEFAULT_MAX_PAYLOAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let text = || String::from_utf8_lossy(data);
    if let Some(fast) = decode_fast(data) {
        match decode_reference(data, usize::MAX) {
            Ok(reference) => assert_eq!(fast, reference, "positions differ on {:?}", text()),
            Err(e) => panic!("fast path accepted what the reference refuses ({e}): {:?}", text()),
        }
        let wire = encode(&fast).unwrap_or_else(|e| panic!("encode failed ({e}) for {fast:?}"));
        let one_pass = encode_decoded(&fast).unwrap_or_else(|e| panic!("encode_decoded failed ({e}) for {fast:?}"));
        assert_eq!(one_pass, wire, "encode_decoded differs from encode for {fast:?}");
    }
    let full = decode(data, DEFAULT_MAX_PAYLOAD_BYTES);
    let reference = decode_reference(data, DEFAULT_MAX_PAYLOAD_BYTES);
    // `DecodeError: PartialEq` compares path, kind and message.
    assert_eq!(full, reference, "decode and decode_reference differ on {:?}", text());
});
