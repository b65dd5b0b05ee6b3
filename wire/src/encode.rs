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
            return Err(
                DecodeError::new(ErrorKind::OutOfRange, "is not a finite number").within(name),
            );
        }
    }
    let attributes = p
        .attributes
        .as_deref()
        .map(attributes_to_wire)
        .transpose()
        .map_err(|e| e.within("attributes"))?;
    Ok(write_position(p, attributes.as_deref()))
}

/// The normalised form of a position, for inspection: the wire format's keys, `timestamp` in ISO-8601 UTC,
/// numbers as JavaScript prints them (`null` when not finite), and `attributes` in storage form (integers as
/// plain numbers, no sentinels). `attributes` that are not valid JSON are shown as a string.
pub fn normalized_json(p: &Position) -> String {
    let attributes = p.attributes.as_deref().map(|text| {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|value| serde_json::to_string(&value).ok())
            .unwrap_or_else(|| {
                let mut quoted = String::new();
                push_str_literal(&mut quoted, text);
                quoted
            })
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
    let value: Value = serde_json::from_str(text).map_err(|e| {
        DecodeError::new(
            ErrorKind::Syntax,
            format!("stored attributes are not valid JSON: {e}"),
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(DecodeError::new(
            ErrorKind::WrongType,
            format!("must be an object, got {}", type_name(&value)),
        ));
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
    let value = finite_f64(text).ok_or_else(|| {
        DecodeError::new(
            ErrorKind::OutOfRange,
            "number is beyond the range of a JavaScript number",
        )
    })?;
    push_js_number(out, value);
    Ok(())
}
