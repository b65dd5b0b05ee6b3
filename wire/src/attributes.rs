//! `attributes`: from the wire format (JavaScript values with sentinels) to the storage form.
//!
//! The walk writes compact JSON text straight from the parsed tree (no intermediate tree is built) and checks
//! every rule on the way; errors carry the path of the failing value (`attributes.10.nested.0`).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use serde_json::{Map, Value};

use crate::error::{quoted, DecodeError, ErrorKind};
use crate::json::push_str_literal;
use crate::number::{finite_f64, is_integer_literal, push_integer, push_storage_double, safe_integer};
use crate::MAX_BIGINT_DIGITS;

/// The sentinel key of an integer beyond JavaScript's safe range.
pub(crate) const BIGINT_KEY: &str = "__bigint";
/// The sentinel key of a byte string.
pub(crate) const BUFFER_KEY: &str = "__buffer_b64";

/// Standard base64 that accepts input with or without padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The storage form of a wire `attributes` object, as compact JSON text.
pub(crate) fn to_storage(attributes: &Map<String, Value>) -> Result<String, DecodeError> {
    let mut out = String::with_capacity(128);
    push_object(&mut out, attributes)?;
    Ok(out)
}

/// The bytes of a base64 string, standard alphabet, padding optional.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, DecodeError> {
    LENIENT_BASE64
        .decode(s)
        .map_err(|e| DecodeError::new(ErrorKind::Syntax, format!("{BUFFER_KEY} is not valid base64: {e}")))
}

fn push_value(out: &mut String, value: &Value) -> Result<(), DecodeError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => push_number(out, n.as_str())?,
        Value::String(s) => {
            reject_nul(s)?;
            push_str_literal(out, s);
        }
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
        Value::Object(map) if map.contains_key(BIGINT_KEY) || map.contains_key(BUFFER_KEY) => {
            push_sentinel(out, map)?;
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
        reject_nul(key).map_err(|e| e.within(key))?;
        push_str_literal(out, key);
        out.push(':');
        push_value(out, value).map_err(|e| e.within(key))?;
    }
    out.push('}');
    Ok(())
}

/// PostgreSQL's `text` and `jsonb` cannot hold U+0000.
fn reject_nul(text: &str) -> Result<(), DecodeError> {
    if text.contains('\0') {
        return Err(DecodeError::new(ErrorKind::Unsupported, "NUL characters (\\u0000) cannot be stored"));
    }
    Ok(())
}

/// A JavaScript number: a safe integer stays an integer, any other double gets a fractional part.
pub(crate) fn push_number(out: &mut String, text: &str) -> Result<(), DecodeError> {
    let out_of_range = || {
        DecodeError::new(
            ErrorKind::OutOfRange,
            format!("number {} is beyond the range of a JavaScript number", quoted(text)),
        )
    };
    if !is_integer_literal(text) {
        push_storage_double(out, finite_f64(text).ok_or_else(out_of_range)?);
    } else if let Some(n) = safe_integer(text) {
        push_integer(out, n);
    } else {
        finite_f64(text).ok_or_else(out_of_range)?;
        out.push_str(text);
        out.push_str(".0");
    }
    Ok(())
}

/// An object with a sentinel key: exactly that key, with a string value.
fn push_sentinel(out: &mut String, map: &Map<String, Value>) -> Result<(), DecodeError> {
    let mut entries = map.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        let key = if map.contains_key(BIGINT_KEY) { BIGINT_KEY } else { BUFFER_KEY };
        return Err(DecodeError::new(ErrorKind::WrongType, format!("an object with {key} must have no other key")));
    };
    let Value::String(text) = value else {
        return Err(DecodeError::new(ErrorKind::WrongType, format!("{key} must be a string")));
    };
    if key == BIGINT_KEY {
        push_bigint(out, text)
    } else {
        push_buffer(out, text)
    }
}

/// `{"__bigint": "-0012"}` → `-12`: an optional `-`, then 1..=1000 ASCII digits.
pub(crate) fn push_bigint(out: &mut String, text: &str) -> Result<(), DecodeError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecodeError::new(
            ErrorKind::Syntax,
            format!(
                "{BIGINT_KEY} is not an integer: expected an optional \"-\" and decimal digits, got {}",
                quoted(text)
            ),
        ));
    }
    if digits.len() > MAX_BIGINT_DIGITS {
        return Err(DecodeError::new(
            ErrorKind::OutOfRange,
            format!("{BIGINT_KEY} has {} digits, above the limit of {MAX_BIGINT_DIGITS}", digits.len()),
        ));
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        out.push('0');
    } else {
        if negative {
            out.push('-');
        }
        out.push_str(significant);
    }
    Ok(())
}

/// `{"__buffer_b64": "AA"}` → `{"__buffer_b64":"AA=="}`: canonical padded base64.
pub(crate) fn push_buffer(out: &mut String, text: &str) -> Result<(), DecodeError> {
    let bytes = decode_b64(text)?;
    out.push_str("{\"");
    out.push_str(BUFFER_KEY);
    out.push_str("\":\"");
    STANDARD.encode_string(bytes, out);
    out.push_str("\"}");
    Ok(())
}
