//! Hostile payloads: deep nesting, huge payloads, broken encodings, special tokens, duplicate keys, NULs.
//! Each must end in a clean result, never a panic or a stack overflow.

mod common;

use common::*;
use trackway_wire::{encode, ErrorKind, DEFAULT_MAX_PAYLOAD_BYTES};

#[test]
fn deep_nesting_at_top_level() {
    for opener in ["[", "{\"a\":"] {
        let text = opener.repeat(100_000);
        let message = fails(&text, "", ErrorKind::Syntax);
        assert!(message.starts_with("payload is not valid JSON: "), "{message}");
    }
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    fails(&closed, "", ErrorKind::Syntax);
}

#[test]
fn deep_nesting_in_attributes() {
    let open = with_attributes(&format!("{{\"a\":{}}}", "[".repeat(100_000)));
    fails(&open, "", ErrorKind::Syntax);
    let closed = with_attributes(&format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000)));
    fails(&closed, "", ErrorKind::Syntax);
    // Nesting within the parser's limit is fine, and the codec's own walks handle it.
    let depth = 100;
    let nested =
        with_attributes(&format!("{{\"a\":{}{{\"__bigint\":\"1\"}}{}}}", "[".repeat(depth), "]".repeat(depth)));
    let p = ok(&nested);
    assert!(p.attributes.as_deref().is_some_and(|a| a.contains("[[1]]")));
    check_stable(nested.as_bytes());
}

#[test]
fn payload_size_limits() {
    let filler = "x".repeat(3 << 20);
    let huge = payload(&format!(r#""attributes":{{"pad":"{filler}"}}"#));
    let e = dec(&huge).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::TooLarge));
    assert_eq!(e.message, format!("payload is {} bytes, above the limit of 1048576", huge.len()));

    let items: Vec<String> = (0..21_000).map(|i| format!(r#""k{i}":{{"__bigint":"{}"}}"#, u64::MAX - i)).collect();
    let big = with_attributes(&format!("{{{}}}", items.join(",")));
    assert!((800 << 10..=DEFAULT_MAX_PAYLOAD_BYTES).contains(&big.len()), "{}", big.len());
    let p = ok(&big);
    let wire = encode(&p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json(&wire), json(&big));
}

#[test]
fn a_900_kib_payload_of_strings_passes() {
    let filler = "y".repeat(900 << 10);
    let p = ok(&with_attributes(&format!(r#"{{"pad":"{filler}"}}"#)));
    assert_eq!(p.attributes.map(|a| a.len()), Some(filler.len() + 10));
}

#[test]
fn invalid_utf8_anywhere() {
    let base = with_attributes(r#"{"s":"text"}"#).into_bytes();
    for at in [0, 1, 5, 20, base.len() - 3, base.len()] {
        for bad in [&[0xff][..], &[0xc3], &[0xed, 0xa0, 0x80], &[0xf4, 0x90, 0x80, 0x80]] {
            let mut bytes = base.clone();
            bytes.splice(at..at, bad.iter().copied());
            let e = decode(&bytes, DEFAULT_MAX_PAYLOAD_BYTES).err().unwrap_or_else(|| panic!("accepted"));
            assert_eq!((e.path.as_str(), e.kind), ("", ErrorKind::Syntax));
        }
    }
}

#[test]
fn non_finite_tokens() {
    for token in ["NaN", "Infinity", "-Infinity", "+1", ".5", "1.", "0x10", "undefined"] {
        fails(&replacing("latitude", Some(token)), "", ErrorKind::Syntax);
        fails(&with_attributes(&format!(r#"{{"x":{token}}}"#)), "", ErrorKind::Syntax);
    }
}

#[test]
fn lone_surrogate_escapes() {
    fails(&with_attributes(r#"{"\ud800":1}"#), "", ErrorKind::Syntax);
    fails(&with_attributes(r#"{"s":"\udfff"}"#), "", ErrorKind::Syntax);
    fails(&replacing("deviceId", Some(r#""\ud800""#)), "", ErrorKind::Syntax);
}

#[test]
fn duplicate_keys_last_wins_like_json_parse() {
    let p = ok(&format!(r#"{{"deviceId":"first",{}}}"#, BASE));
    assert_eq!(p.device_id, "356307042441013");
    let p = ok(&with_attributes(r#"{"k":{"__bigint":"1","__bigint":"2"}}"#));
    assert_eq!(p.attributes.as_deref(), Some(r#"{"k":2}"#));
    // A duplicate that repairs an earlier invalid value makes the payload valid, as in JavaScript.
    ok(&format!(r#"{{"latitude":"bad",{BASE}}}"#));
    fails(&format!(r#"{{{BASE},"latitude":"bad"}}"#), "latitude", ErrorKind::WrongType);
}

#[test]
fn nul_in_device_id_and_attribute_key() {
    fails(&replacing("deviceId", Some(r#""\u0000""#)), "deviceId", ErrorKind::Unsupported);
    let e = dec(&with_attributes(r#"{"\u0000k":1}"#)).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!((e.path.as_str(), e.kind), ("attributes.\\u0000k", ErrorKind::Unsupported));
    assert!(!e.to_string().contains('\0'));
}

#[test]
fn error_messages_never_carry_nul_or_huge_echoes() {
    let long = format!("\"{}\\u0000\"", "t".repeat(10_000));
    let e = dec(&replacing("timestamp", Some(&long))).err().unwrap_or_else(|| panic!("accepted"));
    assert_eq!(e.path, "timestamp");
    assert!(e.message.len() < 300, "{}", e.message.len());
    let e =
        dec(&with_attributes(&format!(r#"{{"b":{{"__bigint":{long}}}}}"#))).err().unwrap_or_else(|| panic!("accepted"));
    assert!(e.message.len() < 300 && !e.message.contains('\0'), "{}", e.message);
}

#[test]
fn numbers_with_huge_texts() {
    let digits = "1".repeat(500_000);
    fails(&with_attributes(&format!(r#"{{"x":{digits}}}"#)), "attributes.x", ErrorKind::OutOfRange);
    let tiny = format!("0.{}1", "0".repeat(500_000));
    assert_eq!(ok(&with_attributes(&format!(r#"{{"x":{tiny}}}"#))).attributes.as_deref(), Some(r#"{"x":0.0}"#));
    fails(&replacing("latitude", Some(&digits)), "latitude", ErrorKind::OutOfRange);
    fails(&with_attributes(r#"{"x":1e99999999999999999999}"#), "attributes.x", ErrorKind::OutOfRange);
    assert_eq!(ok(&with_attributes(r#"{"x":1e-99999999999999999999}"#)).attributes.as_deref(), Some(r#"{"x":0.0}"#));
}
