//! The fast path of `decode` against the reference decoder (`decode_reference`): on every input both give the
//! same position byte for byte, or the same error (path, kind, message). Every other test of this crate also
//! decodes through `common::decode`, which makes the same comparison; this file adds generated inputs aimed
//! at the fast path's edges (duplicate keys, sentinels, escapes, number forms, `serde_json`'s private keys,
//! nesting) and checks that the fast path really answers for ordinary valid payloads.

mod common;

use std::fs;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use trackway_wire::{decode_fast, decode_reference, DEFAULT_MAX_PAYLOAD_BYTES};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_regressions");

/// Both decoders agree on `bytes` (checked by `common::decode`), and whatever the fast path alone answers is
/// the reference position.
fn agree(bytes: &[u8]) {
    let reference = decode(bytes, DEFAULT_MAX_PAYLOAD_BYTES);
    if let Some(fast) = decode_fast(bytes) {
        assert_eq!(Ok(fast), reference, "fast path answered for {:?}", String::from_utf8_lossy(bytes));
    }
}

/// The fast path answers for `text`, with the reference position.
fn fast_answers(text: &str) {
    let fast = decode_fast(text.as_bytes()).unwrap_or_else(|| panic!("fast path fell back: {text}"));
    assert_eq!(Ok(fast), decode_reference(text.as_bytes(), DEFAULT_MAX_PAYLOAD_BYTES), "{text}");
}

#[test]
fn shared_data_lines() {
    for line in VALID.lines().filter(|l| !l.trim().is_empty()) {
        fast_answers(line);
    }
    for line in INVALID.lines().filter(|l| !l.trim().is_empty()) {
        let case = json(line);
        agree(case["payload"].as_str().unwrap_or_default().as_bytes());
        agree(line.as_bytes());
    }
}

#[test]
fn fuzz_corpus() {
    let entries = fs::read_dir(FUZZ_DIR).unwrap_or_else(|e| panic!("{FUZZ_DIR}: {e}"));
    let mut count = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if let Ok(bytes) = fs::read(&path) {
            agree(&bytes);
            count += 1;
        }
    }
    assert!(count > 100, "only {count} corpus inputs");
}

#[test]
fn edge_cases() {
    let attrs = [
        // Sentinels: only below the top level of `attributes`, only alone and with a string.
        r#"{"__bigint":"1"}"#,
        r#"{"__buffer_b64":"AA","a":1}"#,
        r#"{"a":{"__bigint":"007"},"b":[{"__bigint":"-0"}],"c":{"__buffer_b64":"AA"}}"#,
        r#"{"a":{"__bigint":"1","x":2}}"#,
        r#"{"a":{"x":2,"__bigint":"1"}}"#,
        r#"{"a":{"__bigint":1}}"#,
        r#"{"a":{"__bigint":"1","__bigint":"2"}}"#,
        r#"{"a":{"__buffer_b64":"AA","__buffer_b64":"AAA"}}"#,
        r#"{"a":{"__bigint":"x"}}"#,
        r#"{"a":{"__buffer_b64":"!"}}"#,
        r#"{"a":{"__bigint":"1"},"a":2}"#,
        r#"{"a" : { "__bigint" : "12" } , "b" : [ 1 , 2 ] }"#,
        // Keys: order, duplicates, escapes, NUL, serde_json's private keys.
        r#"{"b":1,"a":2,"ab":3,"":4,"é":5,"z":6}"#,
        r#"{"a":1,"a":2}"#,
        r#"{"a":"\u0000","a":1}"#,
        r#"{"\u0061":1,"a":2}"#,
        r#"{"a\"b":1,"a\\b":2,"a\/b":3,"\b\f\n\r\t":4,"\u001f":5}"#,
        r#"{"\u0000":1}"#,
        r#"{"x":{"$serde_json::private::Number":"12"}}"#,
        r#"{"x":{"$serde_json::private::Number":"1e5"}}"#,
        r#"{"x":{"$serde_json::private::Number":"abc"}}"#,
        r#"{"x":{"a":1,"$serde_json::private::Number":"12"}}"#,
        r#"{"x":{"$serde_json::private::RawValue":"[1]"}}"#,
        r#"{"$serde_json::private::Number":"12"}"#,
        // Strings.
        r#"{"s":"\ud83d\ude80","t":"🚀","u":"\ud800","v":"\udc00x","w":"\u00e9\u2028"}"#,
        r#"{"s":"\u12"}"#,
        r#"{"s":"\u+123"}"#,
        r#"{"s":"\x"}"#,
        "{\"s\":\"a\u{1}b\"}",
        "{\"s\":\"a\u{1f}b\"}",
        "{\"s\":\"\\n\u{1f}\"}",
        "{\"a\u{1f}\":1}",
        "{\"\\t\u{1f}\":1}",
        "{\"s\":\"a\u{7f}b\"}",
        r#"{"s":"\u0001\u007f"}"#,
        // Numbers.
        r#"{"a":1E5,"b":1e+5,"c":-1E-5,"d":-0,"e":-0.0,"f":0e0,"g":1.5e300,"h":1e400,"i":9007199254740993}"#,
        r#"{"a":9007199254740991,"b":-9007199254740992,"c":18446744073709551616,"d":123456789012345678901234567890}"#,
        r#"{"a":01}"#,
        r#"{"a":-}"#,
        r#"{"a":1.}"#,
        r#"{"a":1e}"#,
        r#"{"a":.5}"#,
        r#"{"a":+1}"#,
        r#"{"a":1.5.2}"#,
        r#"{"a":0x1}"#,
        // Literals and structure.
        r#"{"a":[true,false,null,[],{},[[]],{"b":{}}]}"#,
        r#"{"a":tru}"#,
        r#"{"a":nulls}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":1,}"#,
        r#"{,}"#,
        r#"{}"#,
        r#"{"a":[1 2]}"#,
        r#"{"a" 1}"#,
        "{\"a\":\u{a0}1}",
        "{\"a\":\u{c}1}",
        " \t\r\n{ \"a\" :\n[ 1 ,\t2 ] } ",
        "[]",
        "1",
        "null",
    ];
    for attributes in attrs {
        agree(with_attributes(attributes).as_bytes());
    }
    let top = [
        payload(""),
        payload(r#""altitude":null,"angle":null,"speed":null,"satellites":null,"priority":null,"attributes":null"#),
        payload(r#""satellites":11.0,"priority":1e1,"speed":0,"angle":360,"altitude":-1e308"#),
        payload(r#""satellites":11.5"#),
        payload(r#""satellites":-1"#),
        payload(r#""satellites":32768"#),
        payload(r#""speed":-0"#),
        payload(r#""speed":-0.1"#),
        payload(r#""angle":360.0000001"#),
        payload(r#""altitude":1e999"#),
        payload(r#""altitude":"1""#),
        payload(r#""attributes":[]"#),
        payload(r#""attributes":"{}""#),
        payload(r#""attributes":{},"attributes":null"#),
        payload(r#""deviceId":"other""#),
        payload(r#""extra":{"$serde_json::private::Number":"1"}"#),
        payload(r#""extra":[{"a":"\ud800"}]"#),
        payload(r#""extra":{"a":1,"a":{"__bigint":"x"},"b":"\u0000"}"#),
        payload(r#""extra":[[[[[[[[[[]]]]]]]]]]"#),
        payload(r#""extra":[1,}"#),
        format!(r#"{{"$serde_json::private::Number":"1",{BASE}}}"#),
        format!(r#"{{"latitude":"bad",{BASE}}}"#),
        format!(r#"{{"lat\u0069tude":91,{BASE}}}"#),
        format!(r#"{{{BASE},"lat\u0069tude":91}}"#),
        format!(r#"{{{BASE}}}x"#),
        format!(r#"{{{BASE}}}{{}}"#),
        format!("\u{feff}{{{BASE}}}"),
        format!("{{{BASE}}} \n"),
        replacing("deviceId", Some(r#""""#)),
        replacing("deviceId", Some(&format!("\"{}\"", "x".repeat(256)))),
        replacing("deviceId", Some(&format!("\"{}\"", "x".repeat(257)))),
        replacing("deviceId", Some(r#""a\u0000""#)),
        replacing("deviceId", Some(r#""\u00e9\n""#)),
        replacing("deviceId", Some("12")),
        replacing("deviceId", None),
        replacing("timestamp", Some(r#""2026-11-27T10:15:30Z""#)),
        replacing("timestamp", Some(r#""2026-11-27T10:15:60Z""#)),
        replacing("timestamp", Some(r#""2026-02-30T10:15:30Z""#)),
        replacing("timestamp", Some(r#""2026-11-27T10:15:30.1234567Z""#)),
        replacing("timestamp", Some(r#""2026-11-27T10:15:30\u002e5Z""#)),
        replacing("timestamp", Some("null")),
        replacing("latitude", Some("90")),
        replacing("latitude", Some("-90.0")),
        replacing("latitude", Some("90.000000000000001")),
        replacing("latitude", Some("90.00000000001")),
        replacing("latitude", Some("null")),
        replacing("longitude", Some("-180e0")),
        replacing("longitude", Some("true")),
        String::new(),
        "{".to_owned(),
        "{}".to_owned(),
    ];
    for text in &top {
        agree(text.as_bytes());
    }
}

#[test]
fn nesting() {
    for depth in [90, 96, 97, 98, 99, 100, 101, 124, 125, 126, 127, 128, 129, 1000, 100_000] {
        let arrays = with_attributes(&format!("{{\"a\":{}1{}}}", "[".repeat(depth), "]".repeat(depth)));
        agree(arrays.as_bytes());
        let objects = with_attributes(&format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)));
        agree(objects.as_bytes());
        let extra = payload(&format!("\"x\":{}{}", "[".repeat(depth), "]".repeat(depth)));
        agree(extra.as_bytes());
    }
    fast_answers(&with_attributes(&format!("{{\"a\":{}{{\"__bigint\":\"1\"}}{}}}", "[".repeat(90), "]".repeat(90))));
}

#[test]
fn size_limit_comes_first() {
    let text = payload("");
    for limit in [0, text.len() - 1, text.len(), usize::MAX] {
        let fast = trackway_wire::decode(text.as_bytes(), limit);
        assert_eq!(fast, decode_reference(text.as_bytes(), limit), "{limit}");
    }
}

/// Pieces of JSON text, valid and not, that the fast path treats specially.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_map(|f| format!("{f:E}")),
        (-200.0f64..200.0).prop_map(|f| f.to_string()),
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?",
        prop::sample::select(vec![
            "-0",
            "0",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "9007199254740993",
            "360",
            "32767",
            "32768",
            "11.0",
            "1e400",
            "-1e-400",
            "NaN",
        ])
        .prop_map(str::to_owned),
    ]
}

fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[a-z0-9 ]{0,8}\"",
        "[^\u{0}\"\\\\]{0,6}".prop_map(|s| format!("\"{s}\"")),
        prop::sample::select(vec![
            r#""""#,
            r#""\u0000""#,
            r#""\ud83d\ude80""#,
            r#""\ud800""#,
            r#""\"\\\/\b\f\n\r\t""#,
            r#""\u00E9\u00e9""#,
            "\"\u{1}\"",
            r#""\q""#,
            r#""AAEC/w==""#,
            r#""AA""#,
            r#""18446744073709551615""#,
            r#""-0012""#,
            r#""2026-11-27T10:15:30.123Z""#,
            r#""2026-11-27T10:15:30.123456+02:00""#,
        ])
        .prop_map(str::to_owned),
    ]
}

fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "ab", "", "11", "239", "66", "é", "A"])
            .prop_map(|k| format!("\"{k}\"")),
        1 => prop::sample::select(vec![
            r#""__bigint""#,
            r#""__buffer_b64""#,
            r#""$serde_json::private::Number""#,
            r#""$serde_json::private::RawValue""#,
            r#""\u0000""#,
            r#""\u0061""#,
            r#""\ud800""#,
        ])
        .prop_map(str::to_owned),
    ]
}

fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n\t", "\r ", "\u{a0}"])
}

fn value_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number_text(),
        string_text(),
        prop::sample::select(vec!["true", "false", "null", "nul", "[]", "{}"]).prop_map(str::to_owned),
        (prop::sample::select(vec!["__bigint", "__buffer_b64"]), string_text())
            .prop_map(|(k, v)| format!(r#"{{"{k}":{v}}}"#)),
    ];
    leaf.prop_recursive(4, 40, 5, |inner| {
        prop_oneof![
            (vec((space(), inner.clone()), 0..5), space()).prop_map(|(items, end)| {
                let items: Vec<String> = items.into_iter().map(|(s, v)| format!("{s}{v}")).collect();
                format!("[{}{end}]", items.join(","))
            }),
            vec((key_text(), space(), inner), 0..5).prop_map(|members| {
                let members: Vec<String> = members.into_iter().map(|(k, s, v)| format!("{k}{s}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A top-level document: the known fields (often valid, sometimes not, sometimes twice) and unknown ones.
fn document_text() -> impl Strategy<Value = String> {
    let known = prop_oneof![
        3 => Just(BASE.to_owned()),
        1 => (prop::sample::select(vec!["deviceId", "timestamp", "latitude", "longitude"]), value_text())
            .prop_map(|(k, v)| format!(r#""{k}":{v}"#)),
    ];
    let member = prop_oneof![
        (
            prop::sample::select(vec!["altitude", "angle", "speed", "satellites", "priority", "x", "deviceId"]),
            prop_oneof![number_text(), value_text()]
        )
            .prop_map(|(k, v)| format!(r#""{k}":{v}"#)),
        (space(), value_text(), space()).prop_map(|(a, v, b)| format!(r#""attributes"{a}:{b}{v}"#)),
        (key_text(), value_text()).prop_map(|(k, v)| format!("{k}:{v}")),
    ];
    (known, vec(member, 0..5), any::<bool>()).prop_map(|(known, members, first)| {
        let mut all = members;
        if first {
            all.insert(0, known);
        } else {
            all.push(known);
        }
        format!("{{{}}}", all.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_agree(text in document_text()) {
        agree(text.as_bytes());
    }

    #[test]
    fn generated_attributes_agree(attributes in value_text()) {
        agree(with_attributes(&attributes).as_bytes());
    }

    #[test]
    fn mutated_documents_agree(
        text in document_text(),
        edits in vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"{}[]\":,\\0123456789eE.-+ _abfnrtux\x00\x7f\xc3\xff".to_vec())), 1..4),
    ) {
        let mut bytes = text.into_bytes();
        apply_edits(&mut bytes, edits);
        agree(&bytes);
    }

    #[test]
    fn generated_bytes_agree(bytes in vec(any::<u8>(), 0..128)) {
        agree(&bytes);
    }
}
