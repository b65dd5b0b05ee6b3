//! Encoding a stored [`Position`] back to the wire format, and the normalised JSON shown for inspection.

use serde_json::{Map, Value};

use crate::attributes::BIGINT_KEY;
use crate::decode::type_name;
use crate::error::{DecodeError, ErrorKind};
use crate::json::push_str_literal;
use crate::number::{finite_f64, is_integer_literal, push_integer, push_js_number, safe_integer};
use crate::timestamp::format_timestamp;
use crate::Position;

/// The wire document (compact JSON text) of a stored position.
///
/// `attributes` is storage-form JSON text, e.g. as PostgreSQL prints a `jsonb` value: integers beyond
/// ±(2^53−1) become `{"__bigint":"<digits>"}`, numbers with a fraction or exponent become JavaScript numbers,
/// everything else is kept. Fails (never panics) when a float is not finite or `attributes` is not a JSON
/// object holding finite numbers.
pub fn encode(p: &Position) -> Result<String, DecodeError> {
    for (name, value) in float_fields(p) {
        if value.is_some_and(|v| !v.is_finite()) {
            return Err(DecodeError::new(ErrorKind::OutOfRange, "is not a finite number").within(name));
        }
    }
    let attributes = p.attributes.as_deref().map(attributes_to_wire).transpose().map_err(|e| e.within("attributes"))?;
    Ok(write_position(p, attributes.as_deref()))
}

/// [`encode`] for a position fresh from [`decode`](crate::decode): the same document, made without parsing
/// `attributes` into a tree again.
///
/// `decode` writes `attributes` as compact JSON with the keys of every object sorted and unique, which is
/// exactly the order [`encode`] gives them, so the wire form is produced by one pass over the text that only
/// rewrites numbers. Only call it with `attributes` as `decode` wrote them: text that is not a JSON object,
/// or a number that cannot be converted, falls back to [`encode`], but keys out of order would stay so.
pub fn encode_decoded(p: &Position) -> Result<String, DecodeError> {
    if float_fields(p).iter().any(|(_, v)| v.is_some_and(|v| !v.is_finite())) {
        return encode(p);
    }
    match p.attributes.as_deref().map(canonical_attributes_to_wire) {
        None => Ok(write_position(p, None)),
        Some(Some(wire)) => Ok(write_position(p, Some(&wire))),
        Some(None) => encode(p),
    }
}

/// The wire form of compact storage-form `attributes` text in one pass: numbers are rewritten like
/// [`push_number`], everything else is copied. `None` when the text is not a compact JSON object in the
/// shape `decode` writes, or a number cannot be converted (the caller then takes the slow path, which
/// reports the error with its path).
fn canonical_attributes_to_wire(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut depth: usize = 0;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => {
                // A string literal, copied as it is: decode wrote it with `push_str_literal`.
                let start = at;
                at += 1;
                loop {
                    match bytes.get(at)? {
                        b'\\' => at += 2,
                        b'"' => break,
                        _ => at += 1,
                    }
                }
                at += 1;
                out.push_str(text.get(start..at)?);
            }
            b'-' | b'0'..=b'9' => {
                let start = at;
                while at < bytes.len() && matches!(bytes[at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                    at += 1;
                }
                push_number(&mut out, text.get(start..at)?).ok()?;
            }
            b'{' | b'[' => {
                depth += 1;
                out.push(char::from(bytes[at]));
                at += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                out.push(char::from(bytes[at]));
                at += 1;
                if depth == 0 {
                    // The object is closed: nothing may follow.
                    return (at == bytes.len()).then_some(out);
                }
            }
            b',' | b':' => {
                out.push(char::from(bytes[at]));
                at += 1;
            }
            _ => {
                let literal = ["true", "false", "null"].into_iter().find(|l| bytes[at..].starts_with(l.as_bytes()))?;
                out.push_str(literal);
                at += literal.len();
            }
        }
    }
    None
}

/// The normalised form of a position, for inspection: the wire format's keys, `timestamp` in ISO-8601 UTC,
/// numbers as JavaScript prints them (`null` when not finite), and `attributes` in storage form (integers as
/// plain numbers, no sentinels). `attributes` that are not valid JSON are shown as a string.
pub fn normalized_json(p: &Position) -> String {
    let attributes = p.attributes.as_deref().map(|text| {
        serde_json::from_str::<Value>(text).ok().and_then(|value| serde_json::to_string(&value).ok()).unwrap_or_else(
            || {
                let mut quoted = String::new();
                push_str_literal(&mut quoted, text);
                quoted
            },
        )
    });
    write_position(p, attributes.as_deref())
}

/// The optional and required float fields, in wire order.
fn float_fields(p: &Position) -> [(&'static str, Option<f64>); 5] {
    [
        ("latitude", Some(p.latitude)),
        ("longitude", Some(p.longitude)),
        ("altitude", p.altitude),
        ("angle", p.angle),
        ("speed", p.speed),
    ]
}

/// Writes the document; `attributes` is already JSON text.
fn write_position(p: &Position, attributes: Option<&str>) -> String {
    let mut out = String::with_capacity(160 + attributes.map_or(0, str::len));
    out.push_str("{\"deviceId\":");
    push_str_literal(&mut out, &p.device_id);
    out.push_str(",\"timestamp\":\"");
    out.push_str(&format_timestamp(p.ts_micros));
    out.push('"');
    for (name, value) in float_fields(p) {
        if let Some(value) = value {
            push_key(&mut out, name);
            if value.is_finite() {
                push_js_number(&mut out, value);
            } else {
                out.push_str("null");
            }
        }
    }
    for (name, value) in [("satellites", p.satellites), ("priority", p.priority)] {
        if let Some(value) = value {
            push_key(&mut out, name);
            push_integer(&mut out, value.into());
        }
    }
    if let Some(attributes) = attributes {
        push_key(&mut out, "attributes");
        out.push_str(attributes);
    }
    out.push('}');
    out
}

fn push_key(out: &mut String, name: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
}

/// Storage-form `attributes` text → wire-form compact JSON text.
fn attributes_to_wire(text: &str) -> Result<String, DecodeError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| DecodeError::new(ErrorKind::Syntax, format!("stored attributes are not valid JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(DecodeError::new(ErrorKind::WrongType, format!("must be an object, got {}", type_name(&value))));
    };
    let mut out = String::with_capacity(text.len());
    push_object(&mut out, map)?;
    Ok(out)
}

fn push_value(out: &mut String, value: &Value) -> Result<(), DecodeError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => push_number(out, n.as_str())?,
        Value::String(s) => push_str_literal(out, s),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_value(out, item).map_err(|e| e.within(&index.to_string()))?;
            }
            out.push(']');
        }
        Value::Object(map) => push_object(out, map)?,
    }
    Ok(())
}

fn push_object(out: &mut String, map: &Map<String, Value>) -> Result<(), DecodeError> {
    out.push('{');
    for (index, (key, value)) in map.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_str_literal(out, key);
        out.push(':');
        push_value(out, value).map_err(|e| e.within(key))?;
    }
    out.push('}');
    Ok(())
}

/// A stored number: a safe integer as it is, a larger integer as a `__bigint` sentinel, and anything with a
/// fraction or exponent as the JavaScript number it denotes.
fn push_number(out: &mut String, text: &str) -> Result<(), DecodeError> {
    if is_integer_literal(text) {
        match safe_integer(text) {
            Some(n) => push_integer(out, n),
            None => {
                out.push_str("{\"");
                out.push_str(BIGINT_KEY);
                out.push_str("\":\"");
                out.push_str(text);
                out.push_str("\"}");
            }
        }
        return Ok(());
    }
    let value = finite_f64(text)
        .ok_or_else(|| DecodeError::new(ErrorKind::OutOfRange, "number is beyond the range of a JavaScript number"))?;
    push_js_number(out, value);
    Ok(())
}
