//! Decoding a wire payload into a [`Position`]: size limit, JSON parse, then each field checked by hand so that
//! every error names its path.

use serde_json::{Map, Value};

use crate::attributes::to_storage;
use crate::error::{excerpt, quoted, DecodeError, ErrorKind};
use crate::fast::{self, SERDE_PRIVATE_PREFIX};
use crate::number::finite_f64;
use crate::timestamp::parse_timestamp;
use crate::{Position, MAX_DEVICE_ID_BYTES};

/// Decodes one wire-format payload (UTF-8 JSON) into a [`Position`] with `attributes` in storage form.
///
/// Payloads longer than `max_payload_bytes` are refused before parsing. Unknown top-level keys are ignored;
/// `null` for an optional field means absent. Never panics, whatever the input.
///
/// Valid payloads take a one-pass fast path (`fast.rs`); anything it is not sure about, every invalid payload
/// included, is decoded by [`decode_reference`], so errors are always the reference path's.
pub fn decode(payload: &[u8], max_payload_bytes: usize) -> Result<Position, DecodeError> {
    if payload.len() <= max_payload_bytes {
        if let Some(position) = fast::decode(payload) {
            return Ok(position);
        }
    }
    decode_reference(payload, max_payload_bytes)
}

/// The fast path alone: `Some` exactly when it is sure of the position (which is then the reference path's),
/// `None` when [`decode`] falls back to [`decode_reference`]. For tests and benchmarks.
#[doc(hidden)]
pub fn decode_fast(payload: &[u8]) -> Option<Position> {
    fast::decode(payload)
}

/// The reference decoder: parses a `serde_json::Value` tree, then checks each field by hand. [`decode`] gives
/// the same result for every input, faster; this one stays as its oracle (tests and benchmarks).
#[doc(hidden)]
pub fn decode_reference(payload: &[u8], max_payload_bytes: usize) -> Result<Position, DecodeError> {
    if payload.len() > max_payload_bytes {
        return Err(DecodeError::new(
            ErrorKind::TooLarge,
            format!("payload is {} bytes, above the limit of {max_payload_bytes}", payload.len()),
        ));
    }
    if has_reserved_key(payload) {
        return Err(DecodeError::new(
            ErrorKind::Syntax,
            format!("payload has an object key starting with {SERDE_PRIVATE_PREFIX:?}, which the JSON parser reserves"),
        ));
    }
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| DecodeError::new(ErrorKind::Syntax, format!("payload is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(DecodeError::new(ErrorKind::Syntax, "payload is not a JSON object"));
    };
    Ok(Position {
        device_id: required(&mut fields, "deviceId", device_id)?,
        ts_micros: required(&mut fields, "timestamp", timestamp)?,
        latitude: required(&mut fields, "latitude", |v| number_within(&v, -90.0, 90.0))?,
        longitude: required(&mut fields, "longitude", |v| number_within(&v, -180.0, 180.0))?,
        altitude: optional(&mut fields, "altitude", |v| number(&v))?,
        angle: optional(&mut fields, "angle", |v| number_within(&v, 0.0, 360.0))?,
        speed: optional(&mut fields, "speed", |v| number_within(&v, 0.0, f64::MAX))?,
        satellites: optional(&mut fields, "satellites", |v| small_count(&v))?,
        priority: optional(&mut fields, "priority", |v| small_count(&v))?,
        attributes: optional(&mut fields, "attributes", |v| attributes(&v))?,
    })
}

/// True when an object key of `payload` starts with [`SERDE_PRIVATE_PREFIX`]. With `arbitrary_precision`,
/// `serde_json` turns `{"$serde_json::private::Number":"54.1"}` into the *number* 54.1 when it builds a
/// `Value`, so such an object would pass as a number (a latitude, an attribute); refuse it before parsing.
/// Exact for valid JSON (string tokens are followed from the first byte; a key is a string followed by `:`);
/// on invalid JSON it may say true only if the text holds such a key, which is refused either way.
fn has_reserved_key(payload: &[u8]) -> bool {
    let mentions = |needle: &[u8]| payload.windows(needle.len()).any(|w| w == needle);
    if !mentions(b"serde_json") && !mentions(b"\\u") {
        return false;
    }
    let mut i = 0;
    while i < payload.len() {
        if payload[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        let mut escaped = false;
        while i < payload.len() && (escaped || payload[i] != b'"') {
            escaped = !escaped && payload[i] == b'\\';
            i += 1;
        }
        if i == payload.len() {
            return false;
        }
        i += 1;
        let token = &payload[start..i];
        let next = payload[i..].iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if next == Some(&b':') {
            if let Ok(key) = serde_json::from_slice::<String>(token) {
                if key.starts_with(SERDE_PRIVATE_PREFIX) {
                    return true;
                }
            }
        }
    }
    false
}

/// A field that must be present and not `null`.
fn required<T>(
    fields: &mut Map<String, Value>,
    name: &str,
    check: impl FnOnce(Value) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Err(DecodeError::new(ErrorKind::Missing, "required field is missing")),
        Some(value) => check(value),
    }
    .map_err(|e| e.within(name))
}

/// A field that may be absent or `null`.
fn optional<T>(
    fields: &mut Map<String, Value>,
    name: &str,
    check: impl FnOnce(Value) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => check(value).map(Some).map_err(|e| e.within(name)),
    }
}

fn device_id(value: Value) -> Result<String, DecodeError> {
    let Value::String(id) = value else {
        return Err(wrong_type("a string", &value));
    };
    if id.is_empty() {
        return Err(DecodeError::new(ErrorKind::OutOfRange, "must not be empty"));
    }
    if id.len() > MAX_DEVICE_ID_BYTES {
        return Err(DecodeError::new(
            ErrorKind::OutOfRange,
            format!("is {} bytes, above the limit of {MAX_DEVICE_ID_BYTES}", id.len()),
        ));
    }
    if id.contains('\0') {
        return Err(DecodeError::new(ErrorKind::Unsupported, "NUL characters (\\u0000) cannot be stored"));
    }
    Ok(id)
}

fn timestamp(value: Value) -> Result<i64, DecodeError> {
    match &value {
        Value::String(text) => parse_timestamp(text),
        _ => Err(wrong_type("a string", &value)),
    }
}

/// A finite JSON number.
fn number(value: &Value) -> Result<f64, DecodeError> {
    let Value::Number(n) = value else {
        return Err(wrong_type("a number", value));
    };
    finite_f64(n.as_str()).ok_or_else(|| {
        DecodeError::new(ErrorKind::OutOfRange, format!("must be a finite number, got {}", quoted(n.as_str())))
    })
}

/// A finite JSON number in `[min, max]`.
fn number_within(value: &Value, min: f64, max: f64) -> Result<f64, DecodeError> {
    let n = number(value)?;
    if !(min..=max).contains(&n) {
        let bounds = if max == f64::MAX { format!("at least {min}") } else { format!("between {min} and {max}") };
        return Err(DecodeError::new(ErrorKind::OutOfRange, format!("must be {bounds}, got {}", value_text(value))));
    }
    Ok(n)
}

/// An integer in 0..=32767 (an integral double such as `11.0` counts).
fn small_count(value: &Value) -> Result<i16, DecodeError> {
    let n = number(value)?;
    if n.fract() != 0.0 {
        return Err(DecodeError::new(ErrorKind::WrongType, format!("must be an integer, got {}", value_text(value))));
    }
    if !(0.0..=f64::from(i16::MAX)).contains(&n) {
        return Err(DecodeError::new(
            ErrorKind::OutOfRange,
            format!("must be between 0 and {}, got {}", i16::MAX, value_text(value)),
        ));
    }
    // In range and integral: the conversion is exact.
    Ok(n as i16)
}

fn attributes(value: &Value) -> Result<String, DecodeError> {
    match value {
        Value::Object(map) => to_storage(map),
        _ => Err(wrong_type("an object", value)),
    }
}

fn wrong_type(expected: &str, got: &Value) -> DecodeError {
    DecodeError::new(ErrorKind::WrongType, format!("must be {expected}, got {}", type_name(got)))
}

/// The JSON type of a value, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A number's text as written, for error messages.
fn value_text(value: &Value) -> String {
    match value {
        Value::Number(n) => excerpt(n.as_str()),
        other => type_name(other).to_owned(),
    }
}
